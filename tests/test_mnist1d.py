"""MNIST-1D: generated offline by the mnist1d package, seeded, in the library's Dataset layout."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from sparsenas.data import DATASETS, DatasetError, load_dataset
from sparsenas.models import CNN, MLP


@pytest.fixture(scope="module")
def offline():
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D tried to reach the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def small(offline):
    return load_dataset("mnist1d", seed=5, num_samples=600)


def test_default_size_shapes_and_classes(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a relative cache path would land here
    data = load_dataset("mnist1d", seed=0)
    assert data.input_shape == (1, 1, 40) and data.num_classes == 10
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (3200, 800, 1000)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10)) == set(data.y_test.tolist())
    assert abs(data.x_train.mean().item()) < 1e-4
    assert abs(data.x_train.std().item() - 1.0) < 1e-3
    assert list(tmp_path.iterdir()) == []
    assert "mnist1d" in DATASETS and "digits" in DATASETS


def test_seeded_and_global_generators_untouched(small, offline):
    numpy_state, python_state = np.random.get_state(), random.getstate()
    again = load_dataset("mnist1d", seed=5, num_samples=600)
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    other = load_dataset("mnist1d", seed=6, num_samples=600)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(small, name), getattr(again, name))
    assert not torch.equal(small.x_train, other.x_train)
    assert small.x_train.shape == (384, 1, 1, 40) and len(small.x_test) == 120


def test_models_accept_the_signals(small):
    x = small.x_train[:8]
    assert MLP(small.input_shape, 10, widths=(16,))(x).shape == (8, 10)
    assert CNN(small.input_shape, 10, widths=(4,))(x).shape == (8, 10)


def test_bad_sample_count():
    with pytest.raises(DatasetError, match="num_samples"):
        load_dataset("mnist1d", seed=0, num_samples=5)
