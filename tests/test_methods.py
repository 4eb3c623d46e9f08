import pytest
import torch

from moebench.errors import UsageError
from moebench.params import parse_params
from moebench.methods.load_balancing import LoadBalancing
from moebench.moe.balance import router_z_loss, switch_aux_loss
from moebench.methods.vanilla import Vanilla
from moebench.moe.layer import Routing


def routing(logits: torch.Tensor, top_k: int = 1) -> Routing:
    index = logits.softmax(-1).topk(top_k, dim=-1).indices
    return Routing(None, torch.zeros(len(logits), 3), logits, index, torch.ones_like(index, dtype=torch.float))


def balanced_logits(num_tokens: int, num_experts: int, margin: float = 0.0) -> torch.Tensor:
    logits = torch.zeros(num_tokens, num_experts)
    logits[torch.arange(num_tokens), torch.arange(num_tokens) % num_experts] = margin
    return logits


def test_switch_loss_equals_coefficient_at_uniform_routing():
    method = LoadBalancing(LoadBalancing.Params(aux_coef=0.01))
    uniform = routing(balanced_logits(8, 4, margin=2.0))  # f_i = P_i = 1/4
    assert switch_aux_loss(uniform).item() == pytest.approx(1.0)
    assert method.loss([uniform, uniform])["aux_loss"].item() == pytest.approx(0.01)


def test_switch_loss_grows_with_imbalance():
    values = []
    for share in [0.25, 0.5, 0.75, 1.0]:  # fraction of tokens sent to expert 0
        tokens_to_zero = int(share * 16)
        logits = balanced_logits(16, 4, margin=2.0)
        logits[:tokens_to_zero] = torch.tensor([4.0, 0.0, 0.0, 0.0])
        values.append(switch_aux_loss(routing(logits)).item())
    assert values == sorted(values) and values[-1] > values[0] + 1.0


def test_switch_loss_counts_all_k_assignments():
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0]] * 4)  # every token: experts 0 and 1
    r = routing(logits, top_k=2)
    probs = logits.softmax(-1)[0]
    expected = 4 * (0.5 * probs[0] + 0.5 * probs[1])
    assert switch_aux_loss(r).item() == pytest.approx(expected.item())


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    expected = (torch.logsumexp(logits, -1) ** 2).mean()
    assert router_z_loss(routing(logits)).item() == pytest.approx(expected.item())
    losses = LoadBalancing(LoadBalancing.Params(aux_coef=0.0, z_loss_coef=0.001)).loss([routing(logits)])
    assert losses["z_loss"].item() == pytest.approx(0.001 * expected.item())


def test_aux_loss_has_a_gradient_towards_balance():
    logits = balanced_logits(16, 4, 2.0)
    logits[:12] = torch.tensor([4.0, 0.0, 0.0, 0.0])
    logits.requires_grad_(True)
    switch_aux_loss(routing(logits)).backward()
    assert logits.grad[:, 0].sum() > 0  # gradient descent lowers the overloaded expert's logit


def test_vanilla_adds_nothing():
    assert Vanilla().loss([routing(torch.randn(4, 4))]) == {}


def test_params_parse_and_validate():
    assert parse_params(LoadBalancing, {"aux_coef": "0.001"}).aux_coef == 0.001
    with pytest.raises(UsageError, match="valid: aux_coef, z_loss_coef"):
        parse_params(LoadBalancing, {"alpha": "1"})
    with pytest.raises(UsageError, match="expects a finite float"):
        parse_params(LoadBalancing, {"aux_coef": "lots"})
    with pytest.raises(UsageError, match="expects a finite float, got 'inf'"):
        parse_params(LoadBalancing, {"aux_coef": "inf"})
    with pytest.raises(UsageError, match=">= 0"):
        parse_params(LoadBalancing, {"aux_coef": "-1"})


def test_switch_loss_counts_only_the_slots_a_gate_used():
    """A gate (moebench.moe.routing) may leave slots unused; their expert index is filler."""
    logits = torch.tensor([[3.0, 2.0, 0.0, 0.0], [0.0, 3.0, 2.0, 0.0], [0.0, 0.0, 3.0, 2.0]])
    index = torch.tensor([[0, 1], [1, 0], [2, 0]])  # slot 2 of tokens 1 and 2 unused, filled with expert 0
    used = torch.tensor([[True, True], [True, False], [True, False]])
    masked = Routing(None, torch.zeros(3, 3), logits, index, torch.ones(3, 2), used)
    fraction = torch.tensor([1, 2, 1, 0]) / 4  # the 4 used assignments: experts 0, 1, 1, 2
    expected = 4 * (fraction * logits.softmax(-1).mean(0)).sum()
    assert switch_aux_loss(masked).item() == pytest.approx(expected.item())
    nothing_used = Routing(None, torch.zeros(3, 3), logits, index, torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.bool))
    assert switch_aux_loss(nothing_used).item() == 0.0  # no assignment, no load: not NaN
