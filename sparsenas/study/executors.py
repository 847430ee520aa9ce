"""Where a study's ready units run: in this process (the default), or as Ray tasks.

Either way the process that runs the study claims each unit before it starts, and alone commits
the unit's trials to the store when it returns, so the store sees the same units and trials, and a
resumed or second worker behaves the same, whatever the executor.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from sparsenas.store import TrialRecord
from sparsenas.train import EpochMetrics, Trainer, TrainerHook

if TYPE_CHECKING:
    from sparsenas.strategies.base import Strategy
    from sparsenas.study.runtime import RuntimeConfig
    from sparsenas.study.study import Study, Unit


class Executor:
    def run(self, study: Study, units: list[Unit]) -> None:
        raise NotImplementedError


class _EpochProgress(TrainerHook):
    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def on_train_start(self, trainer: Trainer, model: torch.nn.Module) -> None:
        self.bar.reset(total=trainer.config.epochs)

    def on_epoch_end(self, trainer: Trainer, model: torch.nn.Module,
                     metrics: EpochMetrics) -> None:
        self.bar.set_postfix(val_acc=f"{max(metrics.val_acc):.3f}", refresh=False)
        self.bar.update(1)


def _bars(study: Study, units: list[Unit]) -> tuple[tqdm, tqdm]:
    disable = None if study.progress is None else not study.progress
    return (tqdm(total=len(units), desc="units", unit="unit", disable=disable),
            tqdm(desc="epochs", unit="epoch", leave=False, disable=disable))


def _ready_units(study: Study, units: list[Unit], unit_bar: tqdm) -> list[Unit] | None:
    """The units ready to run (dependencies finished), or None when every unit is finished;
    updates the progress bar."""
    pending, ready, _ = study.pending(units)
    unit_bar.n = len(units) - len(pending)
    unit_bar.refresh()
    return ready if pending else None


class LocalExecutor(Executor):
    """Runs ready units one after another in this process."""

    def run(self, study: Study, units: list[Unit]) -> None:
        unit_bar, epoch_bar = _bars(study, units)
        hooks: list[TrainerHook] = [_EpochProgress(epoch_bar)]
        with unit_bar, epoch_bar:
            while (ready := _ready_units(study, units, unit_bar)) is not None:
                claimed = next((u for u in ready if study.store.claim(study.name, u.key)), None)
                if claimed is None:  # everything left is in other workers' hands
                    time.sleep(study.poll_seconds)
                    continue
                unit_bar.set_description(claimed.key)
                try:
                    trials = study.strategy.run_unit(claimed, study.context(claimed, hooks))
                except BaseException:
                    study.store.release(study.name, claimed.key)
                    raise
                study.commit(claimed, trials)


def _run_remote(strategy: Strategy, unit: Unit, context_args: dict,
                threads: int) -> list[TrialRecord]:
    """A unit in a Ray worker (the strategy arrives pickled: its class and its config)."""
    from sparsenas.study.study import StudyContext

    torch.set_num_threads(threads)
    return strategy.run_unit(unit, StudyContext(strategy.config, **context_args))


class RayExecutor(Executor):
    """Runs up to ``workers`` ready units at once as Ray tasks (one CPU each). Connects to a
    running Ray instance if this process has one (``ray.init`` before the study), else starts a
    local one with ``workers`` CPUs."""

    def __init__(self, workers: int = 2, threads: int = 1) -> None:
        self.workers = workers
        self.threads = threads

    def run(self, study: Study, units: list[Unit]) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'sparsenas[ray]'") from None
        if not ray.is_initialized():
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1, max_retries=0)(_run_remote)
        in_flight: dict[Any, Unit] = {}
        unit_bar, epoch_bar = _bars(study, units)
        try:
            with unit_bar, epoch_bar:
                while (ready := _ready_units(study, units, unit_bar)) is not None:
                    running = {u.key for u in in_flight.values()}
                    for unit in ready:
                        if len(in_flight) >= self.workers:
                            break
                        if unit.key in running or not study.store.claim(study.name, unit.key):
                            continue
                        context = study.context(unit)
                        context_args = {"study": study.name,
                                        "dependencies": context.dependencies,
                                        "checkpoint_dir": context.checkpoint_dir,
                                        "store_path": context.store_path}
                        ref = remote.remote(study.strategy, unit, context_args, self.threads)
                        in_flight[ref] = unit
                    if not in_flight:  # everything left is in other workers' hands
                        time.sleep(study.poll_seconds)
                        continue
                    done, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in done:
                        unit = in_flight.pop(ref)
                        try:
                            trials = ray.get(ref)
                        except ray.exceptions.RayTaskError as error:
                            study.store.release(study.name, unit.key)
                            cause = getattr(error, "cause", None)
                            if isinstance(cause, Exception):
                                raise cause from None
                            raise RuntimeError(str(error).splitlines()[0]) from None
                        study.commit(unit, trials)
        except BaseException:
            for ref, unit in in_flight.items():
                ray.cancel(ref, force=True)
                study.store.release(study.name, unit.key)
            raise


def executor_for(runtime: RuntimeConfig) -> Executor:
    if runtime.executor == "ray":
        return RayExecutor(runtime.workers, runtime.threads)
    return LocalExecutor()
