"""The NTK / LGA study: do NTK metrics at initialisation rank architectures by their trained
accuracy, does Label-Gradient Alignment after a few epochs rank them better, and does it guide
searches to good architectures at a fraction of their cost?

A population of :class:`~sparsenas.spaces.ArchSpace` members (grouped by shape: members of one
shape train together as one CandidateBatch) is measured at initialisation and after each of
``metric_epochs`` epochs of one training run (every NTK metric, LGA, its label-shuffle control,
validation accuracy), then trained fully over ``seeds`` (mean final test accuracy = the ground
truth). The correlation unit ranks every metric at every epoch count against the ground truth
(Kendall τ, Spearman ρ, bootstrap 95% intervals over architectures) and takes the non-linear
advantage. The guided searches (random search and regularised evolution) walk the measured
population as a table (:class:`~sparsenas.spaces.members.MemberSpace`), each guided by LGA after
``guide_epochs`` epochs, the condition number at init, validation accuracy after the same epochs,
or full training (the oracle, by validation accuracy); each search is charged the measured
seconds and the training epochs of the distinct architectures it evaluates.

Units: ``group=<g>/metrics`` and ``group=<g>/train/seed=<s>`` per shape group, ``correlation``
and ``search=<name>/guide=<guide>/seed=<s>`` (these depend on every group unit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig
from sparsenas.methods.lga.metrics import (HIGHER_IS_BETTER, METRICS, check_metric,
                                           metric_batch, metrics_during_training,
                                           nonlinear_advantage)
from sparsenas.models import arch_candidate_batch, build_arch, group_by_shape
from sparsenas.report.plots import plot_pareto_front, plot_proxy_vs_accuracy, plot_tau_vs_epochs
from sparsenas.report.stats import rank_correlation
from sparsenas.seeds import derive_seed
from sparsenas.spaces import ArchSpace
from sparsenas.spaces.members import MemberSpace
from sparsenas.store import TrialRecord
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.strategies.random_search import check_seeds
from sparsenas.study import RuntimeConfig, StudyContext, Unit
from sparsenas.study.evolution import regularized_evolution
from sparsenas.train import TrainConfig, Trainer

SEARCHES = ("random", "evolution")
GUIDES = ("lga", "condition_number", "val_acc", "oracle")




@dataclass(frozen=True)
class LgaConfig(ConfigPiece):
    data: DataConfig = DataConfig(dataset="mnist1d")
    training: TrainConfig = TrainConfig(epochs=8)
    runtime: RuntimeConfig = RuntimeConfig()
    population: int = option(64, "architectures of the study (drawn shape by shape from the "
                                 "architecture space)")
    per_shape: int = option(4, "architectures per shape (they train together)")
    population_seed: int = option(0, "seed of the population draw")
    metric_epochs: tuple[int, ...] = option((1, 2, 3), "epoch counts after which the metrics are "
                                                       "taken again (at init always), e.g. 1,2,3")
    metrics: tuple[str, ...] = option(METRICS, "metrics ranked against the final accuracy")
    per_class: int = option(10, "examples per class in the NTK batch (class-balanced; LGA needs "
                                "repeated classes, so >= 2)")
    seeds: tuple[int, ...] = option((0, 1), "training seeds of the ground truth (mean final test "
                                            "accuracy); the first also seeds the metric run")
    bootstrap: int = option(1000, "bootstrap resamples of the rank-correlation intervals")
    guide_epochs: int = option(2, "epochs of training before the LGA and validation-accuracy "
                                  "guides (one of metric_epochs)")
    search_budget: int = option(16, "architectures each guided search evaluates")
    evolution_population: int = option(6, "regularised evolution: population size P")
    tournament: int = option(3, "regularised evolution: tournament size S")
    search_seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds of the guided searches")

    def validate(self) -> None:
        for name in self.metrics:
            check_metric(name)
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics must be distinct and non-empty, got {list(self.metrics)}")
        if not self.metric_epochs or min(self.metric_epochs) < 0:
            raise ValueError(f"metric_epochs must be a non-empty list of epoch counts >= 0, got "
                             f"{list(self.metric_epochs)}")
        if self.guide_epochs < 1 or self.guide_epochs not in self.metric_epochs:
            raise ValueError(f"guide_epochs ({self.guide_epochs}) must be one of metric_epochs "
                             f"{list(self.metric_epochs)} and >= 1")
        size = len(ArchSpace())
        if not 2 <= self.population <= size:
            raise ValueError(f"population must be in [2, {size}] (the architecture space holds "
                             f"{size}), got {self.population}")
        if self.per_shape < 1 or self.bootstrap < 1:
            raise ValueError("per_shape and bootstrap must be >= 1")
        if self.per_class < 2:
            raise ValueError(f"per_class must be >= 2: LGA needs repeated classes in its batch, "
                             f"got {self.per_class}")
        check_seeds(self.seeds)
        check_seeds(self.search_seeds)
        if not 2 <= self.search_budget <= self.population:
            raise ValueError(f"search_budget must be in [2, population={self.population}], got "
                             f"{self.search_budget}")
        if not 1 <= self.tournament <= self.evolution_population <= self.search_budget:
            raise ValueError(f"need 1 <= tournament <= evolution_population <= search_budget, "
                             f"got {self.tournament}, {self.evolution_population}, "
                             f"{self.search_budget}")

    @property
    def measured_epochs(self) -> tuple[int, ...]:
        """0 (at initialisation) and every metric epoch count, in order."""
        return tuple(sorted({0, *self.metric_epochs}))


def _value(final: dict, name: str, epochs: int) -> float:
    return final[f"{name}@{epochs}"]


@dataclass
class _Table:
    """The measured population: per architecture (population order) its encoding, metric trial
    and training trials; the ground truth is the mean final test accuracy over the seeds."""

    archs: list[str]
    metrics: list[TrialRecord]
    trained: list[list[TrialRecord]]

    @property
    def accuracy(self) -> np.ndarray:
        return np.array([np.mean([t.final["test_acc"] for t in runs]) for runs in self.trained])


def _table(trials: list[TrialRecord]) -> _Table | None:
    metrics = {t.config["index"]: t for t in trials if t.kind == "metrics"}
    trained: dict[int, list[TrialRecord]] = {}
    for t in sorted((t for t in trials if t.kind == "train"), key=lambda t: t.seed):
        trained.setdefault(t.config["index"], []).append(t)
    indices = sorted(i for i in metrics if i in trained)
    if not indices:
        return None
    return _Table([metrics[i].config["arch"] for i in indices], [metrics[i] for i in indices],
                  [trained[i] for i in indices])


@STRATEGIES.register("lga")
class LgaStudy(Strategy):
    name = "lga"
    description = ("NTK metrics at init vs Label-Gradient Alignment after a few epochs: rank "
                   "correlation with trained accuracy over an architecture population, and "
                   "searches guided by them")
    Config = LgaConfig
    presets = {
        "quick": {"population": 12, "epochs": 4, "metric_epochs": [1, 2], "guide_epochs": 2,
                  "seeds": [0], "per_class": 4, "bootstrap": 200, "search_budget": 6,
                  "evolution_population": 3, "tournament": 2, "search_seeds": [0, 1, 2]},
    }

    def population(self) -> list:
        c = self.config
        return ArchSpace().population(c.population, c.population_seed, c.per_shape)

    def groups(self) -> list[list[int]]:
        return group_by_shape(self.population())

    def plan(self) -> list[Unit]:
        units = []
        for g, members in enumerate(self.groups()):
            units.append(Unit(f"group={g:03d}/metrics", "metrics", {"group": g}))
            units += [Unit(f"group={g:03d}/train/seed={s}", "train", {"group": g, "seed": s})
                      for s in self.config.seeds]
        measured = tuple(u.key for u in units)
        units.append(Unit("correlation", "correlation", {}, depends_on=measured))
        for search in SEARCHES:
            for guide in GUIDES:
                units += [Unit(f"search={search}/guide={guide}/seed={s}", "search",
                               {"search": search, "guide": guide, "seed": s},
                               depends_on=measured)
                          for s in self.config.search_seeds]
        return units

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        if unit.kind == "metrics":
            return self._metrics(unit, ctx)
        if unit.kind == "train":
            return self._train(unit, ctx)
        table = _table([t for key in unit.depends_on for t in ctx.trials(key)])
        if unit.kind == "correlation":
            return self._correlation(unit, table)
        return self._search(unit, table)

    # Measuring the population -----------------------------------------------------------------

    def _members(self, group: int) -> tuple[list[int], list]:
        population = self.population()
        indices = self.groups()[group]
        return indices, [population[i] for i in indices]

    def _trial(self, unit: Unit, index: int, arch, kind: str, seed: int, **fields) -> TrialRecord:
        space = ArchSpace()
        return TrialRecord(key=f"{unit.key}/{index:04d}", kind=kind, seed=seed,
                           config={"arch": space.encode(arch), "index": index,
                                   **space.describe(arch)}, **fields)

    def _metrics(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        data = ctx.data
        indices, archs = self._members(unit.params["group"])
        seed = c.seeds[0]
        start = time.perf_counter()
        batch = arch_candidate_batch(archs, data.input_shape, data.num_classes, seed)
        single = build_arch(archs[0].shape(), data.input_shape, data.num_classes, seed)
        measured = metrics_during_training(
            batch, data, metric_batch(data, c.per_class, derive_seed("lga-batch", seed)),
            c.training, derive_seed("metric-batches", seed), c.measured_epochs, single=single,
            shuffle_seed=seed, device=ctx.device)
        seconds = (time.perf_counter() - start) / len(archs)
        return [self._trial(unit, index, arch, "metrics", seed, epochs=[], seconds=seconds,
                            final={f"{name}@{epochs}": value
                                   for epochs, values in measured[k].items()
                                   for name, value in values.items()})
                for k, (index, arch) in enumerate(zip(indices, archs))]

    def _train(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        data = ctx.data
        seed = unit.params["seed"]
        indices, archs = self._members(unit.params["group"])
        batch = arch_candidate_batch(archs, data.input_shape, data.num_classes, seed)
        result = Trainer(self.config.training, ctx.hooks, device=ctx.device).fit(
            batch, data, seed=derive_seed("train-batches", seed))
        return [self._trial(unit, index, arch, "train", seed, epochs=result.candidate_history(k),
                            final=result.candidate_final(k), seconds=result.seconds / len(archs))
                for k, (index, arch) in enumerate(zip(indices, archs))]

    # Correlation and the guided searches ------------------------------------------------------

    def _correlation(self, unit: Unit, table: _Table) -> list[TrialRecord]:
        c = self.config
        accuracy = table.accuracy
        rows = [(name, e) for name in c.metrics for e in c.measured_epochs]
        rows += [("val_acc", e) for e in c.measured_epochs if e > 0]
        trials = []
        for name, epochs in rows:
            values = np.array([_value(t.final, name, epochs) for t in table.metrics])
            defined = ~np.isnan(values)
            row = rank_correlation(values[defined], accuracy[defined], c.bootstrap,
                                   derive_seed("bootstrap", name, epochs))
            trials.append(TrialRecord(key=f"correlation/{name}@{epochs}", kind="correlation",
                                      seed=0, config={"metric": name, "epochs": epochs},
                                      epochs=[], final=row, seconds=0.0))
        advantage = [nonlinear_advantage(acc, {"ntk_regression_accuracy": _value(
            t.final, "ntk_regression_accuracy", 0)}) for acc, t in zip(accuracy, table.metrics)]
        trials.append(TrialRecord(
            key="correlation/nonlinear_advantage", kind="advantage", seed=0, config={},
            epochs=[], seconds=0.0,
            final={"mean": float(np.mean(advantage)), "min": float(np.min(advantage)),
                   "max": float(np.max(advantage)),
                   **rank_correlation(advantage, accuracy, c.bootstrap,
                                      derive_seed("bootstrap", "nonlinear_advantage"))}))
        return trials

    def _guide(self, guide: str, table: _Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per architecture: the guide's score (higher is better), its cost in seconds and in
        training epochs. Seconds are apportioned from the measured units: a training epoch costs
        the first seed's full training time / epochs; an NTK evaluation costs the metric run's
        time left after its training epochs, per measurement."""
        c = self.config
        e = c.guide_epochs
        train_seconds = np.array([runs[0].seconds for runs in table.trained])
        epoch_seconds = train_seconds / c.training.epochs
        metric_seconds = np.array([t.seconds for t in table.metrics])
        ntk_seconds = np.maximum(0.0, metric_seconds - max(c.measured_epochs) * epoch_seconds
                                 ) / len(c.measured_epochs)
        if guide == "lga":
            scores = [_value(t.final, "lga", e) for t in table.metrics]
            return np.array(scores), e * epoch_seconds + ntk_seconds, np.full(len(scores), e)
        if guide == "condition_number":
            scores = [-_value(t.final, "condition_number", 0) for t in table.metrics]
            return np.array(scores), ntk_seconds, np.zeros(len(scores))
        if guide == "val_acc":
            scores = [_value(t.final, "val_acc", e) for t in table.metrics]
            return np.array(scores), e * epoch_seconds, np.full(len(scores), e)
        scores = [runs[0].final["val_acc"] for runs in table.trained]
        return np.array(scores), train_seconds, np.full(len(scores), c.training.epochs)

    def _search(self, unit: Unit, table: _Table) -> list[TrialRecord]:
        c = self.config
        search, guide, seed = unit.params["search"], unit.params["guide"], unit.params["seed"]
        archs = ArchSpace()
        space = MemberSpace(archs, [archs.decode(text) for text in table.archs])
        scores, seconds, epochs = self._guide(guide, table)
        scores = np.nan_to_num(scores, nan=-np.inf)

        def score(arch) -> float:
            return float(scores[space.index[space.encode(arch)]])

        if search == "random":
            evaluated = space.sample(c.search_budget, derive_seed("random-search", seed))
        else:
            evaluated = regularized_evolution(space, score, c.search_budget,
                                              c.evolution_population, c.tournament,
                                              derive_seed("evolution", seed))
        distinct = sorted({space.index[space.encode(a)] for a in evaluated})
        found = max((space.index[space.encode(a)] for a in evaluated), key=lambda i: scores[i])
        accuracy = table.accuracy
        return [TrialRecord(
            key=unit.key, kind="search", seed=seed,
            config={"search": search, "guide": guide, "found": table.archs[found]}, epochs=[],
            final={"final_acc": float(accuracy[found]), "guide_score": float(scores[found]),
                   "cost_epochs": float(epochs[distinct].sum()), "evaluations": len(evaluated),
                   "distinct": len(distinct), "best_in_population": float(accuracy.max())},
            seconds=float(seconds[distinct].sum()))]

    # Summary ----------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        dataset = c.data.dataset
        rows = []
        for t in sorted((t for t in trials if t.kind == "correlation"),
                        key=lambda t: (t.config["metric"], t.config["epochs"])):
            rows.append({"dataset": dataset, "metric": t.config["metric"],
                         "epochs": t.config["epochs"],
                         "higher_is_better": HIGHER_IS_BETTER.get(t.config["metric"], True),
                         **t.final})
        advantage = next((t.final for t in trials if t.kind == "advantage"), None)
        if advantage:
            rows.append({"dataset": dataset, "metric": "nonlinear_advantage", "epochs": 0,
                         **advantage})
        searches: dict[tuple[str, str], list[TrialRecord]] = {}
        for t in trials:
            if t.kind == "search":
                searches.setdefault((t.config["search"], t.config["guide"]), []).append(t)
        for search in SEARCHES:
            for guide in GUIDES:
                found = searches.get((search, guide))
                if not found:
                    continue
                accs = [t.final["final_acc"] for t in found]
                rows.append({"dataset": dataset, "search": search, "guide": guide,
                             "final_acc": float(np.mean(accs)),
                             "final_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1
                             else None,
                             "cost_seconds": float(np.mean([t.seconds for t in found])),
                             "cost_epochs": float(np.mean([t.final["cost_epochs"]
                                                           for t in found])),
                             "runs": len(found)})
        table = _table(trials)
        return Summary(rows, self._markdown(rows, table, advantage),
                       {"table": table, "searches": searches})

    def _markdown(self, rows: list[dict], table: _Table | None, advantage: dict | None) -> str:
        c = self.config

        def num(value, digits=3) -> str:
            return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
                else f"{value:.{digits}f}"

        lines = [f"NTK / LGA study: {c.data.dataset}, {c.population} architectures "
                 f"({c.per_shape} per shape), {c.training.epochs} epochs over seeds "
                 f"{list(c.seeds)}, metrics at {list(c.measured_epochs)} epochs."]
        if table is not None:
            acc = table.accuracy
            lines.append(f"Final test accuracy of the {len(acc)} measured architectures: "
                         f"{100 * acc.min():.1f}–{100 * acc.max():.1f} % (median "
                         f"{100 * np.median(acc):.1f} %).")
        lines += ["", "Rank correlation with final test accuracy (Kendall τ with bootstrap 95% "
                  "interval, Spearman ρ; condition number: lower should be better, so a good "
                  "ranking is a negative τ; lga_shuffled is the label-shuffle control: LGA "
                  "against permuted labels of the same kernel, which leaves the label-agnostic "
                  "metrics unchanged by construction):", "",
                  "| metric | epochs | Kendall τ | 95% interval | Spearman ρ |",
                  "|---|---|---|---|---|"]
        for r in rows:
            if "kendall_tau" in r and r["metric"] != "nonlinear_advantage":
                lines.append(f"| {r['metric']} | {r['epochs']} | {num(r['kendall_tau'])} | "
                             f"[{num(r['tau_low'])}, {num(r['tau_high'])}] | "
                             f"{num(r['spearman'])} |")
        if advantage:
            lines += ["", f"Non-linear advantage (trained accuracy − NTK-regression accuracy at "
                          f"init): mean {num(advantage['mean'])}, range [{num(advantage['min'])}, "
                          f"{num(advantage['max'])}]."]
        guided = [r for r in rows if "guide" in r]
        if guided:
            lines += ["", f"Guided searches ({c.search_budget} evaluations over the measured "
                          f"population, seeds {list(c.search_seeds)}; guides after "
                          f"{c.guide_epochs} epochs; the oracle trains {c.training.epochs}):", "",
                      "| search | guide | final test acc % | training epochs spent |",
                      "|---|---|---|---|"]
            for r in guided:
                std = "" if r["final_acc_std"] is None else f" ± {100 * r['final_acc_std']:.2f}"
                lines.append(f"| {r['search']} | {r['guide']} | {100 * r['final_acc']:.2f}{std} "
                             f"| {r['cost_epochs']:.1f} |")
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        c = self.config
        table: _Table | None = summary.details["table"]
        paths: dict[str, Path] = {}
        if table is not None and len(table.archs) >= 2:
            accuracy = table.accuracy
            for name in c.metrics:
                for epochs in sorted({0, c.guide_epochs}):
                    values = [_value(t.final, name, epochs) for t in table.metrics]
                    paths[f"scatter_{name}_{epochs}"] = plot_proxy_vs_accuracy(
                        values, accuracy, out_dir / f"scatter_{name}_e{epochs}.png", name,
                        "final test accuracy", f"{name} after {epochs} epochs",
                        log_x=name in ("condition_number", "trace", "frobenius_norm"),
                        num_bootstrap=c.bootstrap, seed=derive_seed("bootstrap", name, epochs))
        curves: dict[str, dict[int, tuple[float, float, float]]] = {}
        for r in summary.rows:
            if "kendall_tau" in r and r["metric"] != "nonlinear_advantage":
                curves.setdefault(r["metric"], {})[r["epochs"]] = (
                    r["kendall_tau"], r["tau_low"], r["tau_high"])
        if curves:
            paths["tau_vs_epochs"] = plot_tau_vs_epochs(curves, out_dir / "tau_vs_epochs.png",
                                                        f"{c.data.dataset}: τ against epochs")
        series = {f"{search}/{guide}": ([t.seconds for t in found],
                                        [t.final["final_acc"] for t in found])
                  for (search, guide), found in sorted(summary.details["searches"].items())}
        if series:
            paths["guided_search"] = plot_pareto_front(
                series, out_dir / "guided_search.png", "search cost (s)", "final test accuracy",
                f"{c.data.dataset}: guided searches", log_x=True)
        return paths


__all__ = ["GUIDES", "LgaConfig", "LgaStudy", "SEARCHES"]
