"""DASS: differentiable architecture search for sparse networks, and the study that checks it.

The search trains the DARTS supernet (every parametric op a score-pruned sparse layer) in three
phases: dense pre-training (weights and α), pruning (scores and α, weights frozen) and fine-tuning
(weights and α under the fixed mask), with α updated on the validation loss of the network at the
phase's sparsity (first order, or second order with ``--order second``) after ``warmup_epochs``
with α frozen. A dense DARTS search (the same supernet and schedule length, kept fraction 1, no
pruning) gives the "darts-here" genotype. Then each genotype — dass, the published darts-v2,
darts-here, and ``--genotype`` when given — is trained from scratch as a stacked-cell network and
pruned the HYDRA way at every kept fraction of ``keeps``, over several seeds.

Units: ``search/<dass|darts-here>/epoch=<e>`` (one search epoch; each depends on the previous one)
and ``eval/<genotype>/seed=<s>`` (one genotype trained from scratch, then pruned at every kept
fraction), which depends on the last epoch of the search that found the genotype.

Every search epoch ends with a checkpoint (safetensors: supernet weights, scores, masks, α,
optimiser and scheduler state, phase and kept fraction) in
``<store directory>/<store name>.checkpoints/<study>/<method>/``, beside the store, so it
follows the store whatever ``--save-models`` says. Every epoch, resumed or not, starts from the
previous epoch's checkpoint, so a study killed with -9 resumes at the last finished epoch and
derives the genotype an uninterrupted run derives.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig, Dataset
from sparsenas.methods.dass import SearchSchedule, enter_phase, prune_and_finetune, search_splits
from sparsenas.models.darts import (DARTS_V2, PRIMITIVES, DartsNetwork, DartsSearchNetwork,
                                    Genotype, reduction_layers)
from sparsenas.nn.scored import set_phase, sparsity_report
from sparsenas.report.cells import plot_genotype
from sparsenas.report.io import save_figure
from sparsenas.seeds import derive_seed
from sparsenas.spaces.cells import decode_genotype, derive_genotype, encode_genotype, param_ops
from sparsenas.store import TrialRecord, load_state, save_checkpoint, save_state
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.strategies.random_search import check_seeds
from sparsenas.study import RuntimeConfig, StudyContext, Unit, epoch_chain
from sparsenas.train import TrainConfig, Trainer
from sparsenas.train.bilevel import ORDERS, BilevelStep

SEARCHES = ("dass", "darts-here")
GIVEN = "given"


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be a kept fraction in (0, 1], got {value:g}")


@dataclass(frozen=True)
class DassConfig(ConfigPiece):
    data: DataConfig = DataConfig()
    training: TrainConfig = TrainConfig(epochs=30, lr=0.025, weight_decay=3e-4)
    runtime: RuntimeConfig = RuntimeConfig()
    channels: int = option(8, "initial channels of the search supernet")
    cells: int = option(5, "cells of the search supernet (reduction cells at 1/3 and 2/3 of the "
                           "depth)")
    nodes: int = option(4, "intermediate nodes per cell (search and evaluation)")
    dense_epochs: int = option(10, "search: dense pre-training epochs (weights and α)")
    prune_epochs: int = option(5, "search: pruning epochs (scores and α, weights frozen)")
    finetune_epochs: int = option(5, "search: fine-tuning epochs (weights and α, mask fixed)")
    warmup_epochs: int = option(5, "first search epochs with α frozen (collapse guard)")
    keep: float = option(0.05, "kept fraction of the DASS search's prune and fine-tune phases, in "
                               "(0, 1]")
    order: str = option("first", "α gradient: first order, or second order (unrolled step)",
                        choices=ORDERS)
    max_skip: int = option(2, "at most this many skip connections in a derived normal cell "
                              "(collapse guard); -1: no limit")
    arch_lr: float = option(3e-3, "learning rate of α (Adam)")
    search_seed: int = option(0, "seed of both searches (supernet initialisation, splits, batches)")
    eval_channels: int = option(16, "initial channels of the evaluation networks")
    eval_cells: int = option(8, "cells of the evaluation networks")
    keeps: tuple[float, ...] = option((0.1, 0.05, 0.01), "kept fractions of the final HYDRA "
                                                         "pruning, each in (0, 1]")
    hydra_prune_epochs: int = option(5, "final evaluation: score-training epochs per kept fraction")
    hydra_finetune_epochs: int = option(10, "final evaluation: fine-tuning epochs per kept "
                                            "fraction")
    seeds: tuple[int, ...] = option((0, 1, 2), "evaluation seeds, e.g. 0,1,2")
    genotype: str | None = option(None, "also evaluate this genotype ('normal=op@input,...|concat;"
                                        "reduce=...|concat') as 'given'")

    def validate(self) -> None:
        _check_fraction("keep", self.keep)
        if not self.keeps or len(set(self.keeps)) != len(self.keeps):
            raise ValueError(f"keeps must be distinct and non-empty, got {self.keeps}")
        for keep in self.keeps:
            _check_fraction("keeps", keep)
        for name in ("channels", "cells", "nodes", "eval_channels", "eval_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dense_epochs", "prune_epochs", "finetune_epochs", "warmup_epochs",
                     "hydra_prune_epochs", "hydra_finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.search_epochs < 1:
            raise ValueError("dense_epochs, prune_epochs and finetune_epochs must add up to >= 1")
        if self.hydra_prune_epochs < 1 or self.hydra_finetune_epochs < 1:
            raise ValueError("hydra_prune_epochs and hydra_finetune_epochs must be >= 1")
        if self.max_skip < -1:
            raise ValueError(f"max_skip must be >= 0, or -1 for no limit, got {self.max_skip}")
        if self.arch_lr <= 0:
            raise ValueError(f"arch_lr must be positive, got {self.arch_lr}")
        check_seeds(self.seeds)
        if self.genotype is not None:
            decode_genotype(self.genotype)

    @property
    def search_epochs(self) -> int:
        return self.dense_epochs + self.prune_epochs + self.finetune_epochs

    def schedule(self, method: str) -> SearchSchedule:
        """DASS's three phases; dense DARTS trains as many epochs, all dense."""
        if method == "dass":
            return SearchSchedule(self.dense_epochs, self.prune_epochs, self.finetune_epochs,
                                  self.keep, self.warmup_epochs)
        return SearchSchedule(self.search_epochs, 0, 0, 1.0, self.warmup_epochs)

    @property
    def genotypes(self) -> tuple[str, ...]:
        return ("dass", "darts-v2", "darts-here") + ((GIVEN,) if self.genotype else ())


def check_input_size(data: Dataset, dataset: str, cells: int, option_name: str) -> None:
    """A one-line error when the images of ``data`` (dataset ``dataset``) cannot pass the
    reduction cells of ``cells`` cells."""
    reductions = len(reduction_layers(cells))
    factor = 2 ** reductions
    _, height, width = data.input_shape
    if height % factor or width % factor:
        raise ValueError(f"input size {height}x{width} of dataset {dataset!r} cannot pass the "
                         f"{reductions} reduction cells of {option_name} {cells}: height and width "
                         f"must be multiples of {factor}")


def _epoch_key(method: str, epoch: int) -> str:
    return f"search/{method}/epoch={epoch:03d}"


@STRATEGIES.register("dass")
class Dass(Strategy):
    name = "dass"
    description = ("DASS: DARTS search on score-pruned sparse ops with α on the sparse network's "
                   "validation loss (dense, prune, fine-tune phases); its genotype, DARTS-V2 and "
                   "a dense-DARTS genotype trained from scratch and HYDRA-pruned at several kept "
                   "fractions")
    Config = DassConfig
    presets = {
        "quick": {"channels": 4, "cells": 3, "nodes": 2, "dense_epochs": 1, "prune_epochs": 1,
                  "finetune_epochs": 1, "warmup_epochs": 1, "arch_lr": 0.01, "max_skip": 1,
                  "eval_channels": 4, "eval_cells": 3, "epochs": 3, "batch_size": 128,
                  "hydra_prune_epochs": 1, "hydra_finetune_epochs": 1, "seeds": [0, 1]},
    }

    def plan(self) -> list[Unit]:
        c = self.config
        units = []
        for method in SEARCHES:
            units += epoch_chain(lambda e: _epoch_key(method, e), "search", {"method": method},
                                 range(c.search_epochs))
        for label in c.genotypes:
            depends = ((_epoch_key(label, c.search_epochs - 1),) if label in SEARCHES else ())
            units += [Unit(f"eval/{label}/seed={seed}", "eval", {"genotype": label, "seed": seed},
                           depends_on=depends) for seed in c.seeds]
        return units

    def check_data(self, data: Dataset) -> None:
        dataset = self.config.data.dataset
        check_input_size(data, dataset, self.config.cells, "--cells")
        check_input_size(data, dataset, self.config.eval_cells, "--eval-cells")

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        if unit.kind == "search":
            return self._search_epoch(unit, ctx)
        return self._evaluate(unit, ctx)

    # Search ----------------------------------------------------------------------------------

    def _supernet(self, data: Dataset) -> DartsSearchNetwork:
        c = self.config
        with torch.random.fork_rng(devices=[]):  # weights and α from the search seed, on the CPU
            torch.manual_seed(derive_seed("dass-supernet", c.search_seed))
            return DartsSearchNetwork(data.input_shape, data.num_classes, C=c.channels,
                                      layers=c.cells, steps=c.nodes)

    @staticmethod
    def checkpoint_dir(ctx: StudyContext, method: str) -> Path:
        if ctx.store_path is None:
            raise ValueError("dass: the study context names no store, so the search has nowhere "
                             "to keep its per-epoch checkpoints")
        store = Path(ctx.store_path)
        return store.with_name(f"{store.name}.checkpoints") / ctx.study / method

    def _search_epoch(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        method, epoch = unit.params["method"], unit.params["epoch"]
        schedule = c.schedule(method)
        split = search_splits(ctx.data, derive_seed("dass-split", c.search_seed))
        model = self._supernet(ctx.data)
        directory = self.checkpoint_dir(ctx, method)
        phase = schedule.phase_at(epoch)
        phase_start = next(e for e in range(epoch + 1) if schedule.phase_at(e) == phase)
        state = None
        if epoch > 0:
            saved = load_state(directory / f"epoch={epoch - 1:03d}.safetensors")
            # phase and kept fraction are attributes, not tensors: restore them before the weights
            set_phase(model, saved["phase"], keep=saved["keep"])
            model.load_state_dict(saved["model"])
            state = saved["trainer"]
            if epoch == phase_start:  # a new phase has new parameter groups, so new optimisers
                state = None
        enter_phase(model, schedule, epoch)
        step = BilevelStep(order=c.order, update_arch=schedule.update_arch_at(epoch),
                           arch_lr=c.arch_lr)
        phase_epochs = sum(schedule.phase_at(e) == phase for e in range(schedule.total_epochs))
        trainer = Trainer(dataclasses.replace(c.training, epochs=phase_epochs), ctx.hooks,
                          step=step, device=ctx.device)
        index = epoch - phase_start + 1
        result = trainer.fit(model, split, seed=derive_seed("dass-search", method, c.search_seed,
                                                             phase),
                             start_epoch=index, end_epoch=index, state=state)
        save_state(directory / f"epoch={epoch:03d}.safetensors",
                   {"model": model.state_dict(), "trainer": result.state, "phase": phase,
                    "keep": schedule.keep, "epoch": epoch})
        genotype = derive_genotype(model.alphas_normal, model.alphas_reduce,
                                   max_skip=None if c.max_skip < 0 else c.max_skip)
        history = result.candidate_history(0)
        for row in history:
            row["epoch"] = epoch
        final = {**result.candidate_final(0), "genotype": encode_genotype(genotype),
                 "param_ops": param_ops(genotype),
                 "kept_fraction": sparsity_report(model)["kept_fraction"],
                 "alphas_normal": torch.softmax(model.alphas_normal.detach(), -1).tolist(),
                 "alphas_reduce": torch.softmax(model.alphas_reduce.detach(), -1).tolist()}
        return [TrialRecord(key=unit.key, kind="search", seed=c.search_seed, generation=epoch,
                            config={"method": method, "epoch": epoch, "phase": phase,
                                    "keep": schedule.keep,
                                    "update_arch": schedule.update_arch_at(epoch)},
                            epochs=history, final=final, seconds=result.seconds)]

    # Final evaluation ------------------------------------------------------------------------

    def _genotype(self, label: str, ctx: StudyContext) -> Genotype:
        if label == "darts-v2":
            return DARTS_V2
        if label == GIVEN:
            return decode_genotype(self.config.genotype)
        last = ctx.trials(_epoch_key(label, self.config.search_epochs - 1))
        return decode_genotype(last[0].final["genotype"])

    def _evaluate(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        label, seed = unit.params["genotype"], unit.params["seed"]
        genotype = self._genotype(label, ctx)
        data = ctx.data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("dass-eval-init", seed))
            network = DartsNetwork(data.input_shape, data.num_classes, genotype,
                                   C=c.eval_channels, layers=c.eval_cells)
        trained = Trainer(c.training, ctx.hooks, device=ctx.device).fit(
            network, data, seed=derive_seed("dass-eval-batches", seed))
        config = {"genotype": label, "genotype_string": encode_genotype(genotype),
                  "param_ops": param_ops(genotype)}
        if ctx.checkpoint_dir is not None:
            save_checkpoint(ctx.checkpoint_dir / f"eval_{label}_seed={seed}.safetensors",
                            network.state_dict(), {"genotype": config["genotype_string"]})
        trials = [TrialRecord(key=f"{unit.key}/keep=1", kind="final", seed=seed,
                              config={**config, "keep": 1.0}, epochs=trained.candidate_history(0),
                              final=trained.candidate_final(0), seconds=trained.seconds)]
        for keep in c.keeps:
            pruned = copy.deepcopy(network)
            result = prune_and_finetune(
                pruned, data, keep, derive_seed("dass-hydra", seed, keep),
                prune=dataclasses.replace(c.training, epochs=c.hydra_prune_epochs),
                finetune=dataclasses.replace(c.training, epochs=c.hydra_finetune_epochs),
                device=ctx.device)
            trials.append(TrialRecord(
                key=f"{unit.key}/keep={keep:g}", kind="final", seed=seed,
                config={**config, "keep": keep}, epochs=[],
                final={"test_acc": result.test_acc, "test_loss": result.test_loss,
                       "pruned_test_acc": result.pruned_test_acc,
                       "best_val_acc": result.best_val_acc,
                       "kept_fraction": result.kept_fraction,
                       "dense_test_acc": trained.test_acc[0]},
                seconds=result.seconds))
        return trials

    # Summary ---------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        finals = [t for t in trials if t.kind == "final"]
        rows = []
        for label in c.genotypes:
            for keep in (1.0, *sorted(c.keeps, reverse=True)):
                group = [t for t in finals if t.config["genotype"] == label
                         and t.config["keep"] == keep]
                accs = [t.final["test_acc"] for t in group]
                rows.append({
                    "genotype": label, "keep": keep,
                    "mean_acc": float(np.mean(accs)) if accs else None,
                    "std_acc": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                    "n": len(accs),
                    "param_ops": group[0].config["param_ops"] if group else None,
                    "genotype_string": group[0].config["genotype_string"] if group else None,
                })
        searches = {method: sorted((t for t in trials if t.kind == "search"
                                    and t.config["method"] == method),
                                   key=lambda t: t.config["epoch"]) for method in SEARCHES}
        return Summary(rows, self._table(rows, searches), {"searches": searches})

    def claim(self, rows: list[dict]) -> list[str]:
        """Per kept fraction <= 0.05: whether the DASS genotype beats both DARTS genotypes in mean
        accuracy, and whether it holds more parametric operations."""
        by = {(r["genotype"], r["keep"]): r for r in rows}
        lines = []
        for keep in sorted((k for k in self.config.keeps if k <= 0.05), reverse=True):
            cells = [by.get((g, keep)) for g in ("dass", "darts-v2", "darts-here")]
            if any(r is None or r["mean_acc"] is None for r in cells):
                continue
            dass, *darts = cells
            gap = min(dass["mean_acc"] - r["mean_acc"] for r in darts)
            stds = [r["std_acc"] for r in cells if r["std_acc"] is not None]
            # a gap below the seeds' spread is no evidence either way
            spread = (f" (smallest gap {100 * gap:+.2f} points, "
                      f"{'within' if abs(gap) <= max(stds) else 'beyond'} one std)" if stds else "")
            more_ops = all(dass["param_ops"] > r["param_ops"] for r in darts)
            lines.append(f"kept fraction {keep:g}: DASS {100 * dass['mean_acc']:.2f}% vs "
                         + ", ".join(f"{r['genotype']} {100 * r['mean_acc']:.2f}%" for r in darts)
                         + f" — more accurate than both: {'yes' if gap > 0 else 'no'}{spread}; "
                         f"parametric ops {dass['param_ops']} vs "
                         + ", ".join(str(r["param_ops"]) for r in darts)
                         + f" — more than both: {'yes' if more_ops else 'no'}")
        return lines

    def _table(self, rows: list[dict], searches: dict[str, list[TrialRecord]]) -> str:
        c = self.config

        def pct(value) -> str:
            return "—" if value is None else f"{100 * value:.2f}"

        lines = [
            f"DASS on {c.data.dataset}: search supernet C={c.channels}, {c.cells} cells, "
            f"{c.nodes} nodes; DASS phases {c.dense_epochs}/{c.prune_epochs}/"
            f"{c.finetune_epochs} epochs (dense/prune/fine-tune) at kept fraction {c.keep:g}, "
            f"dense DARTS {c.search_epochs} epochs; α {c.order} order, warm-up "
            f"{c.warmup_epochs} epochs, max skips {c.max_skip}. Evaluation networks C="
            f"{c.eval_channels}, {c.eval_cells} cells, trained {c.training.epochs} epochs, then "
            f"HYDRA {c.hydra_prune_epochs} score + {c.hydra_finetune_epochs} fine-tune epochs per "
            f"kept fraction; seeds {list(c.seeds)}.",
            "",
        ]
        for method, epochs in searches.items():
            if epochs:
                lines.append(f"- {method} genotype (after {len(epochs)} of {c.search_epochs} "
                             f"search epochs): `{epochs[-1].final['genotype']}`")
        lines += ["", "| genotype | kept fraction | test acc % (mean) | std | n | parametric ops |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['genotype']} | {r['keep']:g} | {pct(r['mean_acc'])} | "
                         f"{pct(r['std_acc'])} | {r['n']} | "
                         f"{'—' if r['param_ops'] is None else r['param_ops']} |")
        claim = self.claim(rows)
        if claim:
            lines += ["", "Claim (DASS more accurate than the DARTS genotypes at kept fraction "
                          "<= 0.05, with more parametric ops):", ""]
            lines += [f"- {line}" for line in claim]
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        paths = {}
        searches = summary.details["searches"]
        if any(searches.values()):
            paths["alpha_plot"] = self._plot_alphas(searches, out_dir / "alphas.png")
        genotypes = {"darts-v2": DARTS_V2}
        genotypes.update({m: decode_genotype(e[-1].final["genotype"])
                          for m, e in searches.items() if e})
        for label, genotype in genotypes.items():
            paths[f"cells_{label}"] = plot_genotype(genotype, out_dir / f"cells_{label}.png",
                                                    title=f"{label} genotype")
        if any(r["n"] for r in summary.rows):
            paths["accuracy_plot"] = self._plot_accuracy(summary.rows,
                                                         out_dir / "accuracy_vs_keep.png")
        return paths

    @staticmethod
    def _plot_alphas(searches: dict[str, list[TrialRecord]], path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(len(searches), 2, figsize=(11, 3.6 * len(searches)),
                                    squeeze=False)
        for row, (method, epochs) in enumerate(searches.items()):
            for column, cell in enumerate(("normal", "reduce")):
                ax = axes[row][column]
                if epochs:
                    x = [t.config["epoch"] + 1 for t in epochs]
                    # mean softmax weight of each primitive over the cell's edges
                    weights = np.array([np.mean(t.final[f"alphas_{cell}"], axis=0)
                                        for t in epochs])
                    for p, primitive in enumerate(PRIMITIVES):
                        ax.plot(x, weights[:, p], marker="o", markersize=3, label=primitive)
                ax.set_title(f"{method}: {cell} cell")
                ax.set_xlabel("search epoch")
                ax.set_ylabel("mean softmax(α)")
                ax.grid(alpha=0.3)
        axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.tight_layout()
        return save_figure(figure, path)

    @staticmethod
    def _plot_accuracy(rows: list[dict], path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(6, 4))
        for label in dict.fromkeys(r["genotype"] for r in rows):
            points = sorted((r["keep"], 100 * r["mean_acc"], 100 * (r["std_acc"] or 0.0))
                            for r in rows if r["genotype"] == label and r["n"])
            if points:
                keeps, means, stds = zip(*points)
                ax.errorbar(keeps, means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("kept fraction of weights (HYDRA)")
        ax.set_ylabel("test accuracy %")
        ax.set_title("accuracy against kept fraction per genotype")
        ax.grid(alpha=0.3)
        ax.legend()
        return save_figure(figure, path)


__all__ = ["Dass", "DassConfig", "check_input_size"]
