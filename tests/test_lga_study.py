"""The LGA study end to end: rank correlations equal scipy's on the stored measurements, guided
searches find what their guide ranks first, the label-shuffle control in the results, bad input
as one-line CLI errors, and kill -9 mid-study resuming through the CLI."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from scipy import stats
from study_helpers import cli, flags, kill_after, results, run_in_process

from sparsenas.cli import main
from sparsenas.config import from_flat
from sparsenas.methods.lga.metrics import LABEL_AGNOSTIC
from sparsenas.spaces import ArchSpace
from sparsenas.spaces.members import MemberSpace
from sparsenas.store import Store
from sparsenas.strategies.lga import GUIDES, SEARCHES, LgaStudy
from sparsenas.study.evolution import regularized_evolution

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = dict(dataset="digits",
               metrics=("condition_number", "ntk_regression_accuracy", "lga", "lga_shuffled"),
               population=4, per_shape=2, epochs=2, metric_epochs=(1,), guide_epochs=1,
               seeds=(0, 1), per_class=2, bootstrap=50, search_budget=3, evolution_population=2,
               tournament=1, search_seeds=(0, 1), batch_size=256)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("lga") / "study.sqlite"
    reference, table = run_in_process(LgaStudy, path, OPTIONS)
    with Store(path, readonly=True) as store:
        trials = store.trials("lga")
    summary = json.loads((path.parent / "report" / "summary.json").read_text())
    return path, reference, table, trials, summary


def _ground_truth(trials):
    """Mean final test accuracy over the seeds per architecture, and its metric trial."""
    accuracy: dict[int, list[float]] = {}
    for t in trials:
        if t.kind == "train":
            accuracy.setdefault(t.config["index"], []).append(t.final["test_acc"])
    metrics = {t.config["index"]: t for t in trials if t.kind == "metrics"}
    indices = sorted(accuracy)
    assert sorted(metrics) == indices and all(len(accuracy[i]) == 2 for i in indices)
    return [metrics[i] for i in indices], np.array([np.mean(accuracy[i]) for i in indices])


def test_correlations_match_scipy_on_the_stored_measurements(study):
    path, _, table, trials, summary = study
    metrics, accuracy = _ground_truth(trials)
    assert len(metrics) == 4 and np.ptp(accuracy) > 0
    rows = {(r["metric"], r["epochs"]): r for r in summary["rows"] if "kendall_tau" in r}
    assert {m for m, _ in rows} >= {"lga", "condition_number", "lga_shuffled", "val_acc",
                                    "nonlinear_advantage"}
    for (metric, epochs), row in rows.items():
        if metric == "nonlinear_advantage":
            continue
        values = np.array([t.final[f"{metric}@{epochs}"] for t in metrics])
        if np.ptp(values) == 0:
            continue
        assert row["kendall_tau"] == pytest.approx(stats.kendalltau(values, accuracy).statistic)
        assert row["spearman"] == pytest.approx(stats.spearmanr(values, accuracy).statistic)
        assert row["tau_low"] <= row["tau_high"]
        assert set(row) >= {"dataset", "metric", "epochs", "kendall_tau", "tau_low", "tau_high",
                            "spearman"} and row["dataset"] == "digits"
    advantage = next(r for r in summary["rows"] if r.get("metric") == "nonlinear_advantage")
    expected = accuracy - np.array([t.final["ntk_regression_accuracy@0"] for t in metrics])
    assert advantage["mean"] == pytest.approx(expected.mean())
    assert "| lga | 1 |" in table
    for name in ("scatter_lga_e1.png", "scatter_condition_number_e0.png", "tau_vs_epochs.png",
                 "guided_search.png"):
        assert (path.parent / "report" / name).stat().st_size > 0


def test_label_shuffle_control_is_in_the_results(study):
    _, _, table, trials, summary = study
    metrics, _ = _ground_truth(trials)
    for t in metrics:
        for epochs in (0, 1):
            assert t.final[f"lga_shuffled@{epochs}"] != t.final[f"lga@{epochs}"]
            assert all(np.isfinite(t.final[f"{name}@{epochs}"]) for name in LABEL_AGNOSTIC)
    assert {r["epochs"] for r in summary["rows"] if r.get("metric") == "lga_shuffled"} == {0, 1}
    assert "lga_shuffled is the label-shuffle control" in table


def test_guided_searches_find_what_their_guide_ranks_first(study):
    _, _, _, trials, summary = study
    metrics, accuracy = _ground_truth(trials)
    encodings = [t.config["arch"] for t in metrics]
    train0 = {t.config["index"]: t for t in trials if t.kind == "train" and t.seed == 0}
    guide_scores = {
        "lga": [t.final["lga@1"] for t in metrics],
        "condition_number": [-t.final["condition_number@0"] for t in metrics],
        "val_acc": [t.final["val_acc@1"] for t in metrics],
        "oracle": [train0[t.config["index"]].final["val_acc"] for t in metrics],
    }
    searches = [t for t in trials if t.kind == "search"]
    assert len(searches) == len(SEARCHES) * len(GUIDES) * 2
    for t in searches:
        found = encodings.index(t.config["found"])
        assert t.final["final_acc"] == accuracy[found]
        assert t.final["guide_score"] == pytest.approx(guide_scores[t.config["guide"]][found])
        assert t.final["evaluations"] == 3 and 1 <= t.final["distinct"] <= 3
        assert t.seconds > 0 or t.config["guide"] == "condition_number"
    oracle_epochs = [t.final["cost_epochs"] for t in searches if t.config["guide"] == "oracle"]
    lga_epochs = [t.final["cost_epochs"] for t in searches if t.config["guide"] == "lga"]
    assert min(oracle_epochs) >= 2 * min(lga_epochs) > 0
    guided = [r for r in summary["rows"] if "guide" in r]
    assert {(r["search"], r["guide"]) for r in guided} == {(s, g) for s in SEARCHES
                                                            for g in GUIDES}
    assert all(set(r) >= {"dataset", "search", "guide", "final_acc", "cost_seconds"}
               for r in guided)


def test_member_space_evolution_stays_in_the_members_and_is_deterministic():
    space = ArchSpace()
    members = space.population(12, seed=3)
    table = MemberSpace(space, members)
    encodings = {space.encode(m) for m in members}
    score = {space.encode(m): float(i) for i, m in enumerate(members)}
    run = regularized_evolution(table, lambda a: score[space.encode(a)], 10, 4, 2, seed=5)
    assert len(run) == 10 and all(space.encode(a) in encodings for a in run)
    assert run == regularized_evolution(table, lambda a: score[space.encode(a)], 10, 4, 2, 5)
    with pytest.raises(ValueError, match="not a member"):
        table.decode(space.encode(space.sample(1, 99)[0]) + "x")


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "lga,ntk_magic"], "unknown metric 'ntk_magic'"),
    (["--metric-epochs", "1,-1"], "metric_epochs must be a non-empty list of epoch counts >= 0"),
    (["--guide-epochs", "5"], "guide_epochs (5) must be one of metric_epochs"),
    (["--population", "4801"], "population must be in [2, 4800]"),
    (["--per-class", "1"], "LGA needs repeated classes"),
    (["--search-budget", "70"], "search_budget must be in [2, population=64]"),
])
def test_bad_input_is_a_one_line_error_and_leaves_the_store(study, tmp_path, capsys, argv,
                                                            message):
    path = study[0]
    with Store(path, readonly=True) as store:
        before = results(store, "lga")
    assert main(["lga", *argv, "--store", str(path), "--out", str(tmp_path), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    with Store(path, readonly=True) as store:
        assert results(store, "lga") == before


@pytest.mark.slow  # starts the CLI twice
def test_kill_9_mid_study_resumes_without_lost_or_repeated_trials(study, tmp_path):
    _, reference, table, _, _ = study
    store_path = tmp_path / "study.sqlite"
    argv = ["lga", *flags(OPTIONS), "--out", str(tmp_path / "out"), "--store", str(store_path)]
    victim = cli(*argv)
    kill_after(victim, store_path, "lga", 2)
    assert victim.returncode == -signal.SIGKILL
    with Store(store_path, readonly=True) as store:
        before = results(store, "lga")
        finished_before = store.finished_units("lga")
    units = len(LgaStudy(from_flat(LgaStudy.Config, OPTIONS)).plan())
    assert 2 <= len(finished_before) < units, "the run was not interrupted mid-study"
    resumed = cli(*argv, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    with Store(store_path, readonly=True) as store:
        after = results(store, "lga")
        assert len(store.trials("lga")) == len(after)
    assert after == reference
    assert all(after[key] == value for key, value in before.items())
    assert (tmp_path / "out" / "summary.md").read_text() == table
