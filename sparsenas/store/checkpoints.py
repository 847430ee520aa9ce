"""Model checkpoints as safetensors files: tensors and string metadata only, so loading one never
runs code (no pickle). A training checkpoint adds the trainer's state (optimisers, schedulers):
its tensors go into the same file, its plain data into the metadata as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from safetensors import safe_open
from typing import Any

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


_MODEL, _STATE, _STATE_KEY = "model/", "train_state/", "train_state"


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """JSON-ready ``value``: tensors moved to ``tensors``; dicts kept as key-value pairs, so the
    integer keys of an optimiser's state survive, and tuples kept apart from lists."""
    if isinstance(value, Tensor):
        name = f"{_STATE}{len(tensors)}"
        tensors[name] = value
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[key, _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_encode(item, tensors) for item in value]}
    return value


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if not isinstance(value, dict):
        return value
    (kind, content), = value.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _decode(item, tensors) for key, item in content}
    items = [_decode(item, tensors) for item in content]
    return tuple(items) if kind == "tuple" else items


def save_training_checkpoint(path: str | Path, model_state: dict[str, Tensor],
                             train_state: dict[str, Any],
                             metadata: dict[str, str] | None = None) -> Path:
    """Writes a model's ``state_dict`` and the trainer's ``TrainResult.state`` (optimisers,
    schedulers, best epochs) atomically to one safetensors file."""
    tensors = {_MODEL + key: value for key, value in model_state.items()}
    structure = _encode(train_state, tensors)
    return save_checkpoint(path, tensors, {**(metadata or {}), _STATE_KEY: json.dumps(structure)})


def load_training_checkpoint(path: str | Path
                             ) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, str]]:
    """(model state_dict, trainer state, metadata) of a :func:`save_training_checkpoint` file."""
    tensors, metadata = load_checkpoint(path)
    if _STATE_KEY not in metadata:
        raise ValueError(f"checkpoint {str(path)!r} holds no trainer state (written by "
                         f"save_checkpoint, not save_training_checkpoint)")
    train_state = _decode(json.loads(metadata.pop(_STATE_KEY)), tensors)
    model_state = {key[len(_MODEL):]: value for key, value in tensors.items()
                   if key.startswith(_MODEL)}
    return model_state, train_state, metadata
