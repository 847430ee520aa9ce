"""The input-contract table of every public op: bad inputs with the exception they must raise and
the argument its message must name, and edge inputs with the result they must give.

tests/test_input_contract.py runs the table on the native path in process and on the reference
path (SPARSENAS_DISABLE_EXTENSION=1) in one subprocess, which imports this module from the tests
directory and prints :func:`run_all` as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sparsenas.ntk import (class_balanced_indices, condition_number, empirical_ntk, kendall_tau,
                           label_gradient_alignment, ntk_gram_block_, ntk_gram_kernel,
                           ntk_masked_block_,
                           ntk_regression_accuracy, spearman_rho, trace)
from sparsenas.ops import masked_conv2d, masked_linear, pack_mask, unpack_mask
from sparsenas.sampling import (gumbel_topk_masks, kept_nodes, philox4x32_10, sample_node_masks,
                                topk_masks, uniform_k_masks)
from sparsenas.sparse import (CSRWeight, NMWeight, compact, expand, magnitude_mask, nm_linear,
                              nm_mask, select_execution, select_for_mask, sparse_linear)

META = torch.device("meta")


@dataclass(frozen=True)
class Case:
    op: str                      # the message must start with "<op>("
    name: str
    call: Callable[[], object]
    error: type[Exception] | None = None  # None: the call must return
    argument: str | None = None  # the argument the message names ('<argument>')
    check: Callable[[object], bool] | None = None  # for returning calls: the result is right

    @property
    def id(self) -> str:
        return f"{self.op}: {self.name}"


def _randn(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _close(got, want) -> bool:
    return (isinstance(got, torch.Tensor) and got.device == want.device
            and got.shape == want.shape and torch.allclose(got, want, equal_nan=True))


# ---- masked_linear ------------------------------------------------------------------------------

def _ml(**override):
    args = dict(x=_randn(4, 6), weight=_randn(3, 6, seed=1),
                mask=torch.ones(3, 6, dtype=torch.bool), bias=_randn(3, seed=2), packed=False)
    args.update(override)
    return lambda: masked_linear(args["x"], args["weight"], args["mask"], args["bias"],
                                 packed=args["packed"])


def _ml_k(**override):
    args = dict(x=_randn(2, 4, 6), weight=_randn(3, 6, seed=1),
                mask=torch.ones(2, 3, 6, dtype=torch.bool), bias=None, packed=False)
    args.update(override)
    return lambda: masked_linear(args["x"], args["weight"], args["mask"], args["bias"],
                                 packed=args["packed"])


def _uint8_mask_scales() -> bool:
    x, w = _randn(4, 6), _randn(3, 6, seed=1)
    mask = torch.full((3, 6), 2, dtype=torch.uint8)
    return _close(masked_linear(x, w, mask), x @ (2 * w).T)


def _inf_masked_out_gives_nan() -> bool:
    x, w = _randn(2, 3), _randn(2, 3, seed=1)
    w[0, 1] = math.inf
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 1] = False
    y = masked_linear(x, w, mask)
    return bool(y[:, 0].isnan().all()) and bool(y[:, 1].isfinite().all())


MASKED_LINEAR = [
    Case("masked_linear", "x a list", _ml(x=[[1.0] * 6]), TypeError, "x"),
    Case("masked_linear", "x int64", _ml(x=torch.ones(4, 6, dtype=torch.long)), TypeError, "x"),
    Case("masked_linear", "x float8", _ml(x=torch.ones(4, 6).to(torch.float8_e4m3fn),
                                          weight=torch.ones(3, 6).to(torch.float8_e4m3fn),
                                          bias=None), TypeError, "x"),
    Case("masked_linear", "weight float64", _ml(weight=_randn(3, 6, dtype=torch.float64)),
         TypeError, "weight"),
    Case("masked_linear", "mask int32", _ml(mask=torch.ones(3, 6, dtype=torch.int32)),
         TypeError, "mask"),
    Case("masked_linear", "soft mask of another dtype", _ml(mask=torch.ones(3, 6).double()),
         TypeError, "mask"),
    Case("masked_linear", "packed mask bool", _ml(packed=True), TypeError, "mask"),
    Case("masked_linear", "packed mask of the wrong width",
         _ml(mask=torch.zeros(3, 2, dtype=torch.uint8), packed=True), ValueError, "mask"),
    Case("masked_linear", "packed not a bool", _ml(packed=1), TypeError, "packed"),
    Case("masked_linear", "mask 1-D", _ml(mask=torch.ones(6, dtype=torch.bool)), ValueError,
         "mask"),
    Case("masked_linear", "mask 4-D", _ml(mask=torch.ones(1, 1, 3, 6, dtype=torch.bool)),
         ValueError, "mask"),
    Case("masked_linear", "mask rows", _ml(mask=torch.ones(2, 6, dtype=torch.bool)), ValueError,
         "mask"),
    Case("masked_linear", "mask columns", _ml(mask=torch.ones(3, 5, dtype=torch.bool)),
         ValueError, "mask"),
    Case("masked_linear", "weight 1-D", _ml(weight=_randn(6)), ValueError, "weight"),
    Case("masked_linear", "weight 3-D with a single mask", _ml(weight=_randn(1, 3, 6)),
         ValueError, "weight"),
    Case("masked_linear", "x last dimension", _ml(x=_randn(4, 5)), ValueError, "x"),
    Case("masked_linear", "x 0-d", _ml(x=torch.tensor(1.0)), ValueError, "x"),
    Case("masked_linear", "bias size", _ml(bias=_randn(4)), ValueError, "bias"),
    Case("masked_linear", "bias float64", _ml(bias=_randn(3, dtype=torch.float64)), TypeError,
         "bias"),
    Case("masked_linear", "bias 2-D with a single mask", _ml(bias=_randn(1, 3)), ValueError,
         "bias"),
    Case("masked_linear", "K: x K differs from mask K", _ml_k(x=_randn(3, 4, 6)), ValueError,
         "x"),
    Case("masked_linear", "K: x 1-D", _ml_k(x=_randn(6)), ValueError, "x"),
    Case("masked_linear", "K: weight K differs", _ml_k(weight=_randn(3, 3, 6)), ValueError,
         "weight"),
    Case("masked_linear", "K: bias K differs", _ml_k(bias=_randn(3, 3)), ValueError, "bias"),
    Case("masked_linear", "x on meta, the rest on cpu", _ml(x=_randn(4, 6).to(META)),
         ValueError, "x"),
    Case("masked_linear", "everything on meta",
         _ml(x=_randn(4, 6).to(META), weight=_randn(3, 6).to(META),
             mask=torch.ones(3, 6, dtype=torch.bool, device=META), bias=None), ValueError, "x"),
    Case("masked_linear", "weight on meta", _ml(weight=_randn(3, 6).to(META)), ValueError,
         "weight"),
    Case("masked_linear", "mask on meta", _ml(mask=torch.ones(3, 6, dtype=torch.bool,
                                                                device=META)), ValueError, "mask"),
    Case("masked_linear", "bias on meta", _ml(bias=_randn(3).to(META)), ValueError, "bias"),
    Case("masked_linear", "uint8 mask value 2 scales the weight by 2", _uint8_mask_scales,
         check=bool),
    Case("masked_linear", "inf in a masked-out weight gives NaN", _inf_masked_out_gives_nan,
         check=bool),
    Case("masked_linear", "empty batch", _ml(x=_randn(0, 6)),
         check=lambda y: y.shape == (0, 3) and y.device.type == "cpu"),
    Case("masked_linear", "zero in_features",
         _ml(x=_randn(4, 0), weight=_randn(3, 0), mask=torch.ones(3, 0, dtype=torch.bool)),
         check=lambda y: _close(y, _randn(3, seed=2).expand(4, 3))),
]


# ---- masked_conv2d ------------------------------------------------------------------------------

def _mc(**override):
    args = dict(x=_randn(2, 4, 5, 5), weight=_randn(6, 4, 3, 3, seed=1),
                mask=torch.ones(6, 4, 3, 3, dtype=torch.bool), bias=_randn(6, seed=2),
                stride=1, padding=1, dilation=1, groups=1, packed=False)
    args.update(override)
    return lambda: masked_conv2d(**args)


def _mc_k(**override):
    args = dict(x=_randn(2, 2, 4, 5, 5), weight=_randn(6, 4, 3, 3, seed=1),
                mask=torch.ones(2, 6, 4, 3, 3, dtype=torch.bool), bias=None)
    args.update(override)
    return lambda: masked_conv2d(**args)


def _conv_reference(x, w, b, **kwargs):
    return torch.nn.functional.conv2d(x, w, b, **kwargs)


MASKED_CONV2D = [
    Case("masked_conv2d", "x int64", _mc(x=torch.ones(2, 4, 5, 5, dtype=torch.long)), TypeError,
         "x"),
    Case("masked_conv2d", "weight float64", _mc(weight=_randn(6, 4, 3, 3, dtype=torch.float64)),
         TypeError, "weight"),
    Case("masked_conv2d", "mask int64", _mc(mask=torch.ones(6, 4, 3, 3, dtype=torch.long)),
         TypeError, "mask"),
    Case("masked_conv2d", "soft mask of another dtype",
         _mc(mask=torch.ones(6, 4, 3, 3, dtype=torch.float64)), TypeError, "mask"),
    Case("masked_conv2d", "packed mask bool", _mc(mask=torch.ones(6, 36, dtype=torch.bool),
                                                  packed=True), TypeError, "mask"),
    Case("masked_conv2d", "packed mask of the wrong width",
         _mc(mask=torch.zeros(6, 3, dtype=torch.uint8), packed=True), ValueError, "mask"),
    Case("masked_conv2d", "x 3-D", _mc(x=_randn(4, 5, 5)), ValueError, "x"),
    Case("masked_conv2d", "weight 3-D", _mc(weight=_randn(6, 4, 3)), ValueError, "weight"),
    Case("masked_conv2d", "weight in-channels", _mc(weight=_randn(6, 3, 3, 3),
                                                    mask=torch.ones(6, 3, 3, 3, dtype=torch.bool)),
         ValueError, "weight"),
    Case("masked_conv2d", "groups not dividing the channels",
         _mc(groups=3, weight=_randn(6, 1, 3, 3), mask=torch.ones(6, 1, 3, 3, dtype=torch.bool)),
         ValueError, "groups"),
    Case("masked_conv2d", "groups zero", _mc(groups=0), ValueError, "groups"),
    Case("masked_conv2d", "groups a float", _mc(groups=1.0), TypeError, "groups"),
    Case("masked_conv2d", "mask shape", _mc(mask=torch.ones(6, 4, 3, 2, dtype=torch.bool)),
         ValueError, "mask"),
    Case("masked_conv2d", "mask rank", _mc(mask=torch.ones(4, 3, 3, dtype=torch.bool)),
         ValueError, "mask"),
    Case("masked_conv2d", "K: mask K differs",
         _mc_k(mask=torch.ones(3, 6, 4, 3, 3, dtype=torch.bool)), ValueError, "mask"),
    Case("masked_conv2d", "K: weight K differs", _mc_k(weight=_randn(3, 6, 4, 3, 3)),
         ValueError, "weight"),
    Case("masked_conv2d", "K: bias K differs", _mc_k(bias=_randn(3, 6)), ValueError, "bias"),
    Case("masked_conv2d", "bias size", _mc(bias=_randn(5)), ValueError, "bias"),
    Case("masked_conv2d", "bias float64", _mc(bias=_randn(6, dtype=torch.float64)), TypeError,
         "bias"),
    Case("masked_conv2d", "stride zero", _mc(stride=0), ValueError, "stride"),
    Case("masked_conv2d", "stride a float", _mc(stride=1.5), TypeError, "stride"),
    Case("masked_conv2d", "stride of three values", _mc(stride=(1, 1, 1)), ValueError, "stride"),
    Case("masked_conv2d", "negative padding", _mc(padding=-1), ValueError, "padding"),
    Case("masked_conv2d", "padding 2^40", _mc(padding=2**40), ValueError, "padding"),
    Case("masked_conv2d", "padding 2^70", _mc(padding=2**70), ValueError, "padding"),
    Case("masked_conv2d", "padding 2^30 (padded input reaches 2^31)", _mc(padding=2**30),
         ValueError, "padding"),
    Case("masked_conv2d", "padding inf", _mc(padding=math.inf), TypeError, "padding"),
    Case("masked_conv2d", "dilation zero", _mc(dilation=0), ValueError, "dilation"),
    Case("masked_conv2d", "dilation 2^40", _mc(dilation=2**40), ValueError, "dilation"),
    Case("masked_conv2d", "output size zero", _mc(padding=0, dilation=4), ValueError, "x"),
    Case("masked_conv2d", "zero-height input", _mc(x=_randn(2, 4, 0, 5), padding=0),
         ValueError, "x"),
    Case("masked_conv2d", "x on meta, the rest on cpu", _mc(x=_randn(2, 4, 5, 5).to(META)),
         ValueError, "x"),
    Case("masked_conv2d", "weight on meta", _mc(weight=_randn(6, 4, 3, 3).to(META)), ValueError,
         "weight"),
    Case("masked_conv2d", "mask on meta",
         _mc(mask=torch.ones(6, 4, 3, 3, dtype=torch.bool, device=META)), ValueError, "mask"),
    Case("masked_conv2d", "bias on meta", _mc(bias=_randn(6).to(META)), ValueError, "bias"),
    Case("masked_conv2d", "empty batch", _mc(x=_randn(0, 4, 5, 5)),
         check=lambda y: y.shape == (0, 6, 5, 5)),
    Case("masked_conv2d", "uint8 mask value 2 scales the weight by 2",
         _mc(mask=torch.full((6, 4, 3, 3), 2, dtype=torch.uint8)),
         check=lambda y: _close(y, _conv_reference(_randn(2, 4, 5, 5), 2 * _randn(6, 4, 3, 3, seed=1),
                                                   _randn(6, seed=2), padding=1))),
]


# ---- sparse_linear / nm_linear / nm_mask -------------------------------------------------------

def _sl(**override):
    # The example: W = [[1, 0, 0, 0], [0, 0, 0, 2]].
    args = dict(x=torch.ones(2, 4), row_ptr=torch.tensor([0, 1, 2], dtype=torch.int32),
                col_idx=torch.tensor([0, 3], dtype=torch.int32), values=torch.tensor([1.0, 2.0]),
                bias=None)
    args.update(override)
    return lambda: sparse_linear(**args)


SPARSE_LINEAR = [
    Case("sparse_linear", "values on meta", _sl(values=torch.tensor([1.0, 2.0]).to(META)),
         ValueError, "values"),
    Case("sparse_linear", "col_idx on meta",
         _sl(col_idx=torch.tensor([0, 3], dtype=torch.int32).to(META)), ValueError, "col_idx"),
    Case("sparse_linear", "row_ptr on meta",
         _sl(row_ptr=torch.tensor([0, 1, 2], dtype=torch.int32).to(META)), ValueError, "row_ptr"),
    Case("sparse_linear", "bias on meta", _sl(bias=torch.zeros(2, device=META)), ValueError,
         "bias"),
    Case("sparse_linear", "x on meta, the rest on cpu", _sl(x=torch.ones(2, 4, device=META)),
         ValueError, "x"),
    Case("sparse_linear", "negative col_idx", _sl(col_idx=torch.tensor([1, -3], dtype=torch.int32)),
         ValueError, "col_idx"),
    Case("sparse_linear", "col_idx = in_features",
         _sl(col_idx=torch.tensor([0, 4], dtype=torch.int32)), ValueError, "col_idx"),
    Case("sparse_linear", "row_ptr decreasing",
         _sl(row_ptr=torch.tensor([0, 2, 1], dtype=torch.int32)), ValueError, "row_ptr"),
    Case("sparse_linear", "row_ptr not starting at 0",
         _sl(row_ptr=torch.tensor([1, 1, 2], dtype=torch.int32)), ValueError, "row_ptr"),
    Case("sparse_linear", "row_ptr not ending at nnz",
         _sl(row_ptr=torch.tensor([0, 1, 1], dtype=torch.int32)), ValueError, "row_ptr"),
    Case("sparse_linear", "row_ptr int64", _sl(row_ptr=torch.tensor([0, 1, 2])), TypeError,
         "row_ptr"),
    Case("sparse_linear", "col_idx int64", _sl(col_idx=torch.tensor([0, 3])), TypeError,
         "col_idx"),
    Case("sparse_linear", "row_ptr 2-D", _sl(row_ptr=torch.tensor([[0, 1, 2]], dtype=torch.int32)),
         ValueError, "row_ptr"),
    Case("sparse_linear", "row_ptr empty", _sl(row_ptr=torch.zeros(0, dtype=torch.int32)),
         ValueError, "row_ptr"),
    Case("sparse_linear", "values length", _sl(values=torch.tensor([1.0])), ValueError, "values"),
    Case("sparse_linear", "values float64", _sl(values=torch.tensor([1.0, 2.0]).double()),
         TypeError, "values"),
    Case("sparse_linear", "values 2-D", _sl(values=torch.tensor([[1.0, 2.0]])), ValueError,
         "values"),
    Case("sparse_linear", "x int64", _sl(x=torch.ones(2, 4, dtype=torch.long)), TypeError, "x"),
    Case("sparse_linear", "x 0-d", _sl(x=torch.tensor(1.0)), ValueError, "x"),
    Case("sparse_linear", "x a list", _sl(x=[[1.0] * 4]), TypeError, "x"),
    Case("sparse_linear", "bias size", _sl(bias=torch.zeros(3)), ValueError, "bias"),
    Case("sparse_linear", "bias float64", _sl(bias=torch.zeros(2).double()), TypeError, "bias"),
    Case("sparse_linear", "the issue's example", _sl(),
         check=lambda y: _close(y, torch.tensor([[1.0, 2.0], [1.0, 2.0]]))),
    Case("sparse_linear", "empty batch", _sl(x=torch.ones(0, 4)),
         check=lambda y: y.shape == (0, 2)),
    Case("sparse_linear", "no stored values",
         _sl(row_ptr=torch.zeros(3, dtype=torch.int32), col_idx=torch.zeros(0, dtype=torch.int32),
             values=torch.zeros(0)), check=lambda y: _close(y, torch.zeros(2, 2))),
]


def _nm(**override):
    # 2:4 over in = 8: every row keeps positions 0 and 3 of each group of four.
    args = dict(x=_randn(2, 8), values=_randn(3, 4, seed=1),
                indices=torch.tensor([[0, 3, 0, 3]] * 3, dtype=torch.uint8), m=4, bias=None)
    args.update(override)
    return lambda: nm_linear(**args)


def _nm_dense_matches() -> bool:
    x, values = _randn(2, 8), _randn(3, 4, seed=1)
    dense = torch.zeros(3, 8)
    dense[:, [0, 3, 4, 7]] = values
    return _close(_nm()(), x @ dense.T)


NM_LINEAR = [
    Case("nm_linear", "values on meta", _nm(values=_randn(3, 4).to(META)), ValueError, "values"),
    Case("nm_linear", "indices on meta",
         _nm(indices=torch.zeros(3, 4, dtype=torch.uint8, device=META)), ValueError, "indices"),
    Case("nm_linear", "bias on meta", _nm(bias=torch.zeros(3, device=META)), ValueError, "bias"),
    Case("nm_linear", "x on meta, the rest on cpu", _nm(x=_randn(2, 8).to(META)), ValueError,
         "x"),
    Case("nm_linear", "index >= m", _nm(indices=torch.tensor([[0, 7, 0, 3]] * 3,
                                                             dtype=torch.uint8)),
         ValueError, "indices"),
    Case("nm_linear", "indices int64", _nm(indices=torch.zeros(3, 4, dtype=torch.long)),
         TypeError, "indices"),
    Case("nm_linear", "indices shape", _nm(indices=torch.zeros(3, 2, dtype=torch.uint8)),
         ValueError, "indices"),
    Case("nm_linear", "m zero", _nm(m=0), ValueError, "m"),
    Case("nm_linear", "m 300", _nm(m=300), ValueError, "m"),
    Case("nm_linear", "m not dividing in", _nm(m=3), ValueError, "m"),
    Case("nm_linear", "m a float", _nm(m=4.0), TypeError, "m"),
    Case("nm_linear", "values float64", _nm(values=_randn(3, 4, dtype=torch.float64)),
         TypeError, "values"),
    Case("nm_linear", "values 1-D", _nm(values=_randn(4)), ValueError, "values"),
    Case("nm_linear", "N > M", _nm(values=_randn(3, 12), indices=torch.zeros(3, 12,
                                                                          dtype=torch.uint8)),
         ValueError, "values"),
    Case("nm_linear", "bias size", _nm(bias=torch.zeros(4)), ValueError, "bias"),
    Case("nm_linear", "x int64", _nm(x=torch.ones(2, 8, dtype=torch.long)), TypeError, "x"),
    Case("nm_linear", "matches the dense weight", _nm_dense_matches, check=bool),
    Case("nm_linear", "empty batch", _nm(x=_randn(0, 8)), check=lambda y: y.shape == (0, 3)),
]


def _nmm(weight=None, n=2, m=4):
    return lambda: nm_mask(_randn(3, 8) if weight is None else weight, n, m)


NM_MASK = [
    Case("nm_mask", "weight int64", _nmm(torch.ones(3, 8, dtype=torch.long)), TypeError, "weight"),
    Case("nm_mask", "weight 1-D", _nmm(_randn(8)), ValueError, "weight"),
    Case("nm_mask", "weight on meta", _nmm(_randn(3, 8).to(META)), ValueError, "weight"),
    Case("nm_mask", "m zero", _nmm(m=0), ValueError, "m"),
    Case("nm_mask", "m not dividing in", _nmm(m=3), ValueError, "m"),
    Case("nm_mask", "n > m", _nmm(n=5), ValueError, "n"),
    Case("nm_mask", "n negative", _nmm(n=-1), ValueError, "n"),
    Case("nm_mask", "n a float", _nmm(n=2.0), TypeError, "n"),
    Case("nm_mask", "keeps n of every m", _nmm(),
         check=lambda mask: bool((mask.view(3, 2, 4).sum(-1) == 2).all())),
    Case("nm_mask", "no rows", _nmm(_randn(0, 8)), check=lambda mask: mask.shape == (0, 8)),
]


# ---- packing ------------------------------------------------------------------------------------

PACKING = [
    Case("pack_mask", "float mask", lambda: pack_mask(torch.ones(3, 8)), TypeError, "mask"),
    Case("pack_mask", "0-d mask", lambda: pack_mask(torch.tensor(True)), ValueError, "mask"),
    Case("pack_mask", "mask on meta", lambda: pack_mask(torch.ones(3, 8, dtype=torch.bool,
                                                                   device=META)),
         ValueError, "mask"),
    Case("pack_mask", "mask a list", lambda: pack_mask([True, False]), TypeError, "mask"),
    Case("unpack_mask", "bits int64", lambda: unpack_mask(torch.zeros(3, 1, dtype=torch.long), 8),
         TypeError, "bits"),
    Case("unpack_mask", "bits of the wrong width",
         lambda: unpack_mask(torch.zeros(3, 2, dtype=torch.uint8), 8), ValueError, "bits"),
    Case("unpack_mask", "n negative", lambda: unpack_mask(torch.zeros(3, 1, dtype=torch.uint8), -1),
         ValueError, "n"),
    Case("unpack_mask", "bits on meta",
         lambda: unpack_mask(torch.zeros(3, 1, dtype=torch.uint8, device=META), 8), ValueError,
         "bits"),
    Case("unpack_mask", "0-d bits", lambda: unpack_mask(torch.tensor(1, dtype=torch.uint8), 8),
         ValueError, "bits"),
    Case("pack_mask", "round trip", lambda: unpack_mask(pack_mask(torch.eye(3, 11).bool()), 11),
         check=lambda m: torch.equal(m, torch.eye(3, 11).bool())),
    Case("pack_mask", "zero columns", lambda: pack_mask(torch.ones(3, 0, dtype=torch.bool)),
         check=lambda bits: bits.shape == (3, 0)),
]


# ---- sampling ----------------------------------------------------------------------------------

SCORES = lambda: _randn(3, 8)  # noqa: E731
WEIGHTS = lambda: _randn(3, 8).abs() + 0.1  # noqa: E731

SAMPLING = [
    Case("uniform_k_masks", "n negative (reported as k before)",
         lambda: uniform_k_masks(4, -5, 0, 0), ValueError, "n"),
    Case("uniform_k_masks", "n inf", lambda: uniform_k_masks(4, math.inf, 2, 0), TypeError, "n"),
    Case("uniform_k_masks", "n 2^31", lambda: uniform_k_masks(4, 1 << 31, 2, 0), ValueError, "n"),
    Case("uniform_k_masks", "k > n", lambda: uniform_k_masks(4, 8, 9, 0), ValueError, "k"),
    Case("uniform_k_masks", "k a float", lambda: uniform_k_masks(4, 8, 2.5, 0), TypeError, "k"),
    Case("uniform_k_masks", "k a float tensor", lambda: uniform_k_masks(2, 8, torch.ones(2), 0),
         TypeError, "k"),
    Case("uniform_k_masks", "k tensor shape", lambda: uniform_k_masks(2, 8, torch.ones(3,
                                                                                       dtype=torch.long), 0),
         ValueError, "k"),
    Case("uniform_k_mask", "k tensor value > n",
         lambda: uniform_k_masks(2, 8, torch.tensor([1, 9]), 0), ValueError, "k"),
    Case("uniform_k_masks", "k tensor on meta",
         lambda: uniform_k_masks(2, 8, torch.ones(2, dtype=torch.long, device=META), 0),
         ValueError, "k"),
    Case("uniform_k_masks", "device meta", lambda: uniform_k_masks(2, 8, 2, 0, device="meta"),
         ValueError, "device"),
    Case("uniform_k_masks", "device not a device",
         lambda: uniform_k_masks(2, 8, 2, 0, device="gpu0"), ValueError, "device"),
    Case("uniform_k_masks", "num_candidates negative", lambda: uniform_k_masks(-1, 8, 2, 0),
         ValueError, "num_candidates"),
    Case("uniform_k_masks", "num_candidates a float", lambda: uniform_k_masks(2.0, 8, 2, 0),
         TypeError, "num_candidates"),
    Case("uniform_k_masks", "seed a float", lambda: uniform_k_masks(2, 8, 2, 0.5), TypeError,
         "seed"),
    Case("uniform_k_masks", "seed 2^64", lambda: uniform_k_masks(2, 8, 2, 1 << 64), ValueError,
         "seed"),
    Case("uniform_k_mask", "stream 2^24", lambda: uniform_k_masks(2, 8, 2, 0, stream=1 << 24),
         ValueError, "stream"),
    Case("uniform_k_mask", "first_candidate negative",
         lambda: uniform_k_masks(2, 8, 2, 0, first_candidate=-1), ValueError, "first_candidate"),
    Case("uniform_k_masks", "no candidates", lambda: uniform_k_masks(0, 8, 2, 0),
         check=lambda m: m.shape == (0, 8) and m.dtype == torch.bool),
    Case("uniform_k_masks", "exactly k per row", lambda: uniform_k_masks(5, 8, 3, 7),
         check=lambda m: bool((m.sum(1) == 3).all())),
    Case("topk_masks", "scores on meta", lambda: topk_masks(SCORES().to(META), 2), ValueError,
         "scores"),
    Case("topk_masks", "scores int64", lambda: topk_masks(torch.ones(3, 8, dtype=torch.long), 2),
         TypeError, "scores"),
    Case("topk_masks", "scores 0-d", lambda: topk_masks(torch.tensor(1.0), 1), ValueError,
         "scores"),
    Case("topk_masks", "k > n", lambda: topk_masks(SCORES(), 9), ValueError, "k"),
    Case("topk_masks", "k bool tensor", lambda: topk_masks(SCORES(), torch.ones(3, dtype=torch.bool)),
         TypeError, "k"),
    Case("topk_masks", "k tensor shape", lambda: topk_masks(SCORES(), torch.tensor([1, 2])),
         ValueError, "k"),
    Case("topk_mask", "k tensor negative", lambda: topk_masks(SCORES(), torch.tensor([1, -1, 2])),
         ValueError, "k"),
    Case("topk_masks", "k tensor on meta",
         lambda: topk_masks(SCORES(), torch.ones(3, dtype=torch.long, device=META)), ValueError,
         "k"),
    Case("topk_masks", "zero positions", lambda: topk_masks(torch.ones(3, 0), 0),
         check=lambda m: m.shape == (3, 0)),
    Case("gumbel_topk_masks", "zero rows", lambda: gumbel_topk_masks(torch.ones(0, 4), 2, 0),
         check=lambda m: m.shape == (0, 4)),
    Case("topk_masks", "the k largest", lambda: topk_masks(torch.tensor([[0.1, 0.9, 0.5]]), 2),
         check=lambda m: m.tolist() == [[False, True, True]]),
    Case("gumbel_topk_masks", "weights on meta", lambda: gumbel_topk_masks(WEIGHTS().to(META), 2, 0),
         ValueError, "weights"),
    Case("gumbel_topk_mask", "negative weight", lambda: gumbel_topk_masks(WEIGHTS() - 5, 2, 0),
         ValueError, "weights"),
    Case("gumbel_topk_mask", "NaN weight",
         lambda: gumbel_topk_masks(WEIGHTS().index_fill(1, torch.tensor([0]), math.nan), 2, 0),
         ValueError, "weights"),
    Case("gumbel_topk_mask", "k above the positive weights",
         lambda: gumbel_topk_masks(torch.tensor([[0.0, 1.0, 0.0]]), 2, 0), ValueError, "k"),
    Case("gumbel_topk_masks", "seed a string", lambda: gumbel_topk_masks(WEIGHTS(), 2, "0"),
         TypeError, "seed"),
    Case("philox4x32_10", "counter on meta",
         lambda: philox4x32_10(torch.zeros(2, 4, dtype=torch.long, device=META),
                               torch.zeros(2, 2, dtype=torch.long)), ValueError, "counter"),
    Case("philox4x32_10", "key on meta",
         lambda: philox4x32_10(torch.zeros(2, 4, dtype=torch.long),
                               torch.zeros(2, 2, dtype=torch.long, device=META)), ValueError, "key"),
    Case("philox4x32_10", "counter [N, 3]",
         lambda: philox4x32_10(torch.zeros(2, 3, dtype=torch.long),
                               torch.zeros(2, 2, dtype=torch.long)), ValueError, "counter"),
    Case("philox4x32_10", "counter float",
         lambda: philox4x32_10(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.long)), TypeError,
         "counter"),
    Case("philox4x32_10", "key above 32 bits",
         lambda: philox4x32_10(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 2), 1 << 32)),
         ValueError, "key"),
    Case("philox4x32_10", "key rows",
         lambda: philox4x32_10(torch.zeros(2, 4, dtype=torch.long),
                               torch.zeros(3, 2, dtype=torch.long)), ValueError, "key"),
    Case("sample_node_masks", "sparsity a 0-d tensor",
         lambda: sample_node_masks([20], torch.tensor(0.5), 2, 0),
         check=lambda masks: len(masks) == 1 and bool((masks[0].sum(1) == 10).all())),
    Case("sample_node_masks", "sparsity 1", lambda: sample_node_masks([8, 8], 1.0, 2, 0),
         ValueError, "sparsity"),
    Case("sample_node_masks", "sparsity per layer negative",
         lambda: sample_node_masks([8, 8], [0.5, -0.1], 2, 0), ValueError, "sparsity"),
    Case("sample_node_masks", "sparsity length", lambda: sample_node_masks([8, 8], [0.5], 2, 0),
         ValueError, "sparsity"),
    Case("sample_node_masks", "sparsity a string", lambda: sample_node_masks([8, 8], "0.5", 2, 0),
         TypeError, "sparsity"),
    Case("sample_node_masks", "layer_sizes an int", lambda: sample_node_masks(8, 0.5, 2, 0),
         TypeError, "layer_sizes"),
    Case("sample_node_masks", "layer size zero", lambda: sample_node_masks([8, 0], 0.5, 2, 0),
         ValueError, "layer_sizes"),
    Case("sample_node_masks", "device meta",
         lambda: sample_node_masks([8], 0.5, 2, 0, device="meta"), ValueError, "device"),
    Case("kept_nodes", "num_nodes zero", lambda: kept_nodes(0, 0.5), ValueError, "num_nodes"),
    Case("kept_nodes", "sparsity NaN", lambda: kept_nodes(8, math.nan), ValueError, "sparsity"),
    Case("kept_nodes", "sparsity inf", lambda: kept_nodes(8, math.inf), ValueError, "sparsity"),
]


# ---- compaction, magnitude masks ---------------------------------------------------------------

def _masked_mlp():
    from sparsenas.nn import NodeMask

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), NodeMask(6), nn.Linear(6, 2))


COMPACTION = [
    Case("compact", "model a tensor", lambda: compact(torch.randn(3)), TypeError, "model"),
    Case("compact", "node_masks a list", lambda: compact(_masked_mlp(), [torch.ones(6).bool()]),
         TypeError, "node_masks"),
    Case("compact", "node mask float",
         lambda: compact(_masked_mlp(), {"2": torch.ones(6)}), TypeError, "node_masks"),
    Case("compact", "node mask on meta",
         lambda: compact(_masked_mlp(), {"2": torch.ones(6, dtype=torch.bool, device=META)}),
         ValueError, "node_masks"),
    Case("expand", "compacted a tensor", lambda: expand(torch.randn(3), _masked_mlp()), TypeError,
         "compacted"),
    Case("magnitude_mask", "weight a list", lambda: magnitude_mask([1.0, 2.0], 0.5), TypeError,
         "weight"),
    Case("magnitude_mask", "weight on meta", lambda: magnitude_mask(_randn(4, 4).to(META), 0.5),
         ValueError, "weight"),
    Case("magnitude_mask", "sparsity 1", lambda: magnitude_mask(_randn(4, 4), 1.0), ValueError,
         "sparsity"),
    Case("select_execution", "sparsity a string",
         lambda: select_execution("0.5", "node", 1, 8, 8), TypeError, "sparsity"),
    Case("select_execution", "batch a float", lambda: select_execution(0.5, "node", 1.5, 8, 8),
         TypeError, "batch"),
    Case("select_for_mask", "mask on meta",
         lambda: select_for_mask(torch.ones(4, 4, dtype=torch.bool, device=META), 1), ValueError,
         "mask"),
    Case("select_for_mask", "mask a list", lambda: select_for_mask([[True]], 1), TypeError,
         "mask"),
    Case("select_for_mask", "mask float", lambda: select_for_mask(torch.ones(4, 4), 1), TypeError,
         "mask"),
    Case("CSRWeight.from_dense", "weight on meta",
         lambda: CSRWeight.from_dense(torch.ones(3, 4, device=META)), ValueError, "weight"),
    Case("CSRWeight.from_dense", "weight a list", lambda: CSRWeight.from_dense([[1.0]]),
         TypeError, "weight"),
    Case("CSRWeight.from_dense", "mask on meta",
         lambda: CSRWeight.from_dense(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool,
                                                                   device=META)),
         ValueError, "mask"),
    Case("NMWeight.from_dense", "m 300", lambda: NMWeight.from_dense(torch.ones(3, 600), 2, 300),
         ValueError, "m"),
    Case("magnitude_mask", "sparsity NaN", lambda: magnitude_mask(_randn(4, 4), math.nan),
         ValueError, "sparsity"),
    Case("magnitude_mask", "sparsity a string", lambda: magnitude_mask(_randn(4, 4), "0.5"),
         TypeError, "sparsity"),
]


# ---- NTK ---------------------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).eval()


def _block(**override):
    args = dict(out=torch.zeros(12, 12, dtype=torch.float64), a=_randn(6, 4),
                b=_randn(6, 2, 3, seed=1))
    args.update(override)
    masked = "mask" in args
    fn = ntk_masked_block_ if masked else ntk_gram_block_
    return lambda: fn(**args)


def _gram_kernel(**override):
    args = dict(a=[_randn(6, 4), _randn(12, 2, seed=2)],
                b=[_randn(6, 2, 3, seed=1), _randn(12, 2, 5, seed=3)], rows_per_example=[1, 2],
                sum_outputs=False, dtype=torch.float64)
    args.update(override)
    return lambda: ntk_gram_kernel(**args)


NTK = [
    Case("empirical_ntk", "no examples", lambda: empirical_ntk(_mlp(), torch.randn(0, 5)),
         ValueError, "x"),
    Case("empirical_ntk", "no examples with chunk_size",
         lambda: empirical_ntk(_mlp(), torch.randn(0, 5), chunk_size=2), ValueError, "x"),
    Case("empirical_ntk", "x on meta", lambda: empirical_ntk(_mlp(), torch.randn(3, 5,
                                                                                 device=META)),
         ValueError, "x"),
    Case("empirical_ntk", "masks a list", lambda: empirical_ntk(_mlp(), torch.randn(3, 5),
                                                                masks=[torch.ones(4, 5)]),
         TypeError, "masks"),
    Case("empirical_ntk", "mask on meta",
         lambda: empirical_ntk(_mlp(), torch.randn(3, 5), masks={"0.weight": torch.ones(
             4, 5, device=META)}), ValueError, "masks"),
    Case("empirical_ntk", "mode unknown", lambda: empirical_ntk(_mlp(), torch.randn(3, 5),
                                                                mode="logits"),
         ValueError, "mode"),
    Case("empirical_ntk", "one example", lambda: empirical_ntk(_mlp(), torch.randn(1, 5)),
         check=lambda k: k.shape == (1, 1) and bool(k[0, 0] > 0)),
    Case("ntk_gram_block_", "out float16", _block(out=torch.zeros(12, 12, dtype=torch.float16)),
         TypeError, "out"),
    Case("ntk_gram_block_", "out on meta", _block(out=torch.zeros(12, 12, dtype=torch.float64,
                                                                  device=META)),
         ValueError, "out"),
    Case("ntk_gram_block_", "a on meta", _block(a=_randn(6, 4).to(META)), ValueError, "a"),
    Case("ntk_gram_block_", "b on meta", _block(b=_randn(6, 2, 3).to(META)), ValueError, "b"),
    Case("ntk_gram_block_", "a int64", _block(a=torch.ones(6, 4, dtype=torch.long)), TypeError,
         "a"),
    Case("ntk_gram_block_", "a 1-D", _block(a=_randn(6)), ValueError, "a"),
    Case("ntk_gram_block_", "b rows", _block(b=_randn(5, 2, 3)), ValueError, "b"),
    Case("ntk_gram_block_", "b 2-D", _block(b=_randn(6, 2)), ValueError, "b"),
    Case("ntk_gram_block_", "out size", _block(out=torch.zeros(11, 11, dtype=torch.float64)),
         ValueError, "out"),
    Case("ntk_gram_block_", "rows_per_example zero", _block(rows_per_example=0), ValueError,
         "rows_per_example"),
    Case("ntk_gram_block_", "rows_per_example a float", _block(rows_per_example=1.0), TypeError,
         "rows_per_example"),
    Case("ntk_gram_block_", "a rows not a multiple", _block(rows_per_example=4), ValueError, "a"),
    Case("ntk_gram_kernel", "a a tensor", _gram_kernel(a=_randn(6, 4)), TypeError, "a"),
    Case("ntk_gram_kernel", "no maps", _gram_kernel(a=[], b=[], rows_per_example=[]),
         ValueError, "a"),
    Case("ntk_gram_kernel", "lengths differ", _gram_kernel(rows_per_example=[1]), ValueError,
         "a"),
    Case("ntk_gram_kernel", "dtype float16", _gram_kernel(dtype=torch.float16), TypeError,
         "dtype"),
    Case("ntk_gram_kernel", "a[1] int64", _gram_kernel(a=[_randn(6, 4), torch.ones(
        12, 2, dtype=torch.long)]), TypeError, "a[1]"),
    Case("ntk_gram_kernel", "a[0] on meta", _gram_kernel(a=[_randn(6, 4).to(META),
                                                           _randn(12, 2)]), ValueError, "a[0]"),
    Case("ntk_gram_kernel", "b[1] outputs", _gram_kernel(b=[_randn(6, 2, 3), _randn(12, 3, 5)]),
         ValueError, "b[1]"),
    Case("ntk_gram_kernel", "a[1] examples", _gram_kernel(rows_per_example=[1, 3]), ValueError,
         "a[1]"),
    Case("ntk_gram_kernel", "rows_per_example zero", _gram_kernel(rows_per_example=[0, 2]),
         ValueError, "rows_per_example"),
    Case("ntk_gram_kernel", "sum over outputs", _gram_kernel(sum_outputs=True),
         check=lambda k: k.shape == (6, 6) and bool(torch.allclose(k, k.T))),
    Case("ntk_masked_block_", "mask shape", _block(mask=torch.ones(3, 3, dtype=torch.bool)),
         ValueError, "mask"),
    Case("ntk_masked_block_", "mask int64", _block(mask=torch.ones(3, 4, dtype=torch.long)),
         TypeError, "mask"),
    Case("ntk_masked_block_", "mask on meta",
         _block(mask=torch.ones(3, 4, dtype=torch.bool, device=META)), ValueError, "mask"),
    Case("ntk_masked_block_", "out float16",
         _block(out=torch.zeros(12, 12, dtype=torch.float16), mask=torch.ones(3, 4)), TypeError,
         "out"),
]

LABELS = lambda: torch.tensor([0, 1, 1])  # noqa: E731

NTK_METRICS = [
    Case("condition_number", "kernel on meta", lambda: condition_number(torch.eye(3, device=META)),
         ValueError, "kernel"),
    Case("condition_number", "kernel not square", lambda: condition_number(torch.ones(2, 3)),
         ValueError, "kernel"),
    Case("trace", "kernel empty", lambda: trace(torch.ones(0, 0)), ValueError, "kernel"),
    Case("label_gradient_alignment", "labels on meta",
         lambda: label_gradient_alignment(torch.eye(3), LABELS().to(META)), ValueError, "labels"),
    Case("label_gradient_alignment", "labels a list",
         lambda: label_gradient_alignment(torch.eye(3), [0, 1, 1]), ValueError, "labels"),
    Case("ntk_regression_accuracy", "kernel_test_train on meta",
         lambda: ntk_regression_accuracy(torch.eye(3), torch.ones(2, 3, device=META), LABELS(),
                                         torch.tensor([0, 1]), 2), ValueError, "kernel_test_train"),
    Case("kendall_tau", "lengths differ", lambda: kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0]),
         ValueError, "accuracies"),
    Case("spearman_rho", "scores on meta",
         lambda: spearman_rho(torch.ones(3, device=META), [1.0, 2.0, 3.0]), ValueError, "scores"),
    Case("class_balanced_indices", "labels on meta",
         lambda: class_balanced_indices(torch.tensor([0, 1, 1, 0], device=META), 1, 0), ValueError,
         "labels"),
    Case("class_balanced_indices", "per_class a float",
         lambda: class_balanced_indices(torch.tensor([0, 1, 1, 0]), 1.5, 0), TypeError,
         "per_class"),
    Case("kendall_tau", "perfect agreement", lambda: kendall_tau([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]),
         check=lambda tau: tau == 1.0),
]

CASES = (MASKED_LINEAR + MASKED_CONV2D + SPARSE_LINEAR + NM_LINEAR + NM_MASK + PACKING + SAMPLING
         + COMPACTION + NTK + NTK_METRICS)


def run(case: Case) -> dict:
    """What one row did: the exception (type name and message) or whether the result checks."""
    try:
        result = case.call()
    except Exception as error:  # noqa: BLE001 - the table records every exception
        return {"raised": type(error).__name__, "message": str(error)}
    return {"raised": None, "check": bool(case.check(result)) if case.check else None}


def problems(case: Case, outcome: dict) -> list[str]:
    """Why an outcome breaks its row's contract (empty: it holds)."""
    if case.error is None:
        if outcome["raised"]:
            return [f"raised {outcome['raised']}: {outcome['message']}"]
        return [] if outcome["check"] else ["returned a wrong result"]
    if not outcome["raised"]:
        return [f"returned instead of raising {case.error.__name__}"]
    found = []
    if outcome["raised"] != case.error.__name__:
        found.append(f"raised {outcome['raised']}, expected {case.error.__name__}")
    if not outcome["message"].startswith(f"{case.op}("):
        found.append("the message is not the library's")
    if f"'{case.argument}'" not in outcome["message"]:
        found.append(f"the message does not name '{case.argument}'")
    return found + ([f"message: {outcome['message']}"] if found else [])


def run_all() -> dict:
    import sparsenas

    return {"extension": sparsenas.info()["extension"],
            "outcomes": {case.id: run(case) for case in CASES}}
