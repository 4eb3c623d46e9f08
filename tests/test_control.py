"""control_lr, the positive control: exactly vanilla trained at lr / factor, schedule and weight decay included."""
import copy

import pytest
import torch

from moebench.errors import UsageError
from moebench.params import parse_params
from moebench.methods.control_lr import ControlLR
from moebench.methods.vanilla import Vanilla
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.train import lr_lambda, make_optimizer, train_step


def batch(step: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(1000, 2000, (4, 8), generator=generator), "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "labels": torch.tensor([0, 1, 0, 1])}


def train(model, method, lr: float, steps: int = 4) -> MoEModel:
    torch.manual_seed(1)  # the same dropout masks in every run
    method.attach(model)
    optimizer = make_optimizer(model, lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, 1))
    for step in range(steps):
        train_step(model, method, optimizer, batch(step))
        scheduler.step()
    return model


def test_control_lr_is_vanilla_at_the_divided_learning_rate(tiny_model_dir):
    torch.manual_seed(0)
    hf = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2)
    start = MoEModel(hf, MoEConfig(4, 2, upcycle="noise"))
    control = train(copy.deepcopy(start), ControlLR(ControlLR.Params(factor=4.0)), lr=1e-3)
    slow = train(copy.deepcopy(start), Vanilla(), lr=1e-3 / 4)
    fast = train(copy.deepcopy(start), Vanilla(), lr=1e-3)
    for (name, a), b, c in zip(control.named_parameters(), slow.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(a, c) for a, c in zip(control.parameters(), fast.parameters()))


def test_control_lr_is_a_control_and_refuses_a_factor_that_learns_more():
    assert ControlLR.control and not Vanilla.control
    with pytest.raises(UsageError, match="factor must be >= 1"):
        parse_params(ControlLR, {"factor": "0.5"})
