import math

import pytest
import torch

from moebench.errors import UsageError
from moebench.params import parse_params
from moebench.moe.balance import switch_aux_loss
from moebench.methods.ortho_var import (
    OrthoVar,
    calibrated_coefficient,
    coactivated_outputs,
    coactive_abs_cosine,
    orthogonality_loss,
    routing_variance,
)
from moebench.moe.layer import Routing
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.train import make_optimizer, train_step


def routing_from_logits(logits: torch.Tensor, top_k: int = 2) -> Routing:
    index = logits.softmax(-1).topk(top_k, dim=-1).indices
    return Routing(None, torch.zeros(len(logits), 3), logits, index, torch.ones_like(index, dtype=torch.float))


def tiny_moe(tiny_model_dir, top_k=2, upcycle="noise", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    hf = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2).to(dtype)
    return MoEModel(hf, MoEConfig(4, top_k, upcycle=upcycle, router_init_std=1.0))


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padding must not enter any term
    return {"input_ids": torch.randint(1000, 2000, (4, 12), generator=generator), "attention_mask": mask,
            "labels": torch.tensor([0, 1, 0, 1])}


# ---- the orthogonality term, by hand ----------------------------------------------------------

def test_orthogonal_outputs_give_zero_and_identical_outputs_the_maximum():
    a = torch.tensor([3.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 2.0, 0.0, 0.0])
    assert orthogonality_loss(torch.stack([a, b]).unsqueeze(0)).item() == pytest.approx(0.0, abs=1e-7)
    # identical: each output lies in the other's span, ||P o||^2 = ||o||^2 = 9, the largest possible
    assert orthogonality_loss(torch.stack([a, a]).unsqueeze(0)).item() == pytest.approx(9.0, rel=1e-5)
    # anti-parallel is as collinear as parallel
    assert orthogonality_loss(torch.stack([a, -2 * a]).unsqueeze(0)).item() == pytest.approx((9.0 + 36.0) / 2, rel=1e-5)


def test_two_experts_match_the_hand_formula():
    # per token: ( <a,b>^2 / ||b||^2 + <a,b>^2 / ||a||^2 ) / 2, then the mean over tokens
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    dot = (a * b).sum(-1)
    per_token = (dot**2 / (b * b).sum(-1) + dot**2 / (a * a).sum(-1)) / 2
    outputs = torch.stack([a, b], dim=1)  # (N=2, k=2, d=3)
    assert orthogonality_loss(outputs).item() == pytest.approx(per_token.mean().item(), rel=1e-5)
    # ||o||^2 cos^2 form, and it never exceeds the identical-output maximum
    cos2 = dot**2 / ((a * a).sum(-1) * (b * b).sum(-1))
    assert per_token.tolist() == pytest.approx((((a * a).sum(-1) + (b * b).sum(-1)) / 2 * cos2).tolist(), rel=1e-6)


def test_three_experts_project_onto_the_span_of_the_others():
    e1, e2, e3 = torch.eye(3)
    # slot 0: a = e1+e2+e3 onto span{e1, e2}: ||e1+e2||^2 = 2; slot 1: e1 onto span{a, e2} -> its
    # projection: a and e2 span {e2, e1+e3}, e1's part along (e1+e3)/sqrt2 is 1/sqrt2 -> 1/2;
    # slot 2: e2 onto span{a, e1} = span{e1, e2+e3}: 1/2.
    outputs = torch.stack([e1 + e2 + e3, e1, e2]).unsqueeze(0)
    assert orthogonality_loss(outputs).item() == pytest.approx((2.0 + 0.5 + 0.5) / 3, rel=1e-5)
    # identical outputs with k=3 (copy upcycling): the maximum ||o||^2, not float noise blown up
    o = torch.tensor([0.3, -1.2, 2.0, 0.7])
    assert orthogonality_loss(o.expand(5, 3, 4).clone()).item() == pytest.approx((o * o).sum().item(), rel=1e-5)


def test_orthogonality_gradient_turns_outputs_apart():
    a = torch.tensor([[1.0, 0.2, 0.0]], requires_grad=True)
    b = torch.tensor([[1.0, -0.3, 0.5]])
    orthogonality_loss(torch.stack([a, b], dim=1)).backward()
    step = a.detach() - 0.1 * a.grad
    before = coactive_abs_cosine(torch.stack([a.detach(), b], dim=1)).item()
    after = coactive_abs_cosine(torch.stack([step, b], dim=1)).item()
    assert after < before  # a descent step lowers |cos| to the other output
    assert orthogonality_loss(torch.stack([step, b], dim=1)).item() < orthogonality_loss(torch.stack([a.detach(), b], dim=1)).item()


def test_top1_has_no_coactivated_pair():
    assert orthogonality_loss(torch.randn(6, 1, 4)).item() == 0.0
    assert math.isnan(coactive_abs_cosine(torch.randn(6, 1, 4)).item())


# ---- the variance term: a reward for spread, as the official gate has it ------------------------

def test_variance_term_matches_hand_computation_and_rewards_spread():
    logits = torch.tensor([[2.0, 0.0, 0.0, -1.0], [0.5, 0.5, 0.0, 0.0]])
    p = logits.softmax(-1)
    expected = (((p - p.mean(-1, keepdim=True)) ** 2).sum(-1) / 3).mean()  # unbiased, /(E-1)
    assert routing_variance(routing_from_logits(logits)).item() == pytest.approx(expected.item(), rel=1e-6)
    uniform = routing_variance(routing_from_logits(torch.zeros(4, 4))).item()
    peaked = routing_variance(routing_from_logits(torch.tensor([[5.0, 0.0, 0.0, 0.0]] * 4))).item()
    assert uniform == pytest.approx(0.0, abs=1e-12) and peaked > 0.1  # one-hot-like: (1 - 1/4)^2.. ~ 0.19


def test_variance_gradient_sharpens_routing():
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5]] * 3, requires_grad=True)
    (-routing_variance(routing_from_logits(logits))).backward()  # the term as it enters the loss (gamma > 0)
    assert (logits.grad[:, 0] < 0).all()  # descent raises the best expert's logit
    assert (logits.grad[:, 3] > 0).all()  # and lowers the worst one's


def test_calibration_is_the_official_power_of_ten():
    assert calibrated_coefficient(1e-4, 37.0) == pytest.approx(1e-6)  # 2.7e-6 -> 10^round(-5.57) = 10^-6
    assert calibrated_coefficient(1e-3, 0.004) == pytest.approx(0.1)  # 0.25 -> 10^round(-0.60) = 10^-1
    assert calibrated_coefficient(1e-3, 0.0002) == pytest.approx(10.0)  # 5 -> 10^round(0.70) = 10^1


# ---- on a tiny upcycled BERT ------------------------------------------------------------------

def test_recomputed_outputs_are_the_ones_the_layer_mixed(tiny_model_dir):
    model = tiny_moe(tiny_model_dir, top_k=2)
    layer = model.moe_layers[0]
    captured = {}
    handle = layer.register_forward_hook(lambda module, args, out: captured.update(out=out))
    data = batch()
    _, routing = model(**{k: v for k, v in data.items() if k != "labels"})
    handle.remove()
    r = routing[0]
    outputs = coactivated_outputs(r)  # (N, k, d)
    mixed = (outputs * r.expert_weight.unsqueeze(-1).to(outputs.dtype)).sum(dim=1)
    real = captured["out"].reshape(-1, outputs.shape[-1])[data["attention_mask"].reshape(-1).bool()]
    torch.testing.assert_close(mixed, real, rtol=1e-5, atol=1e-6)
    # and slot j of token t is expert expert_index[t, j] on that token
    t, j = 3, 1
    torch.testing.assert_close(outputs[t, j], layer.experts[int(r.expert_index[t, j])](r.inputs[t]))


def test_losses_names_signs_and_calibration(tiny_model_dir):
    model = tiny_moe(tiny_model_dir, upcycle="copy")  # identical experts: L_o at its maximum
    method = OrthoVar()
    method.attach(model)
    _, routing = model(**batch())
    losses = method.loss(routing)
    assert set(losses) == {"aux_loss", "ortho_loss", "variance_loss"}
    aux = torch.stack([switch_aux_loss(r) for r in routing]).mean()
    assert losses["aux_loss"].item() == pytest.approx(0.001 * aux.item(), rel=1e-5)
    assert losses["ortho_loss"].item() > 0 and losses["variance_loss"].item() < 0
    # calibrated as the official code: each weighted term starts within a factor sqrt(10) of its target
    for name, target in [("ortho_loss", 1e-4), ("variance_loss", 1e-3)]:
        assert 10**-0.5 <= abs(losses[name].item()) / target <= 10**0.5
    # identical experts: cosine 1 and L_o = mean ||o||^2 over tokens and slots
    outputs = [coactivated_outputs(r) for r in routing]
    expected = torch.stack([o.float().square().sum(-1).mean() for o in outputs]).mean()
    assert losses["ortho_loss"].item() == pytest.approx(method.ortho_coef * expected.item(), rel=1e-4)
    coefs = (method.ortho_coef, method.variance_coef)
    method.loss(model(**batch(1))[1])
    assert (method.ortho_coef, method.variance_coef) == coefs  # fixed after the first step
    diagnostics = method.diagnostics()
    assert diagnostics["ortho_coactive_abs_cos"] == pytest.approx(1.0, abs=1e-5)
    assert diagnostics["ortho_coef"] == coefs[0] and diagnostics["variance_coef"] == coefs[1]
    assert all(math.isnan(v) for k, v in method.diagnostics().items() if not k.endswith("_coef"))  # reset


def test_gradients_reach_experts_through_L_o_and_the_router_through_L_v(tiny_model_dir):
    model = tiny_moe(tiny_model_dir)
    method = OrthoVar(OrthoVar.Params(calibrate=False, ortho_target=1.0, variance_target=0.0))
    method.attach(model)
    method.loss(model(**batch())[1])["ortho_loss"].backward()
    # The last layer: earlier routers reach later layers' L_o through the hidden states (inputs
    # are not detached, as in the official code); its own router gets nothing, top-k is a choice.
    layer = model.moe_layers[-1]
    assert any(e.fc1.weight.grad is not None and e.fc1.weight.grad.abs().sum() > 0 for e in layer.experts)
    assert layer.router.weight.grad is None or layer.router.weight.grad.abs().sum() == 0
    model.zero_grad(set_to_none=True)
    method = OrthoVar(OrthoVar.Params(calibrate=False, ortho_target=0.0, variance_target=1.0))
    method.loss(model(**batch())[1])["variance_loss"].backward()
    assert layer.router.weight.grad.abs().sum() > 0
    assert all(e.fc1.weight.grad is None for e in layer.experts)


def test_top1_routing_trains_with_a_zero_orthogonality_term(tiny_model_dir):
    model = tiny_moe(tiny_model_dir, top_k=1)
    method = OrthoVar()
    losses = method.loss(model(**batch())[1])
    assert losses["ortho_loss"].item() == 0.0 and method.ortho_coef is None  # not calibrated on a zero
    assert losses["variance_loss"].item() < 0


def unweighted_ortho(model, data) -> tuple[float, float]:
    """(L_o, mean |cos| of co-activated outputs), averaged over layers."""
    with torch.no_grad():
        outputs = [coactivated_outputs(r) for r in model(**data)[1]]
        return (torch.stack([orthogonality_loss(o) for o in outputs]).mean().item(),
                torch.stack([coactive_abs_cosine(o) for o in outputs]).mean().item())


def test_a_few_training_steps_lower_the_orthogonality_term(tiny_model_dir):
    data = batch()
    finals = {}
    for coef in (0.0, 1.0):
        model = tiny_moe(tiny_model_dir, upcycle="noise")
        method = OrthoVar(OrthoVar.Params(calibrate=False, ortho_target=coef))
        method.attach(model)
        optimizer = make_optimizer(model, 1e-3, 0.0)
        start, start_cos = unweighted_ortho(model, data)
        for _ in range(8):
            losses = train_step(model, method, optimizer, data)
            assert all(math.isfinite(v) for v in losses.values())
        finals[coef] = unweighted_ortho(model, data)
    assert finals[1.0][0] < 0.5 * start  # the term does its job
    assert finals[1.0][0] < 0.5 * finals[0.0][0]  # and it is the term, not the task loss, that does it
    # not only by shrinking outputs: co-activated outputs turn apart
    assert finals[1.0][1] < 0.5 * start_cos and finals[1.0][1] < 0.5 * finals[0.0][1]


@pytest.mark.parametrize("mode", ["bf16 weights", "bf16 autocast"])
def test_trains_in_bf16(tiny_model_dir, mode):
    weights = torch.bfloat16 if mode == "bf16 weights" else torch.float32
    model = tiny_moe(tiny_model_dir, dtype=weights)
    method = OrthoVar(OrthoVar.Params(ortho_target=1e-2, variance_target=1e-2))
    method.attach(model)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 autocast" else torch.autocast("cpu", enabled=False)
    optimizer = make_optimizer(model, 1e-3, 0.01)
    experts_before = [p.detach().clone() for layer in model.moe_layers for p in layer.experts.parameters()]
    for _ in range(4):
        losses = train_step(model, method, optimizer, batch(), ctx=ctx)
        assert all(math.isfinite(v) for v in losses.values()), losses
        assert losses["ortho_loss"] > 0 and losses["variance_loss"] < 0
    assert {p.dtype for p in model.parameters()} == {weights}
    experts_after = [p for layer in model.moe_layers for p in layer.experts.parameters()]
    assert any(not torch.equal(b, a) for b, a in zip(experts_before, experts_after))
    diagnostics = method.diagnostics()
    assert all(math.isfinite(v) for v in diagnostics.values()), diagnostics


def test_params_validate_and_parse():
    assert parse_params(OrthoVar, {"ortho_target": "0.01", "calibrate": "false"}) == OrthoVar.Params(ortho_target=0.01, calibrate=False)
    with pytest.raises(UsageError, match="variance_target must be a finite number >= 0"):
        parse_params(OrthoVar, {"variance_target": "-1"})
    with pytest.raises(UsageError, match="valid: aux_coef, ortho_target, variance_target, calibrate"):
        parse_params(OrthoVar, {"beta": "1"})
    uncalibrated = OrthoVar(OrthoVar.Params(calibrate=False, ortho_target=0.3, variance_target=0.2))
    assert (uncalibrated.ortho_coef, uncalibrated.variance_coef) == (0.3, 0.2)
