"""A study runs a strategy's units: claims, dependencies, atomic commit, resume after kill -9, and
several workers on one store.

A *unit* is the grain of resumption (a search step's candidates, an evolution round, a final
training, a supernet epoch). Its key is deterministic, its randomness derives from the study's seeds
and its place, never from scheduling, so which worker runs a unit, and when, never changes a result.
A unit runs only after the units it depends on are finished, and sees their trials through its
:class:`StudyContext`. The executor decides where ready units run (this process, or Ray tasks);
only the process that runs the :class:`Study` writes the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from sparsenas.config import identity
from sparsenas.data import Dataset
from sparsenas.store import Store, StoreError, TrialRecord
from sparsenas.train import TrainerHook, resolve_device

if TYPE_CHECKING:
    from sparsenas.strategies.base import Strategy
    from sparsenas.study.executors import Executor


@dataclass(frozen=True)
class Unit:
    """One unit of work: ``key`` (unique in the study), ``kind`` (what the strategy does with it),
    ``params`` (plain JSON data: seed, sparsity, round …) and the keys it depends on."""

    key: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()


@dataclass
class StudyContext:
    """What a unit sees while it runs: the config, the finished trials of the units it depends on,
    trainer hooks (progress), where checkpoints go, the store's path (one-shot methods keep their
    resumable state beside it when ``checkpoint_dir`` is None), and the data (loaded on first
    use)."""

    config: Any
    study: str
    dependencies: dict[str, list[TrialRecord]] = field(default_factory=dict)
    hooks: list[TrainerHook] = field(default_factory=list)
    checkpoint_dir: Path | None = None
    preloaded_data: Dataset | None = None
    store_path: Path | None = None

    @property
    def data(self) -> Dataset:
        if self.preloaded_data is None:
            self.preloaded_data = self.config.data.load()
        return self.preloaded_data

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.runtime.device)

    def trials(self, unit: str) -> list[TrialRecord]:
        """The finished trials of ``unit``, one of this unit's dependencies."""
        try:
            return self.dependencies[unit]
        except KeyError:
            raise KeyError(f"unit {unit!r} is not a dependency of the running unit") from None


def epoch_chain(key: Callable[[int], str], kind: str, params: dict[str, Any],
                epochs: Iterable[int]) -> list[Unit]:
    """Units that must run one after another, one per epoch of a one-shot method: the unit of
    epoch e is named ``key(e)``, has ``params`` plus ``{"epoch": e}`` and depends on the unit of
    the epoch before (whose checkpoint it continues from)."""
    units: list[Unit] = []
    for epoch in epochs:
        units.append(Unit(key(epoch), kind, {**params, "epoch": epoch},
                          depends_on=tuple(u.key for u in units[-1:])))
    return units


def check_plan(units: list[Unit]) -> None:
    """Unit keys are unique and every dependency is an earlier unit (so no cycles)."""
    seen: set[str] = set()
    for unit in units:
        if unit.key in seen:
            raise ValueError(f"plan: unit {unit.key!r} is planned twice")
        missing = [d for d in unit.depends_on if d not in seen]
        if missing:
            raise ValueError(f"plan: unit {unit.key!r} depends on {missing}, which are not "
                             f"planned before it")
        seen.add(unit.key)


class Study:
    """Runs (or resumes, or joins as another worker) the study ``name`` of ``strategy`` in
    ``store``. ``progress``: tqdm bars on (True), off (False) or only on a terminal (None)."""

    def __init__(self, strategy: Strategy, store: Store, name: str | None = None,
                 executor: Executor | None = None, progress: bool | None = None,
                 poll_seconds: float = 0.5, checkpoint_dir: str | Path | None = None,
                 data: Dataset | None = None) -> None:
        from sparsenas.study.executors import executor_for

        self.strategy = strategy
        self.store = store
        self.name = name or strategy.name
        self.executor = executor or executor_for(strategy.config.runtime)
        self.progress = progress
        self.poll_seconds = poll_seconds
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.data = data

    def context(self, unit: Unit, hooks: list[TrainerHook] | None = None) -> StudyContext:
        dependencies = {key: self.store.trials(self.name, unit=key) for key in unit.depends_on}
        return StudyContext(self.strategy.config, self.name, dependencies, hooks or [],
                            self.checkpoint_dir, self.data, self.store.path)

    def run(self) -> None:
        """Runs every unfinished unit; returns when all are finished, whichever worker finished
        them."""
        units = self.strategy.plan()
        check_plan(units)
        if self.data is None:
            self.data = self.strategy.config.data.load()
        self.strategy.check_data(self.data)  # before the store records the study
        self.store.create_study(self.name, self.strategy.name, identity(self.strategy.config))
        self.executor.run(self, units)

    def commit(self, unit: Unit, trials: list[TrialRecord]) -> None:
        """Stores a finished unit's trials; a failure releases the claim, so a later --resume
        runs the unit again instead of finding it stuck."""
        try:
            self.store.finish(self.name, unit.key, trials)
        except BaseException:
            self.store.release(self.name, unit.key)
            raise

    def pending(self, units: list[Unit]) -> tuple[list[Unit], list[Unit], set[str]]:
        """(unfinished units, those whose dependencies are finished, finished keys)."""
        finished = self.store.finished_units(self.name)
        pending = [u for u in units if u.key not in finished]
        ready = [u for u in pending if all(d in finished for d in u.depends_on)]
        return pending, ready, finished


__all__ = ["Study", "StudyContext", "StoreError", "Unit", "check_plan", "epoch_chain"]
