import pytest
import torch

from moebench.errors import UsageError
from moebench.params import parse_params
from moebench.moe.balance import switch_aux_loss
from moebench.methods.simsmoe import PairTracker, SimSMoE, simsmoe_balance_loss, top2_pair_codes
from moebench.moe.layer import Routing
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained


def model_and_routing(tiny_model_dir, top_k=2, seed=0):
    torch.manual_seed(seed)
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, top_k, router_init_std=1.0))
    batch = {"input_ids": torch.randint(1000, 2000, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    _, routing = model(**batch)
    return model, routing


def test_pair_tracker_selects_and_resets_like_the_official_counter():
    tracker = PairTracker(4, threshold=1.0)
    codes = torch.tensor([0 * 4 + 1] * 3 + [2 * 4 + 3])  # 3/4 of tokens on (0,1), 1/4 on (2,3)
    assert tracker.update(codes) == []  # (0,1) at 0.75
    assert tracker.update(codes) == [(0, 1)]  # 1.5 > 1 -> selected, reset
    assert tracker.counts[1] == 0 and tracker.counts[2 * 4 + 3] == pytest.approx(0.5)


def test_pair_codes_are_sorted_top2_and_use_the_runner_up_for_top1(tiny_model_dir):
    _, routing = model_and_routing(tiny_model_dir, top_k=2)
    r = routing[0]
    codes = top2_pair_codes(r)
    assert torch.equal(codes // 4, r.expert_index.min(1).values) and torch.equal(codes % 4, r.expert_index.max(1).values)
    _, routing1 = model_and_routing(tiny_model_dir, top_k=1)
    best2 = routing1[0].router_logits.topk(2).indices
    assert torch.equal(top2_pair_codes(routing1[0]) // 4, best2.min(1).values)


def test_penalty_is_zero_below_threshold_and_positive_above(tiny_model_dir):
    # Fresh experts are identical, so the CKA of any shared pair is 1.
    for threshold, expect_penalty in [(1.01, False), (0.5, True)]:
        model, routing = model_and_routing(tiny_model_dir)
        method = SimSMoE(SimSMoE.Params(cont_freq=0.0, sim_threshold=threshold))
        method.attach(model)
        losses = method.loss(routing)
        assert losses["aux_loss"].item() > 0
        if expect_penalty:
            # cont_freq=0 selects every pair that shares a token; each with >= 2 tokens adds CKA = 1.
            pairs_per_layer = [int((torch.bincount(top2_pair_codes(r)) >= 2).sum()) for r in routing]
            assert min(pairs_per_layer) >= 1
            expected = 0.01 * sum(pairs_per_layer) / len(pairs_per_layer)
            assert losses["cka_loss"].item() == pytest.approx(expected, rel=1e-4)
        else:
            assert losses["cka_loss"].item() == 0.0


def test_gradients_reach_the_experts_and_the_head(tiny_model_dir):
    model, routing = model_and_routing(tiny_model_dir)
    method = SimSMoE(SimSMoE.Params(cont_freq=0.0, sim_threshold=0.0, kernel="linear"))
    method.attach(model)
    torch.nn.init.normal_(model.moe_layers[0].experts[0].fc1.weight)  # experts differ: CKA < 1, non-zero gradient
    method.loss(routing)["cka_loss"].backward()
    layer = model.moe_layers[0]
    assert any(e.fc1.weight.grad is not None and e.fc1.weight.grad.abs().sum() > 0 for e in layer.experts)
    assert layer.simsmoe_head.weight.grad.abs().sum() > 0
    assert layer.router.weight.grad is None  # inputs are detached: the penalty does not move routing


def test_params_validate():
    with pytest.raises(UsageError, match="kernel"):
        parse_params(SimSMoE, {"kernel": "poly"})
    assert parse_params(SimSMoE, {"cont_freq": "16"}).cont_freq == 16.0


def official_set_load_balance(logits: torch.Tensor, top_k: int) -> float:
    """custom_gates.py `set_load_balance`, written out: softmax over all experts; fraction and
    probability both divided by the number of valid assignments N*k."""
    n, num_experts = logits.shape
    score = torch.softmax(logits, dim=-1)
    valid_idx = logits.topk(top_k, dim=-1).indices.reshape(-1)
    fraction = [float((valid_idx == i).sum()) / valid_idx.numel() for i in range(num_experts)]
    prob = [float(score[:, i].sum()) / valid_idx.numel() for i in range(num_experts)]
    return num_experts * sum(f * p for f, p in zip(fraction, prob))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_balance_term_is_the_official_normalisation(top_k):
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(top_k))
    index = logits.topk(top_k, dim=-1).indices
    routing = Routing(None, torch.zeros(50, 8), logits, index, torch.ones_like(index, dtype=torch.float))
    assert simsmoe_balance_loss(routing).item() == pytest.approx(official_set_load_balance(logits, top_k), rel=1e-5)
    assert simsmoe_balance_loss(routing).item() == pytest.approx(switch_aux_loss(routing).item() / top_k, rel=1e-6)


def test_a_gates_unused_slots_neither_pair_experts_nor_count_as_assignments():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 3.0, 2.0, 0.0], [0.0, 0.0, 3.0, 2.0]])
    index = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 3, 0]])
    weight = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.6, 0.4, 0.0]])
    used = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    routing = Routing(None, torch.zeros(3, 8), logits, index, weight, used)
    # token 0: its two highest-weight experts 1 and 2; token 1 used one expert: no pair; token 2: 2 and 3
    assert top2_pair_codes(routing).tolist() == [1 * 4 + 2, -1, 2 * 4 + 3]
    tracker = PairTracker(4, threshold=0.3)
    assert tracker.update(top2_pair_codes(routing)) == [(1, 2), (2, 3)]  # each pair 1/3 of the 3 tokens
    # k = the mean slots used, (3 + 1 + 2) / 3 = 2
    assert simsmoe_balance_loss(routing).item() == pytest.approx(switch_aux_loss(routing).item() / 2, rel=1e-6)
