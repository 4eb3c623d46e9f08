"""Every registered method keeps the method contract."""
import dataclasses
import math

import pytest
import torch

from moebench.params import parse_params
from moebench.moe.diagnostics import diagnose
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.registry import METHODS
from moebench.train import make_optimizer, train_step


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declares_valid_defaults_and_search_space(name):
    method_cls = METHODS.get(name)
    assert method_cls.name == name and method_cls.description
    fields = {f.name for f in dataclasses.fields(method_cls.Params)}
    assert set(method_cls.search_space) <= fields
    for key, values in method_cls.search_space.items():
        for value in values:
            assert getattr(parse_params(method_cls, {key: str(value)}), key) == value


# Methods whose routing learns nothing: their routers must get no gradient and stay out of the optimizer.
FROZEN_ROUTER = {"hash", "smoe_dropout"}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def padded_batch():
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 5:] = 0  # padding must be neither routed nor counted by any gate
    return {"input_ids": torch.randint(1000, 2000, (4, 8), generator=generator), "attention_mask": mask,
            "labels": torch.tensor([0, 1, 0, 1])}


def routing_parameters(layer) -> list[torch.nn.Parameter]:
    return [layer.router.weight, *(layer.gate.parameters() if layer.gate is not None else [])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_a_tiny_moe(name, dtype, tiny_model_dir):
    """Builds on the model's device and in its dtype, has gradients where it should and none where
    it must not, reports experts per token, and trains."""
    torch.manual_seed(0)
    method_cls = METHODS.get(name)
    hf = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2).to(DEVICE, dtype)
    # "noise": identical experts would give the router no task gradient to check for.
    model = MoEModel(hf, MoEConfig(4, 2, upcycle="noise") if method_cls.uses_moe else None)
    method = method_cls(method_cls.Params())
    method.attach(model)
    batch = {k: v.to(DEVICE) for k, v in padded_batch().items()}
    method.start(3, lambda: [padded_batch()])
    assert {p.dtype for p in model.parameters()} == {dtype}  # a gate's own parameters too
    assert {t.device for t in [*model.parameters(), *model.buffers()]} == {model.hf_model.device}

    output, routing = model(**batch)
    loss = output.loss + sum(method.loss(routing).values())
    loss.backward()
    for layer, r in zip(model.moe_layers, routing):
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in layer.experts.parameters())
        trainable = [p for p in routing_parameters(layer) if p.requires_grad]
        if name in FROZEN_ROUTER:
            assert not trainable and all(p.grad is None for p in routing_parameters(layer))
        else:
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable)
        per_token = r.experts_per_token
        assert per_token.shape == (int(batch["attention_mask"].sum()),)
        assert 0 <= int(per_token.min()) and int(per_token.max()) <= r.num_experts
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    model.zero_grad(set_to_none=True)

    optimizer = make_optimizer(model, 1e-3, 0.01)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        losses = train_step(model, method, optimizer, batch)
        assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    frozen = [(b, p) for b, p in zip(before, model.parameters()) if not p.requires_grad]
    assert all(torch.equal(b, p) for b, p in frozen)
    diagnostics = diagnose(model, batch)
    if model.moe_layers:
        assert 0 <= diagnostics["experts_per_token"] <= 4
    assert all(math.isfinite(v) or math.isnan(v) for v in method.diagnostics().values())
