"""A small GPT-style causal language model: token + position embeddings, pre-norm residual blocks
(causal self-attention through ``F.scaled_dot_product_attention``, GELU MLP), a final LayerNorm
and an output head tied to the token embedding. Registered in MODELS as ``"gpt"``.

Tokens are bytes by default (``vocab_size=256``), matching :func:`sparsenas.data.load_stdlib_text`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.models.registry import MODELS


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, t, width = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(n, t, width))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)): a residual block that depth pruning may drop."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_out = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """tokens int64 [N, T] (T <= context) -> next-token logits [N, T, vocab_size]."""

    def __init__(self, vocab_size: int = 256, context: int = 64, width: int = 64, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if min(vocab_size, context, width, depth, heads) < 1 or width % heads:
            raise ValueError(f"GPT(): sizes must be positive and 'width' ({width}) divisible by "
                             f"'heads' ({heads})")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        generator = torch.Generator().manual_seed(0)
        for name, parameter in self.named_parameters():
            if parameter.dim() == 2:
                # GPT-2 init; output projections scaled down with depth
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("proj.weight",
                                                                    "fc_out.weight")) else 0.02
                with torch.no_grad():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif name.endswith("bias"):
                nn.init.zeros_(parameter)

    def residual_block_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.context:
            raise ValueError(f"GPT.forward(): argument 'tokens' must be [N, T] with T <= "
                             f"{self.context}, got {tuple(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@torch.no_grad()
def perplexity(model: nn.Module, tokens: Tensor, targets: Tensor, batch_size: int = 64) -> float:
    """exp(mean next-token cross-entropy) over all positions of ``tokens`` [N, T]."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        logits = model(tokens[start:start + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1).float(),
                                 targets[start:start + batch_size].flatten(),
                                 reduction="sum").item()
        count += targets[start:start + batch_size].numel()
    model.train(was_training)
    return math.exp(total / count)


def train_language_model(model: nn.Module, tokens: Tensor, targets: Tensor, steps: int,
                         batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW with a cosine schedule on random batches of (tokens, targets); returns the losses.
    (The Trainer's loop is for classifiers' [N, classes] logits.)"""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_language_model(): 'steps' and 'batch_size' must be >= 1, got "
                         f"{steps}, {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(tokens), (batch_size,), generator=generator)
        logits = model(tokens[batch])
        loss = F.cross_entropy(logits.flatten(0, 1), targets[batch].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


MODELS.register("gpt", GPT)
