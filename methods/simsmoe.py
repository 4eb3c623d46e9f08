"""simsmoe: a CKA similarity penalty between experts that share tokens.

SimSMoE (Do, Le, Tran; "Solving Representational Collapse via Similarity Measure", arXiv
2406.15883, Findings of NAACL 2025). Follows the official code (giangdip2410/SimSMoE:
custom_gates.py `CustomNaiveGate_Balance_SMoE`, custom_layers.py, losses/cka.py):

- Pair tracking: each training forward, every token's sorted top-2 expert pair adds
  count / T to that pair's counter; a pair whose counter exceeds `cont_freq` is selected for
  this step and its counter reset to 0.
- For a selected pair: the tokens routed to both experts (inputs detached) go through both
  experts again, then through a shared projection head Linear(d_model, E); the penalty is
  the kernel CKA of the two projected outputs (RBF with `sigma`, or linear), added only when it
  exceeds `sim_threshold`.
- Loss per layer: L_bal + contrastive_rate * sum of penalised CKAs; total: balance_coef times
  that. L_bal is the official `set_load_balance` (custom_gates.py): E * sum_i f_i * p_i with
  f_i the share of the N*k token->expert assignments and p_i = sum_t softmax_i(t) / (N*k), i.e.
  the Switch loss of `load_balancing` divided by k. At the same coefficient, simsmoe's balancing
  pressure is therefore 1/k of load_balancing's, as in the official code (`simsmoe_balance_loss`).

Choices of moebench, where the official code is silent or differs:
- Layers are averaged, not summed, so a coefficient means the same at any depth (the official
  sum over L layers equals balance_coef * L here).
- With top-1 routing no token is shared; a token's pair is then its two most probable experts
  (top-1 and runner-up), and both experts are run on it for the penalty. For top-2 this is
  exactly the official pair; for top-k > 2 the pair is the two best of the k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.balance import switch_aux_loss
from moebench.moe.layer import Routing
from moebench.moe.similarity import kernel_cka, linear_cka


def simsmoe_balance_loss(routing: Routing) -> torch.Tensor:
    """The official balance term: the Switch loss with probabilities averaged over the N*k
    assignments instead of the N tokens, so 1/k of it (with a gate that leaves slots unused,
    k is the mean number of slots used)."""
    return switch_aux_loss(routing) / routing.experts_per_token.float().mean().clamp_min(1.0)


def top2_pair_codes(routing: Routing) -> torch.Tensor:
    """(N,) code e1 * E + e2 (e1 < e2) of each token's two best experts; with a gate that leaves
    slots unused, its two highest-weight used experts, and -1 for a token that used fewer than 2."""
    if routing.expert_index.shape[1] < 2:
        top2 = routing.router_logits.topk(2, dim=-1).indices
    elif routing.expert_mask is None:
        top2 = routing.expert_index[:, :2]
    else:
        best = routing.expert_weight.float().masked_fill(~routing.expert_mask, -math.inf).topk(2, dim=1).indices
        top2 = routing.expert_index.gather(1, best)
    low, high = top2.min(dim=1).values, top2.max(dim=1).values
    codes = low * routing.num_experts + high
    if routing.expert_mask is not None and routing.expert_index.shape[1] >= 2:
        codes = codes.masked_fill(routing.expert_mask.sum(dim=1) < 2, -1)
    return codes


class PairTracker:
    """Per-layer counters of how often each expert pair shares tokens (official `tracking`)."""

    def __init__(self, num_experts: int, threshold: float):
        self.num_experts, self.threshold = num_experts, threshold
        self.counts = torch.zeros(num_experts * num_experts, dtype=torch.float64)

    def update(self, codes: torch.Tensor) -> list[tuple[int, int]]:
        """codes: top2_pair_codes (-1: a token without a pair, counted in the total only)."""
        paired = codes[codes >= 0].cpu()
        self.counts += torch.bincount(paired, minlength=len(self.counts)).double() / max(1, codes.numel())
        selected = (self.counts > self.threshold).nonzero().squeeze(1).tolist()
        self.counts[selected] = 0.0
        return [divmod(code, self.num_experts) for code in selected]


class SimSMoE(Method):
    name = "simsmoe"
    description = "SimSMoE: CKA penalty between experts sharing tokens, + Switch balance loss"

    @dataclass(frozen=True)
    class Params:
        balance_coef: float = 0.01  # lambda_bal, multiplies balance and CKA terms
        contrastive_rate: float = 1.0
        cont_freq: float = 1.0  # official default; its scripts use 16.0 for long pre-training
        sim_threshold: float = 0.5
        kernel: str = "rbf"  # "rbf" or "linear"
        sigma: float = 0.8

        def __post_init__(self):
            if self.kernel not in ("rbf", "linear"):
                raise ValueError(f"kernel must be 'rbf' or 'linear', got {self.kernel!r}")
            if self.balance_coef < 0 or self.contrastive_rate < 0 or self.cont_freq < 0 or self.sigma <= 0:
                raise ValueError("balance_coef, contrastive_rate, cont_freq must be >= 0 and sigma > 0")

    # The official repo's ablation grids.
    search_space = {
        "cont_freq": [1.0, 4.0, 8.0, 16.0],
        "sim_threshold": [0.1, 0.3, 0.5, 0.7, 0.9],
        "contrastive_rate": [0.5, 1.0, 5.0, 10.0, 20.0],
    }

    def attach(self, model: nn.Module) -> None:
        self.heads = []
        self.trackers = []
        for layer in model.moe_layers:
            d_model = layer.router.in_features
            # A submodule of the layer, so the model's optimizer trains it and .to() moves it.
            # In the experts' device and dtype: it projects their outputs.
            like = layer.experts[0].fc2.weight
            layer.simsmoe_head = nn.Linear(d_model, layer.num_experts).to(device=like.device, dtype=like.dtype)
            self.heads.append(layer.simsmoe_head)
            self.trackers.append(PairTracker(layer.num_experts, self.params.cont_freq))

    def cka(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.params.kernel == "rbf":
            return kernel_cka(x, y, self.params.sigma)
        return linear_cka(x, y)

    def pair_penalty(self, routing: Routing, head: nn.Linear, tracker: PairTracker) -> torch.Tensor:
        codes = top2_pair_codes(routing)
        penalty = routing.inputs.new_zeros(())
        for e1, e2 in tracker.update(codes):
            shared = routing.inputs[codes == e1 * routing.num_experts + e2].detach()
            if shared.shape[0] < 2:
                continue  # CKA of a single token is undefined
            experts = routing.layer.experts
            similarity = self.cka(head(experts[e1](shared)).float(), head(experts[e2](shared)).float())
            if similarity.item() > self.params.sim_threshold:
                penalty = penalty + similarity
        return penalty

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        balance = torch.stack([simsmoe_balance_loss(r) for r in routing]).mean()
        penalty = torch.stack([self.pair_penalty(r, h, t) for r, h, t in zip(routing, self.heads, self.trackers)]).mean()
        return {
            "aux_loss": self.params.balance_coef * balance,
            "cka_loss": self.params.balance_coef * self.params.contrastive_rate * penalty,
        }
