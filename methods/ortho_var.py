"""ortho_var: orthogonality loss between co-activated experts + routing-score variance reward.

Guo, Lu, Nan, Chu, Zhuang, Yang, Che, Leng, Cui, Jiang: "Advancing Expert Specialization for
Better MoE", arXiv 2505.22323 (NeurIPS 2025). Official code: HongcanGuo/Auxloss-For-Advancing-
Expert-Specialization, `Model/{ds,ds_v2_lite,kimi}/modeling_deepseek.py` (`MoEGate.compute_ortho_loss`,
`MoEGate.compute_weight`, `MoEGate.forward`, `DeepseekMoE.forward`) and `Model/*/config.json`.

The paper's objective (Sec. 3): L = L_task + alpha * L_aux + beta * L_o + gamma * L_v, for
each MoE layer, with N tokens, the k experts activated for token t, o_{t,i} = E_{e(t,i)}(x_t) the
output of its i-th activated expert (not multiplied by the gate weight), p_t = softmax(z(x_t)):

    L_aux = E * sum_e f_e * P_e                   moebench's Switch loss (`load_balancing`)
    L_o   = 1/(N k) sum_t sum_i || Proj_{span{o_{t,j} : j != i}} o_{t,i} ||^2
    L_v   = - 1/N sum_t Var_e(p_{t,e})            Var over the E experts, unbiased (/(E-1))

L_o is computed as the official `compute_ortho_loss` does: the other activated outputs are
orthonormalised by (modified) Gram-Schmidt, u = v / (||v|| + 1e-6), and the squared projections
of o_{t,i} on that basis are summed. For k = 2 this is ((<a,b>^2/||b||^2) + (<a,b>^2/||a||^2)) / 2
per token: 0 for orthogonal outputs, ||o||^2 (its maximum) for identical ones. Note that L_o is
not scale-free: besides turning outputs apart it can also be lowered by shrinking them.
L_v *rewards* spread: the official gate returns `aux_loss - variance_loss` with
`variance_loss = w_v * torch.var(scores, dim=-1).mean()` (scores: softmax over all experts,
before top-k), so gradient descent sharpens each token's routing distribution.

Coefficients, from the official configs and `compute_weight`: `aux_loss_alpha` = 0.001,
`variance_loss_weight` = 0.001 and `ortho_loss_weight` = 0.0001 in all three configs. The last
two are *targets*, not weights: on the first training forward the code sets each weight to
10 ** round(log10(target / initial value)), so that the weighted term starts at about the target
(rounded to a power of ten), and keeps it for the whole run (one value shared by all layers).
With `calibrate=False` the targets are used as plain coefficients beta and gamma instead.

Reconstructed or chosen here (the paper's full text was not reachable; its abstract and a
third-party summary of L and L_o were, and the official code above was read in full):
- Token grouping. The official `DeepseekMoE.forward` concatenates each expert's outputs in
  expert order and reshapes them to (N, k, d), which does not in general put one token's k
  outputs in one row; we follow the paper's definition (the experts activated for the same
  token) and gather each token's k outputs explicitly.
- Calibration input. The official code calibrates beta on the router's weight rows standing in
  for expert outputs (the gate runs before the experts); we calibrate on the real first-step
  L_o and L_v (means over layers), which is what the target is meant to scale. A term whose
  first value is 0 (e.g. L_o with top-1) is calibrated at the first step where it is positive.
- Projection onto the span (Gram-Schmidt, as the code) rather than the sum of projections onto
  each other output (as the summary writes the paper's formula); the two agree for k = 2.
  A Gram-Schmidt residual below 1e-4 of its vector's norm is treated as 0 (linearly dependent
  outputs, e.g. identical upcycled experts with k >= 3), where u = v / (||v|| + 1e-6) would
  blow float rounding up into a spurious direction.
- Layers are averaged, not summed (the official code adds each layer's loss), so a coefficient
  means the same at any depth; padding tokens are left out of every term.
- L_aux is moebench's Switch loss over the batch, not DeepSeek's sequence-level variant
  (`seq_aux: true` in the official configs); both equal 1 at uniform routing.
- With top-1 routing no expert is co-activated: L_o is identically 0, as the paper defines it.
- Routing does not carry the experts' per-token outputs, so each activated expert is run again
  on its tokens (inputs not detached: as in the official code, where L_o is taken on the
  forward's own outputs, its gradient reaches the experts and the layers below; not the router).
  This re-run costs about one more expert forward and backward per MoE layer.

diagnostics(), averaged over the training steps since the last call: the mean |cos| between the
outputs of co-activated experts (`ortho_coactive_abs_cos`), the unweighted L_o and Var terms
(`ortho_loss_unweighted`, `routing_score_variance`), and the coefficients in use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.balance import switch_aux_loss
from moebench.moe.layer import Routing

GS_EPS = 1e-6  # the official u = v / (||v|| + 1e-6)
GS_REL_TOL = 1e-4  # a residual below this share of its vector's norm is linear dependence, not a direction


def coactivated_outputs(routing: Routing) -> torch.Tensor:
    """(N, k, d): each token's k activated experts' outputs (best first, before the gate weight),
    recomputed from the layer's experts on the routed inputs."""
    layer, x, index = routing.layer, routing.inputs, routing.expert_index
    num_tokens, k = index.shape
    flat = index.reshape(-1)  # assignment token * k + j -> expert
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert
    counts = torch.bincount(flat, minlength=layer.num_experts).tolist()
    like = layer.experts[0].fc1.weight
    xs = x.index_select(0, torch.div(order, k, rounding_mode="floor")).to(like.dtype)
    ys = torch.cat([expert(chunk) for expert, chunk, count in zip(layer.experts, xs.split(counts), counts) if count > 0])
    return ys.index_select(0, torch.argsort(order)).reshape(num_tokens, k, -1)


def _orthonormal_basis(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Modified Gram-Schmidt, row by row ((N, d) each), as the official code."""
    basis: list[torch.Tensor] = []
    for v in vectors:
        w = v
        for u in basis:
            w = w - (u * w).sum(dim=-1, keepdim=True) * u
        norm = w.norm(dim=-1, keepdim=True)
        independent = norm > GS_REL_TOL * v.norm(dim=-1, keepdim=True)
        basis.append(torch.where(independent, w / (norm + GS_EPS), torch.zeros_like(w)))
    return basis


def orthogonality_loss(outputs: torch.Tensor) -> torch.Tensor:
    """L_o of (N, k, d) co-activated outputs: mean over tokens and slots of the squared norm of
    each output's projection onto the span of the token's other outputs (float32)."""
    num_tokens, k, _ = outputs.shape
    o = outputs.float()
    if k < 2 or num_tokens == 0:
        return o.sum() * 0.0  # no co-activated pair: zero, still attached to the graph
    total = o.new_zeros(())
    for i in range(k):
        current = o[:, i]
        for u in _orthonormal_basis([o[:, j] for j in range(k) if j != i]):
            total = total + ((u * current).sum(dim=-1, keepdim=True) * u).square().sum()
    return total / (k * num_tokens)


def routing_variance(routing: Routing) -> torch.Tensor:
    """Mean over tokens of the (unbiased) variance of the router probabilities across experts."""
    probs = routing.router_probs
    if probs.shape[-1] < 2 or probs.shape[0] == 0:
        return probs.sum() * 0.0
    return probs.var(dim=-1).mean()


def coactive_abs_cosine(outputs: torch.Tensor) -> torch.Tensor:
    """Mean |cos| over each token's pairs of co-activated outputs (NaN without a pair)."""
    o = outputs.float()
    k = o.shape[1]
    if k < 2 or o.shape[0] == 0:
        return o.new_tensor(math.nan)
    unit = o / o.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pairs = [(unit[:, i] * unit[:, j]).sum(dim=-1).abs() for i in range(k) for j in range(i + 1, k)]
    return torch.stack(pairs).mean()


def calibrated_coefficient(target: float, value: float) -> float:
    """The official `compute_weight`: 10 ** round(log10(target / value))."""
    return 10.0 ** round(math.log10(target / value))


class OrthoVar(Method):
    name = "ortho_var"
    description = "Orthogonality loss on co-activated experts' outputs + routing-variance reward + Switch aux loss (arXiv 2505.22323)"

    @dataclass(frozen=True)
    class Params:
        aux_coef: float = 0.001  # alpha: official configs' aux_loss_alpha
        ortho_target: float = 1e-4  # official configs' ortho_loss_weight (a target when calibrating)
        variance_target: float = 1e-3  # official configs' variance_loss_weight (a target when calibrating)
        calibrate: bool = True  # official: weight = 10**round(log10(target / first value)); False: target is the weight

        def __post_init__(self):
            for name in ("aux_coef", "ortho_target", "variance_target"):
                value = getattr(self, name)
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    search_space = {
        "ortho_target": [1e-4, 1e-3, 1e-2, 1e-1],
        "variance_target": [1e-3, 1e-2, 1e-1],
    }

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        # None: not calibrated yet (calibration picks it on the first step the term is positive).
        self.ortho_coef: float | None = None if p.calibrate and p.ortho_target > 0 else p.ortho_target
        self.variance_coef: float | None = None if p.calibrate and p.variance_target > 0 else p.variance_target
        self._reset_sums()

    def attach(self, model: nn.Module) -> None:
        pass  # nothing to create: the terms are computed from each forward's routing

    def _reset_sums(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0
        self._cos_steps = 0

    def _calibrate(self, coef: float | None, target: float, value: torch.Tensor) -> float | None:
        if coef is not None:
            return coef
        measured = value.item()
        if not (math.isfinite(measured) and measured > 0):
            return None  # try again next step; the term weighs 0 meanwhile
        return calibrated_coefficient(target, measured)

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        aux = torch.stack([switch_aux_loss(r) for r in routing]).mean()
        outputs = [coactivated_outputs(r) for r in routing]
        ortho = torch.stack([orthogonality_loss(o) for o in outputs]).mean()
        variance = torch.stack([routing_variance(r) for r in routing]).mean()
        self.ortho_coef = self._calibrate(self.ortho_coef, self.params.ortho_target, ortho)
        self.variance_coef = self._calibrate(self.variance_coef, self.params.variance_target, variance)
        with torch.no_grad():
            self._accumulate("ortho_loss_unweighted", ortho)
            self._accumulate("routing_score_variance", variance)
            cosines = [c for c in (coactive_abs_cosine(o) for o in outputs) if not torch.isnan(c)]
            if cosines:
                self._accumulate("ortho_coactive_abs_cos", torch.stack(cosines).mean())
                self._cos_steps += 1
            self._steps += 1
        return {
            "aux_loss": self.params.aux_coef * aux,
            "ortho_loss": (self.ortho_coef or 0.0) * ortho,
            "variance_loss": -(self.variance_coef or 0.0) * variance,
        }

    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    def diagnostics(self) -> dict[str, float]:
        """Means over the training steps since the last call (NaN where there were none)."""
        values = {}
        for name in ("ortho_loss_unweighted", "routing_score_variance"):
            values[name] = self._sums[name].item() / self._steps if self._steps and name in self._sums else math.nan
        cos = self._sums.get("ortho_coactive_abs_cos")
        values["ortho_coactive_abs_cos"] = cos.item() / self._cos_steps if cos is not None and self._cos_steps else math.nan
        values["ortho_coef"] = math.nan if self.ortho_coef is None else self.ortho_coef
        values["variance_coef"] = math.nan if self.variance_coef is None else self.variance_coef
        self._reset_sums()
        return values
