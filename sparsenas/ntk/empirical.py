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
per-example gradients via unfold (cost ~ n·T·p·d), whichever is cheaper; the Gram-route layers
are summed by one call (``ntk_gram_kernel``: one pass over the kernel matrix, which is created
there, for all of them with the same rows per example), every other block is added to its
result; masked weights use the fused masked kernel (linear) or masked per-example gradients
(conv). An eval-mode BatchNorm is a per-channel affine map, so its per-example gradients are
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from sparsenas.ntk.kernels import ntk_gram_block_, ntk_gram_kernel, ntk_masked_block_
from sparsenas.ops._checks import data_device, describe

Mode = Literal["full", "sum_logits", "trace", "diagonal"]
MODES = ("full", "sum_logits", "trace", "diagonal")

# Materialised per-example gradients are used only below this many elements.
_MATERIALISE_BUDGET = 1 << 25


@dataclass
class _Capture:
    """One hooked layer's inputs and per-output cotangents, accumulated over batch chunks."""

    module: nn.Module
    calls: int = 0
    inputs: list[Tensor] = field(default_factory=list)
    probes: list[Tensor] = field(default_factory=list)
    cotangents: list[Tensor] = field(default_factory=list)  # per chunk: [O, chunk, *out_shape]


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
    forward / backward pass (the autograd graph's memory); the captured layer inputs and
    cotangents of all n examples are kept.
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
    outputs = None
    with torch.enable_grad():
        for start in range(0, n, max(chunk, 1)):
            outputs = _capture_chunk(model, x[start:start + chunk], captures, mode, outputs)
    O = outputs
    # Layers called other than once per chunk are left to the exact fallback.
    captures = {name: c for name, c in captures.items()
                if c.calls > 0 and c.calls == len(c.cotangents)}

    rows = n if mode in ("sum_logits", "trace") else n * O
    shape = (n, O) if mode == "diagonal" else (rows, rows)
    parts = _KernelParts(shape, dtype, x.device, mode == "trace")
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


def _capture_chunk(model: nn.Module, x: Tensor, captures: dict[str, _Capture], mode: str,
                   outputs: int | None) -> int:
    """Forward with hooks, then one backward per output seed; returns the number of outputs."""
    calls_before = {name: c.calls for name, c in captures.items()}

    def hook(capture: _Capture):
        def forward_hook(module, inputs, output):
            capture.calls += 1
            capture.inputs.append(inputs[0].detach())
            probe = torch.zeros_like(output, requires_grad=True)
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
    probes = []
    for name, c in captures.items():
        if c.calls - calls_before[name] == 1:
            probes.append(c.probes[-1])
    seeds = [torch.ones_like(y)] if mode == "sum_logits" else [
        torch.zeros_like(y).index_fill_(1, torch.tensor([o], device=y.device), 1.0)
        for o in range(O)]
    per_seed = []
    for k, seed in enumerate(seeds):
        grads = torch.autograd.grad(y, probes, seed, retain_graph=k + 1 < len(seeds),
                                    allow_unused=True) if probes else []
        per_seed.append(grads)
    index = 0
    for name, c in captures.items():
        if c.calls - calls_before[name] == 1:
            cot = [g[index] if g[index] is not None else torch.zeros_like(c.probes[-1])
                   for g in per_seed]
            c.cotangents.append(torch.stack(cot).detach())
            index += 1
        c.probes.clear()
    return O


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
    use_weight = module.weight.requires_grad
    use_bias = module.bias is not None and module.bias.requires_grad
    inputs = _concat(capture.inputs, 0)
    cot = _concat(capture.cotangents, 1)  # [S, n, *out_shape], S = number of seeds
    S = cot.shape[0]
    factor = _weight_mask(name, module, masks) if use_weight else None
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        unfolded = F.unfold(inputs, module.kernel_size, module.dilation, module.padding,
                            module.stride)  # [n, C·kh·kw, L]
        T = unfolded.shape[-1]
        a = unfolded.transpose(1, 2).reshape(n, T, groups, -1)          # [n, T, g, d]
        b = cot.reshape(S, n, groups, -1, T).permute(1, 4, 0, 2, 3)      # [n, T, S, g, p]
        weight_factor = None if factor is None else factor.reshape(groups, factor.shape[0] // groups, -1)
        for g in range(groups):
            _add_block(parts, a[:, :, g], b[:, :, :, g], None if weight_factor is None
                       else weight_factor[g], use_weight, use_bias, mode)
    else:
        d, p = module.in_features, module.out_features
        a = inputs.reshape(n, -1, d)
        b = cot.reshape(S, n, -1, p).permute(1, 2, 0, 3)                # [n, T, S, p]
        _add_block(parts, a, b, factor, use_weight, use_bias, mode)
    return {prefix + "weight"} | ({prefix + "bias"} if module.bias is not None else set())


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
    """a [n, T, d], b [n, T, S, p] (S seeds), factor [p, d] or None."""
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
    rows = n if sum_outputs else n * S
    if factor is not None and T == 1:
        weights = factor if factor.dtype == torch.bool else factor.to(dtype).square()
        parts.additions.append(lambda kernel: ntk_masked_block_(
            kernel, a[:, 0], b[:, 0], weights, use_bias, sum_outputs))
        return
    if factor is not None or _prefer_materialised(n, T, S, d, p, sum_outputs):
        def add_materialised(kernel: Tensor) -> None:
            flat = _per_example_grads(a, b, factor, dtype).reshape(rows, -1)
            kernel.addmm_(flat, flat.T)
            if use_bias:
                bias_grads = b.sum(1).to(dtype).reshape(rows, -1)
                kernel.addmm_(bias_grads, bias_grads.T)
        parts.additions.append(add_materialised)
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
        flat = J.reshape(n * J.shape[1], -1)
        kernel.addmm_(flat, flat.T)
    elif mode == "sum_logits":
        summed = J.sum(1)
        kernel.addmm_(summed, summed.T)
    elif mode == "trace":
        flat = J.reshape(n, -1)
        kernel.addmm_(flat, flat.T)
    else:
        kernel.add_(J.square().sum(-1))
