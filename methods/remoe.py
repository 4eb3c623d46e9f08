"""remoe: ReLU routing with an adaptive, load-balanced L1 penalty that steers the sparsity.

ReMoE (Wang, Chen, Zhu; "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU Routing",
arXiv 2412.14711). The router's top-k + softmax is replaced by a ReLU:

    g_e(x) = relu(x · W_e)             a token uses every expert with g_e > 0 (0..E of them)
    out(x) = sum_e g_e(x) · FFN_e(x)   (no renormalisation)

and the number of active experts is controlled by an L1 penalty with load balancing,

    L_reg = sum_e f_e · mean_t g_e(x_t),   f_e = E / (k N) · #{t : g_e(x_t) > 0}   (f_e without gradient)
    L     = L_task + lambda · mean over layers of L_reg

whose coefficient follows the measured sparsity S (the share of zero gates) after every step:
lambda <- lambda · alpha if S < 1 - k/E (too dense), else lambda / alpha.

Facts taken from the official code (thu-ml/ReMoE, on Megatron-LM):
- megatron/core/transformer/moe/router.py `ReLURouter`: probs = relu(logits), routing map
  probs > 0; `apply_l1_reg` computes the penalty with `switch_load_balancing_loss_func`
  (moe_utils.py) on the ReLU outputs and the per-expert token counts:
  sum_e (sum_t g_te) · count_e · E / (N² k) · lambda, the L_reg above; the training sparsity
  is 1 - (active gates) / (N E), recorded in training forwards only;
- megatron/training/training.py: after each step the sparsity is averaged over layers and
  micro-batches and lambda is multiplied or divided by `moe_relu_l1_reg_coeff_multiplier` against
  target 1 - topk / num_experts; lambda is kept in fp32;
- transformer_config.py: lambda_0 = `moe_relu_l1_reg_coeff_init` = 1e-8, alpha =
  `moe_relu_l1_reg_coeff_multiplier` = 1.2 (the paper's defaults).

moebench's choices: the router is the upcycled layer's (N(0, router_init_std) init, here a
ReLU router); the penalty is averaged over layers, as the paper's formula (1 / L), where
Megatron adds each layer's term; k is --top-k. At step 0 the upcycled model is not the dense
one: about half the gates are open, each small (the router is initialised near 0), so the MoE's
output starts scaled down until the router grows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.layer import Routing
from moebench.moe.routing import Gate, Gating, all_experts_gating


def l1_balance_penalty(routing: Routing, top_k: int) -> torch.Tensor:
    """sum_e f_e * mean_t g_te, f_e = E * (tokens using e) / (k N): ReMoE's load-balanced L1."""
    gates = routing.expert_weight.float()  # (N, E) relu outputs, one slot per expert
    num_tokens, num_experts = gates.shape
    active = (gates > 0).sum(dim=0).float()  # (E,) tokens per expert, no gradient
    f = num_experts * active / (top_k * max(1, num_tokens))
    return (f * gates.mean(dim=0)).sum()


def sparsity(routing: Routing) -> torch.Tensor:
    return 1.0 - routing.expert_mask.float().mean()


def adapt_coefficient(coef: float, measured: float, target: float, multiplier: float) -> float:
    """The official zeroth-order update: more penalty when too dense, less when too sparse."""
    return coef * multiplier if measured < target else coef / multiplier


class ReLUGate(Gate):
    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        logits = layer.router(layer.router_input(x))  # (T, E)
        gates = torch.relu(logits.float())
        return all_experts_gating(logits, gates, gates > 0)


class ReMoE(Method):
    name = "remoe"
    description = "ReMoE: ReLU router (0..E experts per token), adaptive L1 penalty toward sparsity 1 - k/E"
    board_columns = {"remoe_sparsity": ("ReMoE sparsity", 3), "remoe_l1_coef": ("ReMoE L1 coef", 6)}

    @dataclass(frozen=True)
    class Params:
        l1_coef_init: float = 1e-8  # lambda_0
        multiplier: float = 1.2  # alpha

        def __post_init__(self):
            if not self.l1_coef_init > 0:
                raise ValueError(f"l1_coef_init must be > 0, got {self.l1_coef_init}")
            if not self.multiplier >= 1:
                raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    search_space = {"multiplier": [1.1, 1.2, 1.5], "l1_coef_init": [1e-8, 1e-4]}

    def attach(self, model: nn.Module) -> None:
        self.coef = self.params.l1_coef_init  # a Python float: fp32 or better whatever the model's dtype
        self.layers = list(model.moe_layers)
        for layer in self.layers:
            layer.gate = ReLUGate()
        self.targets = [1.0 - layer.top_k / layer.num_experts for layer in self.layers]
        self.step_sparsity: list[torch.Tensor] = []  # per training forward since the last step, on the device
        self.sparsity_sum, self.sparsity_count = 0.0, 0

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        if not routing:
            return {}
        penalty = torch.stack([l1_balance_penalty(r, layer.top_k) for r, layer in zip(routing, self.layers)]).mean()
        self.step_sparsity.append(torch.stack([sparsity(r) for r in routing]).mean().detach())
        return {"l1_loss": self.coef * penalty}

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.step_sparsity:
            return
        measured = torch.stack(self.step_sparsity).mean().item()  # one sync per step
        self.step_sparsity.clear()
        target = sum(self.targets) / len(self.targets)
        self.coef = adapt_coefficient(self.coef, measured, target, self.params.multiplier)
        self.sparsity_sum, self.sparsity_count = self.sparsity_sum + measured, self.sparsity_count + 1

    def diagnostics(self) -> dict[str, float]:
        """Since the last call: the mean training sparsity; and lambda now."""
        values = {"remoe_l1_coef": self.coef}
        if self.sparsity_count:
            values["remoe_sparsity"] = self.sparsity_sum / self.sparsity_count
        self.sparsity_sum, self.sparsity_count = 0.0, 0
        return values
