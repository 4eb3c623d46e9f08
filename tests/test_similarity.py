"""CKA and the diagnostics every trial reports, checked on constructed cases."""
import math

import numpy as np
import pytest
import torch

from moebench.moe.diagnostics import diagnose, expert_similarity, routing_health
from moebench.moe.layer import Routing
from moebench.moe.similarity import cka_from_grams, kernel_cka, linear_cka, median_distance, rbf_gram
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained


def numpy_hsic_cka(k: np.ndarray, l: np.ndarray) -> float:
    """The HSIC formula written out: H K H, H L H with an explicit H."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda a, b: np.sum((h @ a @ h) * (h @ b @ h))
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one(xy):
    x, _ = xy
    assert linear_cka(x, x).item() == pytest.approx(1.0)
    assert kernel_cka(x, x, sigma=0.8).item() == pytest.approx(1.0)


def test_linear_cka_is_invariant_to_rotation_and_isotropic_scaling(xy):
    x, y = xy
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert linear_cka(3.5 * x @ q, y).item() == pytest.approx(linear_cka(x, y).item(), rel=1e-9)
    # ...but not to an anisotropic scaling
    assert linear_cka(x * torch.arange(1, 7, dtype=torch.float64), y).item() != pytest.approx(linear_cka(x, y).item(), rel=1e-3)


def test_values_match_a_direct_numpy_hsic(xy):
    x, y = xy
    expected_linear = numpy_hsic_cka((x @ x.T).numpy(), (y @ y.T).numpy())
    assert linear_cka(x, y).item() == pytest.approx(expected_linear, rel=1e-9)
    assert cka_from_grams(x @ x.T, y @ y.T).item() == pytest.approx(expected_linear, rel=1e-9)
    sq = lambda a: ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    expected_rbf = numpy_hsic_cka(np.exp(-sq(x.numpy()) / (2 * 0.8**2)), np.exp(-sq(y.numpy()) / (2 * 0.8**2)))
    assert kernel_cka(x, y, sigma=0.8).item() == pytest.approx(expected_rbf, rel=1e-6)
    assert 0 < linear_cka(x, y).item() < 1


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_every_similarity_diagnostic_is_blind_to_the_outputs_scale(scale):
    """Experts that grow or shrink alike are no more or less alike: the probe's CKA and cosine,
    and RBF CKA with the median bandwidth. A fixed bandwidth is not (SimSMoE's loss keeps it)."""
    import types

    g = torch.Generator().manual_seed(1)
    shared = torch.randn(64, 8, generator=g)
    outputs = torch.stack([shared + 0.5 * torch.randn(64, 8, generator=g) for _ in range(3)])  # (E, N, d): related experts
    as_routing = lambda out: types.SimpleNamespace(inputs=None, layer=types.SimpleNamespace(run_every_expert=lambda _: out))
    plain, scaled = expert_similarity(as_routing(outputs)), expert_similarity(as_routing(scale * outputs))
    assert scaled == pytest.approx(plain, rel=1e-5) and 0.2 < plain["expert_cka"] < 0.95
    x, y = 0.2 * outputs[0].double(), 0.2 * outputs[1].double()  # where sigma 0.8 neither saturates nor flattens
    assert kernel_cka(scale * x, scale * y, sigma=None).item() == pytest.approx(kernel_cka(x, y, sigma=None).item(), rel=1e-9)
    assert kernel_cka(10 * x, 10 * y, sigma=0.8).item() - kernel_cka(x, y, sigma=0.8).item() > 0.25  # 0.70 -> 1.00


def test_the_median_bandwidth_is_the_median_of_distinct_pairs():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)  # distances 1, 3, 2
    assert median_distance(x).item() == 2.0


def test_rbf_gram_is_one_on_the_diagonal(xy):
    assert torch.allclose(torch.diagonal(rbf_gram(xy[0], 0.8)), torch.ones(40, dtype=torch.float64))


def test_identical_experts_have_similarity_one(tiny_model_dir):
    model = MoEModel(load_pretrained(tiny_model_dir, "AutoModel"), MoEConfig(4, 2))
    probe = {"input_ids": torch.randint(1000, 2000, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    stats = diagnose(model, probe)
    assert stats["expert_cka"] == pytest.approx(1.0, abs=1e-5)
    assert stats["expert_cosine"] == pytest.approx(1.0, abs=1e-5)
    torch.nn.init.normal_(model.moe_layers[0].experts[1].fc1.weight)
    changed = diagnose(model, probe)
    assert changed["layer0/expert_cka"] < 0.99 and changed["layer1/expert_cka"] == pytest.approx(1.0, abs=1e-5)


def routing_from_choices(choices: list[int], num_experts: int = 4) -> Routing:
    index = torch.tensor(choices).unsqueeze(1)
    logits = torch.nn.functional.one_hot(index.squeeze(1), num_experts).float() * 10
    return Routing(None, torch.zeros(len(choices), 2), logits, index, torch.ones_like(index, dtype=torch.float))


def test_one_expert_taking_every_token_has_zero_entropy_and_dead_experts():
    health = routing_health(routing_from_choices([2] * 12))
    assert health["routing_entropy"] == 0.0
    assert health["dead_experts"] == 3
    assert health["routing_cv"] == pytest.approx(math.sqrt(3))  # load (0,0,1,0): std sqrt(3)/4, mean 1/4
    assert health["router_confidence"] > 0.99


def test_even_routing_has_entropy_one_and_no_dead_experts():
    health = routing_health(routing_from_choices([0, 1, 2, 3] * 3))
    assert health["routing_entropy"] == pytest.approx(1.0)
    assert health["dead_experts"] == 0 and health["routing_cv"] == pytest.approx(0.0)
    assert health["load_0"] == pytest.approx(0.25)
