"""The empirical neural tangent kernel of a model on a batch.

Θ = J Jᵀ with J the Jacobian of the model's outputs f(x) [n, O] with respect to its trainable
parameters. Modes:

- ``"full"``: [n·O, n·O], entry (i·O + o, j·O + o') = ∇f_o(x_i) · ∇f_o'(x_j).
- ``"sum_logits"``: [n, n], the kernel of the summed logits g(x) = Σ_o f_o(x):
  ∇g(x_i) · ∇g(x_j) = Σ_{o,o'} of the full kernel's (i, j) block (the usual choice of NAS code).
- ``"trace"``: [n, n], Σ_o ∇f_o(x_i) · ∇f_o(x_j): the trace over outputs of the (i, j) block.
- ``"diagonal"``: [n, O], ∇f_o(x_i) · ∇f_o(x_i) = ‖∇f_o(x_i)‖²: the diagonal of the full
  kernel, reshaped; its sum is the full kernel's trace and its row sums the trace-mode diagonal.

How it is computed: forward hooks capture the input of every ``nn.Linear`` / ``nn.Conv2d`` and
a zero probe added to its output yields the per-example output cotangents (one backward pass per
output; one in ``"sum_logits"`` mode). Each layer's block then comes from its inputs and
cotangents (:mod:`sparsenas.ntk.kernels`): the Gram route (cost ~ n²T²(d + p)) or materialised
per-example gradients (cost ~ n·T·p·d), whichever is cheaper; the Gram-route layers are summed
by one call (``ntk_gram_kernel``: one pass over the kernel matrix, which is created there, for
all of them with the same rows per example), every other block is added to its result.
Materialised per-example gradients are formed seed by seed as each backward pass returns the
cotangents (a convolution's input patches are gathered once per batch chunk), into one buffer
whose Gram is computed from the blocks on and below its diagonal. Masked weights use the fused
masked kernel (linear) or masked per-example gradients (conv). An eval-mode BatchNorm is a per-channel affine map, so its per-example gradients are
formed directly from its normalised inputs and cotangents. Every other trainable parameter
(other norm layers, embeddings, layers called more than once, tied weights, ...) gets exact
per-example Jacobians from ``torch.func`` (``vmap`` over ``jacrev``). The result is the exact
empirical NTK.

Assumptions, checked where possible: examples are independent in the forward pass (no batch
statistics). BatchNorm in training mode couples the examples, so it is refused with a
ValueError: call ``model.eval()`` first (the proxies of :mod:`sparsenas.ntk.proxies` evaluate
the model in eval mode and restore its mode afterwards). Dropout should likewise be off.

Masks: a Linear / Conv2d carrying a ``weight_mask`` buffer computes with W ⊙ M; its NTK is taken
over the entries of W, which carry the factor M (binary M: the unmasked entries only). ``masks``
maps the names of ``.weight`` parameters of Linear / Conv2d layers to masks of the weight's
shape that restrict the parameter set of the NTK to their nonzero entries; it does not change the
forward pass.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from sparsenas.ntk.kernels import ntk_gram_block_, ntk_gram_kernel, ntk_masked_block_
from sparsenas.ops._checks import data_device, describe

Mode = Literal["full", "sum_logits", "trace", "diagonal"]
MODES = ("full", "sum_logits", "trace", "diagonal")

# Materialised per-example gradients are used only below this many elements.
_MATERIALISE_BUDGET = 1 << 25
# Row block of _gram's triangular product: large enough for full-speed GEMMs.
_GRAM_BLOCK_ROWS = 128


@dataclass
class _Capture:
    """One hooked layer's inputs and per-output cotangents, accumulated over batch chunks."""

    module: nn.Module
    calls: int = 0
    complete_chunks: int = 0  # chunks in which the layer was called exactly once
    inputs: list[Tensor] = field(default_factory=list)
    probes: list[Tensor] = field(default_factory=list)
    cotangents: list[Tensor] = field(default_factory=list)  # per chunk: [O, chunk, *out_shape]
    columns: _Columns | None = None  # set when its per-example gradients are streamed


@dataclass
class _KernelParts:
    """The kernel's contributions: Gram-route blocks (the most common rows-per-example T summed
    in one pass by ntk_gram_kernel, which creates the matrix; its tiles are sized by the largest
    T it gets, so other T are added per layer) and every other block, added afterwards."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    sum_outputs: bool
    gram: list[tuple[Tensor, Tensor, int]] = field(default_factory=list)  # (a, b, T)
    additions: list[Callable[[Tensor], None]] = field(default_factory=list)

    def kernel(self) -> Tensor:
        if not self.gram:
            kernel = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        else:
            counts = Counter(T for _, _, T in self.gram)
            fused = max(counts, key=lambda T: (counts[T], -T))
            a, b, rows_per_example = zip(*(term for term in self.gram if term[2] == fused))
            kernel = ntk_gram_kernel(a, b, rows_per_example, self.sum_outputs, self.dtype)
            for a, b, T in self.gram:
                if T != fused:
                    ntk_gram_block_(kernel, a, b, T, False, self.sum_outputs)
        for add in self.additions:
            add(kernel)
        return kernel


@dataclass
class _Columns:
    """Where a streamed layer's per-example gradients go in the Jacobian buffer: its weight
    ([groups, p, d] flattened, d in _unfold's order for a convolution) and bias columns, and
    the factor its weight gradients carry (weight_mask × masks entry) in the same layout."""

    weight: slice | None
    bias: slice | None
    factor: Tensor | None
    groups: int
    positions: int  # T, rows per example


class _StreamedJacobian:
    """Per-example gradients [S, n, P] of the layers whose cheapest route materialises them,
    formed seed by seed as each backward pass delivers the cotangents (one batched GEMM per
    layer and seed on the cotangent as autograd returns it), so the cotangents of all seeds are
    never stacked; the kernel is then one Gram of the whole buffer."""

    def __init__(self, n: int, mode: str, dtype: torch.dtype, device: torch.device) -> None:
        self.n, self.mode, self.dtype, self.device = n, mode, dtype, device
        self.buffer: Tensor | None = None

    def plan(self, captures: dict[str, _Capture], masks: dict[str, Tensor], seeds: int) -> None:
        """Chooses, once (first chunk), which of the captured layers stream and gives each its
        columns."""
        width = 0
        for name, capture in captures.items():
            module = capture.module
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            groups = getattr(module, "groups", 1)
            p = module.weight.shape[0] // groups
            d = module.weight[0].numel()
            use_weight = module.weight.requires_grad
            use_bias = module.bias is not None and module.bias.requires_grad
            factor = _weight_mask(name, module, masks) if use_weight else None
            probe = capture.probes[-1]
            T = (probe[0, 0].numel() if isinstance(module, nn.Conv2d)
                 else probe[0].numel() // (groups * p))
            if not _materialises(self.mode, factor, self.n, T, seeds, d if use_weight else 0, p):
                continue
            weight = slice(width, width + groups * p * d) if use_weight else None
            width += groups * p * d if use_weight else 0
            bias = slice(width, width + groups * p) if use_bias else None
            width += groups * p if use_bias else 0
            if factor is not None:
                factor = factor.to(self.dtype)
                factor = (_patch_order(factor, groups) if isinstance(module, nn.Conv2d)
                          else factor.reshape(1, p, d))
            capture.columns = _Columns(weight, bias, factor, groups, T)
        if width:  # every entry is written: by add_seed or clear
            self.buffer = torch.empty(seeds, self.n, width, dtype=self.dtype, device=self.device)

    def add_seed(self, capture: _Capture, patches: list[Tensor], cotangent: Tensor, seed: int,
                 start: int) -> None:
        """Writes the per-example gradients of one seed's cotangent [chunk, *out_shape] for the
        examples start, start + 1, ...; patches: per group [chunk, T, d] (the layer's inputs)."""
        columns = capture.columns
        chunk, groups, T = cotangent.shape[0], columns.groups, columns.positions
        if isinstance(capture.module, nn.Conv2d):
            cot = cotangent.reshape(chunk, groups, -1, T)                       # [chunk, g, p, T]
        else:
            cot = cotangent.reshape(chunk, T, -1).transpose(1, 2).unsqueeze(1)  # [chunk, 1, p, T]
        rows = self.buffer[seed, start:start + chunk]
        if columns.weight is not None:
            target = rows[:, columns.weight].view(chunk, groups, cot.shape[2], -1)
            for g in range(groups):
                # (bmm into the strided target directly is several times slower)
                product = torch.bmm(cot[:, g], patches[g])
                if columns.factor is None:
                    target[:, g].copy_(product)
                else:
                    torch.mul(product, columns.factor[g], out=target[:, g])
        if columns.bias is not None:
            rows[:, columns.bias].copy_(cot.sum(-1).reshape(chunk, -1))

    def clear(self, capture: _Capture, seeds: int | slice = slice(None),
              rows: slice = slice(None)) -> None:
        """Zeroes a layer's gradients: of a seed's rows whose output does not depend on the
        layer, or all of them when the layer went to the exact fallback after all (not called
        exactly once in every chunk)."""
        for columns in (capture.columns.weight, capture.columns.bias):
            if columns is not None:
                self.buffer[seeds, rows, columns] = 0

    def add_kernel(self, kernel: Tensor) -> None:
        J = self.buffer
        seeds, n, _ = J.shape
        if self.mode == "trace":
            for seed in range(seeds):
                kernel.add_(_gram(J[seed]))
        elif seeds == 1:
            kernel.add_(_gram(J[0]))
        else:  # full: the buffer's rows are seed-major, the kernel's example-major
            gram = _gram(J.reshape(seeds * n, -1)).view(seeds, n, seeds, n)
            kernel.view(n, seeds, n, seeds).add_(gram.permute(1, 0, 3, 2))


def _materialises(mode: str, factor: Tensor | None, n: int, T: int, seeds: int, d: int,
                  p: int) -> bool:
    """Whether a Linear / Conv2d layer's block is formed from materialised per-example gradients
    (otherwise: the Gram route, the fused masked block for a masked T = 1 layer, or the
    diagonal mode's own path)."""
    if mode == "diagonal" or (factor is not None and T == 1):
        return False
    return factor is not None or _prefer_materialised(n, T, seeds, d, p, mode == "trace")


def empirical_ntk(
    model: nn.Module,
    x: Tensor,
    mode: Mode = "sum_logits",
    masks: dict[str, Tensor] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The empirical NTK of ``model`` on the batch ``x`` [n, ...] (see the module doc).

    Returns [n·O, n·O] (full), [n, n] (sum_logits, trace) or [n, O] (diagonal), in ``dtype``
    (float64 or float32: the accumulation precision). ``chunk_size`` caps the examples per
    forward / backward pass (the autograd graph's memory); what the layers' blocks need is kept
    for all n examples: the per-example gradients of the layers that form them, the inputs and
    cotangents of the others.
    """
    _check_arguments(model, x, mode, chunk_size, dtype)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("empirical_ntk(): argument 'model' has no trainable parameters "
                         "(requires_grad=True); its NTK is empty")
    masks = _check_masks(model, {} if masks is None else masks)
    n = x.shape[0]
    chunk = n if chunk_size is None else chunk_size

    captures = _hookable_layers(model)
    streamed = _StreamedJacobian(n, mode, dtype, x.device)
    outputs = None
    starts = range(0, n, max(chunk, 1))
    with torch.enable_grad():
        for start in starts:
            outputs = _capture_chunk(model, x[start:start + chunk], start, captures, masks, mode,
                                     outputs, streamed)
    O = outputs
    # Layers called other than once in every chunk are left to the exact fallback.
    complete = {name for name, c in captures.items()
                if c.calls == c.complete_chunks == len(starts)}
    for name, capture in captures.items():
        if capture.columns is not None and name not in complete:
            streamed.clear(capture)
    captures = {name: c for name, c in captures.items() if name in complete}

    rows = n if mode in ("sum_logits", "trace") else n * O
    shape = (n, O) if mode == "diagonal" else (rows, rows)
    parts = _KernelParts(shape, dtype, x.device, mode == "trace")
    if streamed.buffer is not None:
        parts.additions.append(streamed.add_kernel)
    handled: set[str] = set()
    for name, capture in captures.items():
        handled |= _add_layer(parts, name, capture, masks, mode, n, O)
    kernel = parts.kernel()
    fallback = {pname: p for pname, p in params.items() if pname not in handled}
    if fallback:
        _add_fallback(kernel, model, x, fallback, masks, mode, chunk, O)
    return kernel


def _check_arguments(model: nn.Module, x: Tensor, mode: str, chunk_size: int | None,
                     dtype: torch.dtype) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"empirical_ntk(): argument 'model' must be an nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError("empirical_ntk(): argument 'x' must be a tensor [n, ...] with the batch "
                        f"first, got {describe(x)}")
    if x.shape[0] == 0:
        raise ValueError("empirical_ntk(): argument 'x' must hold at least one example "
                         f"(x.shape[0] >= 1), got {describe(x)}")
    data_device("empirical_ntk", "x", x)
    for name, p in model.named_parameters():
        if p.requires_grad and p.device != x.device:
            raise ValueError(f"empirical_ntk(): argument 'x' must be on the device of the "
                             f"model's parameters (parameter {name!r} is on {p.device}), got "
                             f"{describe(x)}")
    if mode not in MODES:
        raise ValueError(f"empirical_ntk(): argument 'mode' must be one of {MODES}, got {mode!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"empirical_ntk(): argument 'chunk_size' must be a positive int or None, "
                         f"got {chunk_size!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"empirical_ntk(): argument 'dtype' must be torch.float32 or "
                        f"torch.float64 (never lower: small eigenvalues matter), got {dtype}")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"empirical_ntk(): BatchNorm module {name!r} is in training mode; its batch "
                "statistics couple the examples, so per-example Jacobians are ill-defined. "
                "Call model.eval() (running statistics) first.")


def _check_masks(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    if not isinstance(masks, dict):
        raise TypeError("empirical_ntk(): argument 'masks' must be a dict from weight names to "
                        f"masks, got {describe(masks)}")
    modules = dict(model.named_modules())
    checked = {}
    for name, mask in masks.items():
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if attr != "weight" or not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"empirical_ntk(): argument 'masks' key {name!r} must name the "
                             "weight of an nn.Linear or nn.Conv2d layer of the model")
        if not isinstance(mask, Tensor) or mask.shape != module.weight.shape:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"empirical_ntk(): argument 'masks' entry {name!r} must have the "
                             f"weight's shape {tuple(module.weight.shape)}, got {got}")
        data_device("empirical_ntk", "masks", mask)
        checked[name] = mask.to(module.weight.device)
    return checked


def _hookable_layers(model: nn.Module) -> dict[str, _Capture]:
    """Linear / Conv2d layers whose parameters belong to them alone (tied weights go to the
    exact fallback) and whose convolution unfold can express, and BatchNorm layers that
    normalise with running statistics (eval mode, affine)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            continue
        if not (isinstance(module, (nn.Linear, nn.Conv2d)) or _is_eval_norm(module)):
            continue
        own = list(module.parameters(recurse=False))
        if any(p.requires_grad for p in own) and all(owners[id(p)] == 1 for p in own):
            layers[name] = _Capture(module)
    return layers


def _is_eval_norm(module: nn.Module) -> bool:
    """A BatchNorm that is an affine map per channel: eval mode with running statistics."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
            and module.affine and module.running_mean is not None)


def _capture_chunk(model: nn.Module, x: Tensor, start: int, captures: dict[str, _Capture],
                   masks: dict[str, Tensor], mode: str, outputs: int | None,
                   streamed: _StreamedJacobian) -> int:
    """Forward with hooks, then one backward per output seed; returns the number of outputs.
    Streamed layers take each seed's cotangents as they come; the others keep them."""
    calls_before = {name: c.calls for name, c in captures.items()}

    def hook(capture: _Capture):
        def forward_hook(module, inputs, output):
            capture.calls += 1
            capture.inputs.append(inputs[0].detach())
            # A zero with stride 0 (no memory) as a leaf: its gradient is the output's cotangent
            probe = output.new_zeros(()).expand(output.shape).detach().requires_grad_()
            capture.probes.append(probe)
            return output + probe
        return forward_hook

    handles = [c.module.register_forward_hook(hook(c)) for c in captures.values()]
    try:
        y = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError("empirical_ntk(): the model must return one tensor [n, ...] with the "
                         "batch first")
    y = y.reshape(y.shape[0], -1)
    O = y.shape[1]
    if outputs is not None and outputs != O:
        raise ValueError("empirical_ntk(): the model's output size changed between chunks")
    # Layers called other than once in this chunk go to the exact fallback (probes of other
    # calls would mix the calls' contributions).
    once = {name: c for name, c in captures.items() if c.calls - calls_before[name] == 1}
    seeds = [torch.ones_like(y)] if mode == "sum_logits" else [
        torch.zeros_like(y).index_fill_(1, torch.tensor([o], device=y.device), 1.0)
        for o in range(O)]
    if start == 0:
        streamed.plan(once, masks, len(seeds))
    # A streamed layer's patches are gathered when its first cotangent arrives and freed after
    # its last: with one seed, after the graph is freed, one layer's patches at a time.
    patches: dict[str, list[Tensor]] = {}
    kept: dict[str, list[Tensor]] = {name: [] for name, c in once.items() if c.columns is None}
    probes = [c.probes[-1] for c in once.values()]
    for k, seed in enumerate(seeds):
        last = k + 1 == len(seeds)
        grads = torch.autograd.grad(y, probes, seed, retain_graph=not last,
                                    allow_unused=True) if probes else []
        for (name, c), grad in zip(once.items(), grads):
            if c.columns is None:
                kept[name].append(grad.detach() if grad is not None
                                  else torch.zeros_like(c.probes[-1]))
                continue
            if grad is None:
                streamed.clear(c, k, slice(start, start + x.shape[0]))
            else:
                if name not in patches:
                    patches[name] = _patches(c)
                streamed.add_seed(c, patches[name], grad, k, start)
            if last:
                patches.pop(name, None)
    for name, c in once.items():
        c.complete_chunks += 1
        if name in kept:
            c.cotangents.append(torch.stack(kept[name]))
    for c in captures.values():
        c.probes.clear()
        if c.columns is not None:
            c.inputs.clear()
    return O


def _patches(capture: _Capture) -> list[Tensor]:
    """A streamed layer's inputs of this chunk as per-group [chunk, T, d] (convolution patches)."""
    inputs = capture.inputs[-1]
    chunk = inputs.shape[0]
    if isinstance(capture.module, nn.Conv2d):
        return list(_unfold(inputs, capture.module).chunk(capture.columns.groups, 2))
    return [inputs.reshape(chunk, capture.columns.positions, -1)]


def _unfold(inputs: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv's input patches [n, T, groups·d], T output positions: per group its d = kh·kw·C_g
    entries in (kh, kw, channel) order (_patch_order puts weight-shaped tensors in that order),
    gathered by one strided copy from a zero-padded channels-last copy of the input. (unfold's
    im2col, or gathering in the weight's (channel, kh, kw) order, runs several times slower on
    CPU, and positions-major patches make the per-example GEMMs faster.)"""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (conv.kernel_size, conv.stride, conv.padding,
                                              conv.dilation)
    n, channels, height, width = inputs.shape
    padded = inputs.new_zeros(n, height + 2 * ph, width + 2 * pw, channels)
    padded[:, ph:ph + height, pw:pw + width].copy_(inputs.permute(0, 2, 3, 1))
    rows = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    cols = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group = channels // conv.groups
    sn, sy, sx, sc = padded.stride()
    windows = padded.as_strided((n, rows, cols, conv.groups, kh, kw, per_group),
                                (sn, sy * sh, sx * sw, sc * per_group, sy * dh, sx * dw, sc))
    return windows.reshape(n, rows * cols, -1)


def _patch_order(weight: Tensor, groups: int) -> Tensor:
    """A conv-weight-shaped tensor [groups·p, C_g, kh, kw] as [groups, p, d] in _unfold's column
    order."""
    out_channels, per_group, kh, kw = weight.shape
    return (weight.reshape(groups, out_channels // groups, per_group, kh, kw)
            .permute(0, 1, 3, 4, 2).reshape(groups, out_channels // groups, -1))


def _weight_mask(name: str, module: nn.Module, masks: dict[str, Tensor]) -> Tensor | None:
    """The factor each weight entry's gradient carries (weight_mask × user mask), or None."""
    factor = None
    buffer = getattr(module, "weight_mask", None)
    if isinstance(buffer, Tensor):
        factor = buffer
    user = masks.get(f"{name}.weight" if name else "weight")
    if user is not None:
        factor = user if factor is None else factor.to(torch.float64) * user.to(torch.float64)
    return factor


def _add_layer(parts: _KernelParts, name: str, capture: _Capture, masks: dict[str, Tensor],
               mode: str, n: int, O: int) -> set[str]:
    """Adds one hooked layer's block to parts; returns the names of the parameters it covered."""
    module = capture.module
    prefix = f"{name}." if name else ""
    if _is_eval_norm(module):
        parts.additions.append(lambda kernel: _add_norm(kernel, capture, mode, n))
        return {prefix + "weight", prefix + "bias"}
    covered = {prefix + "weight"} | ({prefix + "bias"} if module.bias is not None else set())
    if capture.columns is not None:  # streamed: already in the Jacobian buffer
        return covered
    use_weight = module.weight.requires_grad
    use_bias = module.bias is not None and module.bias.requires_grad
    inputs = _concat(capture.inputs, 0)
    cot = _concat(capture.cotangents, 1)  # [S, n, *out_shape], S = number of seeds
    S = cot.shape[0]
    factor = _weight_mask(name, module, masks) if use_weight else None
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        unfolded = _unfold(inputs, module)
        T = unfolded.shape[1]
        a = unfolded.view(n, T, groups, -1)                               # [n, T, g, d]
        b = cot.reshape(S, n, groups, -1, T).permute(1, 4, 0, 2, 3)      # [n, T, S, g, p]
        weight_factor = None if factor is None else _patch_order(factor, groups)
        for g in range(groups):
            _add_block(parts, a[:, :, g], b[:, :, :, g], None if weight_factor is None
                       else weight_factor[g], use_weight, use_bias, mode)
    else:
        d, p = module.in_features, module.out_features
        a = inputs.reshape(n, -1, d)
        b = cot.reshape(S, n, -1, p).permute(1, 2, 0, 3)                # [n, T, S, p]
        _add_block(parts, a, b, factor, use_weight, use_bias, mode)
    return covered


def _add_norm(kernel: Tensor, capture: _Capture, mode: str, n: int) -> None:
    """An eval-mode BatchNorm, y = γ x̂ + β per channel with x̂ from the running statistics:
    its per-example gradients are Σ_positions b ⊙ x̂ (γ) and Σ_positions b (β) for the output
    cotangents b, a few numbers per channel, so they are formed directly."""
    module = capture.module
    inputs = _concat(capture.inputs, 0).to(kernel.dtype)
    cot = _concat(capture.cotangents, 1).to(kernel.dtype)    # [S, n, C, *positions]
    channels = inputs.shape[1]
    view = (1, channels) + (1,) * (inputs.dim() - 2)
    scale = torch.rsqrt(module.running_var.to(kernel.dtype) + module.eps)
    normalised = (inputs - module.running_mean.to(kernel.dtype).view(view)) * scale.view(view)
    b = cot.reshape(cot.shape[0], n, channels, -1)
    grads = []
    if module.weight.requires_grad:
        grads.append((b * normalised.reshape(1, n, channels, -1)).sum(-1))
    if module.bias.requires_grad:
        grads.append(b.sum(-1))
    _add_jacobian(kernel, torch.cat(grads, -1).transpose(0, 1), mode)


def _concat(chunks: list[Tensor], dim: int) -> Tensor:
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim)


def _per_example_grads(a: Tensor, b: Tensor, factor: Tensor | None, dtype: torch.dtype) -> Tensor:
    """[n, S, p, d]: Σ_t b_(i,t),s ⊗ a_(i,t) (times the weight factor) as one batched GEMM in
    the layer's dtype, the precision autograd's own gradients have; then converted to dtype."""
    n, T, d = a.shape
    S, p = b.shape[2], b.shape[3]
    grads = torch.bmm(b.permute(0, 2, 3, 1).reshape(n, S * p, T), a.to(b.dtype))
    grads = grads.view(n, S, p, d).to(dtype)
    return grads if factor is None else grads * factor.to(dtype)


def _add_block(parts: _KernelParts, a: Tensor, b: Tensor, factor: Tensor | None,
               use_weight: bool, use_bias: bool, mode: str) -> None:
    """a [n, T, d], b [n, T, S, p] (S seeds), factor [p, d] or None: a block that is not
    streamed (see _materialises): the diagonal mode's, the fused masked block (T = 1) or the
    Gram route."""
    n, T, d = a.shape
    S, p = b.shape[2], b.shape[3]
    dtype = parts.dtype
    if not use_weight:
        a, d, factor = a[..., :0], 0, None
    if mode == "diagonal":
        parts.additions.append(
            lambda kernel: kernel.add_(_diagonal_block(a, b, factor, use_bias, dtype)))
        return
    sum_outputs = parts.sum_outputs
    if factor is not None:
        weights = factor if factor.dtype == torch.bool else factor.to(dtype).square()
        parts.additions.append(lambda kernel: ntk_masked_block_(
            kernel, a[:, 0], b[:, 0], weights, use_bias, sum_outputs))
        return
    a = a.reshape(n * T, d)
    if use_bias:  # ã_it · ã_js = a_it · a_js + 1
        a = torch.cat([a, a.new_ones(n * T, 1)], 1)
    parts.gram.append((a, b.reshape(n * T, S, p), T))


def _prefer_materialised(n: int, T: int, S: int, d: int, p: int, sum_outputs: bool) -> bool:
    """Whether per-example gradients (cost n·T·S·p·d + Gram of them) beat the Gram route
    (cost (n·T)²(d + p·S²), or (n·T)²(d + p·S) summing outputs) within the memory budget."""
    rows = n if sum_outputs else n * S
    width = (S * p * d) if sum_outputs else (p * d)
    gram_cost = (n * T) ** 2 * (d + p * (S if sum_outputs else S * S))
    materialise_cost = n * T * S * p * d + rows * rows * width
    return materialise_cost < gram_cost and n * S * p * d <= _MATERIALISE_BUDGET


def _diagonal_block(a: Tensor, b: Tensor, factor: Tensor | None, use_bias: bool,
                    dtype: torch.dtype) -> Tensor:
    """[n, S]: ‖∂f_s(x_i)/∂(W, b)‖² for each example i and output s."""
    n, T, d = a.shape
    S, p = b.shape[2], b.shape[3]
    result = b.sum(1).to(dtype).square().sum(-1) if use_bias else b.new_zeros(n, S, dtype=dtype)
    if d == 0:
        return result
    if factor is not None or n * S * p * d <= _MATERIALISE_BUDGET:
        return result + _per_example_grads(a, b, factor, dtype).square().sum((2, 3))
    # Per-example position Grams: Σ_{t,s} (a_it·a_is)(b_it·b_is), memory n·S·T².
    a, b = a.to(dtype), b.to(dtype)
    ga = a @ a.transpose(1, 2)                                           # [n, T, T]
    bt = b.permute(0, 2, 1, 3)                                           # [n, S, T, p]
    return result + (ga[:, None] * (bt @ bt.transpose(2, 3))).sum((2, 3))


def _add_fallback(kernel: Tensor, model: nn.Module, x: Tensor, fallback: dict[str, Tensor],
                  masks: dict[str, Tensor], mode: str, chunk: int, O: int) -> None:
    """Exact per-example Jacobians (torch.func) for the parameters no hooked layer covers."""
    constants = {name: t.detach() for name, t in model.named_parameters()
                 if name not in fallback}
    constants.update(dict(model.named_buffers()))
    primals = {name: p.detach() for name, p in fallback.items()}

    def single(params: dict[str, Tensor], example: Tensor) -> Tensor:
        out = functional_call(model, {**constants, **params}, (example.unsqueeze(0),))
        return out.reshape(-1)

    jacobian = vmap(jacrev(single), in_dims=(None, 0))
    per_chunk = []
    for start in range(0, x.shape[0], chunk):
        jac = jacobian(primals, x[start:start + chunk])
        flat = []
        for name, j in jac.items():
            if name in masks:
                j = j * masks[name].to(j.dtype)
            flat.append(j.reshape(j.shape[0], O, -1).to(kernel.dtype))
        per_chunk.append(torch.cat(flat, dim=-1))
    _add_jacobian(kernel, torch.cat(per_chunk), mode)


def _add_jacobian(kernel: Tensor, J: Tensor, mode: str) -> None:
    """Adds the kernel of per-example Jacobians J [n, S, P] (S outputs, or the one summed output
    in sum_logits mode)."""
    n = J.shape[0]
    if mode == "full":
        kernel.add_(_gram(J.reshape(n * J.shape[1], -1)))
    elif mode == "sum_logits":
        kernel.add_(_gram(J.sum(1)))
    elif mode == "trace":
        kernel.add_(_gram(J.reshape(n, -1)))
    else:
        kernel.add_(J.square().sum(-1))


def _gram(rows: Tensor) -> Tensor:
    """rows @ rows.T from the row blocks on and below the diagonal, mirrored: about half the
    multiply-adds of the full product when there are many long rows. (With rows shorter than
    their count the product is bound by writing its result, and the blocks only add passes.)
    Either way the lower triangle is mirrored, so the result is exactly symmetric: the BLAS's
    full product is not on every CPU (MKL on an AVX2-only EPYC differs in the last bit)."""
    count = rows.shape[0]
    if count <= 2 * _GRAM_BLOCK_ROWS or rows.shape[1] < count:
        gram = rows @ rows.T
    else:
        gram = rows.new_empty(count, count)
        for start in range(0, count, _GRAM_BLOCK_ROWS):
            stop = min(start + _GRAM_BLOCK_ROWS, count)
            torch.mm(rows[start:stop], rows[:stop].T, out=gram[start:stop, :stop])
    gram.tril_()
    return gram.add_(gram.tril(-1).T)
