"""Upcycling modes (moebench/moe/upcycle.py): each test checks what its mode promises."""
import copy

import pytest
import torch

from moebench.errors import UsageError
from moebench.moe import layer as layer_module
from moebench.moe.diagnostics import diagnose
from moebench.moe.importance import neuron_importance
from moebench.moe.upcycle import MoEConfig, MoEModel, default_model_path, load_pretrained

D_FF = 64  # the tiny model's intermediate size


def randomise_ffn_biases(model):
    """Random BERT init sets biases to zero; give them values so that bias handling shows."""
    with torch.no_grad():
        for block in model.base_model.encoder.layer:
            block.intermediate.dense.bias.normal_(0.0, 0.1)
            block.output.dense.bias.normal_(0.0, 0.1)
    return model


@pytest.fixture
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    return randomise_ffn_biases(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2)).eval()


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained(default_model_path(), "AutoModelForSequenceClassification", num_labels=2).eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding
    return {"input_ids": ids, "attention_mask": mask}


def upcycled(dense, seed=0, importance=None, **config):
    return MoEModel(copy.deepcopy(dense), MoEConfig(**config), seed=seed, importance=importance).eval()


def dense_ffn(dense, layer):
    block = dense.base_model.encoder.layer[layer]
    return block.intermediate.dense, block.output.dense


def logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return (out[0] if isinstance(out, tuple) else out).logits


def expert_neurons(expert, fc1) -> torch.Tensor:
    """The dense neuron behind each of the expert's fc1 rows (rows of a random init are unique)."""
    match = (expert.fc1.weight[:, None, :] == fc1.weight[None, :, :]).all(-1)  # (n_expert, d_ff)
    assert (match.sum(1) == 1).all(), "every expert row is one dense row"
    return match.float().argmax(1)


def expert_state(model):
    return {k: v for k, v in model.state_dict().items() if ".experts." in k}


# ---- copy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["tiny", "minilm"])
def test_copy_equals_the_dense_model_exactly(model_name, request, inputs):
    dense = request.getfixturevalue(model_name)
    # One expert, top-1: the gate is a softmax over one logit, exactly 1, and every token goes
    # to that expert in order, so its GEMMs have the dense FFN's shapes: bit-for-bit the same.
    moe = upcycled(dense, num_experts=1, top_k=1)
    assert torch.equal(logits(moe, inputs), logits(dense, inputs))
    # Any router: identical experts, renormalised gates: equal up to float rounding.
    torch.testing.assert_close(logits(upcycled(dense, num_experts=4, top_k=2), inputs), logits(dense, inputs))
    for layer, moe_layer in zip(moe.moe_layer_indices, moe.moe_layers):
        fc1, fc2 = dense_ffn(dense, layer)
        for expert in moe_layer.experts:
            assert torch.equal(expert.fc1.weight, fc1.weight) and torch.equal(expert.fc1.bias, fc1.bias)
            assert torch.equal(expert.fc2.weight, fc2.weight) and torch.equal(expert.fc2.bias, fc2.bias)


# ---- noise ----------------------------------------------------------------------------------

@pytest.mark.parametrize("noise", [0.05, 0.2])
def test_noise_perturbs_each_expert_by_the_requested_relative_std(tiny, noise):
    moe = upcycled(tiny, num_experts=4, upcycle="noise", upcycle_noise=noise)
    for layer, moe_layer in zip(moe.moe_layer_indices, moe.moe_layers):
        for name, dense_linear in zip(("fc1", "fc2"), dense_ffn(tiny, layer)):
            for param in ("weight", "bias"):
                original = getattr(dense_linear, param)
                tensors = [getattr(getattr(e, name), param) for e in moe_layer.experts]
                # weights: 2048 entries, a tight estimate; biases: 32-64 entries, a loose one
                tolerance = 0.15 if param == "weight" else 0.4
                for tensor in tensors:
                    relative = ((tensor - original).std() / original.std()).item()
                    assert abs(relative / noise - 1) < tolerance, (layer, name, param, relative)
                for i in range(len(tensors)):
                    for j in range(i):
                        assert not torch.equal(tensors[i], tensors[j])


# ---- drop -----------------------------------------------------------------------------------

def changed_neurons(expert, fc1, fc2):
    rows = (expert.fc1.weight != fc1.weight).any(1)
    bias = expert.fc1.bias != fc1.bias
    columns = (expert.fc2.weight != fc2.weight).any(0)
    assert torch.equal(rows, bias) and torch.equal(rows, columns), "a neuron is re-initialised whole"
    assert torch.equal(expert.fc2.bias, fc2.bias)
    return rows.nonzero().squeeze(1)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.0])
def test_drop_reinitialises_exactly_round_r_dff_neurons_per_expert(tiny, ratio):
    moe = upcycled(tiny, num_experts=4, upcycle="drop", upcycle_ratio=ratio)
    expected = round(ratio * D_FF)
    for layer, moe_layer in zip(moe.moe_layer_indices, moe.moe_layers):
        subsets = [set(changed_neurons(e, *dense_ffn(tiny, layer)).tolist()) for e in moe_layer.experts]
        assert all(len(s) == expected for s in subsets)
        if ratio < 1:
            assert len({frozenset(s) for s in subsets}) == len(subsets), "each expert has its own subset"


def test_drop_draws_from_the_statistics_of_the_entries_it_replaces(tiny):
    """Drop-Upcycling's rule: mean and std of the replaced entries, not of the whole matrix.
    Neuron j's weights are made to sit near j (fc1) and -2j (fc2), so that the two rules differ."""
    fc1, fc2 = dense_ffn(tiny, 0)
    with torch.no_grad():
        neuron = torch.arange(D_FF, dtype=torch.float32)
        fc1.weight.copy_(neuron[:, None] + 0.05 * torch.randn_like(fc1.weight))
        fc2.weight.copy_(-2 * neuron[None, :] + 0.05 * torch.randn_like(fc2.weight))
    moe = upcycled(tiny, num_experts=8, layers="0", upcycle="drop", upcycle_ratio=2 / D_FF)
    for expert in moe.moe_layers[0].experts:
        dropped = changed_neurons(expert, fc1, fc2)
        assert len(dropped) == 2
        for new, old in ((expert.fc1.weight[dropped], fc1.weight[dropped]),
                         (expert.fc2.weight[:, dropped], fc2.weight[:, dropped])):
            # 64 draws each: the mean within 4 standard errors, the std within ~4 of its own
            assert abs(new.mean() - old.mean()) < 0.5 * old.std() + 0.05, (dropped, new.mean(), old.mean())
            assert 0.65 < (new.std() / old.std()).item() < 1.35, (dropped, new.std(), old.std())


# ---- seeds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["noise", "drop", "split"])
def test_one_seed_gives_one_model_another_seed_another(tiny, mode):
    config = {"num_experts": 4, "upcycle": mode}
    first, again, other = (expert_state(upcycled(tiny, seed=s, **config)) for s in (3, 3, 4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(first[k].shape != other[k].shape or not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("mode", ["noise", "drop", "split"])
def test_upcycling_uses_the_global_rng_as_copy_does(tiny, mode):
    """Only the router draws from the global RNG, in every mode alike."""
    after = {}
    for m in ("copy", mode):
        torch.manual_seed(0)
        model = upcycled(tiny, num_experts=4, upcycle=m)
        after[m] = (torch.rand(4), [layer.router.weight.clone() for layer in model.moe_layers])
    assert torch.equal(after["copy"][0], after[mode][0])
    assert all(torch.equal(a, b) for a, b in zip(after["copy"][1], after[mode][1]))


# ---- split ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_experts,share", [(4, 0), (3, 5), (4, 8)])
def test_split_covers_each_neuron_once_and_shared_ones_in_every_expert(tiny, num_experts, share):
    moe = upcycled(tiny, num_experts=num_experts, upcycle="split", share_neurons=share)
    for layer, moe_layer in zip(moe.moe_layer_indices, moe.moe_layers):
        fc1, fc2 = dense_ffn(tiny, layer)
        neurons = [expert_neurons(e, fc1) for e in moe_layer.experts]
        counts = torch.bincount(torch.cat(neurons), minlength=D_FF)
        shared = (counts == num_experts).nonzero().squeeze(1)
        assert len(shared) == share and ((counts == 1) | (counts == num_experts)).all()
        own_sizes = [len(n) - share for n in neurons]
        assert max(own_sizes) - min(own_sizes) <= 1 and sum(own_sizes) == D_FF - share
        for expert, index in zip(moe_layer.experts, neurons):
            scale = torch.where(counts[index] == num_experts, 1.0, float(num_experts))
            assert torch.equal(expert.fc1.bias, fc1.bias[index])
            assert torch.equal(expert.fc2.weight, fc2.weight[:, index] * scale)
            assert torch.equal(expert.fc2.bias, fc2.bias)
            assert expert.fc1.out_features == expert.fc2.in_features == len(index)


@pytest.mark.parametrize("num_experts,share", [(4, 0), (3, 0), (3, 5), (4, 8)])
def test_split_with_uniform_top_E_gate_equals_dense(tiny, inputs, num_experts, share):
    moe = upcycled(tiny, num_experts=num_experts, top_k=num_experts, router_init_std=0.0,
                   upcycle="split", share_neurons=share)
    torch.testing.assert_close(logits(moe, inputs), logits(tiny, inputs))


def test_split_minilm_equals_dense(minilm, inputs):
    moe = upcycled(minilm, num_experts=4, top_k=4, router_init_std=0.0, upcycle="split", share_neurons=128)
    torch.testing.assert_close(logits(moe, inputs), logits(minilm, inputs))
    assert [e.fc1.out_features for e in moe.moe_layers[0].experts] == [128 + (1536 - 128) // 4] * 4


def test_split_by_importance_shares_the_top_scored_neurons(tiny):
    num_experts, share = 4, 6
    scores = [torch.rand(D_FF, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    moe = upcycled(tiny, importance=scores, num_experts=num_experts, upcycle="split", share_neurons=share,
                   split_by="importance")
    for layer, moe_layer, layer_scores in zip(moe.moe_layer_indices, moe.moe_layers, scores):
        fc1, _ = dense_ffn(tiny, layer)
        ranking = layer_scores.argsort(descending=True)
        for i, expert in enumerate(moe_layer.experts):
            neurons = expert_neurons(expert, fc1)
            assert set(neurons[:share].tolist()) == set(ranking[:share].tolist())
            # MoEBERT's deal: expert i takes ranks share+i, share+i+E, ... of the rest
            assert neurons[share:].tolist() == ranking[share + i::num_experts].tolist()


def test_split_by_importance_needs_one_score_tensor_per_layer(tiny):
    config = {"num_experts": 4, "upcycle": "split", "split_by": "importance"}
    with pytest.raises(ValueError, match="importance"):
        upcycled(tiny, **config)
    with pytest.raises(ValueError, match="one per upcycled layer"):
        upcycled(tiny, importance=[torch.rand(D_FF)], **config)
    with pytest.raises(ValueError, match="shape"):
        upcycled(tiny, importance=[torch.rand(D_FF + 1)] * 2, **config)


def test_unequal_split_experts_fall_back_from_grouped_mm(tiny, monkeypatch):
    monkeypatch.setattr(layer_module, "GROUPED_MM_DEVICES", {"cuda", "cpu"})
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    even = upcycled(tiny, num_experts=4, upcycle="split").to(torch.bfloat16).moe_layers[0]
    uneven = upcycled(tiny, num_experts=3, upcycle="split").to(torch.bfloat16).moe_layers[0]  # 22, 21, 21
    assert not uneven._grouped_supported(x)
    assert even._grouped_supported(x) == (layer_module._GROUPED_MM is not None)
    outputs = {}
    for mode in ("sorted", "grouped_mm"):
        uneven.dispatch_mode = mode
        with torch.no_grad():
            outputs[mode] = uneven(x)
    assert torch.equal(outputs["sorted"], outputs["grouped_mm"])


def test_parameter_counts_with_split_experts_of_unequal_size(tiny):
    moe = upcycled(tiny, num_experts=3, top_k=1, upcycle="split", share_neurons=5)  # 25, 25, 24 neurons
    counts = moe.num_parameters()
    assert counts["total"] == sum(p.numel() for p in moe.parameters())
    per_layer = sorted(sum(p.numel() for p in e.parameters()) for e in moe.moe_layers[0].experts)
    assert per_layer[0] < per_layer[2]
    assert counts["total"] - counts["active_per_token"] == 2 * (per_layer[0] + per_layer[1])  # all but the largest


# ---- importance -----------------------------------------------------------------------------

def labelled_batches(num_batches=2, size=4, seq=12):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1000, 2000, (size, seq), generator=g),
             "attention_mask": torch.ones(size, seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (size,), generator=g)} for _ in range(num_batches)]


def moebert_reference(model, batches, layer):
    """MoEBERT's formula written out: a backward per example w.r.t. W1 and W2."""
    fc1, fc2 = dense_ffn(model, layer)
    total = torch.zeros(fc1.out_features)
    for batch in batches:
        for b in range(batch["labels"].shape[0]):
            example = {k: v[b:b + 1] for k, v in batch.items()}
            grad_w1, grad_w2 = torch.autograd.grad(model(**example).loss, [fc1.weight, fc2.weight])
            total += ((fc1.weight * grad_w1).sum(1) + (fc2.weight * grad_w2).sum(0)).abs().detach()
    return total


def test_importance_is_moeberts_score(tiny):
    batches = labelled_batches()
    scores = neuron_importance(tiny, batches, [0, 1])
    assert len(scores) == 2 and all(s.shape == (D_FF,) for s in scores)
    for layer, layer_scores in zip((0, 1), scores):
        assert torch.isfinite(layer_scores).all() and (layer_scores >= 0).all() and layer_scores.sum() > 0
        torch.testing.assert_close(layer_scores, moebert_reference(tiny, batches, layer), rtol=1e-4, atol=1e-7)


def test_importance_is_zero_for_a_neuron_that_does_not_matter_and_high_for_one_that_does(tiny):
    fc1, fc2 = dense_ffn(tiny, 0)
    with torch.no_grad():
        fc2.weight[:, 3] = 0.0  # neuron 3 no longer reaches the output
        fc2.weight[:, 5] *= 30.0  # neuron 5 now dominates the FFN's output
    scores = neuron_importance(tiny, labelled_batches(), [0])[0]
    assert scores[3] == 0
    assert scores.argmax() == 5


def test_importance_leaves_parameters_grads_and_mode_alone(tiny):
    tiny.train()
    tiny.classifier.weight.grad = torch.ones_like(tiny.classifier.weight)
    before = copy.deepcopy(tiny.state_dict())
    neuron_importance(tiny, labelled_batches(1), [1])
    assert tiny.training
    assert torch.equal(tiny.classifier.weight.grad, torch.ones_like(tiny.classifier.weight))
    assert all(p.grad is None for name, p in tiny.named_parameters() if name != "classifier.weight")
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_importance_needs_the_dense_model(tiny):
    with pytest.raises(ValueError, match="dense"):
        neuron_importance(upcycled(tiny).hf_model, labelled_batches(1), [0])


# ---- diversity at step 0 --------------------------------------------------------------------

def test_drop_starts_with_dissimilar_experts_where_copy_starts_with_identical_ones(minilm):
    probe = {"input_ids": torch.randint(1000, 20000, (4, 16), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    copy_cka = diagnose(upcycled(minilm, num_experts=4), probe)["expert_cka"]
    drop_cka = diagnose(upcycled(minilm, num_experts=4, upcycle="drop"), probe)["expert_cka"]
    assert copy_cka == pytest.approx(1.0, abs=1e-5)
    assert drop_cka < 0.95, drop_cka  # 0.90 here (r = 0.5); noise 0.05 gives 0.9997


# ---- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"upcycle": "clone"}, r"--upcycle must be one of copy, noise, drop, split, got 'clone'"),
    ({"upcycle_noise": -0.1}, r"--upcycle-noise must be .*>= 0, got -0.1"),
    ({"upcycle_noise": float("nan")}, r"--upcycle-noise .* got nan"),
    ({"upcycle_ratio": 0.0}, r"--upcycle-ratio must be in \(0, 1\], got 0.0"),
    ({"upcycle_ratio": 1.5}, r"--upcycle-ratio must be in \(0, 1\], got 1.5"),
    ({"share_neurons": -1}, r"--share-neurons must be an integer >= 0, got -1"),
    ({"share_neurons": 2.5}, r"--share-neurons must be an integer >= 0, got 2.5"),
    ({"split_by": "magnitude"}, r"--split-by must be one of random, importance, got 'magnitude'"),
])
def test_bad_values_name_the_flag(kwargs, message):
    with pytest.raises(UsageError, match=message):
        MoEConfig(**kwargs)


def test_sizes_known_only_at_build_time_are_checked_there(tiny):
    with pytest.raises(UsageError, match=r"--share-neurons must be < the FFN's 64 neurons, got 64"):
        upcycled(tiny, num_experts=2, upcycle="split", share_neurons=64)
    with pytest.raises(UsageError, match=r"--share-neurons 62 leaves 2 .* 4 experts.*<= 60"):
        upcycled(tiny, num_experts=4, upcycle="split", share_neurons=62)
    upcycled(tiny, num_experts=4, upcycle="split", share_neurons=60)
    with pytest.raises(UsageError, match=r"--upcycle-ratio 0.001 re-initialises no neuron"):
        upcycled(tiny, upcycle="drop", upcycle_ratio=0.001)
