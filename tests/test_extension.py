import os
import subprocess
import sys

import sparsenas
from sparsenas._extension import has_native_kernel


def test_info_reports_native_cpu_kernels():
    report = sparsenas.info()
    assert report["extension"] == "loaded"
    assert report["ops"]["masked_linear"]["cpu"] == "native"
    assert has_native_kernel("masked_linear", "cpu")


def test_info_module_runs_and_disable_variable_forces_reference():
    env = dict(os.environ, SPARSENAS_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-m", "sparsenas.info"], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert "disabled by SPARSENAS_DISABLE_EXTENSION" in out
    code = ("import torch; from sparsenas.ops import masked_linear;"
            "x = torch.randn(3, 4); w = torch.randn(2, 4); m = torch.ones(2, 4, dtype=torch.bool);"
            "torch.testing.assert_close(masked_linear(x, w, m), x @ w.t()); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "ok"
