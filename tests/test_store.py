"""The SQLite results store: atomic units, claims, stale-claim takeover, study identity, export."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from sparsenas.store import Store, StoreError, TrialRecord


def _trial(key: str, acc: float = 0.5) -> TrialRecord:
    return TrialRecord(key=key, kind="final", seed=1, config={"sparsity": 0.5, "mask": "ff"},
                       epochs=[{"epoch": 1, "val_acc": acc}], final={"test_acc": acc},
                       seconds=0.25)


def test_units_commit_their_trials_atomically(tmp_path):
    with Store(tmp_path / "study.sqlite") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.claim("u1")
        assert store.trials() == [] and not store.is_finished("u1")
        assert store.finish("u1", [_trial("a", 0.7), _trial("b", 0.8)])
        assert store.is_finished("u1") and not store.claim("u1")
        trials = store.trials()
        assert [t.key for t in trials] == ["a", "b"]
        assert trials[1].final == {"test_acc": 0.8} and trials[1].epochs[0]["val_acc"] == 0.8
        assert trials[0].config == {"sparsity": 0.5, "mask": "ff"} and trials[0].unit == "u1"
        # A failing insert (duplicate trial key) rolls the whole unit back.
        assert store.claim("u2")
        with pytest.raises(sqlite3.IntegrityError):
            store.finish("u2", [_trial("c"), _trial("a")])
        assert not store.is_finished("u2") and [t.key for t in store.trials()] == ["a", "b"]


def test_claims_exclude_live_workers_and_take_over_dead_ones(tmp_path):
    path = tmp_path / "study.sqlite"
    first, second = Store(path), Store(path)
    assert first.claim("u")
    assert not second.claim("u")  # held by a live worker (this process, another owner)
    assert not second.finish("u", [_trial("x")])
    first.release("u")
    assert second.claim("u") and not first.claim("u")
    # A claim left by a process that died (kill -9) is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    first._db.execute("UPDATE units SET owner = 'gone', pid = ? WHERE key = 'u'",
                      (int(dead.stdout),))
    assert first.claim("u") and first.finish("u", [_trial("x")])
    # An expired lease is taken over even when the owner's liveness cannot be checked.
    second.claim("v")
    expired = Store(path, lease_seconds=0.0)
    second._db.execute("UPDATE units SET host = 'elsewhere' WHERE key = 'v'")
    assert expired.claim("v")
    for store in (first, second, expired):
        store.close()


def test_a_store_holds_one_study(tmp_path):
    with Store(tmp_path / "study.sqlite") as store:
        assert store.init_study({"epochs": 3, "seeds": [0, 1]}) is False
        assert store.init_study({"epochs": 3, "seeds": [0, 1]}) is True
        with pytest.raises(StoreError, match="differs in: epochs"):
            store.init_study({"epochs": 4, "seeds": [0, 1]})
        assert store.study_config() == {"epochs": 3, "seeds": [0, 1]}


def test_exports(tmp_path):
    with Store(tmp_path / "study.sqlite") as store:
        store.claim("u")
        store.finish("u", [_trial("a", 0.7), _trial("b", 0.9)])
        csv_text = store.export_csv(tmp_path / "t.csv").read_text().splitlines()
        lines = (tmp_path / "t.jsonl")
        store.export_jsonl(lines)
    assert csv_text[0] == "key,unit,kind,seed,seconds,config.mask,config.sparsity,final.test_acc"
    assert csv_text[2] == "b,u,final,1,0.25,ff,0.5,0.9"
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["key"] for r in records] == ["a", "b"] and records[1]["epochs"][0]["val_acc"] == 0.9
