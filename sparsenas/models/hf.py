"""Hugging Face ``transformers`` causal language models in the level searches (EvoPress).

:class:`CausalLMLogits` wraps a causal LM object (``GPT2LMHeadModel`` and the like) so that it maps
token ids [N, T] to next-token logits [N, T, vocab], the interface the level database, the
candidate runners and the fitness take. GPT-2 keeps its projections in ``transformers``'
``Conv1D`` (``x @ W + b`` with W stored [in, out]); the wrapper replaces each one, in place, by
the ``nn.Linear`` that computes the same function (W transposed), so every layer is an
``nn.Linear`` with its weight [out, in]. ``transformers`` itself is not imported here (the
optional extra ``sparsenas[hf]`` installs it); the model object is enough.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` Conv1D (GPT-2's transposed linear layer)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module,
                                                                                  "weight")


@torch.no_grad()
def conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what a ``transformers`` Conv1D computes."""
    in_features, out_features = module.weight.shape
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None,
                       device=module.weight.device, dtype=module.weight.dtype)
    linear.weight.copy_(module.weight.T)
    if module.bias is not None:
        linear.bias.copy_(module.bias)
    return linear


def replace_conv1d(model: nn.Module) -> list[str]:
    """Replaces every Conv1D of ``model`` by its ``nn.Linear``, in place; returns their names."""
    names = [name for name, module in model.named_modules() if is_conv1d(module)]
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attribute, conv1d_as_linear(getattr(parent, attribute)))
    return names


class CausalLMLogits(nn.Module):
    """tokens int64 [N, T] -> logits [N, T, vocab] of a ``transformers`` causal LM (its Conv1D
    layers replaced by ``nn.Linear`` in place, see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not callable(getattr(model, "forward", None)):
            raise TypeError(f"CausalLMLogits(): argument 'model' must be a transformers causal "
                            f"LM (an nn.Module), got {type(model).__name__}")
        replace_conv1d(model)
        self.model = model
        # eval mode for the wrapper too: code that restores a wrapper's mode (``train(was)``)
        # would otherwise switch the LM's dropout on
        self.eval()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


__all__ = ["CausalLMLogits", "conv1d_as_linear", "is_conv1d", "replace_conv1d"]
