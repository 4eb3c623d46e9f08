"""control_lr: a positive control — vanilla with every optimizer step's learning rate divided by `factor`.

Not a diversity method. It differs from `vanilla` by construction, in a direction known in
advance (at a budget where vanilla is still learning, a smaller step learns less), so a board
that holds both shows whether its seeds and examples detect a difference of known sign on real
training noise. Boards list it as a control: compared with the baseline, never ranked or marked
best. The division is applied around the optimizer's step (and undone after it), so the
learning-rate schedule, warm-up and AdamW's decoupled weight decay all see lr / factor.
"""
import dataclasses

import torch

from moebench.method import Method


class ControlLR(Method):
    name = "control_lr"
    description = "positive control: vanilla with the learning rate divided by `factor` (a known, negative effect)"
    control = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        factor: float = 4.0

        def __post_init__(self):
            if not self.factor >= 1.0:
                raise ValueError(f"factor must be >= 1 (a control that learns less), got {self.factor}")

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] / self.params.factor

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:  # the scheduler sets the next step's lr from its own base
            group["lr"] = group["lr"] * self.params.factor
