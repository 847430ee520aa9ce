"""Results store: named studies in one SQLite database (standard library ``sqlite3``, WAL mode).

The vocabulary is Optuna's: a store holds *studies* (a name, the strategy that runs it, its
configuration), a study holds *trials* (state complete / failed / pruned, an optional parent and
generation for evolutionary methods). Work is done in *units* (the candidates of one search step,
an evolution round, a supernet epoch): a worker claims a unit, then commits all of the unit's trials
and marks the unit finished in one transaction, so a unit is either wholly in the store or not at
all. A crash (kill -9 included) loses at most the units in flight, and a resumed run, which skips
finished units by their deterministic keys, neither loses nor repeats a trial. Several processes
can work on one study: a claim is taken inside ``BEGIN IMMEDIATE`` so two workers never take the
same unit, and a claim whose owner died (same host, process gone) or outlived ``lease_seconds`` is
taken over.

A store opened with ``readonly=True`` never writes (no schema, no WAL switch, no migration). A
store written by sparsenas 0.1.0 (one study, no schema version) is migrated in place when it is
opened for writing, and refused with a message that says how to migrate when opened read-only.
Every SQLite failure reaches the caller as a one-line :class:`StoreError`.
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

SCHEMA_VERSION = 2
TRIAL_STATES = ("complete", "failed", "pruned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    strategy TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    study TEXT NOT NULL REFERENCES studies (name),
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (study, key)
);
CREATE TABLE IF NOT EXISTS trials (
    study TEXT NOT NULL REFERENCES studies (name),
    key TEXT NOT NULL,
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('complete', 'failed', 'pruned')),
    seed INTEGER NOT NULL,
    parent TEXT,
    generation INTEGER,
    config TEXT NOT NULL,
    epochs TEXT NOT NULL,
    final TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (study, key)
);
CREATE INDEX IF NOT EXISTS trials_by_unit ON trials (study, unit);
"""

# The one study of a 0.1.0 store, which only ran random search, keeps this name after migration.
LEGACY_STUDY = "random-search"


class StoreError(RuntimeError):
    """The store cannot be used as asked: not a store, unreadable, holds a different study of the
    same name, or an operation used out of order."""


@dataclass(frozen=True)
class StudyInfo:
    name: str
    strategy: str
    config: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its configuration, seed, per-epoch metrics, final metrics and time;
    ``parent`` / ``generation`` link the trials of evolutionary methods."""

    key: str
    kind: str
    seed: int
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    final: dict[str, Any]
    seconds: float
    state: str = "complete"
    parent: str | None = None
    generation: int | None = None
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


def _describe(error: sqlite3.Error) -> str:
    message = str(error)
    if "not a database" in message or "malformed" in message:
        return "not an SQLite store (or damaged)"
    return message


class Store:
    def __init__(self, path: str | Path, timeout: float = 60.0,
                 lease_seconds: float = 6 * 3600.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        if self.path.is_dir():
            raise StoreError(f"store {str(self.path)!r} is a directory, not an SQLite file")
        if readonly and not self.path.is_file():
            raise StoreError(f"store {str(self.path)!r} does not exist")
        try:
            if readonly:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           timeout=timeout, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"store {str(self.path)!r} cannot be opened: {error}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if readonly:
                version = self._schema_version()
                if version == 0:
                    raise StoreError(f"store {str(self.path)!r} holds no study")
                if version == 1:
                    raise StoreError(
                        f"store {str(self.path)!r} was written by sparsenas 0.1.0: upgrade it "
                        f"once with `sparsenas migrate --store {self.path}`")
            else:
                self._use_wal(timeout)
                self._db.execute("PRAGMA synchronous = FULL")
                version = self._create_or_migrate()
            self.migrated_from = version if version == 1 else None  # a read-only v1 store raised
        except sqlite3.Error as error:
            self._db.close()
            raise StoreError(f"store {str(self.path)!r}: {_describe(error)}") from None
        except StoreError:
            self._db.close()
            raise

    def _use_wal(self, timeout: float) -> None:
        """Switches the database to WAL mode. The switch needs an exclusive lock, for which SQLite
        does not wait (workers opening a new store at once got 'database is locked'), so it is
        retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    class _Transaction:
        def __init__(self, store: Store) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            if self.store.readonly:
                raise StoreError(f"store {str(self.store.path)!r} was opened read-only")
            self.store._execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type, exc, tb) -> None:
            self.store._execute("ROLLBACK" if exc_type is not None else "COMMIT")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"store {str(self.store.path)!r}: {_describe(exc)}") from None

    def _transaction(self) -> Store._Transaction:
        return Store._Transaction(self)

    def _execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as error:
            raise StoreError(f"store {str(self.path)!r}: {_describe(error)}") from None

    # Schema --------------------------------------------------------------------------------

    def _schema_version(self) -> int:
        """0: empty database; 1: a 0.1.0 store; 2: this version. Anything else is refused."""
        tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return 0
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                                   ).fetchone()
            if row is not None:
                if row[0] != str(SCHEMA_VERSION):
                    raise StoreError(f"store {str(self.path)!r} has schema version {row[0]}; "
                                     f"this sparsenas reads version {SCHEMA_VERSION}")
                return SCHEMA_VERSION
            if {"units", "trials"} <= tables:
                return 1
        raise StoreError(f"store {str(self.path)!r} is an SQLite file but not a sparsenas store")

    def _create_or_migrate(self) -> int:
        """Creates or migrates the schema and returns the version found. The version is read
        inside the write transaction: workers that open a new store at the same moment queue on
        the lock, and only the first creates the schema."""
        with self._transaction() as db:
            version = self._schema_version()
            if version == SCHEMA_VERSION:
                return version
            if version == 1:
                db.execute("ALTER TABLE meta RENAME TO meta_v1")
                db.execute("ALTER TABLE units RENAME TO units_v1")
                db.execute("ALTER TABLE trials RENAME TO trials_v1")
                db.execute("DROP INDEX IF EXISTS trials_by_unit")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            if version == 1:
                self._copy_legacy_study(db)
        return version

    @staticmethod
    def _copy_legacy_study(db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta_v1 WHERE key = 'config'").fetchone()
        if row is not None:
            db.execute("INSERT INTO studies (name, strategy, config, created_at) "
                       "VALUES (?, 'random-search', ?, ?)", (LEGACY_STUDY, row[0], time.time()))
            db.execute("INSERT INTO units (study, key, status, owner, host, pid, claimed_at, "
                       "finished_at) SELECT ?, key, status, owner, host, pid, claimed_at, "
                       "finished_at FROM units_v1 WHERE status = 'finished'", (LEGACY_STUDY,))
            db.execute("INSERT INTO trials (study, key, unit, kind, state, seed, config, epochs, "
                       "final, seconds, finished_at) SELECT ?, key, unit, kind, 'complete', seed, "
                       "config, epochs, final, seconds, finished_at FROM trials_v1",
                       (LEGACY_STUDY,))
        for table in ("trials_v1", "units_v1", "meta_v1"):
            db.execute(f"DROP TABLE {table}")

    # Studies -------------------------------------------------------------------------------

    def create_study(self, name: str, strategy: str, config: dict[str, Any]) -> bool:
        """Records study ``name`` (run by ``strategy`` with ``config``), or checks it against the
        one already stored under that name. Returns whether it existed; a different strategy or
        configuration raises StoreError and writes nothing."""
        encoded = json.dumps(config, sort_keys=True)
        with self._transaction() as db:
            row = db.execute("SELECT strategy, config FROM studies WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies (name, strategy, config, created_at) "
                           "VALUES (?, ?, ?, ?)", (name, strategy, encoded, time.time()))
                return False
        if row[0] != strategy:
            raise StoreError(f"store {str(self.path)!r} holds a {row[0]} study named {name!r}; "
                             f"choose another --study name for this {strategy} study")
        stored = json.loads(row[1])
        if stored != json.loads(encoded):
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise StoreError(f"store {str(self.path)!r} holds a study named {name!r} with a "
                             f"different configuration (differs in: {', '.join(changed)})")
        return True

    def study(self, name: str) -> StudyInfo | None:
        row = self._execute("SELECT name, strategy, config, created_at FROM studies "
                            "WHERE name = ?", (name,)).fetchone()
        return None if row is None else StudyInfo(row[0], row[1], json.loads(row[2]), row[3])

    def studies(self) -> list[StudyInfo]:
        rows = self._execute("SELECT name, strategy, config, created_at FROM studies "
                             "ORDER BY created_at, name").fetchall()
        return [StudyInfo(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    # Units of work ---------------------------------------------------------------------------

    def claim(self, study: str, unit: str) -> bool:
        """Claims ``unit`` for this process: True if it was free, already ours, or held by a
        dead or expired owner; False if finished or held by a live worker."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status, owner, host, pid, claimed_at FROM units "
                             "WHERE study = ? AND key = ?", (study, unit)).fetchone()
            if row is not None:
                status, owner, host, pid, claimed_at = row
                if status == "finished":
                    return False
                stale = ((host == self.host and not _process_alive(pid))
                         or now - claimed_at > self.lease_seconds)
                if owner != self.owner and not stale:
                    return False
            db.execute("INSERT OR REPLACE INTO units (study, key, status, owner, host, pid, "
                       "claimed_at) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                       (study, unit, self.owner, self.host, self.pid, now))
        return True

    def release(self, study: str, unit: str) -> None:
        """Gives up this process's unfinished claim on ``unit`` (after an error)."""
        with self._transaction() as db:
            db.execute("DELETE FROM units WHERE study = ? AND key = ? AND owner = ? AND "
                       "status = 'running'", (study, unit, self.owner))

    def finish(self, study: str, unit: str, trials: list[TrialRecord]) -> bool:
        """Commits ``trials`` and marks ``unit`` finished, atomically. Returns False (and writes
        nothing) if the claim was lost to another worker meanwhile."""
        now = time.time()
        for trial in trials:
            if trial.state not in TRIAL_STATES:
                raise StoreError(f"trial {trial.key!r}: state must be one of {TRIAL_STATES}, "
                                 f"got {trial.state!r}")
        with self._transaction() as db:
            row = db.execute("SELECT status, owner FROM units WHERE study = ? AND key = ?",
                             (study, unit)).fetchone()
            if row is None or row[0] != "running" or row[1] != self.owner:
                return False
            db.executemany(
                "INSERT INTO trials (study, key, unit, kind, state, seed, parent, generation, "
                "config, epochs, final, seconds, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(study, t.key, unit, t.kind, t.state, t.seed, t.parent, t.generation,
                  json.dumps(t.config, sort_keys=True), json.dumps(t.epochs),
                  json.dumps(t.final, sort_keys=True), t.seconds, now) for t in trials])
            db.execute("UPDATE units SET status = 'finished', finished_at = ? "
                       "WHERE study = ? AND key = ?", (now, study, unit))
        return True

    def finished_units(self, study: str) -> set[str]:
        return {key for (key,) in self._execute(
            "SELECT key FROM units WHERE study = ? AND status = 'finished'", (study,))}

    # Reading and exporting -------------------------------------------------------------------

    def trials(self, study: str, kind: str | None = None,
               unit: str | None = None) -> list[TrialRecord]:
        """Finished trials of ``study`` (optionally of one kind / unit), ordered by key."""
        query = ("SELECT key, kind, seed, config, epochs, final, seconds, state, parent, "
                 "generation, unit, finished_at FROM trials WHERE study = ?")
        params: list[Any] = [study]
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        if unit is not None:
            query += " AND unit = ?"
            params.append(unit)
        rows = self._execute(query + " ORDER BY key", params).fetchall()
        return [TrialRecord(key=r[0], kind=r[1], seed=r[2], config=json.loads(r[3]),
                            epochs=json.loads(r[4]), final=json.loads(r[5]), seconds=r[6],
                            state=r[7], parent=r[8], generation=r[9], unit=r[10],
                            finished_at=r[11]) for r in rows]

    def _iter_flat(self, study: str) -> Iterator[dict[str, Any]]:
        for trial in self.trials(study):
            row: dict[str, Any] = {"key": trial.key, "unit": trial.unit, "kind": trial.kind,
                                   "state": trial.state, "seed": trial.seed,
                                   "parent": trial.parent, "generation": trial.generation,
                                   "seconds": trial.seconds}
            row.update({f"config.{k}": v for k, v in trial.config.items()})
            row.update({f"final.{k}": v for k, v in trial.final.items()})
            yield row

    def export_csv(self, study: str, path: str | Path) -> Path:
        """One row per trial: key, unit, kind, state, seed, parent, generation, seconds,
        config.* and final.* columns."""
        return write_csv_rows(list(self._iter_flat(study)), path)

    def export_jsonl(self, study: str, path: str | Path) -> Path:
        """One JSON object per trial with everything, per-epoch metrics included."""
        path = Path(path)
        with open(path, "w") as handle:
            for trial in self.trials(study):
                handle.write(json.dumps(asdict(trial), sort_keys=True) + "\n")
        return path


def write_csv_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Rows of plain values as CSV: the union of their keys as columns (in first-seen order),
    lists and dicts as JSON."""
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
