"""Dataset loaders: embedded digits, synthetic data, MNIST idx and CIFAR-10 batches written here."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from sparsenas.data import DatasetError, list_datasets, load_dataset, read_idx
from sparsenas.registry import UnknownNameError


def test_digits_splits_are_seeded_disjoint_and_standardised():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert abs(a.x_train.mean().item()) < 1e-4
    assert set(a.y_val.tolist()) == set(range(10))  # stratified
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (1077, 360, 360)


def test_synthetic_is_deterministic():
    a, b = load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=1)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.dtype == torch.float32
    assert "synthetic" in list_datasets()


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    train_labels = (np.arange(60) % 10).astype(np.uint8)
    test_images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    test_labels = (np.arange(20) % 10).astype(np.uint8)
    for name, array in (("train-images-idx3-ubyte", train_images),
                        ("train-labels-idx1-ubyte", train_labels),
                        ("t10k-images-idx3-ubyte", test_images),
                        ("t10k-labels-idx1-ubyte", test_labels)):
        _write_idx(tmp_path / name, array, compress)
    suffix = ".gz" if compress else ""
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}"),
                                  test_images)
    data = load_dataset("mnist", root=tmp_path, seed=0)
    assert data.input_shape == (1, 28, 28)
    assert len(data.x_train) + len(data.x_val) == 60
    assert data.y_test.tolist() == test_labels.tolist()
    # Standardisation is affine: the test images keep their pixel order.
    raw = torch.from_numpy(test_images.astype(np.float32)).flatten()
    corr = np.corrcoef(raw.numpy(), data.x_test.flatten().numpy())[0, 1]
    assert corr > 0.999


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "bad")
    good = tmp_path / "short"
    good.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], dtype=">u4").tobytes() + b"\x00" * 3)
    with pytest.raises(DatasetError, match="promises"):
        read_idx(good)


def _write_cifar_batch(path, images: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as handle:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels}, handle,
                    protocol=2)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in (1, 2):
        _write_cifar_batch(root / f"data_batch_{i}",
                           rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8),
                           [j % 10 for j in range(30)])
    test_labels = [(3 * j) % 10 for j in range(20)]
    _write_cifar_batch(root / "test_batch", rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8),
                       test_labels)
    data = load_dataset("cifar10", root=tmp_path, seed=1)
    assert data.input_shape == (3, 32, 32)
    assert len(data.x_train) + len(data.x_val) == 60
    assert data.y_test.tolist() == test_labels


def test_cifar10_refuses_pickles_that_name_other_globals(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(DatasetError, match="builtins.print"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_dataset_and_missing_directories(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="--data-root"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DatasetError, match="data_batch"):
        load_dataset("cifar10", root=tmp_path)
