"""What every trial measures about its experts, whatever the method.

- Expert similarity: every expert of a layer is run on the same probe tokens; pairwise linear
  CKA and cosine similarity of their outputs, per layer and averaged over layers and pairs.
  Freshly upcycled experts are identical, so both start at 1. Clamped to [0, 1] and [-1, 1]:
  float32 rounding otherwise logs identical experts as 1.0000004.
- Routing health on the same tokens: load fraction per expert (share of token->expert
  assignments), its coefficient of variation, the load distribution's entropy divided by
  log E (1 = perfectly even, 0 = one expert takes everything), dead experts (load 0), and
  router confidence (mean top-1 probability), and experts per token (the mean number of
  experts a token used: k for top-k routing, anything from 0 to E with a method's gate).
- Expert/label mutual information: do experts specialise by label? See `expert_label_mi`.
- Routing stability: the fraction of probe tokens whose top-1 expert changed since the
  previous diagnosis (`top1_changed`), absent at the first one.
- Where a method starts: how far the upcycled model, before its first step, computes from the
  dense model it was made of (`function_change`: relative change of the head's outputs and of
  the last hidden states on the probe's real tokens). Renormalised top-k over copied experts
  starts at 0 (float rounding); a gate whose weights do not sum to 1 does not.

A trial owns one `ProbeDiagnostics` for its fixed probe batch and calls it after each epoch;
`diagnose` is the one-shot form.
"""
from __future__ import annotations

import contextlib
import itertools
import math

import torch

from moebench.moe.layer import Routing
from moebench.moe.similarity import linear_cka, mean_cosine

PROBE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # all the probe forward gets: never labels
IGNORED_LABEL = -100  # NER's label on sub-tokens it does not score, and collate's label padding
PER_LAYER = ("expert_cka", "expert_cosine", "routing_entropy", "routing_cv", "experts_per_token")
MEAN_ONLY = ("router_confidence",)
# Logged per layer and as the mean over layers where defined, absent otherwise.
WHERE_DEFINED = ("expert_label_mi", "expert_label_mi_norm", "top1_changed")


def expert_similarity(routing: Routing) -> dict[str, float]:
    outputs = routing.layer.run_every_expert(routing.inputs).float()  # (E, N, d)
    pairs = list(itertools.combinations(range(len(outputs)), 2))
    if not pairs or outputs.shape[1] < 2:
        return {"expert_cka": math.nan, "expert_cosine": math.nan}
    cka = [linear_cka(outputs[i], outputs[j]).clamp(0.0, 1.0).item() for i, j in pairs]
    cosine = [mean_cosine(outputs[i], outputs[j]).clamp(-1.0, 1.0).item() for i, j in pairs]
    return {"expert_cka": sum(cka) / len(cka), "expert_cosine": sum(cosine) / len(cosine)}


def routing_health(routing: Routing) -> dict[str, float]:
    num_experts = routing.num_experts
    counts = torch.bincount(routing.assigned_experts, minlength=num_experts).float()
    load = counts / counts.sum().clamp_min(1.0)  # a gate may route no token at all
    nonzero = load[load > 0]
    entropy = -(nonzero * nonzero.log()).sum().item()
    return {
        "routing_cv": (load.std(unbiased=False) / load.mean()).item(),
        "routing_entropy": entropy / math.log(num_experts) if num_experts > 1 else 1.0,
        "dead_experts": float((counts == 0).sum().item()),
        "router_confidence": routing.router_probs.max(dim=-1).values.mean().item(),
        "experts_per_token": routing.experts_per_token.float().mean().item(),
        **{f"load_{e}": load[e].item() for e in range(num_experts)},
    }


def token_labels(probe_batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(N,) the label of each probe token in Routing's order (the non-padding tokens of the
    flattened (batch, seq)), IGNORED_LABEL where a token has none; None where no discrete
    token label exists: no labels (QA), float labels (regression, STS-B), (B, choices, T)
    inputs (multiple choice: the label is the index of a choice, not a class of the tokens),
    or labels of any other shape."""
    labels, input_ids = probe_batch.get("labels"), probe_batch["input_ids"]
    if labels is None or labels.is_floating_point() or input_ids.dim() != 2:
        return None
    if labels.dim() == 1:  # sequence classification: every token carries its example's label
        labels = labels.unsqueeze(1).expand_as(input_ids)
    elif labels.shape != input_ids.shape:  # not a tag per token (NER's shape) either
        return None
    mask = probe_batch.get("attention_mask")
    # Boolean indexing walks (batch, seq) row-major, as the MoE layer orders the real tokens.
    return labels.reshape(-1) if mask is None else labels[mask.bool()]


def entropy_bits(values: torch.Tensor) -> float:
    """Plug-in entropy in bits of the empirical distribution of `values`: (n,) samples, or
    (2, n) pairs for a joint entropy."""
    counts = torch.unique(values, dim=-1, return_counts=True)[1].double()
    p = counts / counts.sum()
    return -(p * p.log2()).sum().item()


def expert_label_mi(top1: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mutual information in bits between tokens' top-1 expert and their label, ignoring tokens
    labelled IGNORED_LABEL: I = H(expert) + H(label) - H(expert, label), plug-in estimate.

    `expert_label_mi_norm` = I / H(label) (the uncertainty coefficient) is the share of the
    label's entropy the expert explains: 1 when the expert determines the label (even if a label
    spreads over several experts), 0 when they are independent. Raw bits are bounded by
    log2(#labels), 1 for RTE and ~3.2 for CoNLL's 9 tags, so only the normalised value compares
    across tasks. Absent when H(label) = 0 (one label in the probe).

    Bias: the plug-in estimate is biased upward, by about (E-1)(L-1) / (2 n ln 2) bits for
    independent variables on n samples. For sequence classification the tokens of an example
    share its label and mostly its routing, so the effective n is nearer the number of probe
    examples (32) than the number of tokens: then anything that splits examples (length, topic)
    shows as MI by chance. Compare it across methods, seeds and epochs on the same probe, not
    against zero.
    """
    keep = labels != IGNORED_LABEL
    top1, labels = top1[keep], labels[keep]
    if not len(labels):
        return {}
    label_entropy = entropy_bits(labels)
    mi = max(0.0, entropy_bits(top1) + label_entropy - entropy_bits(torch.stack([top1, labels])))
    if label_entropy == 0.0:
        return {"expert_label_mi": mi}
    return {"expert_label_mi": mi, "expert_label_mi_norm": min(1.0, mi / label_entropy)}


class ProbeDiagnostics:
    """The diagnostics of one trial on its fixed probe batch, taken after every epoch.

    It holds what persists between epochs: the probe's model inputs, its token labels (kept
    apart: the forward never sees labels) and the top-1 experts of the previous call.
    """

    def __init__(self, probe_batch: dict[str, torch.Tensor]):
        self.inputs = {k: v for k, v in probe_batch.items() if k in PROBE_INPUTS}
        self.token_labels = token_labels(probe_batch)
        self.previous_top1: list[torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, model, autocast=contextlib.nullcontext()) -> dict[str, float]:
        """Per-layer and mean diagnostics of an MoEModel on the probe (eval mode). `autocast`: the
        context of the forward, the trial's precision, so the routing is the one training sees;
        the experts are then compared outside it, at the weights' own precision."""
        if not model.moe_layers:
            return {}  # the dense reference: no experts to measure
        was_training = model.training
        model.eval()
        with autocast:
            _, routing = model(**self.inputs)
        model.train(was_training)
        top1 = [r.top1 for r in routing]  # -1 for a token that used no expert
        per_layer = [expert_similarity(r) | routing_health(r) for r in routing]
        if self.token_labels is not None:
            for stats, experts in zip(per_layer, top1):
                if len(experts) != len(self.token_labels):
                    raise ValueError(f"{len(experts)} routed tokens but {len(self.token_labels)} token labels")
                stats.update(expert_label_mi(experts, self.token_labels))
        if self.previous_top1 is not None:
            for stats, now, before in zip(per_layer, top1, self.previous_top1):
                stats["top1_changed"] = (now != before).float().mean().item()
        self.previous_top1 = top1

        out: dict[str, float] = {}
        logged_per_layer = PER_LAYER + tuple(name for name in WHERE_DEFINED if name in per_layer[0])
        for index, stats in zip(model.moe_layer_indices, per_layer):
            for name in logged_per_layer:
                out[f"layer{index}/{name}"] = stats[name]
        for name in logged_per_layer + MEAN_ONLY:
            out[name] = sum(s[name] for s in per_layer) / len(per_layer)
        out["dead_experts"] = sum(s["dead_experts"] for s in per_layer)  # over all layers
        return out


def diagnose(model, probe_batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One-shot diagnostics (no previous call, so no `top1_changed`); labels in `probe_batch`
    give the expert/label MI and never reach the model."""
    return ProbeDiagnostics(probe_batch)(model)


@torch.no_grad()
def probe_outputs(model, inputs: dict[str, torch.Tensor], autocast=contextlib.nullcontext()) -> dict[str, torch.Tensor]:
    """What a model (a Hugging Face model, or an MoEModel) computes on the probe in eval mode: its
    head's outputs and its last hidden states, at the real (non-padding) tokens, in fp32."""
    was_training = model.training
    model.eval()
    with autocast:
        output = model(**inputs, output_hidden_states=True)
    model.train(was_training)
    output = output[0] if isinstance(output, tuple) else output  # an MoEModel: (output, routing)
    mask = inputs.get("attention_mask")
    real = lambda t: t.float() if mask is None else at_real_tokens(t.float(), mask.bool())
    heads = {name: real(getattr(output, name)) for name in ("logits", "start_logits", "end_logits")
             if getattr(output, name, None) is not None}
    return {**heads, "hidden": real(output.hidden_states[-1])}


def at_real_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-token tensor's rows at the mask's real tokens (a multiple-choice model flattens its
    choices into the batch); a per-example one as it is."""
    flat = mask.reshape(-1, mask.shape[-1])
    return values[flat] if values.dim() >= 2 and values.shape[:2] == flat.shape else values


def function_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """|after - before| / |before| (Frobenius) of the head's outputs and of the last hidden states."""
    relative = lambda a, b: (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()
    heads = [name for name in before if name != "hidden"]
    join = lambda outputs: torch.cat([outputs[name].reshape(-1) for name in heads])
    return {"step0_logit_change": relative(join(after), join(before)),
            "step0_hidden_change": relative(after["hidden"], before["hidden"])}
