"""One SQLite database per study (standard library ``sqlite3``, WAL mode, busy timeout).

Work is done in *units* (for example: the candidates of one search step, trained together). A
worker first claims a unit, then commits all of the unit's trials and marks the unit finished in
one transaction, so a unit is either wholly in the store or not at all: a crash (kill -9
included) loses at most the units in flight, and a resumed run, which skips finished units by
their deterministic keys, neither loses nor repeats a trial. Several processes can work on one
study: a claim is taken inside ``BEGIN IMMEDIATE`` so two workers never take the same unit, and
a claim whose owner died (same host, process gone) or outlived ``lease_seconds`` is taken over.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL REFERENCES units (key),
    kind TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    epochs TEXT NOT NULL,
    final TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_by_unit ON trials (unit);
"""


class StoreError(RuntimeError):
    """The store holds a different study, or a store operation is used out of order."""


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its configuration, seed, per-epoch metrics, final metrics and time."""

    key: str
    kind: str
    seed: int
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    final: dict[str, Any]
    seconds: float
    unit: str = ""
    finished_at: float = 0.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, path: str | Path, timeout: float = 60.0,
                 lease_seconds: float = 6 * 3600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_seconds = lease_seconds
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    class _Transaction:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _transaction(self) -> Store._Transaction:
        return Store._Transaction(self._db)

    # The study's identity ------------------------------------------------------------------

    def init_study(self, config: dict[str, Any]) -> bool:
        """Records the study configuration, or checks it against the one already stored.
        Returns whether the store already held this study; a different study raises."""
        encoded = json.dumps(config, sort_keys=True)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('config', ?)", (encoded,))
                return False
        stored = json.loads(row[0])
        if stored != json.loads(encoded):
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise StoreError(f"store {str(self.path)!r} holds a study with a different "
                             f"configuration (differs in: {', '.join(changed)})")
        return True

    def study_config(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return None if row is None else json.loads(row[0])

    # Units of work ---------------------------------------------------------------------------

    def claim(self, unit: str) -> bool:
        """Claims ``unit`` for this process: True if it was free, already ours, or held by a
        dead or expired owner; False if finished or held by a live worker."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status, owner, host, pid, claimed_at FROM units WHERE key = ?",
                             (unit,)).fetchone()
            if row is not None:
                status, owner, host, pid, claimed_at = row
                if status == "finished":
                    return False
                stale = ((host == self.host and not _process_alive(pid))
                         or now - claimed_at > self.lease_seconds)
                if owner != self.owner and not stale:
                    return False
            db.execute("INSERT OR REPLACE INTO units (key, status, owner, host, pid, claimed_at) "
                       "VALUES (?, 'running', ?, ?, ?, ?)",
                       (unit, self.owner, self.host, self.pid, now))
        return True

    def release(self, unit: str) -> None:
        """Gives up this process's unfinished claim on ``unit`` (after an error)."""
        with self._transaction() as db:
            db.execute("DELETE FROM units WHERE key = ? AND owner = ? AND status = 'running'",
                       (unit, self.owner))

    def finish(self, unit: str, trials: list[TrialRecord]) -> bool:
        """Commits ``trials`` and marks ``unit`` finished, atomically. Returns False (and writes
        nothing) if the claim was lost to another worker meanwhile."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status, owner FROM units WHERE key = ?", (unit,)).fetchone()
            if row is None or row[0] != "running" or row[1] != self.owner:
                return False
            db.executemany(
                "INSERT INTO trials (key, unit, kind, seed, config, epochs, final, seconds, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(t.key, unit, t.kind, t.seed, json.dumps(t.config, sort_keys=True),
                  json.dumps(t.epochs), json.dumps(t.final, sort_keys=True), t.seconds, now)
                 for t in trials])
            db.execute("UPDATE units SET status = 'finished', finished_at = ? WHERE key = ?",
                       (now, unit))
        return True

    def is_finished(self, unit: str) -> bool:
        row = self._db.execute("SELECT status FROM units WHERE key = ?", (unit,)).fetchone()
        return row is not None and row[0] == "finished"

    def finished_units(self) -> set[str]:
        return {key for (key,) in
                self._db.execute("SELECT key FROM units WHERE status = 'finished'")}

    # Reading and exporting -------------------------------------------------------------------

    def trials(self, kind: str | None = None, unit: str | None = None) -> list[TrialRecord]:
        """Finished trials (optionally of one kind / unit), ordered by key."""
        query = ("SELECT key, kind, seed, config, epochs, final, seconds, unit, finished_at "
                 "FROM trials")
        clauses, params = [], []
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if unit is not None:
            clauses.append("unit = ?")
            params.append(unit)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self._db.execute(query + " ORDER BY key", params).fetchall()
        return [TrialRecord(key=r[0], kind=r[1], seed=r[2], config=json.loads(r[3]),
                            epochs=json.loads(r[4]), final=json.loads(r[5]), seconds=r[6],
                            unit=r[7], finished_at=r[8]) for r in rows]

    def _iter_flat(self) -> Iterator[dict[str, Any]]:
        for trial in self.trials():
            row: dict[str, Any] = {"key": trial.key, "unit": trial.unit, "kind": trial.kind,
                                   "seed": trial.seed, "seconds": trial.seconds}
            row.update({f"config.{k}": v for k, v in trial.config.items()})
            row.update({f"final.{k}": v for k, v in trial.final.items()})
            yield row

    def export_csv(self, path: str | Path) -> Path:
        """One row per trial: key, unit, kind, seed, seconds, config.* and final.* columns."""
        rows = list(self._iter_flat())
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        path = Path(path)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                 for k, v in row.items()})
        return path

    def export_jsonl(self, path: str | Path) -> Path:
        """One JSON object per trial with everything, per-epoch metrics included."""
        path = Path(path)
        with open(path, "w") as handle:
            for trial in self.trials():
                handle.write(json.dumps(asdict(trial), sort_keys=True) + "\n")
        return path
