"""What every trial measures about its experts, whatever the method.

- Expert similarity: every expert of a layer is run on the same probe tokens; pairwise linear
  CKA and cosine similarity of their outputs, per layer and averaged over layers and pairs.
  Freshly upcycled experts are identical, so both start at 1.
- Routing health on the same tokens: load fraction per expert (share of token->expert
  assignments), its coefficient of variation, the load distribution's entropy divided by
  log E (1 = perfectly even, 0 = one expert takes everything), dead experts (load 0), and
  router confidence (mean top-1 probability).
"""
from __future__ import annotations

import itertools
import math

import torch

from moebench.moe.layer import Routing
from moebench.moe.similarity import linear_cka, mean_cosine


def expert_similarity(routing: Routing) -> dict[str, float]:
    outputs = routing.layer.run_every_expert(routing.inputs).float()  # (E, N, d)
    pairs = list(itertools.combinations(range(len(outputs)), 2))
    if not pairs or outputs.shape[1] < 2:
        return {"expert_cka": math.nan, "expert_cosine": math.nan}
    cka = [linear_cka(outputs[i], outputs[j]).item() for i, j in pairs]
    cosine = [mean_cosine(outputs[i], outputs[j]).item() for i, j in pairs]
    return {"expert_cka": sum(cka) / len(cka), "expert_cosine": sum(cosine) / len(cosine)}


def routing_health(routing: Routing) -> dict[str, float]:
    num_experts = routing.num_experts
    counts = torch.bincount(routing.expert_index.reshape(-1), minlength=num_experts).float()
    load = counts / counts.sum()
    nonzero = load[load > 0]
    entropy = -(nonzero * nonzero.log()).sum().item()
    return {
        "routing_cv": (load.std(unbiased=False) / load.mean()).item(),
        "routing_entropy": entropy / math.log(num_experts) if num_experts > 1 else 1.0,
        "dead_experts": float((counts == 0).sum().item()),
        "router_confidence": routing.router_probs.max(dim=-1).values.mean().item(),
        **{f"load_{e}": load[e].item() for e in range(num_experts)},
    }


@torch.no_grad()
def diagnose(model, probe_batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer and mean diagnostics of an MoEModel on one fixed batch (eval mode)."""
    was_training = model.training
    model.eval()
    _, routing = model(**{k: v for k, v in probe_batch.items() if k != "labels"})
    model.train(was_training)
    per_layer = [expert_similarity(r) | routing_health(r) for r in routing]
    out: dict[str, float] = {}
    for index, stats in zip(model.moe_layer_indices, per_layer):
        for name in ("expert_cka", "expert_cosine", "routing_entropy", "routing_cv"):
            out[f"layer{index}/{name}"] = stats[name]
    for name in ("expert_cka", "expert_cosine", "routing_cv", "routing_entropy", "router_confidence"):
        out[name] = sum(s[name] for s in per_layer) / len(per_layer)
    out["dead_experts"] = sum(s["dead_experts"] for s in per_layer)  # over all layers
    return out
