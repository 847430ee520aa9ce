"""Running studies: units, claims, resume, workers and executors, shared across strategies."""

from sparsenas.study.executors import Executor, LocalExecutor, RayExecutor, executor_for
from sparsenas.study.runtime import RuntimeConfig
from sparsenas.study.study import Study, StudyContext, Unit, check_plan, epoch_chain

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "RuntimeConfig", "Study", "StudyContext",
           "Unit", "check_plan", "epoch_chain", "executor_for"]
