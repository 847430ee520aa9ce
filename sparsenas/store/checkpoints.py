"""Model checkpoints as safetensors files: tensors and string metadata only, so loading one never
runs code (no pickle)."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import Tensor


def save_checkpoint(path: str | Path, state_dict: dict[str, Tensor],
                    metadata: dict[str, str] | None = None) -> Path:
    """Writes ``state_dict`` (and string ``metadata``) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict and metadata of a checkpoint written by :func:`save_checkpoint`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return load_file(str(path)), metadata
