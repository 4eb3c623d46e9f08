"""Every registered method keeps the method contract."""
import dataclasses
import math

import pytest
import torch

from moebench.method import parse_params
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


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_a_tiny_moe(name, tiny_model_dir):
    torch.manual_seed(0)
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(4, 2))
    method_cls = METHODS.get(name)
    method = method_cls(method_cls.Params())
    method.attach(model)
    optimizer = make_optimizer(model, 1e-3, 0.01)
    batch = {"input_ids": torch.randint(1000, 2000, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        losses = train_step(model, method, optimizer, batch)
        assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
