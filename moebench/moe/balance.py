"""Load-balancing losses over one MoE layer's routing, shared by the methods that add them
(load_balancing; simsmoe and ortho_var keep a Switch loss beside their own terms).

    switch_aux_loss = E * sum_i f_i * P_i   (Switch Transformer, Fedus et al. 2021)
    router_z_loss   = mean_x logsumexp(z(x))^2   (ST-MoE, Zoph et al. 2022)
"""
from __future__ import annotations

import torch

from moebench.moe.layer import Routing


def switch_aux_loss(routing: Routing) -> torch.Tensor:
    num_experts = routing.num_experts
    # Only the slots a token used: a gate's unused slots (routing.expert_mask) hold no assignment.
    assignments = torch.bincount(routing.assigned_experts, minlength=num_experts).float()
    fraction = assignments / assignments.sum().clamp_min(1.0)  # (E,) f_i
    mean_prob = routing.router_probs.mean(dim=0)  # (E,) P_i
    return num_experts * torch.sum(fraction * mean_prob)


def router_z_loss(routing: Routing) -> torch.Tensor:
    return torch.logsumexp(routing.router_logits.float(), dim=-1).square().mean()
