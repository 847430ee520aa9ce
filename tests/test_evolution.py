"""Regularised evolution on the framework: the plan, aging-population semantics, parent links,
determinism and the summary."""

from __future__ import annotations

import json

import pytest
from study_helpers import run_in_process

from sparsenas.config import from_flat
from sparsenas.spaces.node import NodeSpace
from sparsenas.store import Store
from sparsenas.strategies.evolution import RegularizedEvolution

TINY = dict(widths=(16, 16), sparsity=0.5, population=4, tournament=2, children=3, rounds=2,
            num_random=1, seeds=(0,), search_epochs=1, epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("evolution") / "study.sqlite"
    return path, *run_in_process(RegularizedEvolution, path, TINY)


def test_plan_chains_rounds_then_final():
    units = RegularizedEvolution(from_flat(RegularizedEvolution.Config,
                                           {**TINY, "seeds": (0, 1)})).plan()
    keys = [u.key for u in units]
    assert keys[:4] == ["seed=0/round=0000", "seed=0/round=0001", "seed=0/round=0002",
                        "seed=0/final"]
    assert units[2].depends_on == ("seed=0/round=0000", "seed=0/round=0001")
    assert units[3].depends_on == units[2].depends_on + ("seed=0/round=0002",)
    assert len(units) == 8


def test_aging_population_and_parent_links(reference):
    path, results, _ = reference
    with Store(path, readonly=True) as store:
        candidates = sorted(store.trials("evolution", kind="candidate"),
                            key=lambda t: (t.generation, t.config["index"]))
        finals = store.trials("evolution", kind="final")
    assert [t.generation for t in candidates] == [0] * 4 + [1] * 3 + [2] * 3
    assert all(t.parent is None for t in candidates[:4])
    space = NodeSpace([16, 16], 0.5)
    for position, child in enumerate(candidates[4:], start=4):
        first_of_round = 4 + 3 * (child.generation - 1)
        population = candidates[:first_of_round][-4:]  # the 4 most recent before the round
        parent = next(t for t in candidates if t.key == child.parent)
        assert parent in population
        # The child is its parent with one node swapped in one layer.
        a, b = space.decode(parent.config["mask"]), space.decode(child.config["mask"])
        assert sum(int((x != y).sum()) for x, y in zip(a, b)) == 2
        assert child.config["kept"] == [8, 8]
    best = max(candidates, key=lambda t: (t.final["score"], t.final["tiebreak"]))
    found = next(t for t in finals if t.config["role"] == "evolution")
    assert found.config["found"] == best.key and found.parent == best.key
    assert found.config["mask"] == best.config["mask"]
    assert len(finals) == 2


def test_deterministic_and_summary(tmp_path, reference):
    path, results, table = reference
    again, again_table = run_in_process(RegularizedEvolution, tmp_path / "again.sqlite", TINY)
    assert again == results and again_table == table
    summary = json.loads((path.parent / "report" / "summary.json").read_text())
    assert summary["method"] == "evolution" and summary["config"]["population"] == 4
    row = summary["rows"][0]
    assert row["seed"] == 0 and row["evaluations"] == 10
    scores = [r[6]["score"] for r in results.values() if r[1] == "candidate"]
    assert row["best_score"] == pytest.approx(max(scores))
    assert (path.parent / "report" / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0 | 10 |" in table


@pytest.mark.parametrize("options, match", [
    ({"tournament": 5}, "tournament"), ({"population": 1}, "population"),
    ({"sparsity": 1.0}, "sparsity"), ({"rounds": 0}, "rounds"), ({"seeds": (0, 0)}, "seeds"),
])
def test_bad_config(options, match):
    with pytest.raises(ValueError, match=match):
        from_flat(RegularizedEvolution.Config, {**TINY, **options})
