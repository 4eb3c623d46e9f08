"""load_balancing: Switch Transformer auxiliary loss plus ST-MoE router z-loss.

    L_aux = E * sum_i f_i * P_i     f_i: fraction of token->expert assignments to expert i
                                    (top-k: all k assignments, divided by k; with a gate that
                                    leaves slots unused, the used ones; not differentiable)
                                    P_i: mean router probability of expert i
    L_z   = mean_x logsumexp(z(x))^2     (both in moebench.moe.balance, shared with other methods)

Both are averaged over MoE layers (so a coefficient means the same for any depth) and
padding tokens never enter them. At perfectly uniform routing L_aux = 1, so the logged
weighted loss equals `aux_coef`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from moebench.method import Method
from moebench.moe.balance import router_z_loss, switch_aux_loss
from moebench.moe.layer import Routing


class LoadBalancing(Method):
    name = "load_balancing"
    description = "Switch/GShard load-balancing aux loss + optional ST-MoE router z-loss"

    @dataclass(frozen=True)
    class Params:
        aux_coef: float = 0.01  # Switch Transformer's alpha
        z_loss_coef: float = 0.0  # ST-MoE uses 0.001; off by default

        def __post_init__(self):
            if self.aux_coef < 0 or self.z_loss_coef < 0:
                raise ValueError("aux_coef and z_loss_coef must be >= 0")

    search_space = {"aux_coef": [0.001, 0.01, 0.1], "z_loss_coef": [0.0, 0.001]}

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        losses = {"aux_loss": self.params.aux_coef * torch.stack([switch_aux_loss(r) for r in routing]).mean()}
        if self.params.z_loss_coef > 0:
            losses["z_loss"] = self.params.z_loss_coef * torch.stack([router_z_loss(r) for r in routing]).mean()
        return losses
