"""Shared test fixtures: every op test is parametrised over the devices this machine has, so the
same suite verifies the CUDA kernels when it runs on a GPU machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Working directory for tests that start Python subprocesses: `python -m` / `-c` put their working
# directory first on sys.path, and from the repository root that would import the source tree,
# which holds no compiled extension after a non-editable install, instead of the installed package.
SUBPROCESS_CWD = Path(__file__).resolve().parent

# The kernels' on-disk record of measured path choices goes to a directory of this test session
# (inherited by the subprocesses tests start), not to the user's cache.
os.environ["SPARSENAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsenas-test-cache-")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def pytest_report_header(config):
    import sparsenas

    report = sparsenas.info()
    return [
        f"sparsenas {report['sparsenas']}, torch {report['torch']}, extension: {report['extension']}",
        f"test devices: {', '.join(DEVICES)}",
    ]


@pytest.fixture
def one_thread():
    """Runs a test with one torch thread: tiny models are faster without intra-op threads, and
    much faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def exact_float32_convolutions():
    """Full float32 cuDNN convolutions (no TF32, whose 10-bit mantissa would fail comparisons
    between different convolution calls)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous
