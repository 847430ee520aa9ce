"""Random search over node masks, and the study around it.

Per seed, the parent's shared initialisation θ0 is drawn once. For every sparsity s of the grid,
N candidate masks are sampled and scored (a short training run, or a registered zero-cost proxy)
and the best is kept. Then the seed's finalists are trained fully together from θ0: the search's
best mask and K random masks at every s, and the dense parent. The summary compares search-selected
with random masks (Welch's t-test) and with the dense parent, and their convergence speed.

Units: ``seed=<i>/s=<s>/search`` (the N candidates of one sparsity, trained together) and
``seed=<i>/final`` (the seed's finalists, trained together), which depends on the seed's searches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsenas.config import option
from sparsenas.report.stats import welch_p_value
from sparsenas.report.sparsity import Group, plot_accuracy_vs_sparsity, plot_convergence
from sparsenas.sampling import kept_nodes
from sparsenas.seeds import derive_seed
from sparsenas.spaces.node import BUDGETS, NodeSpace
from sparsenas.store import TrialRecord, save_checkpoint
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.study import StudyContext, Unit
from sparsenas.study.scoring import (NodeSearchConfig, best_trial, score_candidates,
                                     train_candidates, trained_trials)


def check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct, non-negative and non-empty, got {seeds}")


@dataclass(frozen=True)
class RandomSearchConfig(NodeSearchConfig):
    sparsities: tuple[float, ...] = option((0.5, 0.75, 0.9, 0.95),
                                           "node sparsity grid, each in [0, 1), e.g. 0.5,0.9")
    budget: str = option("layer", "layer: every layer keeps round((1-s) n_l) nodes; global: the "
                                  "network keeps that many in all, spread over layers at random",
                         choices=BUDGETS)
    num_candidates: int = option(16, "masks the search samples and scores per seed and "
                                     "sparsity (N)")
    num_random: int = option(8, "random masks trained for comparison per seed and sparsity (K)")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "study seeds, e.g. 0,1,2")

    def validate(self) -> None:
        if not self.sparsities or any(not 0.0 <= s < 1.0 for s in self.sparsities):
            raise ValueError(f"sparsities must be in [0, 1), got {self.sparsities}")
        if len({f"{s:g}" for s in self.sparsities}) != len(self.sparsities):
            raise ValueError(f"sparsities must be distinct, got {self.sparsities}")
        if self.num_candidates < 1 or self.num_random < 1:
            raise ValueError("num_candidates and num_random must be >= 1")
        check_seeds(self.seeds)


def _s(sparsity: float) -> str:
    return f"{sparsity:g}"


@STRATEGIES.register("random-search")
class RandomSearch(Strategy):
    name = "random-search"
    description = ("random search over node masks vs random masks vs the dense parent: per seed "
                   "and sparsity, score N sampled masks, train the best, K random masks and the "
                   "dense parent fully from one shared initialisation, and compare them")
    Config = RandomSearchConfig
    presets = {
        "quick": {"widths": [64, 64], "sparsities": [0.5, 0.9], "num_candidates": 8,
                  "num_random": 4, "seeds": [0, 1, 2], "search_epochs": 2, "epochs": 10},
    }

    def plan(self) -> list[Unit]:
        units = []
        for seed in self.config.seeds:
            search = [Unit(f"seed={seed}/s={_s(s)}/search", "search", {"seed": seed, "sparsity": s})
                      for s in self.config.sparsities]
            units += search
            units.append(Unit(f"seed={seed}/final", "final", {"seed": seed},
                              depends_on=tuple(u.key for u in search)))
        return units

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        if unit.kind == "search":
            return self._search(unit, ctx)
        return self._final(unit, ctx)

    def _search(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed, sparsity = unit.params["seed"], unit.params["sparsity"]
        parent = c.parent.build(ctx.data, seed)
        space = NodeSpace(parent.layer_sizes, sparsity, c.budget)
        candidates = space.sample(c.num_candidates, derive_seed("search", seed, sparsity))
        score_seed = (derive_seed("search-batches", seed, sparsity) if c.scoring.proxy is None
                      else derive_seed("proxy-batch", seed))
        scores = score_candidates(parent, candidates, c.scoring, c.training, ctx, score_seed)
        return [TrialRecord(
            key=f"{unit.key}/{i:04d}", kind="search", seed=seed,
            config={"sparsity": sparsity, "role": "candidate", "index": i,
                    "mask": space.encode(candidate), **space.describe(candidate)},
            epochs=scores.epochs[i], final=scores.final[i], seconds=scores.seconds)
            for i, candidate in enumerate(candidates)]

    def _final(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        seed = unit.params["seed"]
        parent = c.parent.build(ctx.data, seed)
        roles: list[tuple[str, dict]] = []  # (trial key, trial config) per candidate
        candidates = []
        for s in c.sparsities:
            space = NodeSpace(parent.layer_sizes, s, c.budget)
            best = best_trial(ctx.trials(f"seed={seed}/s={_s(s)}/search"))
            candidate = space.decode(best.config["mask"])
            roles.append((f"seed={seed}/s={_s(s)}/search-best",
                          {"sparsity": s, "role": "search", "index": 0,
                           "mask": best.config["mask"], **space.describe(candidate),
                           "search_score": best.final["score"]}))
            candidates.append(candidate)
            for i, random in enumerate(space.sample(c.num_random, derive_seed("random", seed, s))):
                roles.append((f"seed={seed}/s={_s(s)}/random/{i:04d}",
                              {"sparsity": s, "role": "random", "index": i,
                               "mask": space.encode(random), **space.describe(random)}))
                candidates.append(random)
        roles.append((f"seed={seed}/dense", {"sparsity": 0.0, "role": "dense", "index": 0,
                                             "mask": None, "kept": parent.layer_sizes}))
        candidates.append([torch.ones(n, dtype=torch.bool) for n in parent.layer_sizes])
        batch, result = train_candidates(parent, candidates, c.training, ctx,
                                         derive_seed("final-batches", seed))
        if ctx.checkpoint_dir is not None:
            for i, (key, config) in enumerate(roles):
                if config["role"] in ("search", "dense"):
                    save_checkpoint(ctx.checkpoint_dir / f"{key.replace('/', '_')}.safetensors",
                                    batch.candidate_state_dict(i),
                                    {"trial": key, "config": json.dumps(config)})
        return trained_trials(roles, result, seed)

    # Summary ---------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        search = {s: Group() for s in c.sparsities}
        random = {s: Group() for s in c.sparsities}
        dense = Group()
        for trial in trials:
            if trial.kind != "final":
                continue
            role, sparsity = trial.config["role"], trial.config["sparsity"]
            {"search": search.get(sparsity), "random": random.get(sparsity),
             "dense": dense}[role].add(trial)
        p_values = {s: welch_p_value(search[s].test_acc, random[s].test_acc)
                    for s in c.sparsities}
        kept = {s: [kept_nodes(w, s) for w in c.parent.widths] for s in c.sparsities}
        kept_text = {s: kept[s] if c.budget == "layer" else f"{sum(kept[s])} in all"
                     for s in c.sparsities}
        rows = [_row(0.0, "dense", list(c.parent.widths), dense, math.nan)]
        for s in c.sparsities:
            rows.append(_row(s, "search", kept_text[s], search[s], p_values[s]))
            rows.append(_row(s, "random", kept_text[s], random[s], p_values[s]))
        table = self._table(search, random, dense, p_values, kept_text)
        return Summary(rows, table, {"search": search, "random": random, "dense": dense})

    def _table(self, search, random, dense, p_values, kept_text) -> str:
        c = self.config

        def acc(group: Group) -> str:
            if not group.test_acc:
                return "—"
            return f"{100 * group.mean:.2f} ± {100 * group.std:.2f} (n={len(group.test_acc)})"

        def speed(group: Group) -> str:
            return f"{np.mean(group.epochs_to_95):.1f}" if group.epochs_to_95 else "—"

        scorer = (f"proxy '{c.scoring.proxy}'" if c.scoring.proxy else
                  f"{c.scoring.search_epochs}-epoch training (val acc)")
        widths = list(c.parent.widths)
        lines = [
            f"Random search over node masks: {c.data.dataset}, {c.parent.model} {widths}, "
            f"{c.budget} node budget, {c.num_candidates} candidates scored by {scorer}, "
            f"{c.num_random} random masks, {c.training.epochs} epochs, seeds "
            f"{list(c.seeds)} ({len(dense.test_acc)} finished).",
            "",
            "| sparsity | kept nodes | search-selected test acc % | random test acc % | "
            "Welch t-test p | epochs to 95% (search / random) |",
            "|---|---|---|---|---|---|",
            f"| 0 (dense) | {widths} | {acc(dense)} | — | — | {speed(dense)} |",
        ]
        for s in c.sparsities:
            p = "—" if math.isnan(p_values[s]) else f"{p_values[s]:.3f}"
            lines.append(f"| {s:g} | {kept_text[s]} | {acc(search[s])} | {acc(random[s])} | "
                         f"{p} | {speed(search[s])} / {speed(random[s])} |")
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        d = summary.details
        sparsities = list(self.config.sparsities)
        title = (f"{self.config.data.dataset}: {self.config.parent.model} "
                 f"{list(self.config.parent.widths)}")
        return {
            "accuracy_plot": plot_accuracy_vs_sparsity(
                sparsities, [d["search"][s] for s in sparsities],
                [d["random"][s] for s in sparsities], d["dense"], title,
                out_dir / "accuracy_vs_sparsity.png"),
            "convergence_plot": plot_convergence(
                sparsities, [d["search"][s] for s in sparsities],
                [d["random"][s] for s in sparsities], d["dense"],
                out_dir / "convergence.png"),
        }


def _row(sparsity: float, role: str, kept, group: Group, p_value: float) -> dict:
    return {"sparsity": sparsity, "role": role, "kept": kept,
            "mean_acc": group.mean if group.test_acc else None,
            "std_acc": group.std if group.test_acc else None, "n": len(group.test_acc),
            "p_value": None if math.isnan(p_value) else p_value,
            "epochs_to_95": float(np.mean(group.epochs_to_95)) if group.epochs_to_95 else None}
