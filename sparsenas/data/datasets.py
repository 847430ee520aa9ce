"""Dataset loading with deterministic, seeded train / validation / test splits.

Every loader returns a :class:`Dataset` of in-memory float32 tensors x [n, C, H, W] (standardised
per channel with the training split's statistics) and int64 labels y [n]. Splits depend only on the
``seed`` argument. No loader downloads anything: MNIST and CIFAR-10 are read from a local directory
in their standard distribution formats, MNIST-1D is generated in memory by the ``mnist1d`` package.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from sparsenas.config import ConfigPiece, option
from sparsenas.registry import Registry
from sparsenas.seeds import derive_seed


class DatasetError(ValueError):
    """An unknown dataset, a missing data directory or a malformed data file."""


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits held in memory. x: float32 [n, C, H, W]; y: int64 [n]."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        moved = {name: getattr(self, name).to(device)
                 for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Dataset(name=self.name, num_classes=self.num_classes, **moved)


def _standardise(x_train: np.ndarray, *others: np.ndarray) -> list[Tensor]:
    """Per-channel standardisation with the training split's mean and std."""
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (x_train, *others)]


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Seeded split, stratified by label whenever every class can appear on both sides."""
    _, counts = np.unique(y, return_counts=True)
    held_out = int(np.ceil(fraction * len(y)))
    feasible = counts.min() >= 2 and len(counts) <= held_out <= len(y) - len(counts)
    return train_test_split(x, y, test_size=fraction, random_state=seed,
                            stratify=y if feasible else None)


def _split_three(name: str, x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float,
                 test_fraction: float, num_classes: int) -> Dataset:
    """Stratified seeded train / validation / test split of one pool of examples."""
    x_rest, x_test, y_rest, y_test = _split(x, y, test_fraction, seed)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, val_fraction / (1.0 - test_fraction),
                                            seed)
    return _make(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def _split_train_val(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                     y_test: np.ndarray, seed: int, val_fraction: float,
                     num_classes: int) -> Dataset:
    """A seeded validation split carved from an official training set; the test set is kept."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    x_train, x_val, y_train, y_val = _split(x_train, y_train, val_fraction, seed)
    return _make(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def _make(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
          y_val: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int) -> Dataset:
    x_train_t, x_val_t, x_test_t = _standardise(x_train.astype(np.float64),
                                                x_val.astype(np.float64),
                                                x_test.astype(np.float64))
    labels = [torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in (y_train, y_val, y_test)]
    return Dataset(name, x_train_t, labels[0], x_val_t, labels[1], x_test_t, labels[2], num_classes)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0
            and val_fraction + test_fraction < 1.0):
        raise DatasetError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) "
                           f"must be in (0, 1) and sum to less than 1")


def load_digits(root: str | Path | None = None, seed: int = 0, val_fraction: float = 0.2,
                test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): x [n, 1, 8, 8]."""
    from sklearn.datasets import load_digits as sklearn_digits

    _check_fractions(val_fraction, test_fraction)
    bunch = sklearn_digits()
    x = bunch.images.reshape(-1, 1, 8, 8) / 16.0
    return _split_three("digits", x, bunch.target, seed, val_fraction, test_fraction, 10)


def load_synthetic(root: str | Path | None = None, seed: int = 0, val_fraction: float = 0.2,
                   test_fraction: float = 0.2, num_examples: int = 2000, num_classes: int = 10,
                   input_shape: tuple[int, int, int] = (1, 8, 8), noise: float = 1.0) -> Dataset:
    """Gaussian class clusters around random class means, drawn from ``seed`` (a fast, fully
    controlled task for tests and smoke runs)."""
    _check_fractions(val_fraction, test_fraction)
    generator = np.random.default_rng(seed)
    features = int(np.prod(input_shape))
    means = generator.standard_normal((num_classes, features))
    y = np.arange(num_examples) % num_classes
    x = means[y] + noise * generator.standard_normal((num_examples, features))
    x = x.reshape(num_examples, *input_shape)
    return _split_three("synthetic", x, y, seed, val_fraction, test_fraction, num_classes)


def _require_directory(dataset: str, root: str | Path | None) -> Path:
    if root is None:
        raise DatasetError(f"dataset {dataset!r} is read from local files: pass its directory "
                           f"(--data-root); nothing is downloaded")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset {dataset!r}: data directory {str(path)!r} does not exist")
    return path


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), optionally gzip-compressed: a big-endian header
    (two zero bytes, a type code, the number of dimensions, one uint32 per dimension), then the
    data in row-major order."""
    path = Path(path)
    type_codes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    with _open_maybe_gz(path) as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in type_codes:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    dtype = np.dtype(type_codes[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path}: IDX header promises {shape} ({expected} bytes), file holds "
                           f"{len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_file(directory: Path, dataset: str, names: tuple[str, ...]) -> Path:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"dataset {dataset!r}: none of {list(names)} (optionally .gz) found in "
                       f"{str(directory)!r}")


def load_mnist(root: str | Path | None = None, seed: int = 0,
               val_fraction: float = 0.1) -> Dataset:
    """MNIST from the four IDX files in ``root`` (``train-images-idx3-ubyte`` etc., plain or .gz):
    x [n, 1, 28, 28]; the official test set is the test split, validation is carved from train."""
    directory = _require_directory("mnist", root)

    def read(prefix: str, kind: str, rank: int) -> np.ndarray:
        path = _find_file(directory, "mnist",
                          (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"))
        return read_idx(path)

    x_train, y_train = read("train", "images", 3), read("train", "labels", 1)
    x_test, y_test = read("t10k", "images", 3), read("t10k", "labels", 1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"dataset 'mnist' in {str(directory)!r}: image and label counts differ")
    return _split_train_val("mnist", x_train[:, None] / 255.0, y_train, x_test[:, None] / 255.0,
                            y_test, seed, val_fraction, 10)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes and numpy arrays): any
    other global a pickle names is refused, so a tampered file cannot run code on load."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which a "
                                         f"data batch never needs; refusing to load it")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # CIFAR-10's python batches are pickles by format (written by Python 2, hence
    # encoding='bytes'); they are read only from the user's own directory, and through an
    # unpickler that admits numpy arrays and nothing else.
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as error:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{path}: expected data [n, 3072] and n labels, got data "
                           f"{data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path | None = None, seed: int = 0,
                 val_fraction: float = 0.1) -> Dataset:
    """CIFAR-10 from its python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) in
    ``root`` or ``root/cifar-10-batches-py``: x [n, 3, 32, 32]."""
    directory = _require_directory("cifar10", root)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    train_files = sorted(directory.glob("data_batch_*"))
    test_file = directory / "test_batch"
    if not train_files or not test_file.is_file():
        raise DatasetError(f"dataset 'cifar10': expected data_batch_* and test_batch in "
                           f"{str(directory)!r}")
    train = [_read_cifar_batch(path) for path in train_files]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    x_test, y_test = _read_cifar_batch(test_file)
    return _split_train_val("cifar10", x_train / 255.0, y_train, x_test / 255.0, y_test, seed,
                            val_fraction, 10)


def load_mnist1d(root: str | Path | None = None, seed: int = 0, val_fraction: float = 0.2,
                 num_samples: int | None = None) -> Dataset:
    """MNIST-1D (Greydanus, 2020): ten 1-D digit templates padded, shifted, scaled, sheared and
    noised into length-40 signals, on which MLPs and CNNs differ clearly. Generated in memory by
    ``mnist1d.data.make_dataset`` with its default arguments (4000 train / 1000 test examples),
    the generator seeded from ``seed``; its download path and cache file are never used.
    ``num_samples`` (default: the package's 5000) makes a smaller or larger set.

    x [n, 1, 1, 40]: a one-row image, so the 2-D models and the K-candidate ops apply unchanged and
    a (1, k) convolution kernel is a 1-D convolution along the signal. The generator's own
    train / test split is kept; validation is carved from its train split.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DatasetError("dataset 'mnist1d' is generated by the mnist1d package: "
                           "pip install mnist1d") from None

    args = get_dataset_args()
    if num_samples is not None:
        if num_samples < 10 * 2:
            raise DatasetError(f"load_mnist1d(): argument 'num_samples' must be >= 20 (two per "
                               f"class), got {num_samples}")
        args.num_samples = int(num_samples)
    # make_dataset seeds numpy's and Python's global generators (np.random.seed takes 32 bits);
    # they are restored afterwards so that loading data never changes anyone else's stream.
    args.seed = derive_seed("mnist1d", seed) % 2**32
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    def signals(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 1, 1, -1)

    return _split_train_val("mnist1d", signals(generated["x"]), generated["y"],
                            signals(generated["x_test"]), generated["y_test"], seed, val_fraction,
                            10)


Loader = Callable[..., Dataset]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.register("digits", load_digits)
DATASETS.register("synthetic", load_synthetic)
DATASETS.register("mnist", load_mnist)
DATASETS.register("cifar10", load_cifar10)
DATASETS.register("mnist1d", load_mnist1d)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, root: str | Path | None = None, seed: int = 0, **options) -> Dataset:
    """The dataset registered as ``name`` with splits drawn from ``seed``; ``root`` is the local
    directory of the file-based datasets (mnist, cifar10)."""
    return DATASETS.get(name)(root=root, seed=seed, **options)


@dataclass(frozen=True)
class DataConfig(ConfigPiece):
    """Which data a study uses (a config piece: each field is a CLI option)."""

    dataset: str = option("digits", "dataset: digits (embedded), synthetic, mnist1d (generated), "
                                    "or mnist / cifar10 from local files (nothing is downloaded)")
    data_root: str | None = option(None, "directory of the file-based datasets", runtime=True)
    data_seed: int = option(0, "seed of the train / validation / test split")

    def validate(self) -> None:
        DATASETS.get(self.dataset)  # an unknown name fails here, listing the known ones

    def load(self) -> Dataset:
        """The dataset (loaded once per process and configuration)."""
        return _load_cached(self.dataset, self.data_root, self.data_seed)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str | None, seed: int) -> Dataset:
    return load_dataset(name, root, seed=seed)
