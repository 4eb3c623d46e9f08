"""smoe_dropout: a random, frozen router; the number of active experts grows during training.

SMoE-Dropout (Chen, Zhang, Jaiswal, Liu, Wang; "Sparse MoE as the New Dropout: Scaling Dense and
Self-Slimmable Transformers", arXiv 2303.01610, ICLR 2023). Facts taken from the official code
(VITA-Group/Random-MoE-as-Dropout):

- The router is randomly initialised and frozen (`--freeze_gate`; new_utils.py
  `freeze_part_weight` sets requires_grad = False on the gate's Linear).
- Gate (custom_gate.py `CustomNaiveGate`): top-k of the router logits, weights = softmax over
  those k logits, i.e. the k largest probabilities renormalised to sum 1.
- k grows linearly over training (new_utils.py `calculate_gate_number`, mode
  `linear_increase`, applied before every step by `adjust_moe_gate_number`):

      k(step) = clip(round((k_max - k_min) * step / total_steps) + k_min, k_min, k_max)

  with total_steps = the run's steps (the scripts set --dynamic_overall_steps to --max_step).
- Evaluation (train.py): with all experts ("dense" inference, `set_router_mode(flag=True)`,
  "Score-Based Average for Dense Inference": top-E, softmax over all logits) and with the
  initial k; the paper's headline numbers are the dense ones.

moebench: k_min = `start_k` (0: the run's --top-k), k_max = `end_k` (0: all E experts), as the
paper describes (k from small to E); evaluation uses `eval_k` experts (0: all E, the official
dense inference), logged as `smoe_dropout_eval_k` beside the training k `smoe_dropout_k`. The
frozen router is the upcycled layer's own random router (moebench's init, N(0, router_init_std),
no bias), where the official gate is an nn.Linear with its default init and a bias. The step
count comes from Method.start (the trial's number of optimizer steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.routing import Gate, Gating, freeze_router, top_k_gating


def scheduled_k(step: int, total_steps: int, k_min: int, k_max: int) -> int:
    """The official linear_increase schedule (Python's round, as the official code uses)."""
    k = round((k_max - k_min) * step / max(1, total_steps)) + k_min
    return min(max(k, k_min), k_max)


class FrozenTopKGate(Gate):
    def __init__(self, k_min: int, k_max: int, eval_k: int):
        super().__init__()
        self.k_min, self.k_max, self.eval_k = k_min, k_max, eval_k
        self.k = k_min  # the training k, moved by the schedule

    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        logits = layer.router(layer.router_input(x))  # frozen: no gradient reaches it
        return top_k_gating(logits, self.k if self.training else self.eval_k, renormalize=True)


class SMoEDropout(Method):
    name = "smoe_dropout"
    description = "SMoE-Dropout: random frozen router, active experts grow linearly from k to E; all E at evaluation"

    @dataclass(frozen=True)
    class Params:
        start_k: int = 0  # k at the first step (0: --top-k)
        end_k: int = 0  # k at the end of training (0: all experts)
        eval_k: int = 0  # experts per token at evaluation (0: all, the official dense inference)

        def __post_init__(self):
            if min(self.start_k, self.end_k, self.eval_k) < 0:
                raise ValueError("start_k, end_k and eval_k must be >= 0 (0: the default)")

    search_space = {"start_k": [0, 1], "eval_k": [0, 2]}

    def attach(self, model: nn.Module) -> None:
        self.gates = []
        self.step, self.total_steps = 0, None
        for layer in model.moe_layers:
            num_experts = layer.num_experts
            k_min = self.params.start_k or layer.top_k
            k_max = self.params.end_k or num_experts
            eval_k = self.params.eval_k or num_experts
            if not 1 <= k_min <= k_max <= num_experts or eval_k > num_experts:
                raise ValueError(f"smoe_dropout needs 1 <= start_k ({k_min}) <= end_k ({k_max}) <= {num_experts} experts "
                                 f"and eval_k ({eval_k}) <= {num_experts}")
            freeze_router(layer)
            layer.gate = FrozenTopKGate(k_min, k_max, eval_k)
            self.gates.append(layer.gate)

    def start(self, total_steps, train_batches) -> None:
        self.total_steps = total_steps

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.total_steps is None:
            raise RuntimeError("smoe_dropout's schedule needs the number of training steps: call Method.start() first")
        self.step += 1
        for gate in self.gates:
            gate.k = scheduled_k(self.step, self.total_steps, gate.k_min, gate.k_max)

    def diagnostics(self) -> dict[str, float]:
        if not self.gates:
            return {}
        return {"smoe_dropout_k": float(self.gates[0].k), "smoe_dropout_eval_k": float(self.gates[0].eval_k)}
