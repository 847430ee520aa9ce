"""Regularised (aging) evolution over node masks (Real et al., 2019): the standard NAS baseline.

A population of the P most recently evaluated candidates; each child comes from a tournament (S
members drawn at random, the best-scoring wins), is the winner mutated, and joins the population
while the oldest member leaves. Here a *round* produces B children from B tournaments over the
population at the round's start and scores them together (short training of the B candidates as
one :class:`~sparsenas.models.CandidateBatch`, or a proxy), so aging evolution keeps its rule and
gains batched evaluation; B = 1 is the sequential algorithm. Round 0 scores P random candidates.
After the last round, the best candidate ever seen is trained fully from the shared θ0 together
with K random candidates of the same sparsity, as a yardstick.

Units: ``seed=<i>/round=<r>`` (each depends on every earlier round of its seed: the population is
their last P trials) and ``seed=<i>/final``. Tournament draws and mutations are keyed by (seed,
round, child), so results do not depend on workers or scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsenas.config import option
from sparsenas.report.plots import plot_search_trajectory
from sparsenas.seeds import derive_seed
from sparsenas.spaces.node import BUDGETS, NodeSpace
from sparsenas.store import TrialRecord
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.strategies.random_search import check_seeds
from sparsenas.study import StudyContext, Unit
from sparsenas.study.evolution import aging_children
from sparsenas.study.scoring import (NodeSearchConfig, best_trial, score_candidates,
                                     train_candidates, trained_trials)


@dataclass(frozen=True)
class EvolutionConfig(NodeSearchConfig):
    sparsity: float = option(0.9, "node sparsity of every candidate, in [0, 1)")
    budget: str = option("layer", "layer: every layer keeps round((1-s) n_l) nodes; global: the "
                                  "network keeps that many in all", choices=BUDGETS)
    population: int = option(16, "population size P (the P most recent candidates)")
    tournament: int = option(4, "tournament size S (members drawn per child)")
    children: int = option(8, "children per round B, scored together")
    rounds: int = option(6, "rounds after the initial population")
    swaps: int = option(1, "node swaps per mutation")
    num_random: int = option(4, "random masks trained fully beside the best found (yardstick)")
    seeds: tuple[int, ...] = option((0, 1, 2), "search seeds, e.g. 0,1,2")

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.population < 2 or not 1 <= self.tournament <= self.population:
            raise ValueError(f"need population >= 2 and 1 <= tournament <= population, got "
                             f"{self.population} and {self.tournament}")
        if self.children < 1 or self.rounds < 1 or self.swaps < 1 or self.num_random < 0:
            raise ValueError("children, rounds and swaps must be >= 1, num_random >= 0")
        check_seeds(self.seeds)

    @property
    def evaluations(self) -> int:
        return self.population + self.rounds * self.children


def _round_key(seed: int, generation: int) -> str:
    return f"seed={seed}/round={generation:04d}"


@STRATEGIES.register("evolution")
class RegularizedEvolution(Strategy):
    name = "evolution"
    description = ("regularised (aging) evolution over node masks: tournament over a sliding "
                   "population, mutate the winner, drop the oldest; the best found is trained "
                   "fully beside random masks")
    Config = EvolutionConfig
    presets = {
        "quick": {"widths": [64, 64], "population": 8, "tournament": 3, "children": 4,
                  "rounds": 3, "num_random": 2, "seeds": [0, 1], "search_epochs": 2,
                  "epochs": 10},
    }

    def plan(self) -> list[Unit]:
        units = []
        for seed in self.config.seeds:
            rounds = []
            for generation in range(self.config.rounds + 1):
                rounds.append(Unit(_round_key(seed, generation), "round",
                                   {"seed": seed, "generation": generation},
                                   depends_on=tuple(u.key for u in rounds)))
            units += rounds
            units.append(Unit(f"seed={seed}/final", "final", {"seed": seed},
                              depends_on=tuple(u.key for u in rounds)))
        return units

    def _parent_and_space(self, ctx: StudyContext, seed: int):
        parent = self.config.parent.build(ctx.data, seed)
        return parent, NodeSpace(parent.layer_sizes, self.config.sparsity, self.config.budget)

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        if unit.kind == "round":
            return self._round(unit, ctx)
        return self._final(unit, ctx)

    def _history(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        """Every candidate evaluated before this unit, oldest first."""
        trials = [t for key in unit.depends_on for t in ctx.trials(key) if t.kind == "candidate"]
        return sorted(trials, key=lambda t: (t.generation, t.config["index"]))

    def _round(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed, generation = unit.params["seed"], unit.params["generation"]
        parent, space = self._parent_and_space(ctx, seed)
        parents: list[str | None]
        if generation == 0:
            candidates = space.sample(c.population, derive_seed("population", seed))
            parents = [None] * len(candidates)
        else:
            candidates, winners = aging_children(
                self._history(unit, ctx), c.population, c.tournament, c.children, best_trial,
                lambda winner, s: space.mutate(space.decode(winner.config["mask"]), s,
                                               swaps=c.swaps), seed, generation)
            parents = [winner.key for winner in winners]
        scores = score_candidates(parent, candidates, c.scoring, c.training, ctx,
                                  derive_seed("round-batches", seed, generation)
                                  if c.scoring.proxy is None else derive_seed("proxy-batch", seed))
        return [TrialRecord(
            key=f"{unit.key}/{i:04d}", kind="candidate", seed=seed, generation=generation,
            parent=parents[i],
            config={"sparsity": c.sparsity, "index": i, "mask": space.encode(candidate),
                    **space.describe(candidate)},
            epochs=scores.epochs[i], final=scores.final[i], seconds=scores.seconds)
            for i, candidate in enumerate(candidates)]

    def _final(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed = unit.params["seed"]
        parent, space = self._parent_and_space(ctx, seed)
        best = best_trial(self._history(unit, ctx))
        roles = [(f"seed={seed}/best", {"role": "evolution", "index": 0,
                                        "mask": best.config["mask"], "found": best.key,
                                        "search_score": best.final["score"]})]
        candidates = [space.decode(best.config["mask"])]
        for i, random in enumerate(space.sample(c.num_random, derive_seed("random", seed))):
            roles.append((f"seed={seed}/random/{i:04d}",
                          {"role": "random", "index": i, "mask": space.encode(random)}))
            candidates.append(random)
        _, result = train_candidates(parent, candidates, c.training, ctx,
                                     derive_seed("final-batches", seed))
        roles = [(key, {**config, "sparsity": c.sparsity, **space.describe(candidates[i])})
                 for i, (key, config) in enumerate(roles)]
        return trained_trials(roles, result, seed, parents=[best.key] + [None] * c.num_random)

    # Summary ---------------------------------------------------------------------------------

    def trajectories(self, trials: list[TrialRecord]) -> dict[int, list[float]]:
        """Per seed: the best score seen after each evaluation, in evaluation order."""
        curves = {}
        for seed in self.config.seeds:
            evaluated = sorted((t for t in trials if t.kind == "candidate" and t.seed == seed),
                               key=lambda t: (t.generation, t.config["index"]))
            if evaluated:
                curves[seed] = list(np.maximum.accumulate([t.final["score"] for t in evaluated]))
        return curves

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        curves = self.trajectories(trials)
        rows = []
        for seed in c.seeds:
            finals = [t for t in trials if t.kind == "final" and t.seed == seed]
            best = next((t for t in finals if t.config["role"] == "evolution"), None)
            randoms = [t.final["test_acc"] for t in finals if t.config["role"] == "random"]
            rows.append({
                "seed": seed, "sparsity": c.sparsity,
                "evaluations": len(curves.get(seed, [])),
                "best_score": curves[seed][-1] if seed in curves else None,
                "best_test_acc": best.final["test_acc"] if best else None,
                "random_test_acc": float(np.mean(randoms)) if randoms else None,
                "best_kept": best.config["kept"] if best else None,
            })
        table = self._table(rows)
        return Summary(rows, table, {"trajectories": curves})

    def _table(self, rows: list[dict]) -> str:
        c = self.config
        scorer = (f"proxy '{c.scoring.proxy}'" if c.scoring.proxy else
                  f"{c.scoring.search_epochs}-epoch training (val acc)")

        def pct(value) -> str:
            return "—" if value is None else f"{100 * value:.2f}"

        lines = [
            f"Regularised evolution over node masks: {c.data.dataset}, {c.parent.model} "
            f"{list(c.parent.widths)}, sparsity {c.sparsity:g} ({c.budget} budget), population "
            f"{c.population}, tournament {c.tournament}, {c.children} children x {c.rounds} "
            f"rounds ({c.evaluations} evaluations per seed) scored by {scorer}; finalists "
            f"trained {c.training.epochs} epochs.",
            "",
            "| seed | evaluations | best score | best found: test acc % | random masks: test "
            "acc % (mean) | kept nodes |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            score = "—" if r["best_score"] is None else f"{r['best_score']:.4f}"
            lines.append(f"| {r['seed']} | {r['evaluations']} | {score} | "
                         f"{pct(r['best_test_acc'])} | {pct(r['random_test_acc'])} | "
                         f"{r['best_kept'] if r['best_kept'] is not None else '—'} |")
        best = [r["best_test_acc"] for r in rows if r["best_test_acc"] is not None]
        randoms = [r["random_test_acc"] for r in rows if r["random_test_acc"] is not None]
        if best:
            spread = f" ± {100 * np.std(best, ddof=1):.2f}" if len(best) > 1 else ""
            lines.append(f"| mean | | | {100 * np.mean(best):.2f}{spread} | "
                         f"{pct(float(np.mean(randoms))) if randoms else '—'} | |")
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        curves = summary.details["trajectories"]
        if not curves:
            return {}
        return {"trajectory_plot": plot_search_trajectory(
            {"regularised evolution": [list(curve) for curve in curves.values()]},
            out_dir / "trajectory.png", ylabel="best score so far",
            title=f"regularised evolution over {len(curves)} seed(s)")}


__all__ = ["EvolutionConfig", "RegularizedEvolution"]
