"""aux_free: auxiliary-loss-free load balancing with a per-expert selection bias.

Loss-Free Balancing (Wang, Gao, Zhao, Sun, Dai; "Auxiliary-Loss-Free Load Balancing Strategy for
Mixture-of-Experts", arXiv 2408.15664), its equations and Algorithm 1:

    chosen(t) = TopK_i( s_{i,t} + b_i )           the bias only decides which experts are chosen
    g_{i,t}   = s_{i,t} if i in chosen(t), else 0  the weights come from the unbiased scores
    after each training step:  b_i <- b_i + u * sign(c_mean - c_i)

with c_i the number of tokens assigned to expert i in the step's batch and c_mean their mean: an
overloaded expert's bias falls, an idle one's rises, so balance needs no auxiliary loss and no
gradient reaches the router from it. u = 1e-3, the paper's choice among the update rates it
compares; the bias starts at 0.

No official code was found; the above is the paper's. moebench's choices: the scores are the
layer's softmax probabilities (`scores="softmax"`, as every other moebench router; the method is
defined for any gating function and the paper also uses a sigmoid gate: `scores="sigmoid"`); the
chosen weights are renormalised to sum 1 where moebench renormalises (top-k >= 2) and left as
scores for top-1; c_i counts the non-padding tokens of every training forward since the last
step, and the bias is kept in fp32 whatever the model's dtype (in bf16, a step of 1e-3 would
vanish against a bias above ~0.25); at evaluation the bias is applied as trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.layer import Routing
from moebench.moe.routing import Gate, Gating

SCORES = ("softmax", "sigmoid")


def bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """b + u * sign(mean load - load): the paper's update, in place on `bias`."""
    return bias.add_(rate * torch.sign(load.float().mean() - load.float()))


class BiasedGate(Gate):
    def __init__(self, num_experts: int, scores: str):
        super().__init__()
        self.scores = scores
        self.register_buffer("bias", torch.zeros(num_experts, dtype=torch.float32))  # a buffer: never trained

    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        logits = layer.router(layer.router_input(x))  # (T, E)
        if self.scores == "softmax":
            scores = torch.softmax(logits.float(), dim=-1)
        else:
            scores = torch.sigmoid(logits.float())
        index = (scores.detach() + self.bias).topk(layer.top_k, dim=-1).indices  # (T, k) chosen with the bias
        weight = scores.gather(1, index)  # ... weighted without it
        if layer.renormalize:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        return Gating(logits, index, weight)


class AuxFree(Method):
    name = "aux_free"
    description = "Loss-Free Balancing: per-expert bias on selection only, b += u*sign(mean load - load) each step"
    board_columns = {"aux_free_bias_spread": ("aux-free bias spread", 4)}

    @dataclass(frozen=True)
    class Params:
        update_rate: float = 1e-3  # u
        scores: str = "softmax"  # s: moebench's softmax router, or a sigmoid gate

        def __post_init__(self):
            if not self.update_rate >= 0:
                raise ValueError(f"update_rate must be >= 0, got {self.update_rate}")
            if self.scores not in SCORES:
                raise ValueError(f"scores must be one of {', '.join(SCORES)}, got {self.scores!r}")

    search_space = {"update_rate": [1e-4, 1e-3, 1e-2], "scores": ["softmax", "sigmoid"]}

    def attach(self, model: nn.Module) -> None:
        self.gates = []
        for layer in model.moe_layers:
            layer.gate = BiasedGate(layer.num_experts, self.params.scores).to(layer.router.weight.device)
            self.gates.append(layer.gate)
        # Per layer: tokens per expert since the last optimizer step, on the device (no sync per step).
        self.loads = [None] * len(self.gates)

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        for i, r in enumerate(routing):
            counts = torch.bincount(r.assigned_experts, minlength=r.num_experts)
            self.loads[i] = counts if self.loads[i] is None else self.loads[i] + counts
        return {}

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for gate, load in zip(self.gates, self.loads):
            if load is not None:
                bias_update(gate.bias, load, self.params.update_rate)
        self.loads = [None] * len(self.gates)

    def diagnostics(self) -> dict[str, float]:
        if not self.gates:
            return {}
        spread = [float(g.bias.max() - g.bias.min()) for g in self.gates]
        return {"aux_free_bias_spread": sum(spread) / len(spread)}
