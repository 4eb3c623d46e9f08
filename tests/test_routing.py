"""The routing plug point (a method's gate, variable experts per token) and the mathematics of
each routing method: hash, expert_choice, xmoe, aux_free, smoe_dropout, remoe."""

import pytest
import torch
import torch.nn.functional as F

from moebench.methods.aux_free import AuxFree, BiasedGate, bias_update
from moebench.methods.expert_choice import ExpertChoiceGate, capacity, expert_choice_gating
from moebench.methods.hash import Hash, balanced_hash
from moebench.methods.remoe import ReMoE, adapt_coefficient, l1_balance_penalty
from moebench.methods.smoe_dropout import SMoEDropout, scheduled_k
from moebench.methods.xmoe import XMoE, XMoEGate
from moebench.moe.layer import Expert, MoEFeedForward, Routing
from moebench.moe.routing import Gate, all_experts_gating
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained


def make_layer(num_experts=4, top_k=2, d=16, d_ff=32, seed=0):
    torch.manual_seed(seed)
    experts = [Expert(torch.nn.Linear(d, d_ff), torch.nn.Linear(d_ff, d), F.gelu) for _ in range(num_experts)]
    router = torch.nn.Linear(d, num_experts, bias=False)
    torch.nn.init.normal_(router.weight, std=1.0)
    return MoEFeedForward(experts, router, top_k)


def padded_input(d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, d, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    return x, mask


def tiny_moe(tiny_model_dir, method, top_k=2):
    torch.manual_seed(0)
    hf = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2)
    model = MoEModel(hf, MoEConfig(4, top_k, upcycle="noise"))
    method.attach(model)
    return model


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": torch.randint(1000, 1100, (4, 8), generator=generator), "attention_mask": mask,
            "labels": torch.tensor([0, 1, 0, 1])}


# ---- the plug point: any number of experts per token, in every dispatch mode ------------------

class ThresholdGate(Gate):
    """Every expert whose probability is above 1/E: 0..E per token (not renormalised)."""

    def forward(self, layer, x, token_mask, token_ids):
        logits = layer.router(x)
        probs = torch.softmax(logits.float(), dim=-1)
        return all_experts_gating(logits, probs, probs > 1.0 / layer.num_experts + 0.05)


def per_token_reference(layer, hidden, mask):
    flat, keep = hidden.reshape(-1, hidden.shape[-1]), mask.reshape(-1).tolist()
    rows = []
    for t in range(flat.shape[0]):
        probs = torch.softmax(layer.router(flat[t]).float(), dim=-1)
        used = [e for e in range(layer.num_experts) if probs[e] > 1.0 / layer.num_experts + 0.05]
        rows.append(sum((probs[e] * layer.experts[e](flat[t]) for e in used), torch.zeros_like(flat[t]))
                    if keep[t] else torch.zeros_like(flat[t]))
    return torch.stack(rows).reshape(hidden.shape)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("mode", ["sorted", "loop", "grouped_mm"])  # grouped_mm falls back to sorted on CPU/fp32
def test_a_gate_with_variable_experts_per_token_dispatches_exactly(mode, padded):
    layer = make_layer()
    layer.gate = ThresholdGate()
    x, mask = padded_input()
    full = mask if padded else torch.ones(x.shape[:2], dtype=torch.bool)
    expected = per_token_reference(layer, x, full)
    layer.dispatch_mode, layer.token_mask = mode, (mask if padded else None)
    got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    r = layer.last_routing
    assert r.expert_index.shape == (int(full.sum()), 4) and r.expert_mask.shape == r.expert_index.shape
    per_token = r.experts_per_token
    assert set(per_token.tolist()) >= {0, 1} or len(set(per_token.tolist())) > 1  # really variable
    assert int(per_token.sum()) == len(r.assigned_experts)
    top1 = r.top1
    assert ((top1 == -1) == (per_token == 0)).all()


def test_grouped_mm_dispatches_a_gates_variable_assignments(monkeypatch):
    """The grouped GEMM path (CUDA in use; torch's CPU grouped_mm where it exists lets CI check it)."""
    from moebench.moe import layer as layer_module
    from test_moe import grouped_mm_runs_on_cpu

    if not grouped_mm_runs_on_cpu():
        pytest.skip("this torch has no CPU grouped_mm")
    monkeypatch.setattr(layer_module, "GROUPED_MM_DEVICES", {"cuda", "cpu"})
    layer = make_layer().to(torch.bfloat16)
    layer.gate = ThresholdGate()
    x, mask = padded_input()
    x = x.to(torch.bfloat16)
    assert layer._grouped_supported(x)
    outs = {}
    for mode in ("grouped_mm", "sorted"):
        layer.dispatch_mode, layer.token_mask = mode, mask
        outs[mode] = layer(x).float()
    torch.testing.assert_close(outs["grouped_mm"], outs["sorted"], rtol=2e-2, atol=2e-2)


def test_sorted_and_loop_hand_a_gates_routing_over_alike():
    layer = make_layer()
    layer.gate = ThresholdGate()
    x, mask = padded_input()
    routings = {}
    for mode in ("loop", "sorted"):
        layer.dispatch_mode, layer.token_mask = mode, mask
        layer(x)
        routings[mode] = layer.last_routing
    for field in ("inputs", "router_logits", "expert_index", "expert_weight", "expert_mask"):
        torch.testing.assert_close(getattr(routings["sorted"], field), getattr(routings["loop"], field), msg=field)


def test_routing_reports_k_experts_per_token_without_a_gate():
    layer = make_layer(top_k=2)
    x, mask = padded_input()
    layer.token_mask = mask
    layer(x)
    assert layer.last_routing.expert_mask is None
    assert layer.last_routing.experts_per_token.tolist() == [2] * int(mask.sum())


# ---- hash -------------------------------------------------------------------------------------

def test_balanced_hash_gives_each_id_in_frequency_order_to_the_least_loaded_expert():
    counts = torch.tensor([10, 0, 7, 5, 3])
    table = balanced_hash(counts, 2)
    # 10 -> e0 (0, 0 loaded: first), 7 -> e1, 5 -> e1 (7 < 10), 3 -> e0 (10 < 12)
    assert table[[0, 2, 3, 4]].tolist() == [0, 1, 1, 0]
    assert 0 <= int(table[1]) < 2  # never seen: random


def test_hash_routes_by_token_id_with_no_router_gradient(tiny_model_dir):
    method = Hash(Hash.Params(mode="balanced"))
    model = tiny_moe(tiny_model_dir, method)
    method.start(1, lambda: [batch(0), batch(1)])
    inputs = batch(0)
    output, routing = model(**inputs)
    output.loss.backward()
    real_ids = inputs["input_ids"][inputs["attention_mask"].bool()]
    for layer, r in zip(model.moe_layers, routing):
        assert not list(layer.gate.parameters())  # no router parameters
        assert layer.router.weight.grad is None and not layer.router.weight.requires_grad
        assert torch.equal(r.expert_index[:, 0], layer.gate.table[real_ids]) and r.experts_per_token.eq(1).all()
        assert (r.expert_weight == 1).all()
        assert any(p.grad is not None for p in layer.experts.parameters())
    # Balanced over the counted tokens: no expert carries more than the largest id's count beyond the mean.
    counts = torch.bincount(torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in (batch(0), batch(1))]),
                            minlength=model.hf_model.config.vocab_size)
    load = torch.zeros(4, dtype=torch.long).index_add_(0, model.moe_layers[0].gate.table, counts)
    assert int(load.max() - load.min()) <= int(counts.max())


def test_active_parameters_follow_the_measured_experts_per_token(tiny_model_dir):
    """A gate decides how many experts a token uses (hash: 1 of 4, where --top-k says 2), so the
    trial counts active parameters from the probe's experts per token, not from top-k."""
    from moebench.train import measured_experts_per_token

    method = Hash(Hash.Params(mode="random"))
    model = tiny_moe(tiny_model_dir, method)
    layers = len(model.moe_layers)
    per_expert = sum(p.numel() for p in model.moe_layers[0].experts[0].parameters())
    by_top_k = model.num_parameters()
    measured = model.num_parameters([1.0] * layers)
    assert measured["total"] == by_top_k["total"]
    assert by_top_k["active_per_token"] - measured["active_per_token"] == layers * per_expert  # 2 experts -> 1
    assert model.num_parameters([float(layer.top_k) for layer in model.moe_layers]) == by_top_k
    metrics = {f"diagnostics/layer{i}/experts_per_token": 1.0 for i in model.moe_layer_indices}
    assert measured_experts_per_token(model, metrics) == [1.0] * layers
    for layer in model.moe_layers:
        layer.gate = None
    assert measured_experts_per_token(model, metrics) is None  # plain top-k: k by definition


def test_random_hash_draws_a_map_per_layer_and_needs_no_data(tiny_model_dir):
    method = Hash(Hash.Params(mode="random"))
    model = tiny_moe(tiny_model_dir, method)
    tables = [layer.gate.table for layer in model.moe_layers]
    assert not torch.equal(tables[0], tables[1])
    model(**batch())  # routes without start()


# ---- expert_choice ----------------------------------------------------------------------------

def test_each_expert_takes_exactly_c_tokens_and_never_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 4, generator=g) * 3
    mask = torch.ones(20, dtype=torch.bool)
    mask[13:] = False  # 13 real tokens
    gating = expert_choice_gating(logits, top_k=2, capacity_factor=1.0, token_mask=mask)
    c = capacity(13, 4, 2, 1.0)
    assert c == round(2 * 13 / 4)
    assert gating.mask.sum(dim=0).tolist() == [c] * 4  # each expert exactly C tokens
    assert not gating.mask[~mask].any()  # padding never chosen
    probs = torch.softmax(logits, dim=-1)
    for e in range(4):  # ... its C best-scoring real tokens, weighted by the softmax score
        best = probs[:13, e].topk(c).indices
        assert set(gating.mask[:, e].nonzero().squeeze(1).tolist()) == set(best.tolist())
    torch.testing.assert_close(gating.weight, probs * gating.mask)
    per_token = gating.mask[:13].sum(dim=1)
    assert int(per_token.sum()) == 4 * c and per_token.max() > per_token.min()  # 0..E experts per token


def test_expert_choice_in_a_layer_balances_load_exactly():
    layer = make_layer()
    layer.gate = ExpertChoiceGate(capacity_factor=1.0)
    x, mask = padded_input()
    for mode in ("sorted", "loop"):
        layer.dispatch_mode, layer.token_mask = mode, mask
        layer(x)
        counts = torch.bincount(layer.last_routing.assigned_experts, minlength=4)
        assert counts.tolist() == [capacity(int(mask.sum()), 4, 2, 1.0)] * 4, mode


# ---- xmoe -------------------------------------------------------------------------------------

def test_xmoe_scores_are_cosines_over_a_learned_temperature():
    torch.manual_seed(0)
    gate = XMoEGate(d_model=16, num_experts=4, routing_dim=8, temperature=0.07)
    layer = make_layer()
    layer.gate = gate
    x = torch.randn(50, 16) * 10
    cosine = gate.cosine(x)
    assert cosine.min() >= -1 - 1e-6 and cosine.max() <= 1 + 1e-6  # before the temperature
    assert cosine.abs().max() > 0.5  # not trivially small
    gating = gate(layer, x, None, None)
    torch.testing.assert_close(gating.logits, cosine / 0.07)
    (gating.logits * torch.randn(50, 4)).sum().backward()
    assert gate.temperature.grad is not None and gate.project.weight.grad is not None
    assert gate.expert_embeddings.norm(dim=1).sub(1.5).abs().max() < 1e-5  # torchscale's rescale, in training


def test_xmoe_gate_replaces_the_router(tiny_model_dir):
    model = tiny_moe(tiny_model_dir, XMoE(XMoE.Params()))
    output, routing = model(**batch())
    output.loss.backward()
    for layer in model.moe_layers:
        assert layer.router.weight.grad is None and layer.gate.project.weight.grad is not None


# ---- aux_free ---------------------------------------------------------------------------------

def test_bias_update_is_u_times_the_sign_of_the_load_gap():
    bias = torch.zeros(4)
    bias_update(bias, torch.tensor([10, 2, 2, 2]), 1e-3)  # mean 4
    torch.testing.assert_close(bias, torch.tensor([-1e-3, 1e-3, 1e-3, 1e-3]))


def test_the_bias_moves_a_skewed_load_toward_balance():
    layer = make_layer(top_k=1)
    with torch.no_grad():
        layer.router.weight.normal_(std=0.5)
        layer.router.weight[0] += 0.15  # inputs of mean 1: expert 0 wins for almost every token
    method = AuxFree(AuxFree.Params(update_rate=0.005))
    model = torch.nn.Module()
    model.moe_layers = torch.nn.ModuleList([layer])
    method.attach(model)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0)) + 1
    cv = []
    for step in range(200):
        layer(x)
        method.loss([layer.last_routing])
        load = torch.bincount(layer.last_routing.assigned_experts, minlength=4).float()
        cv.append((load.std(unbiased=False) / load.mean()).item())
        method.after_step(None)
        if step == 0:  # the overloaded expert's bias falls by u, the others' rise by u
            torch.testing.assert_close(layer.gate.bias, torch.tensor([-0.005, 0.005, 0.005, 0.005]))
    assert cv[0] > 1.5  # ~all tokens on one expert (CV sqrt(3) at the limit)
    # Sign steps of a fixed size end in a small cycle around balance on a fixed batch, not at it.
    assert sum(cv[-50:]) / 50 < 0.5 * cv[0]


def test_aux_free_weights_ignore_the_bias():
    layer = make_layer(top_k=2)
    gate = BiasedGate(4, "softmax")
    layer.gate = gate
    gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))  # expert 3 always chosen
    x = torch.randn(10, 16)
    gating = gate(layer, x, None, None)
    assert (gating.index == 3).any(dim=1).all()
    probs = torch.softmax(layer.router(x).float(), dim=-1)
    chosen = probs.gather(1, gating.index)
    torch.testing.assert_close(gating.weight, chosen / chosen.sum(dim=1, keepdim=True))
    gating.weight[:, 0].sum().backward()
    assert layer.router.weight.grad is not None and not gate.bias.requires_grad


# ---- smoe_dropout -----------------------------------------------------------------------------

def test_k_grows_linearly_from_k_to_e():
    assert [scheduled_k(s, 10, 2, 4) for s in (0, 2, 5, 8, 10, 12)] == [2, 2, 3, 4, 4, 4]


def test_smoe_dropout_router_is_frozen_and_k_follows_the_schedule(tiny_model_dir):
    method = SMoEDropout(SMoEDropout.Params())
    model = tiny_moe(tiny_model_dir, method)
    method.start(4, lambda: [])
    ks = []
    for _ in range(4):
        output, routing = model(**batch())
        ks.append(int(routing[0].experts_per_token[0]))
        output.loss.backward()
        for layer in model.moe_layers:
            assert layer.router.weight.grad is None and not layer.router.weight.requires_grad
        method.after_step(None)
    assert ks == [2, 2, 3, 4]  # round(2 * step / 4) + 2: Python's round(0.5) = 0, round(1.5) = 2
    model.eval()
    _, routing = model(**batch())
    assert routing[0].experts_per_token.eq(4).all()  # all E at evaluation
    assert method.diagnostics() == {"smoe_dropout_k": 4.0, "smoe_dropout_eval_k": 4.0}


# ---- remoe ------------------------------------------------------------------------------------

def test_l1_coefficient_moves_toward_the_target_sparsity():
    assert adapt_coefficient(1.0, measured=0.2, target=0.5, multiplier=1.2) == pytest.approx(1.2)  # too dense: more
    assert adapt_coefficient(1.0, measured=0.8, target=0.5, multiplier=1.2) == pytest.approx(1 / 1.2)  # too sparse: less


def test_l1_penalty_is_the_load_weighted_mean_gate():
    gates = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    r = Routing(None, torch.zeros(2, 3), gates, torch.arange(4).expand(2, 4), gates, gates > 0)
    # f = E * count / (k N) = 4 * [2, 0, 1, 0] / (2 * 2); mean gates [2, 0, 1, 0]
    assert l1_balance_penalty(r, top_k=2).item() == pytest.approx(2 * 2 + 1 * 1)


def test_remoe_routes_each_token_to_its_positive_scores(tiny_model_dir):
    method = ReMoE(ReMoE.Params())
    model = tiny_moe(tiny_model_dir, method)
    output, routing = model(**batch())
    assert method.loss(routing)["l1_loss"] > 0
    per_token = torch.cat([r.experts_per_token for r in routing])
    for r in routing:
        torch.testing.assert_close(r.expert_weight, torch.relu(r.router_logits.float()))
        assert torch.equal(r.experts_per_token, (r.router_logits > 0).sum(dim=1))
    assert per_token.min() < per_token.max()  # tokens use different numbers of experts


def test_remoe_adapts_lambda_to_the_measured_sparsity(tiny_model_dir):
    method = ReMoE(ReMoE.Params(l1_coef_init=1.0))
    tiny_moe(tiny_model_dir, method)  # two layers, top-2 of 4: target sparsity 0.5

    def routing(open_gates: int) -> list[Routing]:
        gates = torch.zeros(6, 4)
        gates[:, :open_gates] = 1.0
        return [Routing(None, torch.zeros(6, 3), gates, torch.arange(4).expand(6, 4), gates, gates > 0)] * 2

    method.loss(routing(open_gates=4))  # sparsity 0: too dense
    method.after_step(None)
    assert method.coef == pytest.approx(1.2)
    method.loss(routing(open_gates=1))  # sparsity 0.75: too sparse
    method.after_step(None)
    assert method.coef == pytest.approx(1.0)
    assert method.diagnostics()["remoe_sparsity"] == pytest.approx(0.375)


@pytest.mark.parametrize("method", ["vanilla", "expert_choice"])
def test_only_expert_choice_makes_an_examples_prediction_depend_on_its_evaluation_batch(tiny_model_dir, method):
    """Expert choice picks each expert's tokens over the whole batch, at evaluation too (as the
    paper does per group): an example's logits move with the examples beside it, so a run's
    scores hold for its recorded train.eval_batch_size and longest-first order. Top-k routing
    decides per token: the same logits in any batch."""
    from moebench.registry import METHODS

    torch.manual_seed(0)
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2), MoEConfig(4, 2, upcycle="noise"))
    for layer in model.moe_layers:  # a trained-looking router: scores that differ between tokens
        torch.nn.init.normal_(layer.router.weight, std=1.0)
    METHODS.get(method)(METHODS.get(method).Params()).attach(model)
    model.eval()
    ids = torch.randint(1000, 2000, (6, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # the last hidden states: the tiny random head's logits are too small to show it
        alone = model(input_ids=ids[:1], attention_mask=torch.ones(1, 12, dtype=torch.long), output_hidden_states=True)[0]
        in_batch = model(input_ids=ids, attention_mask=torch.ones(6, 12, dtype=torch.long), output_hidden_states=True)[0]
    moved = (alone.hidden_states[-1][0] - in_batch.hidden_states[-1][0]).abs().max().item()
    assert moved > 1e-3 if method == "expert_choice" else moved < 1e-5
