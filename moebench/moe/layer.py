"""The MoE feed-forward layer: a learned top-k router over E expert FFNs.

Dispatch groups tokens by expert (one sort, one gather, one scatter-add per layer), so the
work grows with the number of token->expert assignments, never with a per-token loop.
Padding tokens are neither routed nor counted: their FFN output is zero, which changes
nothing downstream because attention masks them out as keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class Expert(nn.Module):
    """One FFN: fc2(act(fc1(x))). Upcycling copies the dense FFN's weights into fc1/fc2."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fc1, self.fc2, self.activation = fc1, fc2, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


@dataclass
class Routing:
    """What one MoE layer hands to methods after each forward (non-padding tokens only)."""

    layer: "MoEFeedForward"
    inputs: torch.Tensor  # (N, d) the tokens' inputs to the experts
    router_logits: torch.Tensor  # (N, E)
    expert_index: torch.Tensor  # (N, k) chosen experts, best first
    expert_weight: torch.Tensor  # (N, k) gate weights the outputs were mixed with

    @property
    def num_experts(self) -> int:
        return self.router_logits.shape[-1]

    @property
    def router_probs(self) -> torch.Tensor:  # (N, E)
        return torch.softmax(self.router_logits.float(), dim=-1)


class MoEFeedForward(nn.Module):
    def __init__(
        self,
        experts: list[Expert],
        router: nn.Linear,
        top_k: int,
        router_jitter: float = 0.0,
        renormalize: bool = True,
    ):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k must be in [1, {len(experts)}], got {top_k}")
        self.experts = nn.ModuleList(experts)
        self.router = router
        self.top_k = top_k
        self.router_jitter = router_jitter
        self.renormalize = renormalize
        # Set by MoEModel around each forward; a layer inside a HF encoder cannot take it as an argument.
        self.token_mask: torch.Tensor | None = None
        self.last_routing: Routing | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x_all = hidden.reshape(-1, shape[-1])  # (B*S, d)
        if self.token_mask is not None:
            token_ids = self.token_mask.reshape(-1).nonzero().squeeze(1)  # (N,) non-padding positions
            x = x_all.index_select(0, token_ids)
        else:
            token_ids, x = None, x_all

        router_in = x
        if self.training and self.router_jitter > 0:
            noise = torch.empty_like(x).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
            router_in = x * noise
        logits = self.router(router_in)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)
        weight, index = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.renormalize:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        self.last_routing = Routing(self, x, logits, index, weight)

        out = self.dispatch(x, index, weight.to(x.dtype))  # (N, d)
        if token_ids is not None:
            out = torch.zeros_like(x_all).index_copy(0, token_ids, out)
        return out.reshape(shape)

    def dispatch(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Sum over each token's k experts of weight * expert(x), computed expert by expert."""
        k = index.shape[1]
        flat_expert = index.reshape(-1)  # (N*k,)
        flat_token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
        flat_weight = weight.reshape(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            slots = (flat_expert == e).nonzero().squeeze(1)
            if slots.numel() == 0:
                continue
            tokens = flat_token[slots]
            y = expert(x.index_select(0, tokens)) * flat_weight[slots].unsqueeze(1)
            out.index_add_(0, tokens, y)
        return out

    def run_every_expert(self, x: torch.Tensor) -> torch.Tensor:
        """(E, N, d): each expert's output on the same tokens (for similarity diagnostics)."""
        return torch.stack([expert(x) for expert in self.experts])
