"""Every public op keeps one input contract on both paths: the table of tests/contract_cases.py
runs on the native kernels in process and on the references (SPARSENAS_DISABLE_EXTENSION=1) in
one subprocess; each bad input raises the expected exception naming its argument in the
library's own words, and each edge input gives the right result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import pytest

import sparsenas
from conftest import SUBPROCESS_CWD
from contract_cases import CASES, problems, run

IDS = [case.id for case in CASES]


def test_case_ids_are_unique():
    assert len(set(IDS)) == len(IDS)


@pytest.fixture(scope="module")
def reference_outcomes() -> dict:
    env = dict(os.environ, SPARSENAS_DISABLE_EXTENSION="1")
    code = "import json, contract_cases; print(json.dumps(contract_cases.run_all()))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=SUBPROCESS_CWD, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["extension"] == "disabled by SPARSENAS_DISABLE_EXTENSION"
    return report["outcomes"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_native_path(case):
    assert sparsenas.info()["extension"] == "loaded", "the native leg needs the extension"
    assert problems(case, run(case)) == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_path(case, reference_outcomes):
    assert problems(case, reference_outcomes[case.id]) == []


def test_paths_give_the_same_messages(reference_outcomes):
    differing = {}
    for case in CASES:
        native = run(case)
        if case.error is not None and native.get("message") != reference_outcomes[case.id].get(
                "message"):
            differing[case.id] = (native.get("message"), reference_outcomes[case.id].get("message"))
    assert differing == {}


# One subprocess tries the three ways the extension can load: it fails (a None entry in
# sys.modules makes `from sparsenas import _C` raise ImportError, as a missing or stale build
# does), it is disabled, it loads.
_LOAD_SCRIPT = """
import importlib, json, os, sys, warnings
warnings.simplefilter("always")
results = {}

def load(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.reload(extension) if "extension" in globals() else None
    results[name] = {"error": module.load_error, "warnings": [str(w.message) for w in caught]}

sys.modules["sparsenas._C"] = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import sparsenas._extension as extension
results["failed"] = {"error": extension.load_error, "warnings": [str(w.message) for w in caught]}
os.environ["SPARSENAS_DISABLE_EXTENSION"] = "1"
load("disabled")
del sys.modules["sparsenas._C"], os.environ["SPARSENAS_DISABLE_EXTENSION"]
load("loaded")
print(json.dumps(results))
"""


def test_extension_load_failure_warns_once_with_the_reason():
    env = {k: v for k, v in os.environ.items() if k != "SPARSENAS_DISABLE_EXTENSION"}
    completed = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT], cwd=SUBPROCESS_CWD, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    failed = results["failed"]
    assert failed["error"].startswith("not importable")
    assert len(failed["warnings"]) == 1
    assert "sparsenas._C failed to load" in failed["warnings"][0]
    assert "Rebuild" in failed["warnings"][0]
    assert results["disabled"] == {"error": "disabled by SPARSENAS_DISABLE_EXTENSION",
                                   "warnings": []}
    assert results["loaded"] == {"error": None, "warnings": []}


def test_fake_kernels_refuse_a_meta_tensor_among_real_ones():
    # Direct operator calls: a meta argument sends the call to the fake kernel, which must raise
    # as the native kernel does instead of returning an uninitialised tensor.
    import torch

    ops, meta = torch.ops.sparsenas, torch.device("meta")
    scores = torch.rand(3, 8)
    counts = torch.full((3,), 2, dtype=torch.long)
    x, row_ptr = torch.ones(2, 4), torch.tensor([0, 1, 2], dtype=torch.int32)
    col_idx, values = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([1.0, 2.0])
    calls = [
        (lambda: ops.topk_mask(scores, counts.to(meta)), "'k'"),
        (lambda: ops.gumbel_topk_mask(scores, counts.to(meta), 0), "'k'"),
        (lambda: ops.philox4x32_10(torch.zeros(2, 4, dtype=torch.long),
                                   torch.zeros(2, 2, dtype=torch.long, device=meta)), "'key'"),
        (lambda: ops.sparse_linear(x, row_ptr, col_idx, values.to(meta)), "'values'"),
        (lambda: ops.nm_linear(x, torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.uint8,
                                                                 device=meta), 4), "'indices'"),
        (lambda: ops.masked_linear(x, torch.ones(3, 4, device=meta),
                                   torch.ones(3, 4, dtype=torch.bool)), "'weight'"),
        (lambda: ops.ntk_gram_block_(torch.zeros(2, 2, dtype=torch.float64), x.to(meta),
                                     torch.ones(2, 1, 3)), "'a'"),
    ]
    for call, argument in calls:
        with pytest.raises(ValueError, match=argument):
            call()
