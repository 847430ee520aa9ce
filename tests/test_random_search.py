"""Random search on the framework: node space, determinism, proxy scoring, the global budget, the
unit plan and the summary files."""

from __future__ import annotations

import json

import pytest
import torch
from study_helpers import run_in_process

from sparsenas.config import from_flat
from sparsenas.proxies import PROXIES
from sparsenas.report.sparsity import epochs_to_fraction
from sparsenas.seeds import derive_seed
from sparsenas.spaces.node import NodeSpace, stack_candidates
from sparsenas.store import Store, load_checkpoint
from sparsenas.strategies.random_search import RandomSearch
from sparsenas.train import TrainConfig, Trainer

TINY = dict(widths=(16, 16), sparsities=(0.5, 0.9), num_candidates=3, num_random=2,
            seeds=(0, 1), search_epochs=1, epochs=3, batch_size=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "study.sqlite"
    return path, *run_in_process(RandomSearch, path, TINY)


def test_node_space_sample_mutate_encode():
    space = NodeSpace([10, 7], 0.6)
    assert space.kept == [4, 3]
    candidates = space.sample(5, seed=1)
    assert len(candidates) == 5 and [m.shape for m in candidates[0]] == [(10,), (7,)]
    assert all(int(m.sum()) == k for c in candidates for m, k in zip(c, space.kept))
    again = space.sample(3, 1, first=2)
    assert all(torch.equal(a, b) for x, y in zip(candidates[2:], again) for a, b in zip(x, y))
    stacked = stack_candidates(candidates)
    assert [m.shape for m in stacked] == [(5, 10), (5, 7)]
    candidate = candidates[0]
    assert all(torch.equal(a, b) for a, b in zip(space.decode(space.encode(candidate)), candidate))
    mutated = space.mutate(candidate, seed=3, swaps=2)
    assert [int(m.sum()) for m in mutated] == space.kept
    assert sum(int((a != b).sum()) for a, b in zip(mutated, candidate)) in (2, 4)
    assert all(torch.equal(a, b) for a, b in zip(mutated, space.mutate(candidate, 3, swaps=2)))
    assert space.describe(candidate) == {"kept": [4, 3]}
    assert derive_seed("x", 1, 0.5) == derive_seed("x", 1, 0.5) != derive_seed("x", 1, 0.75)
    with pytest.raises(ValueError, match="sparsity"):
        NodeSpace([10, 7], [0.5])
    with pytest.raises(ValueError, match="not an encoded node mask"):
        space.decode("zz.00")


def test_study_is_deterministic_and_complete(tmp_path, reference):
    path, results, table = reference
    again, again_table = run_in_process(RandomSearch, tmp_path / "again.sqlite", TINY)
    assert again == results and again_table == table
    kinds = [r[1] for r in results.values()]
    assert kinds.count("search") == 2 * 2 * 3 and kinds.count("final") == 2 * (2 * (1 + 2) + 1)
    assert "| 0.9 | [2, 2] |" in table and "(n=2)" in table and "(n=4)" in table
    with Store(path, readonly=True) as store:
        for trial in store.trials("random-search", kind="final"):
            if trial.config["role"] != "search":
                continue
            unit = f"seed={trial.seed}/s={trial.config['sparsity']:g}/search"
            best = max(store.trials("random-search", unit=unit),
                       key=lambda t: (t.final["score"], t.final["tiebreak"]))
            assert best.config["mask"] == trial.config["mask"]
    report = path.parent / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["method"] == "random-search" and summary["study"] == "random-search"
    assert summary["config"]["sparsities"] == [0.5, 0.9] and "device" not in summary["config"]
    rows = summary["rows"]
    assert {"sparsity", "role", "mean_acc", "std_acc", "n", "p_value"} <= set(rows[0])
    assert [(r["sparsity"], r["role"], r["n"]) for r in rows] == [
        (0.0, "dense", 2), (0.5, "search", 2), (0.5, "random", 4), (0.9, "search", 2),
        (0.9, "random", 4)]
    assert rows[1]["mean_acc"] == pytest.approx(
        sum(r[6]["test_acc"] for r in results.values()
            if r[5]["role"] == "search" and r[5]["sparsity"] == 0.5) / 2)
    for name in ("accuracy_vs_sparsity.png", "convergence.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    assert (report / "summary.md").read_text() == table


@PROXIES.register("test-first-layer-index-sum")
def _index_sum_proxy(model, x, y) -> float:
    # Depends on which nodes are kept, so the search's choice is predictable.
    mask = next(m for name, m in model.state_dict().items() if name.endswith("mask"))
    return float(mask.nonzero().sum())


def test_proxy_scoring_picks_the_best_proxy_score(tmp_path):
    options = {**TINY, "proxy": "test-first-layer-index-sum", "seeds": (0,),
               "sparsities": (0.5,)}
    run_in_process(RandomSearch, tmp_path / "proxy.sqlite", options,
                   checkpoint_dir=tmp_path / "checkpoints")
    with Store(tmp_path / "proxy.sqlite") as store:
        candidates = store.trials("random-search", kind="search")
        chosen = next(t for t in store.trials("random-search", kind="final")
                      if t.config["role"] == "search")
    assert [t.epochs for t in candidates] == [[], [], []]
    space = NodeSpace([16, 16], 0.5)
    for t in candidates:
        assert t.final["score"] == float(space.decode(t.config["mask"])[0].nonzero().sum())
    assert chosen.config["mask"] == max(candidates, key=lambda t: t.final["score"]).config["mask"]
    # The saved network is the trained finalist: same mask, same test accuracy.
    state, metadata = load_checkpoint(
        tmp_path / "checkpoints" / "seed=0_s=0.5_search-best.safetensors")
    assert metadata["trial"] == chosen.key
    config = from_flat(RandomSearch.Config, options)
    data = config.data.load()
    network = config.parent.build(data, seed=0)
    network.load_state_dict(state)
    assert space.encode([network.state_dict()[name] for name in
                         ("body.4.mask", "body.8.mask")]) == chosen.config["mask"]
    _, test_acc = Trainer(TrainConfig()).evaluate(network, data.x_test, data.y_test)
    assert test_acc[0] == pytest.approx(chosen.final["test_acc"], abs=1e-9)


def test_global_budget_space():
    space = NodeSpace([10, 7, 5], 0.6, budget="global")
    candidates = space.sample(8, seed=1)
    per_layer = torch.tensor([[int(m.sum()) for m in c] for c in candidates])
    assert sum(space.kept) == 9
    assert (per_layer.sum(1) == 9).all() and (per_layer >= 1).all()
    assert len({tuple(row.tolist()) for row in per_layer}) > 1  # allocations differ
    again = space.sample(3, seed=1, first=5)
    assert all(torch.equal(a, b) for x, y in zip(candidates[5:], again) for a, b in zip(x, y))
    for seed in range(5):
        counts = [int(m.sum()) for m in space.mutate(candidates[0], seed=seed, swaps=4)]
        assert sum(counts) == 9 and min(counts) >= 1
    with pytest.raises(ValueError, match="budget"):
        NodeSpace([10], 0.5, budget="per-network")


def test_global_budget_study(tmp_path):
    results, table = run_in_process(RandomSearch, tmp_path / "global.sqlite",
                                    {**TINY, "budget": "global", "seeds": (0,),
                                     "sparsities": (0.75,)})
    kept = [r[5]["kept"] for r in results.values() if r[5]["role"] != "dense"]
    assert kept and all(sum(k) == 8 and min(k) >= 1 for k in kept)
    assert "global node budget" in table and "| 0.75 | 8 in all |" in table


def test_units_plan():
    units = RandomSearch(from_flat(RandomSearch.Config, TINY)).plan()
    assert [u.key for u in units][:3] == ["seed=0/s=0.5/search", "seed=0/s=0.9/search",
                                          "seed=0/final"]
    assert units[2].depends_on == ("seed=0/s=0.5/search", "seed=0/s=0.9/search")
    assert epochs_to_fraction([0.5, 0.9, 0.96, 1.0]) == 3
