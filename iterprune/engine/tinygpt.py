"""``model.builtin: tiny_gpt``: a small causal transformer in plain torch, for byte-level language
modelling without a download (GPT-2's shape: pre-norm blocks of causal self-attention and an MLP).

Its ``Linear`` layers are what pruning sees (attention's ``qkv`` and ``proj``, the MLP's ``fc`` and
``out``, and the output ``head``); the embeddings are ``nn.Embedding`` and never pruned. A language
model task leaves the head out of pruning by default (see ``tasks.LanguageModel``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from iterprune.errors import UserError


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(w, dim=2)
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        if mask is None:
            y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # causal, and padding positions are never attended to
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            allowed = causal[None, None] & mask[:, None, None, :].bool()
            y = functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, w))
        return x + self.out(functional.gelu(self.fc(self.norm2(x))))


class TinyGPT(nn.Module):
    """Token ids ``[B, T]`` (T <= ``context``) to next-token logits ``[B, T, vocab]``."""

    def __init__(
        self, vocab: int = 256, width: int = 128, depth: int = 4, heads: int = 4, context: int = 128
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"tiny_gpt: width {width} is not a multiple of heads {heads}")
        self.context = context
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.context:
            raise UserError(f"a sequence of {t} tokens is longer than the context, {self.context}")
        x = self.tokens(input_ids) + self.positions(torch.arange(t, device=input_ids.device))
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.head(self.norm(x))


def tiny_gpt(
    vocab: int = 256, width: int = 128, depth: int = 4, heads: int = 4, context: int = 128
) -> nn.Module:
    """A small causal transformer (0.9M parameters at the defaults)."""
    return TinyGPT(vocab, width, depth, heads, context)
