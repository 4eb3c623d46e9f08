from collections import defaultdict

import pytest
import torch

from moebench.methods.omoe import OMoE, owm_closed_form, owm_update
from moebench.methods.vanilla import Vanilla
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.train import train_step


def recursive_projector(inputs: torch.Tensor, alpha: float) -> torch.Tensor:
    projector = torch.eye(inputs.shape[1], dtype=inputs.dtype)
    for r in inputs:
        owm_update(projector, r, alpha)
    return projector


def test_recursion_equals_the_closed_form():
    inputs = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for alpha in (0.5, 1e-3):
        torch.testing.assert_close(recursive_projector(inputs, alpha), owm_closed_form(inputs, alpha), rtol=1e-8, atol=1e-8)


def test_projector_annihilates_accumulated_inputs_as_alpha_goes_to_zero():
    inputs = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fresh = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    residuals = []
    for alpha in (1.0, 1e-3, 1e-8):
        projector = recursive_projector(inputs, alpha)
        residuals.append(float((inputs @ projector).norm() / inputs.norm()))
    assert residuals == sorted(residuals, reverse=True) and residuals[-1] < 1e-6
    assert (projector @ fresh).norm() > 0.3 * fresh.norm()  # directions it never saw survive


def test_phases_alternate_on_schedule():
    method = OMoE(OMoE.Params(accumulate_steps=2, orthogonal_steps=3))
    assert "".join(method.phase(s)[0] for s in range(10)) == "aaoooaaooo"
    decaying = OMoE(OMoE.Params(alpha=1.0, alpha_decay=0.5, accumulate_steps=1, orthogonal_steps=1))
    decaying.step = 4
    assert decaying.alpha() == pytest.approx(0.25)


def run_steps(tiny_model_dir, method, steps: int, num_experts: int = 4):
    """Train a tiny MoE; return each expert's accumulated inputs and the last step's fc1 change."""
    torch.manual_seed(0)
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2),
                     MoEConfig(num_experts, 2, router_init_std=1.0))
    method.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = defaultdict(list)
    for l, layer in enumerate(model.moe_layers):
        for e, expert in enumerate(layer.experts):
            def record(module, args, key=(l, e)):
                if module.training and getattr(method, "phase", lambda: "accumulate")() == "accumulate" and args[0].shape[0]:
                    seen[key].append(args[0].detach().mean(0).double())
            expert.fc1.register_forward_pre_hook(record)
    g = torch.Generator().manual_seed(3)
    for step in range(steps):
        batch = {"input_ids": torch.randint(1000, 2000, (8, 12), generator=g), "attention_mask": torch.ones(8, 12, dtype=torch.long),
                 "labels": torch.randint(0, 2, (8,), generator=g)}
        if step == steps - 1:
            before = {(l, e): ex.fc1.weight.detach().clone().double() for l, layer in enumerate(model.moe_layers) for e, ex in enumerate(layer.experts)}
            router_before = [layer.router.weight.detach().clone() for layer in model.moe_layers]
        train_step(model, method, optimizer, batch)
    change = {(l, e): ex.fc1.weight.detach().double() - before[(l, e)] for l, layer in enumerate(model.moe_layers) for e, ex in enumerate(layer.experts)}
    router_change = [float((layer.router.weight.detach() - b).abs().max()) for layer, b in zip(model.moe_layers, router_before)]
    return seen, change, router_change


def worst_leak(seen, change, num_experts: int) -> float:
    """max over experts j of |dW1_j R_j^T| / (|dW1_j| |R_j|), R_j = the other experts' accumulated inputs."""
    leaks = []
    moved = {key: delta for key, delta in change.items() if delta.abs().sum() > 0}  # an expert with no tokens has no update
    assert len(moved) >= len(change) // 2
    for (l, j), delta in moved.items():
        others = torch.stack([r for (l2, i), rs in seen.items() if l2 == l and i != j for r in rs])
        leaks.append(float((delta @ others.T).norm() / (delta.norm() * others.norm())))
    return max(leaks)


def test_orthogonal_step_leaves_other_experts_inputs_untouched(tiny_model_dir):
    steps = 4  # 3 accumulating steps, then 1 orthogonal step
    seen, change, _ = run_steps(tiny_model_dir, OMoE(OMoE.Params(alpha=1e-6, accumulate_steps=3, orthogonal_steps=1)), steps)
    _, vanilla_change, _ = run_steps(tiny_model_dir, Vanilla(), steps)
    assert worst_leak(seen, change, 4) < 1e-3
    assert worst_leak(seen, vanilla_change, 4) > 0.05


def test_mean_projector_is_exact_for_two_experts_and_only_partial_for_four(tiny_model_dir):
    params = OMoE.Params(alpha=1e-6, accumulate_steps=3, orthogonal_steps=1, others_projector="mean")
    seen2, change2, _ = run_steps(tiny_model_dir, OMoE(params), 4, num_experts=2)
    assert worst_leak(seen2, change2, 2) < 1e-3
    seen4, change4, _ = run_steps(tiny_model_dir, OMoE(params), 4, num_experts=4)
    assert worst_leak(seen4, change4, 4) > 1e-3


def test_router_can_be_held_in_the_orthogonal_phase(tiny_model_dir):
    held = OMoE(OMoE.Params(accumulate_steps=1, orthogonal_steps=1, train_router_in_orthogonal=False))
    _, _, router_change = run_steps(tiny_model_dir, held, 2)
    assert max(router_change) == 0.0
    _, _, moving = run_steps(tiny_model_dir, OMoE(OMoE.Params(accumulate_steps=1, orthogonal_steps=1)), 2)
    assert max(moving) > 0.0
