"""The probe diagnostics: expert/label mutual information, top-1 stability, clamped similarities."""
import math
from types import SimpleNamespace

import pytest
import torch

from moebench.moe import diagnostics
from moebench.moe.diagnostics import (IGNORED_LABEL, PROBE_INPUTS, ProbeDiagnostics, expert_label_mi,
                                      expert_similarity, token_labels)
from moebench.moe.layer import Routing
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained


def entropy(probabilities: list[float]) -> float:
    return -sum(p * math.log2(p) for p in probabilities if p > 0)


def hand_mi(pairs: list[tuple[int, int]]) -> float:
    """sum p(x, y) log2(p(x, y) / (p(x) p(y))), written out."""
    n = len(pairs)
    joint = {pair: pairs.count(pair) / n for pair in set(pairs)}
    px = {x: sum(1 for a, _ in pairs if a == x) / n for x, _ in pairs}
    py = {y: sum(1 for _, b in pairs if b == y) / n for _, y in pairs}
    return sum(p * math.log2(p / (px[x] * py[y])) for (x, y), p in joint.items())


def mi_of(pairs: list[tuple[int, int]]) -> dict[str, float]:
    experts, labels = zip(*pairs)
    return expert_label_mi(torch.tensor(experts), torch.tensor(labels))


def test_mi_is_the_label_entropy_when_the_expert_determines_the_label():
    # labels 0,0,0,0,1,1,2,2 -> H = 1.5 bits; label 0 is split over experts 0 and 3, still determined
    pairs = [(0, 0), (0, 0), (3, 0), (3, 0), (1, 1), (1, 1), (2, 2), (2, 2)]
    stats = mi_of(pairs)
    assert stats["expert_label_mi"] == pytest.approx(entropy([0.5, 0.25, 0.25])) == pytest.approx(1.5)
    assert stats["expert_label_mi_norm"] == pytest.approx(1.0)


def test_mi_is_zero_for_independent_expert_and_label():
    pairs = [(e, y) for e in range(4) for y in range(3)] * 2  # every combination equally often
    stats = mi_of(pairs)
    assert stats["expert_label_mi"] == pytest.approx(0.0, abs=1e-12)
    assert stats["expert_label_mi_norm"] == pytest.approx(0.0, abs=1e-12)


def test_mi_matches_a_hand_computation():
    pairs = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (2, 0), (2, 1), (1, 0), (0, 0)]
    stats = mi_of(pairs)
    assert 0 < stats["expert_label_mi"] == pytest.approx(hand_mi(pairs), rel=1e-12)
    assert stats["expert_label_mi_norm"] == pytest.approx(hand_mi(pairs) / entropy([5 / 9, 4 / 9]), rel=1e-12)


def test_one_label_gives_zero_mi_and_no_normalised_value():
    assert mi_of([(0, 1), (1, 1), (2, 1)]) == {"expert_label_mi": 0.0}


def test_ner_ignores_tokens_labelled_minus_100():
    experts = torch.tensor([0, 1, 0, 1, 2, 3, 0])
    tags = torch.tensor([3, 5, 3, 5, IGNORED_LABEL, IGNORED_LABEL, IGNORED_LABEL])
    # Without the ignored tokens the expert determines the tag: 1 bit, whatever they are routed to.
    assert expert_label_mi(experts, tags) == pytest.approx({"expert_label_mi": 1.0, "expert_label_mi_norm": 1.0})
    assert expert_label_mi(experts, torch.full_like(tags, IGNORED_LABEL)) == {}


def test_token_labels_follow_routings_order_and_drop_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask}
    assert token_labels(batch | {"labels": torch.tensor([7, 2])}).tolist() == [7, 7, 7, 2, 2]
    tags = torch.tensor([[IGNORED_LABEL, 4, 5, IGNORED_LABEL], [IGNORED_LABEL, 6, IGNORED_LABEL, IGNORED_LABEL]])
    assert token_labels(batch | {"labels": tags}).tolist() == [IGNORED_LABEL, 4, 5, IGNORED_LABEL, 6]
    no_padding = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert token_labels(no_padding | {"labels": torch.tensor([1, 0])}).tolist() == [1, 1, 1, 0, 0, 0]


def test_token_labels_are_undefined_for_regression_qa_and_multiple_choice():
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    assert token_labels(batch | {"labels": torch.tensor([0.5, 3.2])}) is None  # STS-B
    assert token_labels(batch | {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([2, 3])}) is None
    choices = {k: v.unsqueeze(1).expand(2, 2, 4) for k, v in batch.items()}  # (B, choices, T)
    assert token_labels(choices | {"labels": torch.tensor([0, 1])}) is None


@pytest.fixture
def model(tiny_model_dir):
    torch.manual_seed(0)
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, 2))
    for layer in model.moe_layers:  # a router far from uniform, so top-1 choices are not near-ties
        torch.nn.init.normal_(layer.router.weight, std=1.0)
    return model


def padded_probe(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    lengths = [9, 5, 7, 3]
    input_ids = torch.randint(1000, 2000, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(9) < torch.tensor(lengths).unsqueeze(1)).long()
    return {"input_ids": input_ids * mask, "attention_mask": mask, "labels": labels}


def test_probe_mi_pairs_each_token_with_its_own_examples_label(model):
    probe = padded_probe(torch.tensor([0, 1, 1, 1]))  # 9 tokens of label 0, 15 of label 1: H < 1 bit
    stats = ProbeDiagnostics(probe)(model)
    # The same MI from each example run alone (no padding at all), its tokens paired with its label.
    experts, labels = [[] for _ in model.moe_layers], []
    model.eval()
    with torch.no_grad():
        for row, length in enumerate(probe["attention_mask"].sum(1).tolist()):
            _, routing = model(input_ids=probe["input_ids"][row : row + 1, :length])
            for layer, r in enumerate(routing):
                experts[layer].append(r.expert_index[:, 0])
            labels.append(torch.full((length,), probe["labels"][row].item()))
    for index, layer_experts in zip(model.moe_layer_indices, experts):
        alone = expert_label_mi(torch.cat(layer_experts), torch.cat(labels))
        assert stats[f"layer{index}/expert_label_mi"] == pytest.approx(alone["expert_label_mi"], abs=1e-9)
        assert stats[f"layer{index}/expert_label_mi_norm"] == pytest.approx(alone["expert_label_mi_norm"], abs=1e-9)
    per_layer = [stats[f"layer{i}/expert_label_mi"] for i in model.moe_layer_indices]
    assert stats["expert_label_mi"] == pytest.approx(sum(per_layer) / len(per_layer))


def test_labels_never_reach_the_model(model):
    probe = ProbeDiagnostics(padded_probe(torch.tensor([0, 1, 1, 0])))
    assert set(probe.inputs) <= set(PROBE_INPUTS)
    probe(model)  # a bare encoder (AutoModel) would raise on a `labels` argument


def test_top1_changed_is_absent_first_then_zero_for_the_same_model_and_positive_after_perturbing(model):
    probe = ProbeDiagnostics(padded_probe(torch.tensor([0, 1, 1, 0])))
    first = probe(model)
    assert not any(k.endswith("top1_changed") for k in first)
    same = probe(model)
    assert same["top1_changed"] == 0.0 and all(same[f"layer{i}/top1_changed"] == 0.0 for i in model.moe_layer_indices)
    torch.nn.init.normal_(model.moe_layers[0].router.weight, std=1.0, generator=torch.Generator().manual_seed(1))
    changed = probe(model)
    # The upcycled experts are still identical, so layer 0's mix of them (and layer 1's input) is unchanged.
    first_layer, second_layer = model.moe_layer_indices
    assert 0 < changed[f"layer{first_layer}/top1_changed"] <= 1 and changed[f"layer{second_layer}/top1_changed"] == 0.0
    assert changed["top1_changed"] == pytest.approx(changed[f"layer{first_layer}/top1_changed"] / 2)


@pytest.mark.parametrize("labels", [None, torch.tensor([0.1, 2.5, 4.0, 3.3])], ids=["no labels", "regression"])
def test_mi_is_absent_where_undefined(model, labels):
    probe = padded_probe(labels) if labels is not None else {k: v for k, v in padded_probe(None).items() if k != "labels"}
    stats = ProbeDiagnostics(probe)(model)
    assert not any("expert_label_mi" in k for k in stats)
    assert "expert_cka" in stats and "layer0/routing_entropy" in stats


def test_similarities_are_clamped_to_their_range(monkeypatch):
    layer = SimpleNamespace(run_every_expert=lambda x: torch.stack([x, x]))
    routing = Routing(layer, torch.randn(5, 3), torch.zeros(5, 2), torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1))
    monkeypatch.setattr(diagnostics, "linear_cka", lambda x, y: torch.tensor(1.0000004))
    monkeypatch.setattr(diagnostics, "mean_cosine", lambda x, y: torch.tensor(-1.0000004))
    assert expert_similarity(routing) == {"expert_cka": 1.0, "expert_cosine": -1.0}
    monkeypatch.setattr(diagnostics, "linear_cka", lambda x, y: torch.tensor(-1e-7))
    assert expert_similarity(routing)["expert_cka"] == 0.0


def test_identical_experts_never_exceed_one(model):
    stats = ProbeDiagnostics(padded_probe(torch.tensor([0, 1, 1, 0])))(model)
    for name in ("expert_cka", "expert_cosine"):
        assert 1 - 1e-5 <= stats[name] <= 1.0


@pytest.mark.parametrize("auto_class", ["AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                                        "AutoModelForQuestionAnswering"])
def test_the_step0_change_is_zero_where_the_gate_keeps_the_dense_function_and_not_where_it_does_not(tiny_model_dir, auto_class):
    """Renormalised top-2 over copied experts computes the dense model; raw top-2 probabilities
    (summing to under 1) and one expert_choice step-0 model do not. Padding is not compared: the
    MoE gives padding no expert, the dense FFN computes it anyway."""
    from moebench.registry import METHODS

    probe = {"input_ids": torch.randint(1000, 2000, (4, 10), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    probe["attention_mask"][1, 6:] = 0

    def change(moe: MoEConfig, method: str = "vanilla") -> dict[str, float]:
        torch.manual_seed(0)
        dense = load_pretrained(tiny_model_dir, auto_class, num_labels=2)
        before = diagnostics.probe_outputs(dense, probe)
        model = MoEModel(dense, moe)
        attached = METHODS.get(method)(METHODS.get(method).Params())
        attached.attach(model)
        return diagnostics.function_change(before, diagnostics.probe_outputs(model, probe))

    kept = change(MoEConfig(4, 2))
    assert kept["step0_logit_change"] < 1e-6 and kept["step0_hidden_change"] < 1e-6
    # the tiny model's FFNs add little to its residual stream: about half of them gone moves it by ~0.5%
    for moved in (change(MoEConfig(4, 2, renormalize=False)), change(MoEConfig(4, 2), "expert_choice")):
        assert moved["step0_hidden_change"] > 2e-3 and moved["step0_logit_change"] > 2e-3
