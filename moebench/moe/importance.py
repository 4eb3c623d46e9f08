"""MoEBERT's importance score of each FFN neuron, for upcycle="split", split_by="importance".

From the official code (github.com/SimiaoZuo/MoEBERT, src/transformers/models/bert/
modeling_bert.py, BertForSequenceClassification.forward under config.preprocess_importance):
per example (CrossEntropyLoss(reduction="none")), per layer, the gradient of that example's
loss w.r.t. fc1's weight W1 and fc2's weight W2 gives

    score_j += | sum_i W1[j, i] dL/dW1[j, i]  +  sum_o W2[o, j] dL/dW2[o, j] |

(a first-order Taylor estimate of the loss change from removing neuron j), summed over the
examples of the evaluation set (run_glue.py allows it only without training; the Trainer's
prediction loop runs the model in eval mode) and over GPUs (merge_importance.py). Biases are
not part of the score.

moebench computes the same score without a backward pass per example. Writing z = fc1(x)
(pre-activation), b1 fc1's bias and a = act(z) (fc2's input), the two sums are sums over the
example's tokens t of dL/dz[t, j] * (z[t, j] - b1[j]) and a[t, j] * dL/da[t, j]. Examples do
not interact in an encoder in eval mode, so one gradient of the summed per-example losses
gives every example's own dL/dz and dL/da: the HF loss (a batch mean for sequence
classification) is multiplied by the batch size to be that sum. Padding tokens get zero
gradients (attention masks them out), so they add nothing.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from moebench.moe.upcycle import encoder_layers


def _dense_ffns(hf_model: nn.Module, layer_indices: list[int]) -> list[tuple[nn.Linear, nn.Linear]]:
    blocks = encoder_layers(hf_model)
    ffns = []
    for i in layer_indices:
        fc1, fc2 = getattr(blocks[i].intermediate, "dense", None), blocks[i].output.dense
        if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
            raise ValueError(f"layer {i} has no dense FFN: compute importance on the dense model, before upcycling")
        ffns.append((fc1, fc2))
    return ffns


def _batch_scores(hf_model: nn.Module, batch: dict[str, torch.Tensor],
                  ffns: list[tuple[nn.Linear, nn.Linear]]) -> list[torch.Tensor]:
    """Each layer's (d_ff,) sum over the batch's examples of |per-example score|."""
    pre_activations, activations = [], []
    hooks = []
    for fc1, fc2 in ffns:
        hooks.append(fc1.register_forward_hook(lambda module, args, out: pre_activations.append(out)))
        hooks.append(fc2.register_forward_pre_hook(lambda module, args: activations.append(args[0])))
    try:
        with torch.enable_grad():
            output = hf_model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    num_examples = batch["labels"].shape[0]
    # autograd.grad, not backward(): the parameters' .grad stay exactly as they were.
    grads = torch.autograd.grad(output.loss * num_examples, pre_activations + activations)
    grad_z, grad_a = grads[:len(ffns)], grads[len(ffns):]
    scores = []
    for (fc1, _), z, dz, a, da in zip(ffns, pre_activations, grad_z, activations, grad_a):
        w1_term = dz * (z - fc1.bias) if fc1.bias is not None else dz * z  # = W1 . dL/dW1, per token
        w2_term = a * da  # = W2 . dL/dW2, per token
        per_token = (w1_term + w2_term).detach().float()
        per_example = per_token.reshape(num_examples, -1, per_token.shape[-1]).sum(dim=1)  # (B, d_ff)
        scores.append(per_example.abs().sum(dim=0).cpu())
    return scores


def neuron_importance(hf_model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                      layer_indices: list[int]) -> list[torch.Tensor]:
    """MoEBERT's importance of every FFN neuron of the given layers of a dense HF model, summed
    over `batches` (dicts of tensors with labels; the model must return .loss). Returns one
    (d_ff,) float32 CPU tensor per layer, in the order of layer_indices. The model's parameters,
    their .grad and its train/eval mode are left as they were."""
    ffns = _dense_ffns(hf_model, layer_indices)
    device = next(hf_model.parameters()).device
    totals = [torch.zeros(fc1.out_features) for fc1, _ in ffns]
    was_training = hf_model.training
    hf_model.eval()  # as MoEBERT's prediction loop: no dropout, examples independent
    try:
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for total, scores in zip(totals, _batch_scores(hf_model, batch, ffns)):
                total += scores
    finally:
        hf_model.train(was_training)
    return totals
