"""omoe: an orthogonal expert optimizer, alternating with the base optimizer.

OMoE (Liu et al., "Diversifying the Mixture-of-Experts Representation for Language Models
with Orthogonal Optimizer", arXiv 2310.09762) updates each expert orthogonally to the subspace
spanned by the other experts' inputs, using averaged projectors from Orthogonal Weight
Modification (OWM; Zeng et al., 2019), and alternates that with ordinary optimizer steps.
No official code exists and the paper's body was not available to us: THIS IS MOEBENCH'S
RECONSTRUCTION, and every choice below is a named hyper-parameter.

- Projectors: per MoE layer and expert i, P_i (d x d) starts at I and is updated by OWM's
  recursion with the mean input r (1 x d) the expert received in a step:
      k = P r^T;   P <- P - k k^T / (alpha + r k)
  With a constant alpha this equals the closed form I - A (A^T A + alpha I)^-1 A^T, A = [r_1 .. r_n].
- Phases: `accumulate_steps` ordinary AdamW steps that also update the projectors, then
  `orthogonal_steps` steps in which the change AdamW makes to expert j's fc1 weight is
  right-multiplied by a projector of the *other* experts' inputs (projectors are frozen in
  this phase). Adam rescales each coordinate, so projecting the gradient would not project
  the update: the *applied change* is projected.
- Which projector (`others_projector`):
  "joint" (default) keeps, per expert j, one OWM projector fed with every other expert's
  inputs, so dW1_j r ~ 0 for every input r any other expert accumulated: "orthogonal to the
  subspace spanned by the other experts";
  "mean" keeps one projector per expert and uses P_bar = mean_{i != j} P_i (the paper's
  "averaged projector matrices" read literally). With E = 2 the two coincide; with E > 2 the
  mean only shrinks, not removes, the other experts' directions (tests show both).
- `project="fc1,fc2"` also projects fc2 with projectors of the experts' hidden activations
  (d_ff x d_ff each: 16x the memory of fc1's).
- alpha follows OWM's alpha0 * c^lambda with lambda = number of completed cycles:
  alpha_t = alpha * alpha_decay ** cycle.
- Biases, attention, LayerNorms and the head update normally; the router too unless
  `train_router_in_orthogonal=False`, which holds it fixed during orthogonal steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method


def owm_update(projector: torch.Tensor, r: torch.Tensor, alpha: float) -> None:
    """In place: P <- P - (P r)(P r)^T / (alpha + r^T P r), r of shape (d,)."""
    k = projector @ r  # (d,)
    projector.sub_(torch.outer(k, k) / (alpha + r @ k))


def owm_closed_form(inputs: torch.Tensor, alpha: float) -> torch.Tensor:
    """I - A (A^T A + alpha I)^-1 A^T for the rows of `inputs` (n, d) as the columns of A."""
    a = inputs.T  # (d, n)
    n = a.shape[1]
    return torch.eye(a.shape[0], dtype=a.dtype) - a @ torch.linalg.solve(a.T @ a + alpha * torch.eye(n, dtype=a.dtype), a.T)


class OMoE(Method):
    name = "omoe"
    description = "OMoE (reconstruction): OWM-projected expert updates alternating with AdamW phases"

    @dataclass(frozen=True)
    class Params:
        alpha: float = 1e-3
        alpha_decay: float = 1.0
        accumulate_steps: int = 4
        orthogonal_steps: int = 4
        project: str = "fc1"  # "fc1" or "fc1,fc2"
        others_projector: str = "joint"  # "joint" or "mean"
        train_router_in_orthogonal: bool = True

        def __post_init__(self):
            if self.alpha <= 0 or not 0 < self.alpha_decay <= 1:
                raise ValueError("alpha must be > 0 and alpha_decay in (0, 1]")
            if self.accumulate_steps < 1 or self.orthogonal_steps < 0:
                raise ValueError("accumulate_steps must be >= 1 and orthogonal_steps >= 0")
            if self.project not in ("fc1", "fc1,fc2"):
                raise ValueError(f"project must be 'fc1' or 'fc1,fc2', got {self.project!r}")
            if self.others_projector not in ("joint", "mean"):
                raise ValueError(f"others_projector must be 'joint' or 'mean', got {self.others_projector!r}")

    search_space = {
        "alpha": [1e-4, 1e-3, 1e-2, 1e-1],
        "accumulate_steps": [2, 4, 8],
        "orthogonal_steps": [2, 4, 8],
        "others_projector": ["joint", "mean"],
    }

    def attach(self, model: nn.Module) -> None:
        self.step = 0
        self.layers = list(model.moe_layers)
        self.targets = ["fc1"] if self.params.project == "fc1" else ["fc1", "fc2"]
        # projectors[(layer, expert, "fc1")] is d_in x d_in over that linear map's inputs: fed with
        # the other experts' inputs ("joint") or with this expert's own ("mean").
        self.projectors: dict[tuple[int, int, str], torch.Tensor] = {}
        self.pending_inputs: dict[tuple[int, int, str], torch.Tensor] = {}
        self.snapshot: dict[tuple[int, int, str], torch.Tensor] = {}
        for l, layer in enumerate(self.layers):
            for e, expert in enumerate(layer.experts):
                for target in self.targets:
                    linear = getattr(expert, target)
                    self.projectors[(l, e, target)] = torch.eye(linear.in_features, device=linear.weight.device)
                    linear.register_forward_pre_hook(self._input_recorder((l, e, target)))

    # ---- phases -------------------------------------------------------------------------
    @property
    def cycle_length(self) -> int:
        return self.params.accumulate_steps + self.params.orthogonal_steps

    def phase(self, step: int | None = None) -> str:
        step = self.step if step is None else step
        return "accumulate" if step % self.cycle_length < self.params.accumulate_steps else "orthogonal"

    def alpha(self) -> float:
        return self.params.alpha * self.params.alpha_decay ** (self.step // self.cycle_length)

    def _input_recorder(self, key):
        def record(module: nn.Module, args) -> None:
            x = args[0]
            if module.training and self.phase() == "accumulate" and x.shape[0] > 0:
                self.pending_inputs[key] = x.detach().float().mean(dim=0)

        return record

    # ---- optimizer hooks ----------------------------------------------------------------
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.phase() == "accumulate":
            alpha = self.alpha()
            for (l, i, target), r in self.pending_inputs.items():
                if self.params.others_projector == "mean":
                    owm_update(self.projectors[(l, i, target)], r, alpha)
                    continue
                for j in range(self.layers[l].num_experts):
                    if j != i:
                        owm_update(self.projectors[(l, j, target)], r, alpha)
            self.pending_inputs.clear()
            return
        for l, layer in enumerate(self.layers):
            for e, expert in enumerate(layer.experts):
                for target in self.targets:
                    self.snapshot[(l, e, target)] = getattr(expert, target).weight.detach().clone()
            if not self.params.train_router_in_orthogonal:
                self.snapshot[(l, -1, "router")] = layer.router.weight.detach().clone()

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.phase() == "orthogonal":
            for l, layer in enumerate(self.layers):
                for e, expert in enumerate(layer.experts):
                    for target in self.targets:
                        weight = getattr(expert, target).weight  # (out, in)
                        before = self.snapshot[(l, e, target)]
                        weight.copy_(before + (weight - before) @ self.others_projector(l, e, target))
                if not self.params.train_router_in_orthogonal:
                    layer.router.weight.copy_(self.snapshot[(l, -1, "router")])
            self.snapshot.clear()
        self.step += 1

    def others_projector(self, layer: int, expert: int, target: str) -> torch.Tensor:
        """The projector applied to expert's update (symmetric, so it right-multiplies as is)."""
        own = self.projectors[(layer, expert, target)]
        if self.params.others_projector == "joint":
            return own
        others = [self.projectors[(layer, i, target)] for i in range(self.layers[layer].num_experts) if i != expert]
        return torch.stack(others).mean(dim=0) if others else torch.eye(own.shape[0], device=own.device)
