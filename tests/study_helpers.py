"""Helpers shared by the study tests: run a strategy in-process, read a store's results without
timings, start the CLI as a separate process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import SUBPROCESS_CWD

from sparsenas.config import from_flat
from sparsenas.report.io import write_report
from sparsenas.store import Store
from sparsenas.study import Study


def results(store: Store, study: str) -> dict[str, tuple]:
    """Every trial's identity and outcome, without timings."""
    return {t.key: (t.unit, t.kind, t.seed, t.parent, t.generation, t.config, t.final,
                    [{k: v for k, v in row.items() if k != "seconds"} for row in t.epochs])
            for t in store.trials(study)}


def run_in_process(strategy_class, path: Path, options: dict, out: Path | None = None,
                   **study_options) -> tuple[dict, str]:
    """Runs the study with the CLI's thread setting (so results match the CLI's bit for bit);
    returns its results and its summary table."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        strategy = strategy_class(from_flat(strategy_class.Config, options))
        with Store(path) as store:
            Study(strategy, store, progress=False, **study_options).run()
            paths = write_report(store, strategy.name, strategy, out or path.parent / "report")
            return results(store, strategy.name), paths["table"].read_text()
    finally:
        torch.set_num_threads(threads)


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparsenas.cli", *args], cwd=SUBPROCESS_CWD,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def flags(options: dict) -> list[str]:
    """CLI flags for flat options."""
    out = []
    for name, value in options.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out += [f"--{name.replace('_', '-')}", text]
    return out


def kill_after(victim: subprocess.Popen, store_path: Path, study: str, until: int | str,
               timeout: float = 300) -> set[str]:
    """Waits until ``until`` units of ``study`` are finished in the store (a count), or the unit
    named ``until`` is (or the process ends), kills the process with SIGKILL and returns the
    finished units."""
    def done(finished: set[str]) -> bool:
        return until in finished if isinstance(until, str) else len(finished) >= until

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            with Store(store_path, readonly=True) as store:
                finished = store.finished_units(study) if store.study(study) else set()
        except Exception:  # not created yet, or the victim is writing the schema right now
            finished = set()
        if done(finished):
            break
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with Store(store_path, readonly=True) as store:
        return set(store.finished_units(study))
