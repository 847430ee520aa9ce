"""Loads the native extension ``sparsenas._C``, which registers ``torch.ops.sparsenas.*``.

Set ``SPARSENAS_DISABLE_EXTENSION=1`` to run every op on its pure-PyTorch reference instead.
When the extension fails to load otherwise (not built, or built against another torch), every
op runs its reference too, and one ``RuntimeWarning`` at import says why and how to rebuild.
"""

from __future__ import annotations

import os
import warnings
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
