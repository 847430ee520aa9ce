"""The Study for every strategy: a kill -9 mid-study resumes without losing or repeating trials
and ends as an uninterrupted run; two workers share one store; units that fail release their
claim; plans are checked; the Ray executor gives the local executor's results."""

from __future__ import annotations

import signal

import pytest
from study_helpers import cli, flags, kill_after, results, run_in_process

from sparsenas.config import from_flat
from sparsenas.store import Store
from sparsenas.strategies.evolution import RegularizedEvolution
from sparsenas.strategies.random_search import RandomSearch
from sparsenas.study import Study, Unit, check_plan

CASES = {
    "random-search": (RandomSearch, dict(widths=(16, 16), sparsities=(0.5, 0.9),
                                         num_candidates=3, num_random=2, seeds=(0, 1),
                                         search_epochs=1, epochs=3, batch_size=128)),
    "evolution": (RegularizedEvolution, dict(widths=(16, 16), sparsity=0.5, population=4,
                                             tournament=2, children=3, rounds=2, num_random=1,
                                             seeds=(0, 1), search_epochs=1, epochs=2,
                                             batch_size=128)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    strategy, options = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param) / "study.sqlite"
    reference, table = run_in_process(strategy, path, options)
    units = len(strategy(from_flat(strategy.Config, options)).plan())
    return request.param, options, reference, table, units


@pytest.mark.slow  # starts the CLI twice (interpreter and torch start-up dominate)
def test_kill_9_mid_study_then_resume(tmp_path, case):
    name, options, reference, table, units = case
    store_path = tmp_path / "study.sqlite"
    argv = [name, *flags(options), "--out", str(tmp_path / "out"), "--store", str(store_path)]
    victim = cli(*argv)
    kill_after(victim, store_path, name, 1)
    assert victim.returncode == -signal.SIGKILL
    with Store(store_path, readonly=True) as store:
        finished_before = results(store, name)
        units_before = store.finished_units(name)
    assert 1 <= len(units_before) < units, "the run was not interrupted mid-study"

    again = cli(*argv)  # a store holding the study needs --resume
    _, err = again.communicate(timeout=300)
    assert again.returncode == 1
    assert err.strip() == (f"sparsenas: error: store {str(store_path)!r} already holds a study "
                           f"named {name!r}: pass --resume to continue it, or choose another "
                           f"--study / --out / --store")
    resumed = cli(*argv, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    with Store(store_path, readonly=True) as store:
        after = results(store, name)
    assert after == reference
    assert all(after[key] == value for key, value in finished_before.items())
    assert (tmp_path / "out" / "summary.md").read_text() == table
    assert "summary.json" in out


@pytest.mark.slow  # starts two CLI workers
def test_two_workers_share_one_store(tmp_path, case):
    name, options, reference, table, _ = case
    store_path = tmp_path / "shared.sqlite"
    workers = [cli(name, *flags(options), "--out", str(tmp_path / f"out{i}"), "--store",
                   str(store_path), "--resume") for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    with Store(store_path, readonly=True) as store:
        assert results(store, name) == reference
    for i in range(2):
        assert (tmp_path / f"out{i}" / "summary.md").read_text() == table


def test_failed_unit_releases_its_claim(tmp_path):
    strategy_class, options = CASES["random-search"]
    strategy = strategy_class(from_flat(strategy_class.Config, {**options, "seeds": (0,)}))
    calls = []

    def broken(unit, ctx):
        calls.append(unit.key)
        raise RuntimeError("boom")

    strategy.run_unit = broken
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(RuntimeError, match="boom"):
            Study(strategy, store, progress=False).run()
        assert store.finished_units("random-search") == set()
        # Nothing is left claimed: the next run takes the same unit again.
        assert store.claim("random-search", calls[0])


def test_plans_are_checked():
    check_plan([Unit("a", "x"), Unit("b", "x", depends_on=("a",))])
    with pytest.raises(ValueError, match="planned twice"):
        check_plan([Unit("a", "x"), Unit("a", "x")])
    with pytest.raises(ValueError, match="not planned before it"):
        check_plan([Unit("b", "x", depends_on=("a",)), Unit("a", "x")])


def test_two_studies_in_one_store(tmp_path):
    path = tmp_path / "both.sqlite"
    for name in sorted(CASES):
        strategy, options = CASES[name]
        run_in_process(strategy, path, {**options, "seeds": (0,)}, out=tmp_path / name)
    with Store(path, readonly=True) as store:
        assert [s.name for s in store.studies()] == ["evolution", "random-search"]
        assert {t.kind for t in store.trials("evolution")} == {"candidate", "final"}
        assert {t.kind for t in store.trials("random-search")} == {"search", "final"}


def test_ray_executor_matches_local(tmp_path):
    import ray

    strategy, options = CASES["random-search"]
    options = {**options, "seeds": (0, 1), "sparsities": (0.5,)}
    local = run_in_process(strategy, tmp_path / "local.sqlite", options)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_in_process(strategy, tmp_path / "ray.sqlite",
                                {**options, "executor": "ray", "workers": 2})
    finally:
        ray.shutdown()
    assert remote == local
