"""The method contract: what a diversity method may change in a trial.

A method is one class in one file, registered under the `moebench.methods` entry-point group.
It declares typed hyper-parameters (a dataclass called `Params`, with defaults) and overrides
only the hooks it needs:

- `attach(model)`              once, after the MoE model is built (keep per-layer state here;
                               install gates here, see Routing below);
- `start(total_steps, train_batches)`
                               once, before the first step: the trial's number of optimizer steps
                               (for schedules) and a function returning the training batches (model
                               inputs on the CPU, e.g. to count token frequencies); the optimizer
                               exists by then, so parameters belong in `attach`;
- `loss(routing)`              every training forward: named auxiliary losses, added to the task loss;
- `before_step(optimizer)`     after backward, before the optimizer step (gradient surgery);
- `after_step(optimizer)`      after the optimizer step (projected updates, bookkeeping);
- `diagnostics()`              once per epoch: measurements of the method's own state (e.g. how
                               much of an update a projection removed), logged beside the
                               trial's expert diagnostics.

Losses are returned, never kept in globals, so nothing leaks between trials.

Routing: a method that chooses experts its own way sets `layer.gate` on each MoE layer
(`model.moe_layers`) in `attach` to a `moebench.moe.routing.Gate`, a module that maps the layer's
tokens (and their ids) to a `Gating`: router scores, each token's experts and weights, and which
of its slots are used, so a token may use 0..E experts. Build it on the layer's device and in its
dtype (`layer.router.weight`); the optimizer, made after `attach`, trains its parameters. A gate
that ignores the learned router calls `routing.freeze_router(layer)`. State that changes
between steps without gradients (a bias, a schedule) is updated from `after_step`; `loss` sees
each training forward's `Routing`, with `experts_per_token`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable

import torch

from moebench.moe.layer import Routing


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    # Values worth trying per hyper-parameter (grid or random search picks from these).
    search_space: ClassVar[dict[str, list]] = {}
    # False for a reference without experts (`dense`): its trials keep the encoder's FFNs.
    uses_moe: ClassVar[bool] = True
    # True for a positive control (`control_lr`): built to differ from the baseline by a known sign,
    # compared with it on a board but never ranked or marked best against the methods.
    control: ClassVar[bool] = False
    # Of what `diagnostics` returns, the values a board shows as columns (at each run's selected
    # epoch): metric name -> (column title, decimals). The rest is logged per epoch only.
    board_columns: ClassVar[dict[str, tuple[str, int]]] = {}

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    def attach(self, model: torch.nn.Module) -> None:
        pass

    def start(self, total_steps: int, train_batches: Callable[[], Iterable[dict[str, torch.Tensor]]]) -> None:
        pass

    def loss(self, routing: list[Routing]) -> dict[str, torch.Tensor]:
        return {}

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def diagnostics(self) -> dict[str, float]:
        return {}
