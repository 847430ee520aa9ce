"""The Strategy base: what a search method plugs into the framework.

A strategy plans its units (deterministic keys and dependencies), runs one unit into trial records
(through the Trainer and the spaces, never a loop of its own), and summarises the finished trials
into rows (``summary.json``), a markdown table (``summary.md``) and plots. It declares one config
dataclass composed of shared pieces (data, model, training, runtime …) and its own options, and
named presets of option values (every strategy has ``quick``). Register it in :data:`STRATEGIES`
and the CLI gains a sub-command whose flags come from the config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sparsenas.data import Dataset
from sparsenas.registry import Registry
from sparsenas.store import TrialRecord
from sparsenas.study.study import StudyContext, Unit


@dataclass
class Summary:
    """rows: the summary table as plain records (summary.json, summary.csv); table: the same as
    markdown (summary.md); details: anything the strategy's plots need beyond the rows."""

    rows: list[dict[str, Any]]
    table: str
    details: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__}: config must be a {self.Config.__name__}, got "
                            f"{type(config).__name__}")
        self.config = config

    def check_data(self, data: Dataset) -> None:
        """Checks that the config fits the data (image size, classes …) before the study is
        recorded or any unit runs; a ValueError names the option and what was expected."""

    @abstractmethod
    def plan(self) -> list[Unit]:
        """Every unit of the study, dependencies before dependents."""

    @abstractmethod
    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        """Runs one unit; its trials are committed together when it returns."""

    @abstractmethod
    def summarize(self, trials: list[TrialRecord]) -> Summary:
        """The summary of the finished trials (of a finished or partly finished study)."""

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        """Writes the strategy's PNG plots to ``out_dir``; returns their paths by name."""
        return {}


def _load_builtin_strategies() -> None:
    import sparsenas.strategies.bignas  # noqa: F401
    import sparsenas.strategies.dass  # noqa: F401
    import sparsenas.strategies.evolution  # noqa: F401
    import sparsenas.strategies.evopress  # noqa: F401
    import sparsenas.strategies.lga  # noqa: F401
    import sparsenas.strategies.ofb  # noqa: F401
    import sparsenas.strategies.random_search  # noqa: F401


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", _load_builtin_strategies)
