import pytest
import torch

from moebench.errors import UsageError
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_upcycled_model_equals_dense_at_init(tiny_model_dir, inputs, top_k):
    dense = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=3).eval()
    torch.manual_seed(1)
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=3), MoEConfig(4, top_k)).eval()
    moe.hf_model.classifier.load_state_dict(dense.classifier.state_dict())
    with torch.no_grad():
        expected = dense(**inputs).logits
        got, routing = moe(**inputs)
    torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
    assert len(routing) == 2


def test_padding_is_excluded_from_routing(tiny_model_dir, inputs):
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, 2))
    _, routing = moe(**inputs)
    real_tokens = int(inputs["attention_mask"].sum())
    for r in routing:
        assert r.router_logits.shape == (real_tokens, 4)
        assert r.expert_index.shape == (real_tokens, 2)
        torch.testing.assert_close(r.expert_weight.sum(-1), torch.ones(real_tokens))


def test_dispatch_matches_a_per_token_reference(tiny_model_dir):
    torch.manual_seed(0)
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, 2, router_init_std=1.0))
    layer = moe.moe_layers[0]
    for expert in layer.experts:  # make the experts differ, so a wrong dispatch shows
        torch.nn.init.normal_(expert.fc1.weight)
    x = torch.randn(2, 5, 32)
    out = layer(x).reshape(-1, 32)
    r = layer.last_routing
    flat = x.reshape(-1, 32)
    for t in range(flat.shape[0]):
        expected = sum(w * layer.experts[e](flat[t]) for e, w in zip(r.expert_index[t].tolist(), r.expert_weight[t]))
        torch.testing.assert_close(out[t], expected, rtol=1e-5, atol=1e-5)


def test_router_and_experts_receive_gradients_with_top2(tiny_model_dir, inputs):
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(4, 2))
    output, _ = moe(**inputs, labels=torch.tensor([0, 1, 0]))
    output.loss.backward()
    layer = moe.moe_layers[0]
    assert layer.router.weight.grad.abs().sum() > 0
    assert sum(e.fc1.weight.grad.abs().sum() for e in layer.experts if e.fc1.weight.grad is not None) > 0


def test_layer_choice_and_validation(tiny_model_dir):
    assert MoEConfig(layers="every_other").layer_indices(6) == [1, 3, 5]
    assert MoEConfig(layers="0,2").layer_indices(6) == [0, 2]
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(2, 1, layers="1"))
    assert moe.moe_layer_indices == [1]
    with pytest.raises(UsageError, match="--top-k"):
        MoEConfig(num_experts=2, top_k=3)
    with pytest.raises(UsageError, match="out of range"):
        MoEConfig(layers="7").layer_indices(2)


def test_parameter_counts(tiny_model_dir):
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, 1))
    counts = moe.num_parameters()
    expert = sum(p.numel() for p in moe.moe_layers[0].experts[0].parameters())
    assert counts["total"] - counts["active_per_token"] == 2 * 3 * expert
