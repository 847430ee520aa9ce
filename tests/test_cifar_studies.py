"""The one-shot strategies built for 8x8 digits also run on CIFAR-10 (32x32 RGB) read from local
files: a tiny BigNAS and DASS study each, end to end through the CLI, on files the test writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data import _write_cifar_batch

from sparsenas.cli import main


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        _write_cifar_batch(batches / name, rng.integers(0, 256, (60, 3, 32, 32), dtype=np.uint8),
                           [j % 10 for j in range(60)])
    return root


@pytest.mark.slow  # two small studies on 32x32 images
@pytest.mark.parametrize("argv, rows", [
    (["bignas", "--preset", "quick", "--resolutions", "28,32", "--epochs", "1"],
     {"bignas", "uniform", "no-kd", "standalone"}),
    (["dass", "--preset", "quick", "--epochs", "1"], {"dass", "darts-v2", "darts-here"}),
])
def test_one_shot_study_on_cifar10_files(tmp_path, cifar_root, one_thread, argv, rows):
    out = tmp_path / "out"
    assert main([*argv, "--dataset", "cifar10", "--data-root", str(cifar_root), "--seeds", "0",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["dataset"] == "cifar10"
    column = "variant" if argv[0] == "bignas" else "genotype"
    assert {row[column] for row in summary["rows"]} == rows
    assert all(row["n"] == 1 for row in summary["rows"] if row.get("mean_acc") is not None)
