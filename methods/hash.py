"""hash: a fixed token-id -> expert map instead of a learned router.

Hash layers (Roller, Sukhbaatar, Szlam, Weston; "Hash Layers For Large Sparse Models", arXiv
2106.04426), as MoEBERT runs them (Zuo et al., arXiv 2204.07675; official code
SimiaoZuo/MoEBERT):

    expert(x_t) = h(id_t)          out_t = FFN_{h(id_t)}(x_t)        (one expert, weight 1)

- `mode="balanced"` (MoEBERT `hash-balance`; hash_balance.py `get_balance_list`): count each
  token id's occurrences in the training data, take the ids from most to least frequent and give
  each to the expert whose running total of counts is smallest (argmin, first on ties); ids that
  never occur get a uniformly random expert. One map for every layer (MoEBERT loads one list).
- `mode="random"` (MoEBERT `hash-random`; moe_layer.py `_random_hash_list`): every id a uniform
  random expert, drawn independently for each layer.
- MoEBERT's `_forward_hash` multiplies the expert's output by nothing: the gate weight is 1.

No router parameters and no auxiliary loss: the layer's learned router is frozen and unused,
so it gets no gradient. Hash routing is top-1 whatever `--top-k` says.

moebench's choices: the balanced map counts the trial's own training split (its subset, after
moebench's truncation to --max-seq-length; padding excluded, [CLS]/[SEP] counted as MoEBERT's
unpadded tokenisation does), where MoEBERT counts the whole GLUE training set; random draws use
torch's global RNG, which the trial seeds; ids of equal count are dealt in id order (MoEBERT's
reversed np.argsort leaves their order to the sort). `Routing.router_logits` is all zeros (no
router: router_confidence reads 1/E).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moebench.method import Method
from moebench.moe.routing import Gate, Gating, freeze_router

MODES = ("balanced", "random")


def balanced_hash(counts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(V,) expert of each token id: most frequent first, each to the least-loaded expert so far;
    ids never seen get a random expert."""
    order = torch.argsort(counts, descending=True, stable=True).tolist()
    frequency = counts.tolist()
    table = torch.randint(num_experts, (len(frequency),))  # kept only for ids never seen
    load = [0] * num_experts
    for token in order:
        if frequency[token] == 0:
            break  # sorted: every id from here on is unseen
        expert = min(range(num_experts), key=load.__getitem__)
        load[expert] += frequency[token]
        table[token] = expert
    return table


class HashGate(Gate):
    def __init__(self, table: torch.Tensor | None, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        # A buffer: it moves with the model and is saved with it, but is never trained.
        self.register_buffer("table", table if table is not None else torch.empty(0, dtype=torch.long))

    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        if token_ids is None:
            raise ValueError("hash routing needs the input ids: call the model with input_ids")
        if not self.table.numel():
            raise RuntimeError("hash: the balanced map is built in Method.start(), from the training data")
        index = self.table[token_ids].unsqueeze(1)  # (T, 1)
        logits = x.new_zeros(x.shape[0], self.num_experts, dtype=torch.float32)
        return Gating(logits, index, torch.ones(index.shape, device=x.device))


class Hash(Method):
    name = "hash"
    description = "hash routing: fixed token-id -> expert map (balanced on training token counts, or random), no router"

    @dataclass(frozen=True)
    class Params:
        mode: str = "balanced"  # MoEBERT's hash-balance; "random": hash-random

        def __post_init__(self):
            if self.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    search_space = {"mode": ["balanced", "random"]}

    def attach(self, model: nn.Module) -> None:
        self.layers = list(model.moe_layers)
        self.vocab_size = model.hf_model.config.vocab_size
        for layer in self.layers:
            freeze_router(layer)
            table = torch.randint(layer.num_experts, (self.vocab_size,)) if self.params.mode == "random" else None
            layer.gate = HashGate(table, layer.num_experts).to(layer.router.weight.device)

    def start(self, total_steps, train_batches) -> None:
        if self.params.mode != "balanced" or not self.layers:
            return
        counts = torch.zeros(self.vocab_size, dtype=torch.long)
        for batch in train_batches():
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            real = ids[mask.bool()] if mask is not None else ids.reshape(-1)  # padding is no token
            counts += torch.bincount(real.cpu(), minlength=self.vocab_size)
        table = balanced_hash(counts, self.layers[0].num_experts)
        for layer in self.layers:
            layer.gate.table = table.to(layer.router.weight.device)
