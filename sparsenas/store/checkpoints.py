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


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """Plain JSON for ``value``: tensors move to ``tensors`` (replaced by their key), dicts keep
    their key types (optimiser state is keyed by int) and tuples stay tuples."""
    if isinstance(value, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__items__": [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_state(): cannot store a {type(value).__name__} (tensors, dicts, "
                    f"lists, tuples, numbers, strings and None only)")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value["__items__"]}
    return value


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes a nested state (dicts, lists, tuples, tensors, plain values: a model's state dict,
    a train step's progress, a Trainer's ``TrainResult.state`` with its optimiser and scheduler
    state) atomically as one safetensors file: the tensors as tensors, the structure as JSON in
    the metadata. :func:`load_state` returns it with key types, tuples and tensors restored."""
    tensors: dict[str, Tensor] = {}
    structure = json.dumps(_encode(state, tensors))
    return save_checkpoint(path, tensors, {"state": structure})


def load_state(path: str | Path) -> dict[str, Any]:
    """The nested state written by :func:`save_state` (tensors on the CPU, freshly allocated)."""
    tensors, metadata = load_checkpoint(path)
    if "state" not in metadata:
        raise ValueError(f"{path}: not a checkpoint written by save_state (no 'state' metadata)")
    return _decode(json.loads(metadata["state"]), tensors)
