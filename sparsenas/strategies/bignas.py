"""BigNAS: one elastic supernet whose children are used without retraining, and its ablations.

Per seed, three supernets are trained from the same initialisation, one epoch per unit, each
epoch checkpointed (weights, optimiser / scheduler state, step counter): ``bignas`` (sandwich rule
+ in-place distillation), ``uniform`` (uniformly sampled children on the labels) and ``no-kd``
(sandwich rule, labels only). After training, each supernet's children are BN-calibrated and
scored on the validation split; coarse-to-fine selection picks the best child under a FLOPs budget
and under a measured CPU-latency budget (both fractions of the biggest child's). The biggest,
smallest and selected children (and any given with --children) are exported as plain networks,
whose test accuracy must equal the calibrated in-supernet one. Finally the bignas variant's
reported architectures are trained alone from scratch with the same recipe (standalone).

Units: ``seed=<s>/<variant>/epoch=<e>`` (each depends on the epoch before), ``seed=<s>/<variant>/
select`` (after the last epoch), ``seed=<s>/standalone/<child>`` (after the bignas selection).
Checkpoints go to the study's checkpoint directory, or, by default, to
``<store file stem>-checkpoints/<study>/`` beside the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig, Dataset
from sparsenas.methods.bignas.selection import (calibrated_accuracy, coarse_to_fine,
                                                 exported_latency_ms)
from sparsenas.methods.bignas.training import (VARIANTS, SandwichConfig, StandaloneStep,
                                                SupernetConfig, checkpoint_path, load_epoch,
                                                save_epoch, train_epoch)
from sparsenas.models.elastic import ChildConfig, ElasticNet
from sparsenas.report.plots import plot_pareto_front
from sparsenas.seeds import derive_seed
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.store import TrialRecord
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.strategies.random_search import check_seeds
from sparsenas.study import RuntimeConfig, StudyContext, Unit, epoch_chain
from sparsenas.train import TrainConfig, Trainer

REPORTED = ("max", "min", "selected-flops", "selected-latency")


@dataclass(frozen=True)
class BigNASConfig(ConfigPiece):
    data: DataConfig = DataConfig()
    supernet: SupernetConfig = SupernetConfig()
    sandwich: SandwichConfig = SandwichConfig()
    training: TrainConfig = TrainConfig(epochs=30, lr=0.1, weight_decay=1e-4)
    runtime: RuntimeConfig = RuntimeConfig()
    flops_budget: float = option(0.5, "FLOPs budget of the selection, a fraction of the biggest "
                                      "child's FLOPs, in (0, 1]")
    latency_budget: float = option(0.8, "latency budget of the selection, a fraction of the "
                                        "biggest child's measured CPU latency, in (0, 1]")
    num_mutations: int = option(10, "random mutations around the best child (fine stage)")
    calibration_batches: int = option(8, "training batches that recompute a child's BatchNorm "
                                         "statistics before it is scored")
    latency_seconds: float = option(0.1, "seconds each latency measurement runs")
    children: tuple[str, ...] = option((), "further children to report and train alone, "
                                           "encoded like r8-d2.2-w16.32-k3.5")
    seeds: tuple[int, ...] = option((0, 1, 2), "study seeds, e.g. 0,1,2")

    def validate(self) -> None:
        if not 0 < self.flops_budget <= 1 or not 0 < self.latency_budget <= 1:
            raise ValueError(f"flops_budget and latency_budget must be in (0, 1], got "
                             f"{self.flops_budget} and {self.latency_budget}")
        if self.num_mutations < 0 or self.calibration_batches < 1 or self.latency_seconds <= 0:
            raise ValueError("num_mutations must be >= 0, calibration_batches >= 1 and "
                             "latency_seconds > 0")
        space = self.supernet.space()
        for text in self.children:
            space.decode(text)
        if len(set(self.children)) != len(self.children):
            raise ValueError(f"children must be distinct, got {list(self.children)}")
        check_seeds(self.seeds)


def _epoch_key(seed: int, variant: str, epoch: int) -> str:
    return f"seed={seed}/{variant}/epoch={epoch:04d}"


@STRATEGIES.register("bignas")
class BigNAS(Strategy):
    name = "bignas"
    description = ("BigNAS: train one elastic supernet (sandwich rule, in-place distillation) "
                   "and its ablations (uniform sampling, no distillation), select children under "
                   "FLOPs and latency budgets without retraining, and compare them with the same "
                   "architectures trained alone")
    Config = BigNASConfig
    presets = {
        "quick": {"stem_channels": 8, "stage_channels": [8, 16], "epochs": 5, "batch_size": 64,
                  "num_mutations": 4, "calibration_batches": 4, "latency_seconds": 0.05,
                  "seeds": [0, 1]},
    }

    @property
    def reported(self) -> tuple[str, ...]:
        return REPORTED + self.config.children

    def plan(self) -> list[Unit]:
        c = self.config
        units = []
        for seed in c.seeds:
            for variant in VARIANTS:
                epochs = epoch_chain(lambda e: _epoch_key(seed, variant, e), "epoch",
                                     {"seed": seed, "variant": variant},
                                     range(1, c.training.epochs + 1))
                units += epochs
                units.append(Unit(f"seed={seed}/{variant}/select", "select",
                                  {"seed": seed, "variant": variant},
                                  depends_on=(epochs[-1].key,)))
            for child in self.reported:
                units.append(Unit(f"seed={seed}/standalone/{child}", "standalone",
                                  {"seed": seed, "child": child},
                                  depends_on=(f"seed={seed}/bignas/select",)))
        return units

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        return {"epoch": self._epoch, "select": self._select,
                "standalone": self._standalone}[unit.kind](unit, ctx)

    # Units -----------------------------------------------------------------------------------

    def _checkpoints(self, ctx: StudyContext) -> Path:
        if ctx.checkpoint_dir is not None:
            return ctx.checkpoint_dir
        if ctx.store_path is None:
            raise ValueError("bignas: needs a checkpoint directory or a store path for its "
                             "per-epoch checkpoints")
        return ctx.store_path.with_name(f"{ctx.store_path.stem}-checkpoints") / ctx.study

    def check_data(self, data: Dataset) -> None:
        model, space = self._supernet(data, seed=0)
        smallest, biggest = model.flops(space.smallest()), model.flops(space.biggest())
        if smallest > self.config.flops_budget * biggest:
            raise ValueError(f"no child meets the FLOPs budget {self.config.flops_budget:g} of the "
                             f"biggest child's: the smallest child has "
                             f"{smallest / biggest:.3f} of its FLOPs")
        self._latency_budget_check(model, space)

    def _supernet(self, data: Dataset, seed: int) -> tuple[ElasticNet, ElasticSpace]:
        model = self.config.supernet.build(data, seed)
        space = ElasticSpace.for_model(model, self.config.supernet.resolutions,
                                       self.config.supernet.width_multipliers)
        return model, space

    def _epoch(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed, variant, epoch = unit.params["seed"], unit.params["variant"], unit.params["epoch"]
        model, space = self._supernet(ctx.data, seed)
        step = c.sandwich.step(variant, space, c.training, seed)
        directory = self._checkpoints(ctx)
        state = None
        if epoch > 1:
            state = load_epoch(checkpoint_path(directory, variant, seed, epoch - 1), model, step)
        result = train_epoch(model, step, ctx.data, c.training, derive_seed("batches", seed),
                             epoch, state, ctx.hooks, ctx.device)
        save_epoch(checkpoint_path(directory, variant, seed, epoch), model, step, result, variant)
        row = result.candidate_history(0)[0]
        row["train_loss"] = result.history[0].train_loss  # one entry per child of the step
        return [TrialRecord(key=unit.key, kind="epoch", seed=seed,
                            config={"variant": variant, "epoch": epoch}, epochs=[row],
                            final={"val_acc": result.history[0].val_acc[0],
                                   "test_acc": result.test_acc[0]},
                            seconds=result.seconds)]

    def _latency(self, model: ElasticNet, space: ElasticSpace):
        """The latency cost function of ``model``'s children (each measured once), with the
        smallest and biggest child's latencies taken from :meth:`_reference_latencies`."""
        measure = exported_latency_ms(model, min_run_time=self.config.latency_seconds)
        cache = self._reference_latencies(measure, space)

        def latency(config: ChildConfig) -> float:
            if config not in cache:
                cache[config] = measure(config)
            return cache[config]

        return latency

    @staticmethod
    def _reference_latencies(measure, space: ElasticSpace,
                             rounds: int = 5) -> dict[ChildConfig, float]:
        """The smallest and biggest child's latencies, measured alternately ``rounds`` times and
        the fastest kept, so a burst of load on a shared machine does not decide the budget."""
        children = (space.smallest(), space.biggest())
        times = [[measure(child) for child in children] for _ in range(rounds)]
        return {child: min(row[i] for row in times) for i, child in enumerate(children)}

    def _latency_budget_check(self, model: ElasticNet, space: ElasticSpace) -> None:
        """Fails before training when even the smallest child misses the latency budget."""
        measure = exported_latency_ms(model, min_run_time=self.config.latency_seconds)
        reference = self._reference_latencies(measure, space)
        ratio = reference[space.smallest()] / reference[space.biggest()]
        if ratio > self.config.latency_budget:
            raise ValueError(f"no child meets the latency budget {self.config.latency_budget:g} "
                             f"of the biggest child's: the smallest child measures {ratio:.2f} "
                             f"of its latency here")

    def _calibration(self, data: Dataset, seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(derive_seed("calibration", seed))
        order = torch.randperm(len(data.x_train), generator=generator)
        size = self.config.training.batch_size
        return [data.x_train[order[i * size:(i + 1) * size]]
                for i in range(self.config.calibration_batches)
                if len(order[i * size:(i + 1) * size]) >= 2]

    def _select(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed, variant = unit.params["seed"], unit.params["variant"]
        model, space = self._supernet(ctx.data, seed)
        load_epoch(checkpoint_path(self._checkpoints(ctx), variant, seed, c.training.epochs),
                   model)
        data = ctx.data.to("cpu")
        model.cpu()
        calibration = self._calibration(data, seed)
        scores: dict[ChildConfig, float] = {}

        def score(config: ChildConfig) -> float:
            if config not in scores:
                scores[config] = calibrated_accuracy(model, config, calibration, data.x_val,
                                                     data.y_val)
            return scores[config]

        latency = self._latency(model, space)
        biggest = space.biggest()
        by_flops = coarse_to_fine(space, score, model.flops, c.flops_budget * model.flops(biggest),
                                  num_mutations=c.num_mutations,
                                  seed=derive_seed("select-flops", seed, variant))
        budget_ms = c.latency_budget * latency(biggest)
        try:
            by_latency = coarse_to_fine(space, score, latency, budget_ms,
                                        num_mutations=c.num_mutations,
                                        seed=derive_seed("select-latency", seed, variant))
        except ValueError:
            raise ValueError(f"no child meets the latency budget {c.latency_budget:g} of the "
                             f"biggest child's ({budget_ms:.3f} ms) as measured now") from None
        chosen = {"max": biggest, "min": space.smallest(), "selected-flops": by_flops.config,
                  "selected-latency": by_latency.config,
                  **{text: space.decode(text) for text in c.children}}
        searches = {"selected-flops": by_flops.trials, "selected-latency": by_latency.trials}
        trials = []
        for child, config in chosen.items():
            test_acc = calibrated_accuracy(model, config, calibration, data.x_test, data.y_test)
            exported = model.export(config).eval()
            with torch.no_grad():
                export_acc = float((exported(data.x_test).argmax(-1) == data.y_test)
                                   .double().mean())
            if not math.isclose(export_acc, test_acc, abs_tol=1e-12):
                raise RuntimeError(f"exported child {space.encode(config)} scores {export_acc} "
                                   f"but {test_acc} inside the calibrated supernet")
            trials.append(TrialRecord(
                key=f"{unit.key}/{child}", kind="child", seed=seed,
                config={"variant": variant, "child": child, "arch": space.encode(config),
                        "flops": model.flops(config), "params": model.num_parameters(config),
                        "latency_ms": latency(config)},
                epochs=[], final={"test_acc": test_acc, "val_acc": score(config),
                                  "export_test_acc": export_acc,
                                  "search": searches.get(child, [])},
                seconds=0.0))
        return trials

    def _standalone(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed, child = unit.params["seed"], unit.params["child"]
        selected = next(t for t in ctx.trials(f"seed={seed}/bignas/select")
                        if t.config["child"] == child)
        fresh = c.supernet.build(ctx.data, derive_seed("standalone", seed, child))
        network = fresh.export(self._space().decode(selected.config["arch"]),
                               dropout=c.sandwich.dropout)
        result = Trainer(c.training, ctx.hooks, step=StandaloneStep(c.sandwich),
                         device=ctx.device).fit(network, ctx.data,
                                                seed=derive_seed("batches", seed))
        config = {**selected.config, "variant": "standalone"}
        return [TrialRecord(key=unit.key, kind="child", seed=seed, config=config,
                            epochs=result.candidate_history(0), final=result.candidate_final(0),
                            seconds=result.seconds)]

    def _space(self) -> ElasticSpace:
        return self.config.supernet.space()

    # Summary ---------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        groups: dict[tuple[str, str], list[TrialRecord]] = {}
        for trial in trials:
            if trial.kind == "child":
                groups.setdefault((trial.config["variant"], trial.config["child"]), []).append(
                    trial)
        rows = []
        for variant in (*VARIANTS, "standalone"):
            for child in self.reported:
                group = sorted(groups.get((variant, child), []), key=lambda t: t.seed)
                acc = [t.final["test_acc"] for t in group]
                rows.append({
                    "variant": variant, "child": child,
                    "flops": _mean([t.config["flops"] for t in group]),
                    "params": _mean([t.config["params"] for t in group]),
                    "latency_ms": _mean([t.config["latency_ms"] for t in group]),
                    "mean_acc": _mean(acc),
                    "std_acc": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                    "n": len(acc),
                    "archs": sorted({t.config["arch"] for t in group}),
                })
        searches = {variant: {child: [(t.final["search"], t.config) for t in
                                      groups.get((variant, child), [])]
                              for child in ("selected-flops", "selected-latency")}
                    for variant in VARIANTS}
        standalone = [t for key, group in groups.items() if key[0] == "standalone"
                      for t in group]
        return Summary(rows, self._table(rows), {"searches": searches,
                                                 "standalone": standalone})

    def _table(self, rows: list[dict]) -> str:
        c = self.config
        s = c.supernet

        def pct(row) -> str:
            if row["mean_acc"] is None:
                return "—"
            spread = "" if row["std_acc"] is None else f" ± {100 * row['std_acc']:.2f}"
            return f"{100 * row['mean_acc']:.2f}{spread}"

        def number(value, fmt) -> str:
            return "—" if value is None else format(value, fmt)

        lines = [
            f"BigNAS on {c.data.dataset}: supernet stem {s.stem_channels}, stages "
            f"{list(s.stage_channels)} x depths {list(s.stage_depths)}, kernels "
            f"{list(s.kernel_sizes)}, resolutions {list(s.resolutions)}, widths "
            f"{list(s.width_multipliers)}; {c.training.epochs} epochs, {c.sandwich.num_random} "
            f"random children per step; budgets: {c.flops_budget:g} of the biggest child's FLOPs, "
            f"{c.latency_budget:g} of its measured latency; seeds {list(c.seeds)}. Test accuracy "
            f"% (mean ± std over seeds), supernet children after BN calibration, no retraining.",
            "",
            "| variant | child | MFLOPs | params | latency ms | test acc % | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            flops = None if row["flops"] is None else row["flops"] / 1e6
            lines.append(f"| {row['variant']} | {row['child']} | {number(flops, '.3f')} | "
                         f"{number(row['params'], '.0f')} | {number(row['latency_ms'], '.3f')} | "
                         f"{pct(row)} | {row['n']} |")
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        panels = (("flops", "selected-flops", "flops", "MFLOPs", 1e-6),
                  ("latency", "selected-latency", "latency_ms", "CPU latency (ms, batch 1)", 1.0))
        paths = {}
        for name, child, cost_key, label, scale in panels:
            series = {}
            for variant, searches in summary.details["searches"].items():
                points = [(scale * row["cost"], 100 * row["score"])
                          for search, _ in searches[child] for row in search
                          if row["score"] is not None]
                if points:
                    series[variant] = tuple(zip(*points))
            standalone = [(scale * t.config[cost_key], 100 * t.final["val_acc"])
                          for t in summary.details["standalone"]]
            if standalone:
                series["standalone"] = tuple(zip(*standalone))
            if series:
                paths[f"pareto_{name}_plot"] = plot_pareto_front(
                    series, out_dir / f"pareto_{name}.png", cost_name=label,
                    accuracy_name="validation accuracy % (calibrated)",
                    title=f"BigNAS children: accuracy against {name} (lines: Pareto fronts)")
        return paths


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


__all__ = ["BigNAS", "BigNASConfig"]
