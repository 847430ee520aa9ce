"""The SQLite results store: named studies, atomic units, claims, stale-claim takeover, trial
states and links, exports, read-only opening, 0.1.0 migration, and files that are not stores."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
import torch

from sparsenas.store import (LEGACY_STUDY, Store, StoreError, TrialRecord, load_state,
                             save_checkpoint, save_state)


def _trial(key: str, acc: float = 0.5, **extra) -> TrialRecord:
    return TrialRecord(key=key, kind="final", seed=1, config={"sparsity": 0.5, "mask": "ff"},
                       epochs=[{"epoch": 1, "val_acc": acc}], final={"test_acc": acc},
                       seconds=0.25, **extra)


def _new(path, study="s") -> Store:
    store = Store(path)
    store.create_study(study, "random-search", {"epochs": 3})
    return store


def test_units_commit_their_trials_atomically(tmp_path):
    with _new(tmp_path / "study.sqlite") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.claim("s", "u1")
        assert store.trials("s") == [] and store.finished_units("s") == set()
        assert store.finish("s", "u1", [_trial("a", 0.7), _trial("b", 0.8)])
        assert store.finished_units("s") == {"u1"} and not store.claim("s", "u1")
        trials = store.trials("s")
        assert [t.key for t in trials] == ["a", "b"]
        assert trials[1].final == {"test_acc": 0.8} and trials[1].epochs[0]["val_acc"] == 0.8
        assert trials[0].config == {"sparsity": 0.5, "mask": "ff"} and trials[0].unit == "u1"
        assert trials[0].state == "complete" and trials[0].parent is None
        # A failing insert (duplicate trial key) rolls the whole unit back, as a StoreError.
        assert store.claim("s", "u2")
        with pytest.raises(StoreError, match="UNIQUE"):
            store.finish("s", "u2", [_trial("c"), _trial("a")])
        assert store.finished_units("s") == {"u1"}
        assert [t.key for t in store.trials("s")] == ["a", "b"]


@pytest.mark.parametrize("attempt", range(5))  # the race is timing-dependent: several tries
def test_workers_opening_a_new_store_at_once_create_it_once(tmp_path, attempt):
    path = tmp_path / "shared.sqlite"
    workers = 8
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def open_and_join() -> None:
        start.wait()
        try:
            with Store(path) as store:
                store.create_study("s", "random-search", {"epochs": 3})
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_and_join) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store(path, readonly=True) as store:
        assert [study.name for study in store.studies()] == ["s"]


def test_trial_states_and_evolution_links(tmp_path):
    with _new(tmp_path / "study.sqlite") as store:
        store.claim("s", "g1")
        store.finish("s", "g1", [_trial("x", state="pruned", parent="w", generation=3),
                                 _trial("y", state="failed")])
        x, y = store.trials("s")
        assert (x.state, x.parent, x.generation) == ("pruned", "w", 3) and y.state == "failed"
        store.claim("s", "g2")
        with pytest.raises(StoreError, match="state must be one of"):
            store.finish("s", "g2", [_trial("z", state="lost")])


def test_claims_exclude_live_workers_and_take_over_dead_ones(tmp_path):
    path = tmp_path / "study.sqlite"
    first, second = _new(path), Store(path)
    assert first.claim("s", "u")
    assert not second.claim("s", "u")  # held by a live worker (this process, another owner)
    assert not second.finish("s", "u", [_trial("x")])
    first.release("s", "u")
    assert second.claim("s", "u") and not first.claim("s", "u")
    # A claim left by a process that died (kill -9) is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    first._db.execute("UPDATE units SET owner = 'gone', pid = ? WHERE key = 'u'",
                      (int(dead.stdout),))
    assert first.claim("s", "u") and first.finish("s", "u", [_trial("x")])
    # An expired lease is taken over even when the owner's liveness cannot be checked.
    second.claim("s", "v")
    expired = Store(path, lease_seconds=0.0)
    second._db.execute("UPDATE units SET host = 'elsewhere' WHERE key = 'v'")
    assert expired.claim("s", "v")
    for store in (first, second, expired):
        store.close()


def test_several_named_studies_per_store(tmp_path):
    with Store(tmp_path / "study.sqlite") as store:
        assert store.create_study("a", "random-search", {"epochs": 3, "seeds": [0, 1]}) is False
        assert store.create_study("a", "random-search", {"epochs": 3, "seeds": [0, 1]}) is True
        assert store.create_study("b", "evolution", {"epochs": 5}) is False
        with pytest.raises(StoreError, match="differs in: epochs"):
            store.create_study("a", "random-search", {"epochs": 4, "seeds": [0, 1]})
        with pytest.raises(StoreError, match="holds a random-search study named 'a'"):
            store.create_study("a", "evolution", {"epochs": 3, "seeds": [0, 1]})
        assert [s.name for s in store.studies()] == ["a", "b"]
        assert store.study("a").config == {"epochs": 3, "seeds": [0, 1]}
        assert store.study("b").strategy == "evolution" and store.study("c") is None
        # The same unit key in two studies is two units.
        for name in ("a", "b"):
            assert store.claim(name, "u")
            store.finish(name, "u", [_trial("t", 0.1 if name == "a" else 0.2)])
        assert store.trials("a")[0].final != store.trials("b")[0].final


def test_exports(tmp_path):
    with _new(tmp_path / "study.sqlite") as store:
        store.claim("s", "u")
        store.finish("s", "u", [_trial("a", 0.7), _trial("b", 0.9, generation=2)])
        csv_text = store.export_csv("s", tmp_path / "t.csv").read_text().splitlines()
        lines = tmp_path / "t.jsonl"
        store.export_jsonl("s", lines)
    assert csv_text[0] == ("key,unit,kind,state,seed,parent,generation,seconds,config.mask,"
                           "config.sparsity,final.test_acc")
    assert csv_text[2] == "b,u,final,complete,1,,2,0.25,ff,0.5,0.9"
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["key"] for r in records] == ["a", "b"] and records[1]["epochs"][0]["val_acc"] == 0.9


def test_readonly_store_never_writes(tmp_path):
    path = tmp_path / "study.sqlite"
    with _new(path) as store:
        store.claim("s", "u")
        store.finish("s", "u", [_trial("a")])
    before = path.read_bytes()
    os.chmod(path, 0o444)
    try:
        with Store(path, readonly=True) as store:
            assert [t.key for t in store.trials("s")] == ["a"]
            with pytest.raises(StoreError, match="read-only"):
                store.claim("s", "v")
    finally:
        os.chmod(path, 0o644)
    assert path.read_bytes() == before
    # An empty SQLite file opened read-only stays empty: no tables, no WAL switch.
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="holds no study"):
        Store(empty, readonly=True)
    assert empty.stat().st_size == 0 and not (tmp_path / "empty.sqlite-wal").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello, not a database " * 50), "not an SQLite store"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 30), "store"),
])
def test_files_that_are_not_stores(tmp_path, make, message):
    path = tmp_path / "store.sqlite"
    make(path)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=message) as info:
            Store(path, readonly=readonly)
        assert "\n" not in str(info.value)


def test_truncated_store(tmp_path):
    path = tmp_path / "study.sqlite"
    with _new(path) as store:
        store.claim("s", "u")
        store.finish("s", "u", [_trial(f"t{i}") for i in range(200)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError) as info:
        with Store(path, readonly=True) as store:
            store.trials("s")
    assert "\n" not in str(info.value)


_SCHEMA_0_1_0 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE units (key TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, claimed_at REAL NOT NULL, finished_at REAL);
CREATE TABLE trials (key TEXT PRIMARY KEY, unit TEXT NOT NULL, kind TEXT NOT NULL,
    seed INTEGER NOT NULL, config TEXT NOT NULL, epochs TEXT NOT NULL, final TEXT NOT NULL,
    seconds REAL NOT NULL, finished_at REAL NOT NULL);
CREATE INDEX trials_by_unit ON trials (unit);
"""


def write_store_0_1_0(path, config: dict, trials: list[tuple[str, str]]) -> None:
    """A store as sparsenas 0.1.0 wrote it: one study, finished units and their trials
    ((unit, trial key) pairs), plus one unit left running by a dead worker."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_0_1_0)
    db.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(config),))
    for unit in sorted({u for u, _ in trials}):
        db.execute("INSERT INTO units VALUES (?, 'finished', 'o', 'h', 1, 0, 1)", (unit,))
    db.execute("INSERT INTO units VALUES ('stuck', 'running', 'o', 'h', 1, 0, NULL)")
    for unit, key in trials:
        db.execute("INSERT INTO trials VALUES (?, ?, 'final', 0, '{}', '[]', '{\"test_acc\": 1}', "
                   "0.5, 1)", (key, unit))
    db.commit()
    db.close()


def test_store_written_by_0_1_0_is_refused_read_only_and_migrated_for_writing(tmp_path):
    path = tmp_path / "old.sqlite"
    write_store_0_1_0(path, {"epochs": 3}, [("u1", "a"), ("u1", "b"), ("u2", "c")])
    before = path.read_bytes()
    with pytest.raises(StoreError, match="written by sparsenas 0.1.0: upgrade it once with "
                                         "`sparsenas migrate"):
        Store(path, readonly=True)
    assert path.read_bytes() == before
    with Store(path) as store:
        info = store.study(LEGACY_STUDY)
        assert info.strategy == "random-search" and info.config == {"epochs": 3}
        assert store.finished_units(LEGACY_STUDY) == {"u1", "u2"}  # the stuck claim is dropped
        assert [t.key for t in store.trials(LEGACY_STUDY)] == ["a", "b", "c"]
        assert store.trials(LEGACY_STUDY, unit="u2")[0].final == {"test_acc": 1}
    with Store(path, readonly=True) as store:  # migrated once, read-only from now on
        assert len(store.trials(LEGACY_STUDY)) == 3


def test_nested_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.5, 0.999))
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "step": torch.tensor(7),
             "generator": torch.Generator().manual_seed(3).get_state(),
             "plain": [1, 0.1, None, "x", True, (2, 3)]}
    loaded = load_state(save_state(tmp_path / "s.safetensors", state))
    assert loaded["plain"] == [1, 0.1, None, "x", True, (2, 3)]
    assert torch.equal(loaded["step"], state["step"])
    assert torch.equal(loaded["generator"], state["generator"])
    saved, restored = state["optimizer"], loaded["optimizer"]
    assert list(restored["state"]) == [0, 1]  # optimiser state keys stay ints
    assert restored["param_groups"] == saved["param_groups"]  # betas stays a tuple
    for index, entries in saved["state"].items():
        for name, value in entries.items():
            assert torch.equal(restored["state"][index][name], value)
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["betas"] == (0.5, 0.999)
    with pytest.raises(TypeError, match="cannot store a set"):
        save_state(tmp_path / "bad.safetensors", {"x": {1, 2}})
    save_checkpoint(tmp_path / "weights.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a checkpoint written by save_state"):
        load_state(tmp_path / "weights.safetensors")
