"""Every encoder family `moebench run --model` accepts (preflight.BERT_FAMILY), built tiny from its
transformers config with random weights: copy-upcycling computes the dense model, every upcycling
mode keeps its neuron counts, and every registered method trains a step on it."""
import copy
import functools
import math

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification

from moebench.moe.upcycle import MoEConfig, MoEModel
from moebench.preflight import BERT_FAMILY
from moebench.registry import METHODS
from moebench.train import make_optimizer, train_step

TINY = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2, num_labels=2)
# Families whose embeddings have a width of their own
WIDTHS = {"electra": dict(embedding_size=32), "convbert": dict(embedding_size=32),
          "rembert": dict(input_embedding_size=32, output_embedding_size=32)}


@functools.lru_cache(maxsize=None)
def dense_model(model_type: str) -> torch.nn.Module:
    transformers.logging.set_verbosity_error()  # "some weights are newly initialised": all of them are
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **WIDTHS.get(model_type, {}))
    return AutoModelForSequenceClassification.from_config(config)


def tiny_model(model_type: str) -> torch.nn.Module:
    return copy.deepcopy(dense_model(model_type))  # a copy is faster than a new random init


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    return {"input_ids": torch.randint(5, 900, (3, 10), generator=generator), "attention_mask": mask,
            "labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("model_type", BERT_FAMILY)
def test_copy_upcycling_computes_the_dense_model_and_every_mode_keeps_its_neurons(model_type):
    dense = tiny_model(model_type).eval()
    with torch.no_grad():
        expected = dense(**batch()).logits
        got = MoEModel(dense, MoEConfig(4, 2)).eval()(**batch())[0].logits
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()
    for mode, neurons in (("noise", 64), ("drop", 64), ("split", 16)):
        model = MoEModel(tiny_model(model_type), MoEConfig(4, 2, upcycle=mode))
        for layer in model.moe_layers:
            assert [expert.fc1.out_features for expert in layer.experts] == [neurons] * 4, mode
            assert [expert.fc2.in_features for expert in layer.experts] == [neurons] * 4, mode


@pytest.mark.parametrize("model_type", BERT_FAMILY)
def test_every_method_trains_a_step_on_every_family(model_type):
    for name in METHODS.names():
        method_cls = METHODS.get(name)
        model = MoEModel(tiny_model(model_type), MoEConfig(4, 2, upcycle="noise") if method_cls.uses_moe else None)
        method = method_cls(method_cls.Params())
        method.attach(model)
        method.start(2, lambda: [batch()])
        optimizer = make_optimizer(model, 1e-3, 0.01)
        before = [p.detach().clone() for p in model.parameters()]
        losses = train_step(model, method, optimizer, batch())
        assert all(math.isfinite(v) for v in losses.values()), (name, losses)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), name
