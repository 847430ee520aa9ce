"""A byte-level text dataset built offline from the Python standard library's own source files.

The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (site-packages excluded) are taken
in sorted order and split *by file* (a stable hash of the relative path and ``seed``): 10 % test,
10 % validation, the rest train. Each split's files are concatenated (each file ends with a
newline) up to a byte cap and cut into non-overlapping windows of ``context + 1`` bytes:
x = window[:-1], y = window[1:] (int64 [n, context]). The contents depend on the Python version
that runs the code (its standard library), nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

from sparsenas.data.datasets import DATASETS, Dataset, DatasetError


def _split_of(relative: str, seed: int) -> str:
    bucket = hashlib.blake2b(f"{seed}:{relative}".encode(), digest_size=4).digest()[0] % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _windows(data: bytes, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(data) // (context + 1)
    if count == 0:
        return torch.zeros(0, context, dtype=torch.long), torch.zeros(0, context, dtype=torch.long)
    flat = torch.frombuffer(bytearray(data[:count * (context + 1)]), dtype=torch.uint8)
    windows = flat.view(count, context + 1).long()
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def load_stdlib_text(root: str | Path | None = None, seed: int = 0, context: int = 64,
                     train_bytes: int = 400_000, eval_bytes: int = 60_000) -> Dataset:
    """Byte-level language modelling data (see the module docstring). ``root``: a source
    directory to use instead of the standard library (any tree of ``*.py`` files)."""
    if context < 1 or train_bytes <= context or eval_bytes <= context:
        raise DatasetError(f"stdlib_text: 'context' must be >= 1 and the byte caps larger than "
                           f"it, got context={context}, train_bytes={train_bytes}, "
                           f"eval_bytes={eval_bytes}")
    directory = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in directory.rglob("*.py") if "site-packages" not in p.parts)
    caps = {"train": train_bytes, "val": eval_bytes, "test": eval_bytes}
    parts: dict[str, list[bytes]] = {name: [] for name in caps}
    sizes = dict.fromkeys(caps, 0)
    for path in files:
        split = _split_of(path.relative_to(directory).as_posix(), seed)
        if sizes[split] >= caps[split]:
            continue
        text = path.read_bytes().rstrip(b"\n") + b"\n"
        parts[split].append(text)
        sizes[split] += len(text)
    splits = {name: _windows(b"".join(chunks)[:caps[name]], context)
              for name, chunks in parts.items()}
    if any(len(x) == 0 for x, _ in splits.values()):
        raise DatasetError(f"stdlib_text: {str(directory)!r} holds too little Python source for "
                           f"three splits")
    return Dataset("stdlib_text", splits["train"][0], splits["train"][1], splits["val"][0],
                   splits["val"][1], splits["test"][0], splits["test"][1], num_classes=256)


DATASETS.register("stdlib_text", load_stdlib_text)
