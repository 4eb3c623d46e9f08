"""The routing plug point: what a gate returns, and the gate a method may install.

An MoE layer routes each token with its gate. Without one (`layer.gate is None`) it uses the
learned softmax top-k router of sparse upcycling (`top_k_gating` on `layer.router`'s logits).
A method that routes differently builds a `Gate` per layer in `attach` and sets `layer.gate`;
being a submodule of the layer, its parameters are trained by the trial's optimizer, saved and
moved with the model, so it must create them on the layer's device and in its dtype
(`layer.router.weight`). The core knows no gate but the default.

A gate returns a `Gating`: the router scores (logged, and read by losses and diagnostics as
`Routing.router_logits`), and k_max (expert, weight) slots per token with an optional validity
mask, so that a token may use any number of experts from 0 to k_max: expert choice gives some
tokens none and others several, a ReLU router as many as its positive scores. Dispatch skips
invalid slots (they join padding in the sorted dispatch's dropped bucket) and `Routing`
reports how many experts each token actually used (`experts_per_token`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Gating:
    logits: torch.Tensor  # (T, E) router scores; softmax(logits) is what diagnostics call router probabilities
    index: torch.Tensor  # (T, k_max) expert of each slot (any valid id where the slot is unused)
    weight: torch.Tensor  # (T, k_max) gate weight of each slot (0 where unused)
    mask: torch.Tensor | None = None  # (T, k_max) bool, the slots used; None: every slot


class Gate(nn.Module):
    """A method's router for one MoE layer.

    forward(layer, x, token_mask, token_ids) -> Gating
      layer      the MoE layer it routes (moebench.moe.layer, which imports this module): its
                 router, num_experts, top_k and renormalize
      x          (T, d) the layer's input tokens; padding rows included where `token_mask` is given
      token_mask (T,) bool, False on padding (which must get no valid slot: the dispatch drops its
                 slots anyway, but capacity-style gates must not count or choose it); None: all real
      token_ids  (T,) the input ids of the tokens (None where the forward had none)
    `self.training` says whether this is a training forward (the layer's mode).
    """

    def forward(self, layer: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None,
                token_ids: torch.Tensor | None) -> Gating:
        raise NotImplementedError


def top_k_gating(logits: torch.Tensor, k: int, renormalize: bool, select: torch.Tensor | None = None) -> Gating:
    """Softmax top-k: the k most probable experts (by `select` where given: scores that choose
    but do not weight), weighted by their probabilities, renormalised to sum 1 if asked."""
    probs = torch.softmax(logits.float(), dim=-1)  # (T, E)
    if select is None:
        weight, index = probs.topk(k, dim=-1)  # (T, k)
    else:
        index = select.topk(k, dim=-1).indices
        weight = probs.gather(1, index)
    if renormalize:
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return Gating(logits, index, weight)


def all_experts_gating(logits: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> Gating:
    """One slot per expert (k_max = E): for gates that decide each (token, expert) pair apart."""
    index = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[0], -1)  # (T, E)
    return Gating(logits, index, weight.masked_fill(~mask, 0.0), mask)


def freeze_router(layer: nn.Module) -> None:
    """For gates that do not use the learned router: leave it out of the optimizer."""
    layer.router.weight.requires_grad_(False)
