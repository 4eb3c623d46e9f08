import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moebench.methods.omoe import OMoE, forget, owm_closed_form, owm_update
from moebench.methods.vanilla import Vanilla
from moebench.moe.layer import Expert, MoEFeedForward
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.train import train_step


def recursive_projector(inputs: torch.Tensor, alpha: float, start: torch.Tensor | None = None) -> torch.Tensor:
    projector = torch.eye(inputs.shape[1], dtype=inputs.dtype) if start is None else start.clone()
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


def test_forget_rules_on_a_projector():
    inputs = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    learned = owm_closed_form(inputs, 1e-3)
    identity = torch.eye(8, dtype=torch.float64)
    kept = learned.clone()
    forget(kept, "none", 0.5)
    assert torch.equal(kept, learned)
    reset = learned.clone()
    forget(reset, "reset", 0.5)
    assert torch.equal(reset, identity)
    for rate in (0.0, 0.25, 1.0):
        decayed = learned.clone()
        forget(decayed, "decay", rate)
        torch.testing.assert_close(identity - decayed, (1 - rate) * (identity - learned))
    # what a protected input keeps of the removal fades geometrically, cycle after cycle
    decayed, removed = learned.clone(), []
    for _ in range(3):
        forget(decayed, "decay", 0.5)
        removed.append(float((inputs @ (identity - decayed)).norm() / inputs.norm()))
    assert removed == pytest.approx([removed[0], removed[0] / 2, removed[0] / 4]) and removed[0] == pytest.approx(0.5, abs=1e-3)


def test_phases_alternate_on_schedule():
    method = OMoE(OMoE.Params(accumulate_steps=2, orthogonal_steps=3))
    assert "".join(method.phase(s)[0] for s in range(10)) == "aaoooaaooo"
    decaying = OMoE(OMoE.Params(alpha=1.0, alpha_decay=0.5, accumulate_steps=1, orthogonal_steps=1))
    decaying.step = 4
    assert decaying.alpha() == pytest.approx(0.25)


def test_params_refuse_unknown_forget_rules():
    with pytest.raises(ValueError, match="forget"):
        OMoE.Params(forget="sometimes")
    with pytest.raises(ValueError, match="forget_rate"):
        OMoE.Params(forget="decay", forget_rate=1.5)


def tiny_moe(tiny_model_dir, num_experts: int = 4, dtype=torch.float32) -> MoEModel:
    torch.manual_seed(0)
    return MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2),
                    MoEConfig(num_experts, 2, router_init_std=1.0)).to(dtype)


def random_batch(g: torch.Generator, size: int = 8) -> dict:
    return {"input_ids": torch.randint(1000, 2000, (size, 12), generator=g), "attention_mask": torch.ones(size, 12, dtype=torch.long),
            "labels": torch.randint(0, 2, (size,), generator=g)}


def affine(linear: nn.Linear) -> torch.Tensor:
    """[W | b] in float64: the map of the augmented input [x, 1]."""
    return torch.cat([linear.weight.detach(), linear.bias.detach().unsqueeze(1)], dim=1).double()


def run_steps(tiny_model_dir, method, steps: int, num_experts: int = 4):
    """Train a tiny MoE; return each expert's accumulated augmented inputs [x_mean, 1] with their
    step, the last step's fc1 change [dW | db], and the routers' last change."""
    model = tiny_moe(tiny_model_dir, num_experts)
    method.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = defaultdict(list)
    step = 0
    for l, layer in enumerate(model.moe_layers):
        for e, expert in enumerate(layer.experts):
            def record(module, args, key=(l, e)):
                if module.training and getattr(method, "phase", lambda: "accumulate")() == "accumulate" and args[0].shape[0]:
                    seen[key].append((step, torch.cat([args[0].detach().mean(0), torch.ones(1)]).double()))
            expert.fc1.register_forward_pre_hook(record)
    g = torch.Generator().manual_seed(3)
    for step in range(steps):
        batch = random_batch(g)
        if step == steps - 1:
            before = {(l, e): affine(ex.fc1) for l, layer in enumerate(model.moe_layers) for e, ex in enumerate(layer.experts)}
            router_before = [layer.router.weight.detach().clone() for layer in model.moe_layers]
        train_step(model, method, optimizer, batch)
    change = {(l, e): affine(ex.fc1) - before[(l, e)] for l, layer in enumerate(model.moe_layers) for e, ex in enumerate(layer.experts)}
    router_change = [float((layer.router.weight.detach() - b).abs().max()) for layer, b in zip(model.moe_layers, router_before)]
    return seen, change, router_change


def others_inputs(seen, layer: int, expert: int, steps=None) -> torch.Tensor:
    return torch.stack([r for (l, i), rs in seen.items() if l == layer and i != expert for s, r in rs if steps is None or s in steps])


def worst_leak(seen, change) -> float:
    """max over experts j of |[dW1_j | db1_j] R_j^T| / (|[dW1_j | db1_j]| |R_j|), R_j = the other
    experts' accumulated inputs [x, 1]: the change of the pre-activation W x + b on them."""
    leaks = []
    moved = {key: delta for key, delta in change.items() if delta.abs().sum() > 0}  # an expert with no tokens has no update
    assert len(moved) >= len(change) // 2
    for (l, j), delta in moved.items():
        others = others_inputs(seen, l, j)
        leaks.append(float((delta @ others.T).norm() / (delta.norm() * others.norm())))
    return max(leaks)


def test_orthogonal_step_leaves_other_experts_pre_activations_untouched_bias_included(tiny_model_dir):
    steps = 4  # 3 accumulating steps, then 1 orthogonal step
    seen, change, _ = run_steps(tiny_model_dir, OMoE(OMoE.Params(alpha=1e-6, accumulate_steps=3, orthogonal_steps=1)), steps)
    _, vanilla_change, _ = run_steps(tiny_model_dir, Vanilla(), steps)
    assert worst_leak(seen, change) < 1e-3
    assert worst_leak(seen, vanilla_change) > 0.05
    # The bias moved and takes part: the weight part alone, dW r = -db, is far from orthogonal.
    for (l, j), delta in change.items():
        if delta.abs().sum() == 0:
            continue
        others = others_inputs(seen, l, j)
        with_bias = (delta @ others.T).norm() / (delta.norm() * others.norm())
        weight_only = (delta[:, :-1] @ others[:, :-1].T).norm() / (delta[:, :-1].norm() * others[:, :-1].norm())
        assert delta[:, -1].norm() > 0 and weight_only > 100 * with_bias


def test_mean_projector_is_exact_for_two_experts_and_only_partial_for_four(tiny_model_dir):
    params = OMoE.Params(alpha=1e-6, accumulate_steps=3, orthogonal_steps=1, others_projector="mean")
    seen2, change2, _ = run_steps(tiny_model_dir, OMoE(params), 4, num_experts=2)
    assert worst_leak(seen2, change2) < 1e-3
    seen4, change4, _ = run_steps(tiny_model_dir, OMoE(params), 4, num_experts=4)
    assert worst_leak(seen4, change4) > 1e-3


def test_router_can_be_held_in_the_orthogonal_phase(tiny_model_dir):
    held = OMoE(OMoE.Params(accumulate_steps=1, orthogonal_steps=1, train_router_in_orthogonal=False))
    _, _, router_change = run_steps(tiny_model_dir, held, 2)
    assert max(router_change) == 0.0
    _, _, moving = run_steps(tiny_model_dir, OMoE(OMoE.Params(accumulate_steps=1, orthogonal_steps=1)), 2)
    assert max(moving) > 0.0


@pytest.mark.parametrize("rule", ["none", "reset", "decay"])
def test_projectors_forget_at_the_start_of_each_cycle(tiny_model_dir, rule):
    """After two cycles' accumulate phases, expert j's projector is OWM of the others' inputs of
    both cycles ("none"), of the second only ("reset"), or of the second from the decayed first."""
    alpha, rate = 1.0, 0.3  # a large alpha keeps the fp32 recursion well conditioned for the comparison
    method = OMoE(OMoE.Params(alpha=alpha, accumulate_steps=2, orthogonal_steps=1, forget=rule, forget_rate=rate))
    seen, _, _ = run_steps(tiny_model_dir, method, 5)  # steps 0, 1 accumulate, 2 orthogonal, 3, 4 accumulate
    for (l, j, _), projector in method.projectors.items():
        first, second = others_inputs(seen, l, j, {0, 1}), others_inputs(seen, l, j, {3, 4})
        if rule == "none":
            expected = owm_closed_form(torch.cat([first, second]), alpha)
        elif rule == "reset":
            expected = owm_closed_form(second, alpha)
        else:
            decayed = owm_closed_form(first, alpha)
            forget(decayed, "decay", rate)
            expected = recursive_projector(second, alpha, start=decayed)
        torch.testing.assert_close(projector.double(), expected, rtol=0, atol=1e-4)


def test_removed_fraction_measures_what_the_projection_took_out():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    weight_before, bias_before = linear.weight.detach().clone(), linear.bias.detach().clone()
    with torch.no_grad():
        linear.weight.add_(torch.randn(3, 5))
        linear.bias.add_(torch.randn(3))
    change = affine(linear) - torch.cat([weight_before, bias_before.unsqueeze(1)], dim=1).double()
    projector = owm_closed_form(torch.randn(2, 6, dtype=torch.float64), 1e-3).float()
    with torch.no_grad():
        removed_sq, change_sq = OMoE._project_change(linear, weight_before, bias_before, projector)
    expected = change @ projector.double()
    torch.testing.assert_close(affine(linear) - torch.cat([weight_before, bias_before.unsqueeze(1)], dim=1).double(), expected,
                               rtol=0, atol=1e-5)
    assert float(change_sq) == pytest.approx(float(change.square().sum()), rel=1e-5)
    assert float(removed_sq) == pytest.approx(float((change - expected).square().sum()), rel=1e-4)


def one_moe_layer(d: int, num_experts: int, layer_index: int) -> nn.Module:
    """Just what OMoE reads of a model: its MoE layers and their encoder indices."""
    model = nn.Module()
    experts = [Expert(nn.Linear(d, 8), nn.Linear(8, d), F.gelu) for _ in range(num_experts)]
    model.moe_layers = nn.ModuleList([MoEFeedForward(experts, nn.Linear(d, num_experts), top_k=1)])
    model.moe_layer_indices = [layer_index]
    return model


def removed_fraction_after(rule: str, steps: int = 2000, d: int = 128) -> float:
    """One top-1 MoE layer on random tokens, AdamW; the removed fraction of the last 200 steps."""
    torch.manual_seed(0)
    model = one_moe_layer(d, 4, layer_index=3)
    method = OMoE(OMoE.Params(forget=rule))
    method.attach(model)
    layer = model.moe_layers[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    target = torch.randn(d, d)
    for step in range(steps):
        if step == steps - 200:
            method.diagnostics()  # start the measured window
        x = torch.randn(16, d)
        loss = (layer(x) - x @ target).square().mean()
        loss.backward()
        method.before_step(optimizer)
        optimizer.step()
        method.after_step(optimizer)
        optimizer.zero_grad()
    values = method.diagnostics()
    assert set(values) == {"omoe_removed_fraction", "layer3/omoe_removed_fraction"}
    return values["omoe_removed_fraction"]


def test_without_forgetting_the_projection_removes_everything_and_with_the_default_it_does_not():
    # Without forgetting, OWM's projectors only shrink: after 2000 steps the orthogonal phase
    # removes ~all of the update (fc1 frozen). The default rule keeps it well below 1.
    assert removed_fraction_after("none") > 0.99
    assert removed_fraction_after(OMoE.Params().forget) < 0.5


def test_diagnostics_per_encoder_layer_reset_after_each_call(tiny_model_dir):
    g = torch.Generator().manual_seed(3)
    fractions = {}
    for rule in ("none", OMoE.Params().forget):
        model = tiny_moe(tiny_model_dir)
        method = OMoE(OMoE.Params(forget=rule))
        method.attach(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(method.params.accumulate_steps):
            train_step(model, method, optimizer, random_batch(g, 4))
        values = method.diagnostics()  # no orthogonal step yet
        assert set(values) == {"omoe_removed_fraction", *(f"layer{i}/omoe_removed_fraction" for i in model.moe_layer_indices)}
        assert all(math.isnan(v) for v in values.values())
        for _ in range(20 * method.cycle_length - method.params.accumulate_steps):
            train_step(model, method, optimizer, random_batch(g, 4))
        values = method.diagnostics()
        layers = [values[f"layer{i}/omoe_removed_fraction"] for i in model.moe_layer_indices]
        assert all(0 < v <= 1 for v in layers) and values["omoe_removed_fraction"] == pytest.approx(sum(layers) / len(layers))
        assert all(math.isnan(v) for v in method.diagnostics().values())  # reset by the call
        fractions[rule] = values["omoe_removed_fraction"]
    # d = 32 here, so a few cycles fill the space without forgetting; the experts' inputs share most of
    # their energy (a random BERT's common components), so even the default removes a good part.
    assert fractions["none"] > 0.95 and fractions[OMoE.Params().forget] < fractions["none"] - 0.1


def test_one_step_with_bf16_weights(tiny_model_dir):
    model = tiny_moe(tiny_model_dir, dtype=torch.bfloat16)
    method = OMoE(OMoE.Params(accumulate_steps=1, orthogonal_steps=1))
    method.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fc1 = model.moe_layers[0].experts[0].fc1
    g = torch.Generator().manual_seed(3)
    for _ in range(2):  # one accumulating, one orthogonal step
        before = fc1.weight.detach().clone()
        train_step(model, method, optimizer, random_batch(g, 4))
    assert method.phase(method.step - 1) == "orthogonal"
    assert fc1.weight.dtype == torch.bfloat16 and not torch.equal(fc1.weight, before)
    assert all(p.dtype == torch.float32 for p in method.projectors.values())
    assert 0 <= method.diagnostics()["omoe_removed_fraction"] <= 1
