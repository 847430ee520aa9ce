"""Summary of a random-search study, computed from its store alone: test accuracy mean ± std of
search-selected masks, random masks and the dense parent per sparsity, Welch's t-test between
search-selected and random, and convergence speed (epochs to reach 95% of the final validation
accuracy)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from sparsenas.sampling import kept_nodes
from sparsenas.store import Store, TrialRecord


def epochs_to_fraction(val_acc: list[float], fraction: float = 0.95) -> int:
    """First epoch (1-based) whose validation accuracy reaches ``fraction`` of the final one."""
    target = fraction * val_acc[-1]
    return next(epoch for epoch, acc in enumerate(val_acc, start=1) if acc >= target)


@dataclass
class Group:
    """The finished final trials of one role at one sparsity, over all seeds."""

    test_acc: list[float] = field(default_factory=list)
    epochs_to_95: list[int] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)

    def add(self, trial: TrialRecord) -> None:
        curve = [row["val_acc"] for row in trial.epochs]
        self.test_acc.append(trial.final["test_acc"])
        self.epochs_to_95.append(epochs_to_fraction(curve))
        self.curves.append(curve)

    @property
    def mean(self) -> float:
        return float(np.mean(self.test_acc)) if self.test_acc else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.test_acc, ddof=1)) if len(self.test_acc) > 1 else 0.0


@dataclass
class Row:
    sparsity: float
    kept: list[int] | str
    search: Group
    random: Group
    p_value: float


@dataclass
class StudySummary:
    config: dict
    rows: list[Row]
    dense: Group
    seeds_finished: int

    def table(self) -> str:
        """The summary as a markdown table (accuracies in %)."""

        def acc(group: Group) -> str:
            if not group.test_acc:
                return "—"
            return f"{100 * group.mean:.2f} ± {100 * group.std:.2f} (n={len(group.test_acc)})"

        def speed(group: Group) -> str:
            return f"{np.mean(group.epochs_to_95):.1f}" if group.epochs_to_95 else "—"

        c = self.config
        scorer = f"proxy '{c['proxy']}'" if c.get("proxy") else f"{c['search_epochs']}-epoch " \
                                                                  f"training (val acc)"
        lines = [
            f"Random search over node masks: {c['dataset']}, {c['model']} {c['widths']}, "
            f"{c.get('budget', 'layer')} node budget, {c['num_candidates']} candidates scored by {scorer}, "
            f"{c['num_random']} random masks, {c['epochs']} epochs, seeds {c['seeds']} "
            f"({self.seeds_finished} finished).",
            "",
            "| sparsity | kept nodes | search-selected test acc % | random test acc % | "
            "Welch t-test p | epochs to 95% (search / random) |",
            "|---|---|---|---|---|---|",
            f"| 0 (dense) | {c['widths']} | {acc(self.dense)} | — | — | "
            f"{speed(self.dense)} |",
        ]
        for row in self.rows:
            p = "—" if math.isnan(row.p_value) else f"{row.p_value:.3f}"
            lines.append(f"| {row.sparsity:g} | {row.kept} | {acc(row.search)} | "
                         f"{acc(row.random)} | {p} | {speed(row.search)} / "
                         f"{speed(row.random)} |")
        return "\n".join(lines) + "\n"


def summarize(store: Store) -> StudySummary:
    config = store.study_config()
    if config is None:
        raise ValueError(f"store {str(store.path)!r} holds no study")
    search: dict[float, Group] = {s: Group() for s in config["sparsities"]}
    random: dict[float, Group] = {s: Group() for s in config["sparsities"]}
    dense = Group()
    for trial in store.trials(kind="final"):
        role, sparsity = trial.config["role"], trial.config["sparsity"]
        {"search": search.get(sparsity), "random": random.get(sparsity),
         "dense": dense}[role].add(trial)
    rows = []
    for s in config["sparsities"]:
        a, b = search[s].test_acc, random[s].test_acc
        p_value = math.nan
        if len(a) >= 2 and len(b) >= 2 and (np.ptp(a) > 0 or np.ptp(b) > 0):
            p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        kept = [kept_nodes(w, s) for w in config["widths"]]
        rows.append(Row(s, kept if config.get("budget", "layer") == "layer" else
                        f"{sum(kept)} in all", search[s], random[s], p_value))
    return StudySummary(config, rows, dense, seeds_finished=len(dense.test_acc))


def _atomic_write_text(path: Path, text: str) -> None:
    # Several workers may finish a study at the same time; each writes whole files.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(store: Store, out_dir: str | Path) -> dict[str, Path]:
    """Writes the table (markdown), the summary rows (CSV), every trial (CSV and JSON lines) and
    the plots (PNG) to ``out_dir``; returns their paths by name."""
    from sparsenas.plots import plot_accuracy_vs_sparsity, plot_convergence

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(store)
    paths = {"table": out / "summary.md", "summary_csv": out / "summary.csv",
             "trials_csv": out / "trials.csv", "trials_jsonl": out / "trials.jsonl",
             "accuracy_plot": out / "accuracy_vs_sparsity.png",
             "convergence_plot": out / "convergence.png"}
    _atomic_write_text(paths["table"], summary.table())
    csv_lines = ["sparsity,role,n,test_acc_mean,test_acc_std,epochs_to_95_mean,p_value"]

    def csv_row(sparsity: str, role: str, group: Group, p_value: str) -> str:
        speed = np.mean(group.epochs_to_95) if group.epochs_to_95 else math.nan
        return (f"{sparsity},{role},{len(group.test_acc)},{group.mean:.6f},{group.std:.6f},"
                f"{speed:.3f},{p_value}")

    csv_lines.append(csv_row("0", "dense", summary.dense, ""))
    for row in summary.rows:
        for role, group in (("search", row.search), ("random", row.random)):
            csv_lines.append(csv_row(f"{row.sparsity:g}", role, group, f"{row.p_value:.6g}"))
    _atomic_write_text(paths["summary_csv"], "\n".join(csv_lines) + "\n")
    for name, export in (("trials_csv", store.export_csv), ("trials_jsonl", store.export_jsonl)):
        tmp = paths[name].with_name(f".{paths[name].name}.{os.getpid()}.tmp")
        export(tmp)
        os.replace(tmp, paths[name])
    plot_accuracy_vs_sparsity(summary, paths["accuracy_plot"])
    plot_convergence(summary, paths["convergence_plot"])
    return paths
