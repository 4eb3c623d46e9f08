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


@pytest.mark.parametrize("top_k", [2, 4])
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


def router_task_gradient(tiny_model_dir, inputs, config: MoEConfig, renormalize=None) -> float:
    """Norm of the first router's gradient from the task loss alone, at step 0."""
    torch.manual_seed(1)
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=3), config).eval()
    if renormalize is not None:
        for layer in moe.moe_layers:
            layer.renormalize = renormalize  # bypass MoEConfig's refusal, to show why it refuses
    output, _ = moe(**inputs, labels=torch.tensor([0, 1, 2]))
    output.loss.backward()
    return moe.moe_layers[0].router.weight.grad.norm().item()


def test_top1_gets_a_gate_the_router_can_learn_from(tiny_model_dir, inputs):
    assert MoEConfig(4, 1).renormalize is False and MoEConfig(4, 2).renormalize is True
    with pytest.raises(UsageError, match="constant 1"):
        MoEConfig(4, 1, renormalize=True)
    # renormalised top-1: the gate is 1 whatever the router says, so the task cannot move it
    assert router_task_gradient(tiny_model_dir, inputs, MoEConfig(4, 1), renormalize=True) < 1e-9  # p / p: float noise
    assert router_task_gradient(tiny_model_dir, inputs, MoEConfig(4, 1)) > 1e-6  # the tiny model's gradients are small


def test_under_top2_the_router_learns_once_experts_differ(tiny_model_dir, inputs):
    # identical experts: any mix of them is the same output, so the router's gradient is float noise
    assert router_task_gradient(tiny_model_dir, inputs, MoEConfig(4, 2)) < 1e-9
    assert router_task_gradient(tiny_model_dir, inputs, MoEConfig(4, 2, upcycle="drop")) > 1e-6


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


# ---- dispatch: "sorted" (one host sync) and "grouped_mm" against a per-token reference ----

import copy  # noqa: E402

import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from moebench.moe import layer as layer_module  # noqa: E402
from moebench.moe.layer import Expert, MoEFeedForward, set_dispatch_mode  # noqa: E402


def make_layer(num_experts=4, top_k=2, d=16, d_ff=32, seed=0):
    torch.manual_seed(seed)
    experts = [Expert(torch.nn.Linear(d, d_ff), torch.nn.Linear(d_ff, d), F.gelu) for _ in range(num_experts)]
    router = torch.nn.Linear(d, num_experts, bias=False)
    torch.nn.init.normal_(router.weight, std=1.0)  # decisive, varied routing
    return MoEFeedForward(experts, router, top_k)


def padded_input(d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, d, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    return x, mask


def reference_forward(layer, hidden, mask):
    """Token by token: sum over its top-k experts of weight * expert(x); padding rows zero."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    keep = mask.reshape(-1).tolist()
    rows = []
    for t in range(flat.shape[0]):
        if not keep[t]:
            rows.append(torch.zeros_like(flat[t]))
            continue
        probs = torch.softmax(layer.router(flat[t]).float(), dim=-1)
        weight, index = probs.topk(layer.top_k)
        weight = weight / weight.sum()
        rows.append(sum(w * layer.experts[e](flat[t]) for e, w in zip(index.tolist(), weight)))
    return torch.stack(rows).reshape(hidden.shape)


def run(layer, hidden, mask, mode):
    layer.dispatch_mode = mode
    layer.token_mask = mask
    hidden = hidden.clone().requires_grad_(True)
    out = layer(hidden) if mode != "reference" else reference_forward(layer, hidden, mask)
    layer.token_mask = None
    probe = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * probe).sum().backward()
    grads = {"input": hidden.grad.clone(), **{n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}}
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads, layer.last_routing


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("mode", ["sorted", "loop", "grouped_mm"])  # grouped_mm falls back to sorted on CPU/fp32
def test_dispatch_is_exact_against_the_per_token_reference(top_k, padded, mode):
    layer = make_layer(top_k=top_k)
    x, mask = padded_input()
    mask = mask if padded else None
    expected, expected_grads, _ = run(layer, x, mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool), "reference")
    got, grads, routing = run(layer, x, mask, mode)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-6, atol=1e-6, msg=name)
    if padded:
        assert (got.reshape(-1, 16)[~mask.reshape(-1)] == 0).all()
    real = int(mask.sum()) if padded else x.shape[0] * x.shape[1]
    assert routing.inputs.shape == (real, 16) and routing.expert_index.shape == (real, top_k)
    assert routing.router_logits.shape == (real, 4) and routing.expert_weight.shape == (real, top_k)


def test_sorted_and_loop_hand_methods_the_same_routing():
    layer = make_layer(top_k=2)
    x, mask = padded_input()
    _, _, loop = run(layer, x, mask, "loop")
    _, _, fast = run(layer, x, mask, "sorted")
    for field in ("inputs", "router_logits", "expert_index", "expert_weight"):
        torch.testing.assert_close(getattr(fast, field), getattr(loop, field), rtol=1e-6, atol=1e-6, msg=field)


def test_sorted_dispatch_runs_each_expert_once_on_its_tokens():
    """OMoE's fc1 pre-hooks must see exactly the tokens routed to that expert, as with "loop"."""
    layer = make_layer(top_k=2)
    x, mask = padded_input()
    seen = {}
    for e, expert in enumerate(layer.experts):
        expert.fc1.register_forward_pre_hook(lambda m, args, e=e: seen.setdefault(e, []).append(args[0].shape[0]))
    for mode in ("loop", "sorted", "grouped_mm"):
        seen.clear()
        run(layer, x, mask, mode)
        counts = torch.bincount(layer.last_routing.expert_index.reshape(-1), minlength=4).tolist()
        assert {e: c for e, c in seen.items()} == {e: [c] for e, c in enumerate(counts) if c > 0}, mode


class SyncOps(TorchDispatchMode):
    """Counts the ops that force a device->host synchronisation on CUDA (seen on CPU too)."""

    SYNCING = ("nonzero", "_local_scalar_dense", "masked_select", "item", "equal", "is_nonzero")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_sorted_dispatch_has_no_per_expert_sync():
    layer = make_layer(num_experts=4, top_k=2)
    x, mask = padded_input()
    layer.token_mask = mask
    counts = {}
    for mode in ("loop", "sorted"):
        layer.dispatch_mode = mode
        with SyncOps() as ops:
            layer(x)
        counts[mode] = ops.count
    assert counts["loop"] == 4 + 1  # a nonzero per expert and one for the padding mask
    assert counts["sorted"] == 0  # only the counts' .tolist(), which no aten op shows


def test_dispatch_mode_is_per_instance_and_validated():
    a, b = make_layer(), make_layer()
    assert a.dispatch_mode == MoEFeedForward.dispatch_mode
    a.dispatch_mode = "loop"
    assert b.dispatch_mode == MoEFeedForward.dispatch_mode
    set_dispatch_mode(torch.nn.Sequential(a, b), "sorted")
    assert a.dispatch_mode == b.dispatch_mode == "sorted"
    with pytest.raises(ValueError):
        set_dispatch_mode(a, "fast")
    a.dispatch_mode = "fast"
    with pytest.raises(ValueError, match="dispatch_mode"):
        a(torch.randn(2, 3, 16))


def test_upcycled_model_equals_dense_at_init_with_every_dispatch(tiny_model_dir, inputs):
    dense = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=3).eval()
    moe = MoEModel(load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=3), MoEConfig(4, 2)).eval()
    moe.hf_model.classifier.load_state_dict(dense.classifier.state_dict())
    with torch.no_grad():
        expected = dense(**inputs).logits
        for mode in ("loop", "sorted", "grouped_mm"):
            set_dispatch_mode(moe, mode)
            got, _ = moe(**inputs)
            torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5, msg=mode)


def grouped_mm_runs_on_cpu() -> bool:
    if layer_module._GROUPED_MM is None:
        return False
    try:
        a = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
        b = torch.randn(2, 8, 8, dtype=torch.bfloat16, requires_grad=True)
        layer_module._GROUPED_MM(a, b, offs=torch.tensor([1, 4], dtype=torch.int32)).float().square().sum().backward()
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.skipif(not grouped_mm_runs_on_cpu(), reason="this torch has no CPU grouped_mm to check the grouped path with")
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("padded", [True, False])  # without padding the grouped path reads nothing back
def test_grouped_mm_path_matches_sorted_in_bf16(monkeypatch, top_k, padded):
    """The grouped path is CUDA-only in use; torch's CPU grouped_mm lets CI check its code."""
    monkeypatch.setattr(layer_module, "GROUPED_MM_DEVICES", {"cuda", "cpu"})
    layer = make_layer(top_k=top_k).to(torch.bfloat16)
    twin = copy.deepcopy(layer)
    x, mask = padded_input()
    x, mask = x.to(torch.bfloat16), mask if padded else None
    assert layer._grouped_supported(x)
    got, grads, _ = run(layer, x, mask, "grouped_mm")
    expected, expected_grads, _ = run(twin, x, mask, "sorted")
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    for name in expected_grads:
        torch.testing.assert_close(grads[name].float(), expected_grads[name].float(), rtol=5e-2, atol=5e-2, msg=name)
    # Experts with hooks (OMoE) or fp32 compute fall back to the module-by-module path.
    layer.experts[0].fc1.register_forward_pre_hook(lambda m, args: None)
    assert not layer._grouped_supported(x)
    assert not make_layer()._grouped_supported(torch.randn(2, 16))


@pytest.mark.skipif(not grouped_mm_runs_on_cpu(), reason="this torch has no CPU grouped_mm to check the grouped path with")
def test_grouped_mm_gives_idle_experts_zero_gradients_where_sorted_gives_none(monkeypatch):
    """Why "grouped_mm" is opt-in: AdamW skips a parameter without a gradient but still moves
    one with a zero gradient (momentum, weight decay)."""
    monkeypatch.setattr(layer_module, "GROUPED_MM_DEVICES", {"cuda", "cpu"})
    layer = make_layer(top_k=1).to(torch.bfloat16)
    x = torch.randn(1, 1, 16, dtype=torch.bfloat16)  # one token: one expert busy, three idle
    grads = {}
    for mode in ("sorted", "grouped_mm"):
        layer.dispatch_mode = mode
        layer.zero_grad(set_to_none=True)
        layer(x).float().sum().backward()
        busy = int(layer.last_routing.expert_index)
        grads[mode] = [None if e.fc1.weight.grad is None else float(e.fc1.weight.grad.abs().sum())
                       for i, e in enumerate(layer.experts) if i != busy]
    assert grads["sorted"] == [None, None, None]
    assert grads["grouped_mm"] == [0.0, 0.0, 0.0]
