"""Loads the native extension ``sparsenas._C``, which registers ``torch.ops.sparsenas.*``.

Set ``SPARSENAS_DISABLE_EXTENSION=1`` to run every op on its pure-PyTorch reference instead.
When the extension fails to load otherwise (not built, or built against another torch), every
op runs its reference too, and one ``RuntimeWarning`` at import says why and how to rebuild.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

import torch

_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _load() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("SPARSENAS_DISABLE_EXTENSION", "0") not in ("", "0"):
        return None, "disabled by SPARSENAS_DISABLE_EXTENSION"
    try:
        from sparsenas import _C
    except ImportError as error:
        warnings.warn(
            f"sparsenas: the native extension sparsenas._C failed to load ({error}); every op "
            f"runs its pure-PyTorch reference, which is much slower. Rebuild the extension "
            f"against the installed torch {torch.__version__} (from the source tree: pip install "
            f"--no-build-isolation -e .), or set SPARSENAS_DISABLE_EXTENSION=1 to use the "
            f"references without this warning.", RuntimeWarning, stacklevel=2)
        return None, f"not importable ({error})"
    return _C, None


native, load_error = _load()


def kernel_path_cache_file() -> Path | None:
    """Where the CPU kernels record their measured path choices for this machine and build.

    Under ``$SPARSENAS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sparsenas``, else
    ``~/.cache/sparsenas``); the name hashes the CPU model and its flags (one model name covers
    CPUs with and without AVX-512), the torch and sparsenas versions and the compiled extension
    file, so that another machine or a rebuild measures afresh. None without the extension.
    """
    if native is None:
        return None
    root = os.environ.get("SPARSENAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "sparsenas")
    extension = os.stat(native.__file__)
    identity = "|".join([*_cpu_identity(), torch.__version__, native.__version__,
                         str(extension.st_size), str(extension.st_mtime_ns)])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(root) / f"kernel-paths-{digest}.tsv"


def _cpu_identity() -> tuple[str, str]:
    """The model name and feature flags of the first CPU /proc/cpuinfo lists."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        first = ""
    fields = {key.strip(): value.strip()
              for key, _, value in (line.partition(":") for line in first.splitlines())}
    return (fields.get("model name") or platform.processor() or platform.machine(),
            " ".join(sorted(fields.get("flags", "").split())))


def _use_kernel_path_cache() -> None:
    file = kernel_path_cache_file()
    if file is None:
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # no writable cache directory: choices are measured in every process
    native.use_kernel_path_cache(str(file))


_use_kernel_path_cache()


def _native_ops() -> list[str]:
    if native is None:
        return []
    prefix = "sparsenas::"
    return sorted(
        name[len(prefix) :]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(prefix)
    )


# Computed once at import: a plain set lookup keeps the dispatch decision traceable by
# torch.compile (the dispatcher query itself is not).
_NATIVE_KERNELS = frozenset(
    (op, device)
    for op in _native_ops()
    for device, key in _DEVICE_KEYS.items()
    if torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsenas::{op}", key)
)


def has_native_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.sparsenas.<op>`` has a compiled kernel for ``device_type``."""
    return (op, device_type) in _NATIVE_KERNELS


def info() -> dict:
    """Version, torch version, and for every op whether it runs natively on CPU / CUDA."""
    import sparsenas

    return {
        "sparsenas": sparsenas.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "extension": "loaded" if native is not None else load_error,
        "extension_built_with_cuda": bool(native is not None and native.with_cuda),
        "cuda_archs": native.cuda_archs if native is not None else "",
        "ops": {
            op: {device: ("native" if has_native_kernel(op, device) else "reference")
                 for device in _DEVICE_KEYS}
            for op in _native_ops()
        },
    }
