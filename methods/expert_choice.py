"""expert_choice: each expert chooses its top-C tokens, instead of each token its top-k experts.

Expert choice routing (Zhou, Lei, Liu, Du, Huang, Zhao, Dai, Chen, Le, Laudon; "Mixture-of-
Experts with Expert Choice Routing", arXiv 2202.09368, NeurIPS 2022), section 3.2:

    S = softmax(X · W_g)              (N, E) token-to-expert scores, softmax over experts
    G, I = TopK(S^T, C)               each expert (row of S^T) takes the C tokens it scores highest
    out_t = sum_{e : t in I_e} S[t, e] · FFN_e(x_t)
    C = capacity_factor · k · N / E   (N: the batch's non-padding tokens)

so a token may be taken by no expert (it then passes only through the residual) or by several,
and every expert processes exactly C tokens: load balance by construction, no auxiliary loss.
The paper's capacity factor c is the mean number of experts per token (EC-CF2: c = 2, compute
like top-2); here c = capacity_factor · --top-k, so the default 1.0 with --top-k 2 is EC-CF2.

No official code was found; the equations are the paper's. moebench's choices: W_g is the
layer's learned router (the upcycled router); C is rounded to the nearest integer, at least 1
and at most N; the weights are the softmax scores as they are (not renormalised over a token's
experts, as in the paper's equation); the choice is made over the whole batch at evaluation too,
so a token's experts depend on its batch (the paper's method does the same per group): an
example's prediction, and so a run's scores, hold for the run's recorded `train.eval_batch_size`
and moebench's longest-first evaluation order, and move with either (tests/test_routing.py). The
paper's variant that caps the experts per token with a regularised linear programme (EC-CAP)
is not included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.routing import Gate, Gating, all_experts_gating


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    return max(1, min(num_tokens, round(capacity_factor * top_k * num_tokens / num_experts)))


def expert_choice_gating(logits: torch.Tensor, top_k: int, capacity_factor: float,
                         token_mask: torch.Tensor | None = None) -> Gating:
    """logits (T, E); token_mask (T,) False on padding, which no expert may choose."""
    num_tokens, num_experts = logits.shape
    probs = torch.softmax(logits.float(), dim=-1)  # (T, E) S
    real = num_tokens if token_mask is None else int(token_mask.sum())  # a host sync: C must be a number
    c = capacity(real, num_experts, top_k, capacity_factor)
    choice = probs if token_mask is None else probs.masked_fill(~token_mask.unsqueeze(1), -1.0)
    tokens = choice.t().topk(c, dim=-1).indices  # (E, C) each expert's tokens
    chosen = torch.zeros_like(probs, dtype=torch.bool)
    chosen.scatter_(0, tokens.t(), True)  # (T, E): column e is True on expert e's C tokens
    return all_experts_gating(logits, probs, chosen)


class ExpertChoiceGate(Gate):
    def __init__(self, capacity_factor: float):
        super().__init__()
        self.capacity_factor = capacity_factor

    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        logits = layer.router(layer.router_input(x))  # (T, E)
        return expert_choice_gating(logits, layer.top_k, self.capacity_factor, token_mask)


class ExpertChoice(Method):
    name = "expert_choice"
    description = "expert choice routing: each expert takes its top-C tokens (C = cf * k * N / E), no aux loss"

    @dataclass(frozen=True)
    class Params:
        capacity_factor: float = 1.0  # times --top-k: the paper's c (EC-CF2 with top-2)

        def __post_init__(self):
            if not self.capacity_factor > 0:
                raise ValueError(f"capacity_factor must be > 0, got {self.capacity_factor}")

    # With --top-k 2: c = 0.5, 1, 2 (the paper's main setting is EC-CF2, smaller c its capacity ablation).
    search_space = {"capacity_factor": [0.25, 0.5, 1.0]}

    def attach(self, model: nn.Module) -> None:
        for layer in model.moe_layers:
            layer.gate = ExpertChoiceGate(self.params.capacity_factor)  # no parameters of its own
