"""Model checkpoints as safetensors files: tensors and string metadata only, so loading one never
runs code (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


_TENSOR = "__tensor__"
_DICT = "__dict__"


def _split_state(value: Any, tensors: dict[str, Tensor], path: str) -> Any:
    """Plain JSON data for ``value`` with every tensor moved into ``tensors`` (a reference left
    in its place); dicts keep their key types (optimiser states are keyed by int)."""
    if isinstance(value, Tensor):
        tensors[path] = value
        return {_TENSOR: path}
    if isinstance(value, dict):
        return {_DICT: [[k, _split_state(v, tensors, f"{path}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split_state(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state: {path} holds a {type(value).__name__}, which a checkpoint "
                    f"cannot store (tensors and plain data only)")


def _join_state(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict) and _TENSOR in value:
        return tensors[value[_TENSOR]]
    if isinstance(value, dict):
        return {k: _join_state(v, tensors) for k, v in value[_DICT]}
    if isinstance(value, list):
        return [_join_state(v, tensors) for v in value]
    return value


def save_training_checkpoint(path: str | Path, weights: dict[str, Tensor], state: dict[str, Any],
                             metadata: dict[str, str] | None = None) -> Path:
    """One atomic safetensors file holding model ``weights`` and a training ``state`` (optimiser,
    scheduler and step state: nested dicts / lists of tensors and plain data), its tensors beside
    the weights and its structure as JSON in the metadata."""
    tensors: dict[str, Tensor] = {}
    structure = _split_state(state, tensors, "state")
    clash = sorted(set(weights) & set(tensors))
    if clash:
        raise ValueError(f"save_training_checkpoint(): weight names {clash} clash with the state")
    return save_checkpoint(path, {**weights, **tensors},
                           {**(metadata or {}), "training_state": json.dumps(structure)})


def load_training_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any],
                                                        dict[str, str]]:
    """(weights, training state, metadata) of a file written by
    :func:`save_training_checkpoint`."""
    tensors, metadata = load_checkpoint(path)
    if "training_state" not in metadata:
        raise ValueError(f"checkpoint {str(path)!r} holds no training state")
    structure = json.loads(metadata.pop("training_state"))
    state = _join_state(structure, tensors)
    weights = {k: v for k, v in tensors.items() if not k.startswith("state/")}
    return weights, state, metadata
