"""Compaction: node-masked networks as physically smaller dense networks.

A node mask (see :mod:`sparsenas.nn.node_mask`) zeroes units / channels where they leave their
block (Linear/Conv2d -> optional BatchNorm -> activation -> NodeMask). Compaction removes those
units for real: the producing layer loses the weight rows and bias entries, the BatchNorm between
producer and mask loses its per-channel parameters and running statistics, and every consumer
loses the matching input columns (``Flatten`` after a conv maps channel c to the columns
c*H*W .. (c+1)*H*W - 1 of the next Linear; depthwise / grouped convs with one group per input
channel follow their input channels). The compacted network computes exactly what the masked
network computed (in eval mode) with a fraction of the work.

How the graph is read: the model is traced with ``torch.fx`` (NodeMask modules kept as leaves).
A NodeMask is *resolved* when walking back from it through single-user, channel-wise nodes
(BatchNorm, activations, dropout, pooling) reaches a Linear or an ungrouped Conv2d; that layer is
then sliced and the mask disappears from the graph. A NodeMask that cannot be resolved (e.g. one
right after a residual add) stays in the compacted model as a mask, so the result is still exact.

Residual adds: both sides must carry the same kept channels (the same node mask on the residual
stream and on the branch). When they differ, :func:`compact` raises a ``ValueError`` naming the
add instead of keeping the union, so a caller never gets a silently less compact network.
Operations that would turn removed (zero) channels into non-zero values (a BatchNorm after the
mask, a bias-adding op, a concatenation) raise the same way.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from sparsenas.nn.node_mask import NodeMask, set_node_masks
from sparsenas.ops._checks import data_device, describe

# Modules / functions applied per channel that map 0 to 0: removed channels stay exactly zero.
_ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU, nn.Hardswish, nn.Mish,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_ZERO_PRESERVING_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.mish, F.dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.relu, torch.tanh,
}
_ZERO_PRESERVING_METHODS = {"relu", "relu_", "tanh", "contiguous"}
# Channel-wise modules allowed between a producer and its NodeMask (they need not map 0 to 0:
# the mask zeroes their output anyway).
_CHANNELWISE_MODULES = _ZERO_PRESERVING_MODULES + (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus,
)
_CHANNELWISE_FUNCTIONS = _ZERO_PRESERVING_FUNCTIONS | {torch.sigmoid, F.sigmoid, F.softplus}
_ADD = {operator.add, operator.iadd, torch.add}
_SHAPE_METHODS = {"size", "dim"}


class _LeafTracer(fx.Tracer):
    """Keeps NodeMask modules as leaves: their forward branches on the mask's rank."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, NodeMask) or super().is_leaf_module(module, qualname)


@dataclass(frozen=True)
class _Flattened:
    """Kept channels of a conv feature map after Flatten(start_dim=1): the consumer Linear knows
    the spatial size (its in_features / channels)."""

    channels: Tensor
    num_channels: int


def _kept(mask: Tensor) -> Tensor:
    if mask.dim() != 1:
        raise ValueError(f"compact(): node masks must be single [n] masks, got shape "
                         f"{tuple(mask.shape)}; compact one candidate at a time")
    return mask.nonzero().flatten().cpu()


def _same(a: Tensor | _Flattened | None, b: Tensor | _Flattened | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, _Flattened) or isinstance(b, _Flattened):
        return (isinstance(a, _Flattened) and isinstance(b, _Flattened)
                and a.num_channels == b.num_channels and torch.equal(a.channels, b.channels))
    return torch.equal(a, b)


class _Compactor:
    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        # Channels in the parent network of every node whose output has removed channels.
        self.channels: dict[fx.Node, int] = {}
        # Parameter / buffer name -> kept parent indices per leading dimension (None: all).
        self.index: dict[str, tuple[Tensor | None, Tensor | None]] = {}

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules[node.target] if node.op == "call_module" else None

    def is_channelwise(self, node: fx.Node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, _CHANNELWISE_MODULES)
        if node.op == "call_function":
            return node.target in _CHANNELWISE_FUNCTIONS
        return node.op == "call_method" and node.target in _ZERO_PRESERVING_METHODS

    def is_zero_preserving(self, node: fx.Node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, _ZERO_PRESERVING_MODULES)
        if node.op == "call_function":
            return node.target in _ZERO_PRESERVING_FUNCTIONS
        return node.op == "call_method" and node.target in _ZERO_PRESERVING_METHODS

    def is_producer(self, node: fx.Node) -> bool:
        module = self.module(node)
        return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d)
                                                 and module.groups == 1)

    def resolve_masks(self) -> tuple[dict[fx.Node, Tensor], set[fx.Node], set[fx.Node]]:
        """For every NodeMask that can be resolved: its producer's kept outputs, and the nodes of
        the producer -> mask chain."""
        producer_keep: dict[fx.Node, Tensor] = {}
        chain_nodes: set[fx.Node] = set()
        resolved: set[fx.Node] = set()
        for node in self.gm.graph.nodes:
            if not isinstance(self.module(node), NodeMask):
                continue
            keep = _kept(self.module(node).mask)
            chain: list[fx.Node] = []
            current = node.args[0]
            while (isinstance(current, fx.Node) and len(current.users) == 1
                   and not self.is_producer(current) and self.is_channelwise(current)):
                chain.append(current)
                current = current.args[0]
            if (isinstance(current, fx.Node) and len(current.users) == 1
                    and self.is_producer(current) and current not in producer_keep):
                producer_keep[current] = keep
                chain_nodes.update(chain)
                resolved.add(node)
        return producer_keep, chain_nodes, resolved

    def slice_parameter(self, module_name: str, module: nn.Module, name: str,
                        rows: Tensor | None, cols: Tensor | None) -> None:
        tensor = getattr(module, name)
        if tensor is None:
            return
        qualified = f"{module_name}.{name}" if module_name else name
        previous_rows, previous_cols = self.index.get(qualified, (None, None))
        data = tensor.data
        if rows is not None:
            data = data.index_select(0, rows.to(data.device))
            previous_rows = rows
        if cols is not None:
            data = data.index_select(1, cols.to(data.device))
            previous_cols = cols
        self.index[qualified] = (previous_rows, previous_cols)
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(data.contiguous(), tensor.requires_grad))
        else:
            setattr(module, name, data.contiguous())

    def fail(self, node: fx.Node, why: str) -> None:
        raise ValueError(f"compact(): cannot compact through node '{node.name}' "
                         f"({node.op} {getattr(node.target, '__name__', node.target)}): {why}")

    def run(self) -> None:
        producer_keep, chain_nodes, resolved = self.resolve_masks()
        state: dict[fx.Node, Tensor | _Flattened | None] = {}
        for node in list(self.gm.graph.nodes):
            inputs = [a for a in node.all_input_nodes]
            in_state = state.get(inputs[0]) if inputs else None
            module = self.module(node)
            name = node.target if node.op == "call_module" else ""
            if node.op in ("placeholder", "get_attr"):
                state[node] = None
            elif isinstance(module, nn.Linear):
                state[node] = self.linear(node, name, module, in_state, producer_keep.get(node))
            elif isinstance(module, nn.Conv2d):
                state[node] = self.conv(node, name, module, in_state, producer_keep.get(node))
            elif isinstance(module, NodeMask):
                if node in resolved:
                    state[node] = in_state
                    node.replace_all_uses_with(node.args[0])
                    self.gm.graph.erase_node(node)
                    self.gm.delete_submodule(name)
                else:
                    if in_state is not None:
                        self.slice_parameter(name, module, "mask", in_state, None)
                        module.num_nodes = int(in_state.numel())
                    state[node] = in_state
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if in_state is not None and node not in chain_nodes:
                    self.fail(node, "a BatchNorm after a node mask maps removed channels to "
                                    "non-zero values; place the NodeMask after the BatchNorm")
                if in_state is not None:
                    for param in ("weight", "bias", "running_mean", "running_var"):
                        self.slice_parameter(name, module, param, in_state, None)
                    module.num_features = int(in_state.numel())
                state[node] = in_state
            elif isinstance(module, nn.Flatten) or (
                    node.op == "call_function" and node.target is torch.flatten) or (
                    node.op == "call_method" and node.target == "flatten"):
                state[node] = self.flatten(node, module, in_state)
            elif node.op == "call_function" and node.target in _ADD:
                tensor_inputs = [a for a in node.args if isinstance(a, fx.Node)]
                states = [state.get(a) for a in tensor_inputs]
                if len(tensor_inputs) == 2 and not _same(states[0], states[1]):
                    self.fail(node, "the two sides of a residual add carry different node masks; "
                                    "give both sides the same mask")
                if len(tensor_inputs) == 1 and states[0] is not None:
                    self.fail(node, "adding a constant to masked channels makes them non-zero")
                state[node] = states[0] if states else None
            elif node.op == "call_method" and node.target in _SHAPE_METHODS:
                state[node] = None
            elif node.op == "output":
                if any(state.get(a) is not None for a in inputs):
                    self.fail(node, "the model's output carries a node mask; compaction would "
                                    "change the output's shape")
            elif in_state is None and all(state.get(a) is None for a in inputs):
                state[node] = None
            elif node in chain_nodes or self.is_zero_preserving(node):
                if any(state.get(a) is not None for a in inputs[1:]):
                    self.fail(node, "only its first input may carry a node mask")
                state[node] = in_state
            else:
                self.fail(node, "it is not known to keep removed channels at zero")
            if isinstance(state.get(node), Tensor) and node not in self.channels:
                carrier = next(a for a in inputs if state.get(a) is not None)
                self.channels[node] = self.channels[carrier]
        self.gm.graph.lint()
        self.gm.recompile()

    def linear(self, node: fx.Node, name: str, module: nn.Linear,
               in_state: Tensor | _Flattened | None, out_keep: Tensor | None) -> Tensor | None:
        cols = in_state
        if isinstance(in_state, _Flattened):
            spatial, remainder = divmod(module.in_features, in_state.num_channels)
            if remainder:
                self.fail(node, f"in_features {module.in_features} is not a multiple of the "
                                f"flattened channels {in_state.num_channels}")
            cols = (in_state.channels[:, None] * spatial + torch.arange(spatial)).flatten()
        self.channels[node] = module.out_features
        self.slice_parameter(name, module, "weight", out_keep, cols)
        self.slice_parameter(name, module, "bias", out_keep, None)
        module.out_features = module.weight.shape[0]
        module.in_features = module.weight.shape[1]
        return out_keep

    def conv(self, node: fx.Node, name: str, module: nn.Conv2d, in_state: Tensor | _Flattened | None,
             out_keep: Tensor | None) -> Tensor | None:
        if isinstance(in_state, _Flattened):
            self.fail(node, "a conv after a flatten")
        self.channels[node] = module.out_channels
        if module.groups == 1:
            self.slice_parameter(name, module, "weight", out_keep, in_state)
            self.slice_parameter(name, module, "bias", out_keep, None)
        else:
            if in_state is None:
                return None
            if module.groups != module.in_channels:
                self.fail(node, f"a grouped conv (groups={module.groups}) can only follow a node "
                                f"mask when it has one group per input channel")
            if module.bias is not None and bool(module.bias.detach().ne(0).any()):
                self.fail(node, "a depthwise conv with a bias turns removed (zero) input channels "
                                "into its bias; use bias=False or mask its output too")
            # Depthwise: output channels c*m .. c*m+m-1 read input channel c alone.
            multiplier = module.out_channels // module.groups
            out_keep = (in_state[:, None] * multiplier + torch.arange(multiplier)).flatten()
            self.slice_parameter(name, module, "weight", out_keep, None)
            self.slice_parameter(name, module, "bias", out_keep, None)
            module.groups = int(in_state.numel())
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
        return out_keep

    def flatten(self, node: fx.Node, module: nn.Module | None,
                in_state: Tensor | _Flattened | None) -> _Flattened | None:
        if in_state is None:
            return None
        if module is not None:
            start, end = module.start_dim, module.end_dim
        else:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if start != 1 or end != -1 or isinstance(in_state, _Flattened):
            self.fail(node, "only flatten(start_dim=1) of a [N, C, ...] feature map is supported")
        return _Flattened(in_state, self.channels[node.all_input_nodes[0]])


def compact(model: nn.Module, node_masks: dict[str, Tensor] | None = None) -> fx.GraphModule:
    """A physically smaller dense copy of ``model`` (in eval mode) that computes exactly what
    ``model`` with its node masks computes in eval mode.

    ``node_masks`` (NodeMask module name -> bool [n]) replaces the model's current masks in the
    copy; ``model`` itself is never changed. The result is a ``torch.fx.GraphModule`` whose
    submodules keep their names; :func:`expand` writes its (e.g. trained) weights back into the
    parent. Raises ``ValueError`` naming the node when the graph cannot be compacted exactly
    (see the module docstring).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compact(): argument 'model' must be an nn.Module, got "
                        f"{type(model).__name__}")
    if node_masks is not None:
        if not isinstance(node_masks, dict):
            raise TypeError(f"compact(): argument 'node_masks' must be a dict from NodeMask "
                            f"names to bool masks, got {type(node_masks).__name__}")
        for name, mask in node_masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"compact(): argument 'node_masks' entry {name!r} must be a bool "
                                f"tensor, got {describe(mask)}")
            data_device("compact", "node_masks", mask)
    parent = copy.deepcopy(model).eval()
    if node_masks is not None:
        set_node_masks(parent, node_masks)
    graph = _LeafTracer().trace(parent)
    graph_module = fx.GraphModule(parent, graph, class_name=f"Compacted{type(model).__name__}")
    compactor = _Compactor(graph_module)
    compactor.run()
    graph_module.compaction_index = compactor.index
    return graph_module.eval()


@torch.no_grad()
def expand(compacted: fx.GraphModule, parent: nn.Module) -> nn.Module:
    """Writes the compacted model's parameters and buffers back into ``parent`` (the masked model
    it was made from), in place, and returns ``parent``. Entries that compaction removed keep
    their values in ``parent``; the masked parent then computes what ``compacted`` computes."""
    for arg, module in (("compacted", compacted), ("parent", parent)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"expand(): argument '{arg}' must be an nn.Module, got "
                            f"{type(module).__name__}")
    index = getattr(compacted, "compaction_index", None)
    if index is None:
        raise ValueError("expand(): argument 'compacted' must come from compact() "
                         "(it has no compaction_index)")
    parent_tensors = dict(parent.named_parameters()) | dict(parent.named_buffers())
    for name, tensor in list(compacted.named_parameters()) + list(compacted.named_buffers()):
        if name not in parent_tensors:
            raise ValueError(f"expand(): argument 'parent' has no parameter or buffer '{name}'; "
                             f"pass the model that compact() was called on")
        target = parent_tensors[name]
        rows, cols = index.get(name, (None, None))
        rows = torch.arange(target.shape[0]) if rows is None and target.dim() > 0 else rows
        if rows is None:
            target.copy_(tensor)
            continue
        rows = rows.to(target.device)
        if cols is None:
            target.index_copy_(0, rows, tensor.to(target.dtype))
        else:
            block = target.index_select(0, rows)
            block.index_copy_(1, cols.to(target.device), tensor.to(target.dtype))
            target.index_copy_(0, rows, block)
    return parent
