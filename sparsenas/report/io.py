"""Writing results: every file is written whole (to a temporary name, then renamed), so several
workers finishing a study together, or a crash mid-write, never leave a torn file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import matplotlib.figure

    from sparsenas.store import Store
    from sparsenas.strategies.base import Strategy


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_figure(figure: matplotlib.figure.Figure, path: str | Path) -> Path:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _temporary(path)
    figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)
    os.replace(tmp, path)
    return path


def _json_ready(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def check_writable(out_dir: str | Path) -> Path:
    """Creates ``out_dir`` if needed and checks that files can be written there, before any work
    is done (a read-only output directory is bad input, not a late failure)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = _temporary(out / "write-check")
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OSError(f"output directory {str(out)!r} is not writable ({error.strerror})") from None
    return out


def write_report(store: Store, study: str, strategy: Strategy, out_dir: str | Path) -> dict[str, Path]:
    """Writes study ``study``'s summary (summary.md, summary.json, summary.csv), every trial
    (trials.csv, trials.jsonl) and the strategy's plots to ``out_dir``; returns the paths by
    name. Reads the store only."""
    from sparsenas.config import identity
    from sparsenas.store.sqlite_store import write_csv_rows

    out = check_writable(out_dir)
    trials = store.trials(study)
    summary = strategy.summarize(trials)
    paths = {"table": atomic_write_text(out / "summary.md", summary.table)}
    document = {"method": strategy.name, "study": study, "config": identity(strategy.config),
                "rows": summary.rows}
    paths["summary_json"] = atomic_write_text(
        out / "summary.json", json.dumps(_json_ready(document), indent=2) + "\n")
    summary_csv = _temporary(out / "summary.csv")
    write_csv_rows(_json_ready(summary.rows), summary_csv)
    paths["summary_csv"] = out / "summary.csv"
    os.replace(summary_csv, paths["summary_csv"])
    for name, export in (("trials_csv", store.export_csv), ("trials_jsonl", store.export_jsonl)):
        path = out / ("trials.csv" if name == "trials_csv" else "trials.jsonl")
        tmp = _temporary(path)
        export(study, tmp)
        os.replace(tmp, path)
        paths[name] = path
    paths.update(strategy.plots(summary, trials, out))
    return paths
