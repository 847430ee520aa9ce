"""Random search study: node space, determinism, proxy scoring, crash-and-resume (kill -9),
two concurrent workers on one store, and the CLI's error handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_CWD

from sparsenas.cli import main
from sparsenas.proxies import PROXIES
from sparsenas.search import NodeSpace, RandomSearchConfig, RandomSearchStudy, derive_seed
from sparsenas.search.random_search import plan_units
from sparsenas.search.report import epochs_to_fraction, summarize, write_report
from sparsenas.store import Store, load_checkpoint
from sparsenas.train import TrainConfig, Trainer

TINY = dict(widths=(16, 16), sparsities=(0.5, 0.9), num_candidates=3, num_random=2,
            seeds=(0, 1), search_epochs=1, epochs=3, batch_size=128)
TINY_FLAGS = ["--widths", "16,16", "--sparsities", "0.5,0.9", "--num-candidates", "3",
              "--num-random", "2", "--seeds", "0,1", "--search-epochs", "1", "--epochs", "3",
              "--batch-size", "128", "--threads", "1"]
UNITS = 6  # 2 seeds x (2 search units + 1 final unit)


def _results(store: Store) -> dict[str, tuple]:
    """Every trial's identity and outcome, without timings."""
    return {t.key: (t.unit, t.kind, t.seed, t.config, t.final,
                    [{k: v for k, v in row.items() if k != "seconds"} for row in t.epochs])
            for t in store.trials()}


def _run_in_process(path: Path, checkpoint_dir: Path | None = None,
                    **overrides) -> tuple[dict, str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs, so results match bit for bit
    try:
        with Store(path) as store:
            RandomSearchStudy(RandomSearchConfig(**{**TINY, **overrides}), store,
                              progress=False, checkpoint_dir=checkpoint_dir).run()
            return _results(store), summarize(store).table()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "study.sqlite"
    _run_in_process(path)
    return path


@pytest.fixture(scope="module")
def reference(reference_path) -> tuple[dict, str]:
    with Store(reference_path) as store:
        return _results(store), summarize(store).table()


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparsenas.cli", *args], cwd=SUBPROCESS_CWD,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_node_space_sample_mutate_encode():
    space = NodeSpace([10, 7], 0.6)
    assert space.kept == [4, 3]
    masks = space.sample(5, seed=1)
    assert [m.shape for m in masks] == [(5, 10), (5, 7)]
    assert all((m.sum(1) == k).all() for m, k in zip(masks, space.kept))
    assert all(torch.equal(a[2:], b) for a, b in zip(masks, space.sample(3, 1, first_candidate=2)))
    candidate = [m[0] for m in masks]
    assert all(torch.equal(a, b) for a, b in zip(space.decode(space.encode(candidate)), candidate))
    mutated = space.mutate(candidate, seed=3, swaps=2)
    assert [int(m.sum()) for m in mutated] == space.kept
    changed = sum(int((a != b).sum()) for a, b in zip(mutated, candidate))
    assert changed in (2, 4)
    assert derive_seed("x", 1, 0.5) == derive_seed("x", 1, 0.5) != derive_seed("x", 1, 0.75)
    with pytest.raises(ValueError, match="sparsity"):
        NodeSpace([10, 7], [0.5])


def test_study_is_deterministic_and_complete(tmp_path, reference):
    results, table = reference
    again, again_table = _run_in_process(tmp_path / "again.sqlite")
    assert again == results and again_table == table
    kinds = [r[1] for r in results.values()]
    assert kinds.count("search") == 2 * 2 * 3 and kinds.count("final") == 2 * (2 * (1 + 2) + 1)
    assert "| 0.9 | [2, 2] |" in table and "(n=2)" in table and "(n=4)" in table
    with Store(tmp_path / "again.sqlite") as store:
        search_best = [t for t in store.trials(kind="final") if t.config["role"] == "search"]
        for trial in search_best:  # the finalist is the best-scoring candidate of its unit
            unit = f"seed={trial.seed}/s={trial.config['sparsity']:g}/search"
            best = max(store.trials(unit=unit), key=lambda t: (t.final["score"],
                                                               t.final["tiebreak"]))
            assert best.config["mask"] == trial.config["mask"]
        paths = write_report(store, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert paths["accuracy_plot"].read_bytes()[:4] == b"\x89PNG"


@PROXIES.register("test-first-layer-index-sum")
def _index_sum_proxy(model, x, y) -> float:
    # Depends on which nodes are kept, so the search's choice is predictable.
    mask = next(m for name, m in model.state_dict().items() if name.endswith("mask"))
    return float(mask.nonzero().sum())


def test_proxy_scoring_picks_the_best_proxy_score(tmp_path):
    _run_in_process(tmp_path / "proxy.sqlite", checkpoint_dir=tmp_path / "checkpoints",
                    proxy="test-first-layer-index-sum", seeds=(0,), sparsities=(0.5,))
    with Store(tmp_path / "proxy.sqlite") as store:
        candidates = store.trials(kind="search")
        assert [t.epochs for t in candidates] == [[], [], []]
        space = NodeSpace([16, 16], 0.5)
        for t in candidates:
            assert t.final["score"] == float(space.decode(t.config["mask"])[0].nonzero().sum())
        chosen = next(t for t in store.trials(kind="final") if t.config["role"] == "search")
        best = max(candidates, key=lambda t: t.final["score"])
        assert chosen.config["mask"] == best.config["mask"]
        study = RandomSearchStudy(RandomSearchConfig(**TINY), store)
    # The saved network is the trained finalist: same mask, same test accuracy.
    state, metadata = load_checkpoint(
        tmp_path / "checkpoints" / "seed=0_s=0.5_search-best.safetensors")
    assert metadata["trial"] == chosen.key
    network = study.parent(0)
    network.load_state_dict(state)
    assert space.encode(network.state_dict()[name] for name in
                        ("body.4.mask", "body.8.mask")) == chosen.config["mask"]
    _, test_acc = Trainer(TrainConfig()).evaluate(network, study.data.x_test, study.data.y_test)
    assert test_acc[0] == pytest.approx(chosen.final["test_acc"], abs=1e-9)


def test_global_budget_space():
    space = NodeSpace([10, 7, 5], 0.6, budget="global")
    masks = space.sample(8, seed=1)
    per_layer = torch.stack([m.sum(1) for m in masks], 1)  # [candidates, layers]
    assert sum(space.kept) == 9
    assert (per_layer.sum(1) == 9).all() and (per_layer >= 1).all()
    assert len({tuple(row.tolist()) for row in per_layer}) > 1  # allocations differ
    again = space.sample(3, seed=1, first_candidate=5)
    assert all(torch.equal(a[5:], b) for a, b in zip(masks, again))
    candidate = [m[0] for m in masks]
    for seed in range(5):
        mutated = space.mutate(candidate, seed=seed, swaps=4)
        counts = [int(m.sum()) for m in mutated]
        assert sum(counts) == 9 and min(counts) >= 1
    with pytest.raises(ValueError, match="budget"):
        NodeSpace([10], 0.5, budget="per-network")


def test_global_budget_study(tmp_path):
    results, table = _run_in_process(tmp_path / "global.sqlite", budget="global", seeds=(0,),
                                     sparsities=(0.75,))
    kept = [r[3]["kept"] for r in results.values() if r[3]["role"] != "dense"]
    assert kept and all(sum(k) == 8 and min(k) >= 1 for k in kept)
    assert "global node budget" in table and "| 0.75 | 8 in all |" in table


def test_units_plan():
    units = plan_units(RandomSearchConfig(**TINY))
    assert [u.key for u in units][:3] == ["seed=0/s=0.5/search", "seed=0/s=0.9/search",
                                          "seed=0/final"]
    assert units[2].depends_on == ("seed=0/s=0.5/search", "seed=0/s=0.9/search")
    assert epochs_to_fraction([0.5, 0.9, 0.96, 1.0]) == 3


@pytest.mark.slow  # starts the CLI twice (interpreter and torch start-up dominate)
def test_kill_9_mid_study_then_resume(tmp_path, capsys, reference):
    store_path = tmp_path / "study.sqlite"
    flags = [*TINY_FLAGS, "--out", str(tmp_path / "out"), "--store", str(store_path)]
    victim = _cli("random-search", *flags)
    deadline = time.monotonic() + 120
    finished = 0
    while time.monotonic() < deadline and victim.poll() is None:
        if store_path.exists():
            with Store(store_path) as store:
                finished = len(store.finished_units())
            if finished >= 1:
                break
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    with Store(store_path) as store:
        finished_before = _results(store)
        units_before = store.finished_units()
    assert 1 <= len(units_before) < UNITS, "the run was not interrupted mid-study"

    assert main(["random-search", *flags]) == 1  # a store in use needs --resume
    assert capsys.readouterr().err.strip() == (
        f"sparsenas: error: store {str(store_path)!r} already holds a study: pass --resume to "
        f"continue it, or choose another --out / --store")
    resumed = _cli("random-search", *flags, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    with Store(store_path) as store:
        results = _results(store)
    results_ref, table_ref = reference
    assert results == results_ref
    assert all(results[key] == value for key, value in finished_before.items())
    assert (tmp_path / "out" / "summary.md").read_text() == table_ref
    assert "summary.md" in out and "accuracy_vs_sparsity.png" in out


@pytest.mark.slow  # starts two CLI workers
def test_two_workers_share_one_store(tmp_path, reference):
    store_path = tmp_path / "shared.sqlite"
    workers = [_cli("random-search", *TINY_FLAGS, "--out", str(tmp_path / f"out{i}"),
                    "--store", str(store_path), "--resume") for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    with Store(store_path) as store:
        assert _results(store) == reference[0]
    for i in range(2):
        assert (tmp_path / f"out{i}" / "summary.md").read_text() == reference[1]


@pytest.mark.parametrize("argv, message", [
    (["random-search", "--sparsities", "0.5,1.0"], "sparsities must be in [0, 1)"),
    (["random-search", "--sparsities", "-0.1"], "sparsities must be in [0, 1)"),
    (["random-search", "--epochs", "0"], "positive integer"),
    (["random-search", "--frobnicate"], "unrecognized arguments"),
    (["random-search", "--optimizer", "lbfgs"], "invalid choice"),
    (["bench-everything"], "invalid choice"),
])
def test_cli_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "mnist", "--data-root", "/nonexistent/mnist"], "does not exist"),
    (["--dataset", "cifar10"], "--data-root"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--proxy", "no-such-proxy"], "unknown proxy 'no-such-proxy'"),
])
def test_cli_runtime_errors(tmp_path, capsys, argv, message):
    assert main(["random-search", *argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


def test_cli_report_and_info(tmp_path, capsys, reference, reference_path):
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "--store", str(reference_path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "summary.md").read_text() == reference[1]
    assert (tmp_path / "r" / "convergence.png").stat().st_size > 0
    assert reference[1] in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "ops (cpu / cuda):" in capsys.readouterr().out
