"""Datasets for the search runtime: an embedded default (scikit-learn's 8x8 digits), synthetic data,
MNIST-1D generated in memory, and loaders for MNIST / CIFAR-10 from local files. Nothing is
downloaded."""

from sparsenas.data.datasets import (
    DATASETS,
    DataConfig,
    Dataset,
    DatasetError,
    list_datasets,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist,
    load_mnist1d,
    load_synthetic,
    read_idx,
)
from sparsenas.data.text import load_stdlib_text

__all__ = [
    "DATASETS",
    "DataConfig",
    "Dataset",
    "DatasetError",
    "list_datasets",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_mnist1d",
    "load_stdlib_text",
    "load_synthetic",
    "read_idx",
]
