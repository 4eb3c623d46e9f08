"""The MoE feed-forward layer: a learned top-k router over E expert FFNs.

Dispatch ("sorted", the default): the token->expert assignments are sorted by expert once,
the per-expert counts are read to the host once (the layer's only host synchronisation),
each expert runs on its contiguous slice of the sorted tokens, and the weighted outputs are
scattered back with one index_add_. Padding tokens go into an extra "dropped" bucket of the
same sort, so they are neither routed nor counted and need no synchronisation of their own:
their FFN output is zero, which changes nothing downstream because attention masks them out
as keys. "grouped_mm" runs all experts of the layer as two grouped GEMMs
(torch.nn.functional.grouped_mm, bf16 on CUDA) on the same sorted tokens, with device-side
offsets, so it syncs only to count the real tokens of a padded batch (none without padding);
it falls back to "sorted" wherever it is unsupported (CPU, fp32, experts with hooks such as
OMoE's, non-standard FFNs, experts of unequal size). It is opt-in: an expert that gets no token in a step receives a
zero gradient from the stacked weights instead of none, so AdamW still moves it (momentum,
weight decay), where "loop" and "sorted" leave it untouched.
"loop" is the former expert-by-expert dispatch (one nonzero() per expert and one for the
padding mask), kept as the reference the benchmarks compare against.

Routing is the layer's gate: the softmax top-k router below, or a method's `Gate`
(moebench.moe.routing) set as `layer.gate`. A gate may leave some of a token's k_max slots
unused (a validity mask), so a token can use any number of experts; every dispatch mode skips
unused slots ("sorted" and "grouped_mm" sort them into a second dropped bucket beside padding's,
read back with the same one sync).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moebench.moe.routing import Gate, Gating, top_k_gating

DISPATCH_MODES = ("loop", "sorted", "grouped_mm")

# F.grouped_mm is public from torch 2.10 (torch._grouped_mm before); None where neither exists.
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
# Device types the grouped path is used on. Only CUDA is supported; tests add "cpu" to check
# the grouped code against "sorted" where torch has a CPU fallback.
GROUPED_MM_DEVICES = {"cuda"}


class Expert(nn.Module):
    """One FFN: fc2(act(fc1(x))). Upcycling copies the dense FFN's weights into fc1/fc2."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fc1, self.fc2, self.activation = fc1, fc2, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


@dataclass
class Routing:
    """What one MoE layer hands to methods after each forward (non-padding tokens only)."""

    layer: "MoEFeedForward"
    inputs: torch.Tensor  # (N, d) the tokens' inputs to the experts
    router_logits: torch.Tensor  # (N, E)
    expert_index: torch.Tensor  # (N, k) chosen experts, best first (k_max slots with a gate's mask)
    expert_weight: torch.Tensor  # (N, k) gate weights the outputs were mixed with
    expert_mask: torch.Tensor | None = None  # (N, k) bool, the slots used (a method's gate); None: all

    @property
    def num_experts(self) -> int:
        return self.router_logits.shape[-1]

    @property
    def router_probs(self) -> torch.Tensor:  # (N, E)
        return torch.softmax(self.router_logits.float(), dim=-1)

    @property
    def experts_per_token(self) -> torch.Tensor:  # (N,) how many experts each token used
        if self.expert_mask is None:
            return torch.full(self.expert_index.shape[:1], self.expert_index.shape[1], device=self.expert_index.device)
        return self.expert_mask.sum(dim=1)

    @property
    def assigned_experts(self) -> torch.Tensor:  # (n,) the expert of every used (token, expert) slot
        flat = self.expert_index.reshape(-1)
        return flat if self.expert_mask is None else flat[self.expert_mask.reshape(-1)]

    @property
    def top1(self) -> torch.Tensor:  # (N,) each token's highest-weight expert; -1 for a token that used none
        if self.expert_mask is None:
            return self.expert_index[:, 0]
        best = self.expert_weight.float().masked_fill(~self.expert_mask, -math.inf).argmax(dim=1, keepdim=True)
        top = self.expert_index.gather(1, best).squeeze(1)
        return top.masked_fill(~self.expert_mask.any(dim=1), -1)


@dataclass
class _Plan:
    """Assignments sorted by expert: what one forward's dispatch needs, from one host sync."""

    slots: torch.Tensor  # (n,) flat assignment ids (token * k + j), grouped by expert, padding and unused slots dropped
    tokens: torch.Tensor  # (n,) the token (row of x) of each sorted assignment
    experts: torch.Tensor  # (n,) the expert of each sorted assignment (non-decreasing)
    ends: torch.Tensor  # (E,) on the device: cumulative end of each expert's slice
    counts: list[int] | None  # on the host: assignments per expert (None when not read back)
    real_slots: int | None = None  # on the host: slots of non-padding tokens, used or not (None when not read back)


def _autocast_bf16(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
    except (AttributeError, RuntimeError, TypeError):  # torch without per-device autocast queries
        return False


class MoEFeedForward(nn.Module):
    # Chosen by measurement (benchmarks/README.md): "sorted" beats "loop" on the H200 (3.9x vs
    # 5.0x the dense step) and on CPU. "grouped_mm" is faster still on the H200 (2.0x) but not the
    # default: idle experts get zero gradients there instead of none (see the module docstring).
    # Settable per instance (layer.dispatch_mode = "loop") or for a model (set_dispatch_mode).
    dispatch_mode: str = "sorted"

    def __init__(
        self,
        experts: list[Expert],
        router: nn.Linear,
        top_k: int,
        router_jitter: float = 0.0,
        renormalize: bool = True,
    ):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k must be in [1, {len(experts)}], got {top_k}")
        self.experts = nn.ModuleList(experts)
        self.router = router
        self.top_k = top_k
        self.router_jitter = router_jitter
        self.renormalize = renormalize
        # Set by MoEModel around each forward; a layer inside a HF encoder cannot take them as arguments.
        self.token_mask: torch.Tensor | None = None
        self.token_ids: torch.Tensor | None = None  # input ids, for gates that route by token (hash)
        self.gate: Gate | None = None  # a method's router (moebench.moe.routing); None: softmax top-k
        self.last_routing: Routing | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """x with the router's multiplicative jitter while training (gates that use the router call it too)."""
        if self.training and self.router_jitter > 0:
            return x * torch.empty_like(x).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
        return x

    def _route(self, x: torch.Tensor, mask: torch.Tensor | None, token_ids: torch.Tensor | None) -> Gating:
        if self.gate is not None:
            return self.gate(self, x, mask, token_ids)
        return top_k_gating(self.router(self.router_input(x)), self.top_k, self.renormalize)  # logits (T, E)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dispatch_mode not in DISPATCH_MODES:
            raise ValueError(f"dispatch_mode must be one of {DISPATCH_MODES}, got {self.dispatch_mode!r}")
        if self.dispatch_mode == "loop":
            return self._forward_loop(hidden)
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])  # (T, d), padding included
        mask = None if self.token_mask is None else self.token_mask.reshape(-1).bool()
        token_ids = None if self.token_ids is None else self.token_ids.reshape(-1)
        # Routed on every position (the router is d x E, negligible), so that no host sync is
        # needed to count the real tokens first; padding is dropped by the sort below.
        g = self._route(x, mask, token_ids)
        grouped = self.dispatch_mode == "grouped_mm" and self._grouped_supported(x)
        # The one host sync: per-expert counts. Grouped GEMMs take device offsets, so without
        # padding or unused slots (all T*k assignments kept, sizes known) they need none at all.
        plan = self._plan(g.index, mask, g.mask, host_counts=not grouped or mask is not None or g.mask is not None)
        if mask is None:
            self.last_routing = Routing(self, x, g.logits, g.index, g.weight, g.mask)
        else:
            num_real = plan.real_slots // g.index.shape[1]
            # Real positions in order (a stable sort puts True before False), known count: no sync.
            real = torch.argsort((~mask).to(torch.uint8), stable=True)[:num_real]
            self.last_routing = Routing(self, x.index_select(0, real), g.logits.index_select(0, real),
                                        g.index.index_select(0, real), g.weight.index_select(0, real),
                                        None if g.mask is None else g.mask.index_select(0, real))
        out = self._dispatch_planned(x, g.weight.to(x.dtype), plan, grouped)
        return out.reshape(shape)

    def dispatch(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                 mask: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over each token's used slots of weight * expert(x), with this layer's dispatch_mode;
        rows where `mask` (T,) is False get zero; `valid` (T, k): the slots used (None: all)."""
        if self.dispatch_mode == "loop":
            if mask is None:
                return self._dispatch_loop(x, index, weight, valid)
            keep = mask.nonzero().squeeze(1)
            out = self._dispatch_loop(x.index_select(0, keep), index.index_select(0, keep), weight.index_select(0, keep),
                                      None if valid is None else valid.index_select(0, keep))
            return torch.zeros_like(x).index_copy(0, keep, out)
        grouped = self.dispatch_mode == "grouped_mm" and self._grouped_supported(x)
        plan = self._plan(index, mask, valid, not grouped or mask is not None or valid is not None)
        return self._dispatch_planned(x, weight, plan, grouped)

    # ---- sorted / grouped dispatch ------------------------------------------------------
    def _plan(self, index: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None = None,
              host_counts: bool = True) -> _Plan:
        num_tokens, k = index.shape
        num_experts = self.num_experts
        flat = index.reshape(-1)  # (T*k,) assignment token*k + j -> expert
        # Two extra buckets, sorted last and dropped: a real token's unused slots (E), padding (E + 1).
        # Their boundary gives the real-token count, so it needs no sync of its own.
        if valid is not None:
            flat = flat.masked_fill(~valid.reshape(-1), num_experts)
        if mask is not None:
            flat = flat.masked_fill(~mask.unsqueeze(1).expand(num_tokens, k).reshape(-1), num_experts + 1)
        sorted_experts, slots = torch.sort(flat, stable=True)
        buckets = torch.arange(num_experts + 1, device=flat.device, dtype=flat.dtype)
        bounds = torch.searchsorted(sorted_experts, buckets, right=True)  # (E + 1,) cumulative ends
        ends = bounds[:num_experts]
        if not host_counts:  # no padding, every slot used: every assignment is kept, nothing to read back
            return _Plan(slots, torch.div(slots, k, rounding_mode="floor"), sorted_experts, ends, None)
        bounds_host = bounds.tolist()  # THE host sync of this layer's forward
        counts = [bounds_host[0]] + [b - a for a, b in zip(bounds_host[:num_experts], bounds_host[1:num_experts])]
        n = bounds_host[num_experts - 1]
        slots = slots[:n]
        return _Plan(slots, torch.div(slots, k, rounding_mode="floor"), sorted_experts[:n], ends, counts, bounds_host[-1])

    def _dispatch_planned(self, x: torch.Tensor, weight: torch.Tensor, plan: _Plan, grouped: bool) -> torch.Tensor:
        out = torch.zeros_like(x)
        if not plan.slots.numel():
            return out
        xs = x.index_select(0, plan.tokens)  # (n, d), contiguous per expert
        if grouped:
            ys = self._grouped_experts(xs, plan)
        else:
            ys = torch.cat([expert(chunk) for expert, chunk, count in zip(self.experts, xs.split(plan.counts), plan.counts)
                            if count > 0])
        ys = ys * weight.reshape(-1).index_select(0, plan.slots).unsqueeze(1)
        return out.index_add_(0, plan.tokens, ys.to(out.dtype))

    def _grouped_supported(self, x: torch.Tensor) -> bool:
        if _GROUPED_MM is None or x.device.type not in GROUPED_MM_DEVICES:
            return False
        if not (x.dtype == torch.bfloat16 or _autocast_bf16(x.device.type)):
            return False
        if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
            return False
        first = self.experts[0]
        for expert in self.experts:
            # Experts with hooks (OMoE records fc1/fc2 inputs) or custom code must run as modules.
            if type(expert) is not Expert or expert.activation is not first.activation:
                return False
            for module in (expert, expert.fc1, expert.fc2):
                if module._forward_hooks or module._forward_pre_hooks:
                    return False
            if type(expert.fc1) is not nn.Linear or type(expert.fc2) is not nn.Linear:
                return False
            if (expert.fc1.bias is None) != (first.fc1.bias is None) or (expert.fc2.bias is None) != (first.fc2.bias is None):
                return False
            # The weights are stacked: experts of unequal size ("split" upcycling) run as modules.
            if expert.fc1.weight.shape != first.fc1.weight.shape or expert.fc2.weight.shape != first.fc2.weight.shape:
                return False
        # Grouped GEMM kernels want 16-byte aligned rows.
        return first.fc1.in_features % 8 == 0 and first.fc1.out_features % 8 == 0

    def _grouped_experts(self, xs: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """All experts' FFNs on the sorted tokens as two grouped GEMMs (bf16)."""
        dtype = torch.bfloat16
        offs = plan.ends.to(torch.int32)
        h = self._grouped_linear(xs.to(dtype), [e.fc1 for e in self.experts], offs, plan.experts)
        h = self.experts[0].activation(h)
        return self._grouped_linear(h.to(dtype), [e.fc2 for e in self.experts], offs, plan.experts)

    @staticmethod
    def _grouped_linear(x: torch.Tensor, linears: list[nn.Linear], offs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        # (E, out, in) -> (E, in, out) as a transposed view: the column-major right operand the kernels want.
        weight = torch.stack([linear.weight for linear in linears]).to(x.dtype).transpose(1, 2)
        y = _GROUPED_MM(x, weight, offs=offs)
        if linears[0].bias is not None:
            y = y + torch.stack([linear.bias for linear in linears]).to(y.dtype).index_select(0, experts)
        return y

    # ---- the former dispatch, kept as the benchmarks' reference -------------------------
    def _forward_loop(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x_all = hidden.reshape(-1, shape[-1])  # (B*S, d)
        ids = None if self.token_ids is None else self.token_ids.reshape(-1)
        if self.token_mask is not None:
            positions = self.token_mask.reshape(-1).nonzero().squeeze(1)  # (N,) non-padding positions
            x = x_all.index_select(0, positions)
            ids = None if ids is None else ids.index_select(0, positions)
        else:
            positions, x = None, x_all
        g = self._route(x, None, ids)
        self.last_routing = Routing(self, x, g.logits, g.index, g.weight, g.mask)
        out = self._dispatch_loop(x, g.index, g.weight.to(x.dtype), g.mask)  # (N, d)
        if positions is not None:
            out = torch.zeros_like(x_all).index_copy(0, positions, out)
        return out.reshape(shape)

    def _dispatch_loop(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
        """Expert by expert: one nonzero() (a host sync on CUDA) per expert."""
        k = index.shape[1]
        flat_expert = index.reshape(-1) if valid is None else index.masked_fill(~valid, -1).reshape(-1)  # (N*k,)
        flat_token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
        flat_weight = weight.reshape(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            slots = (flat_expert == e).nonzero().squeeze(1)
            if slots.numel() == 0:
                continue
            tokens = flat_token[slots]
            y = expert(x.index_select(0, tokens)) * flat_weight[slots].unsqueeze(1)
            out.index_add_(0, tokens, y.to(out.dtype))
        return out

    def run_every_expert(self, x: torch.Tensor) -> torch.Tensor:
        """(E, N, d): each expert's output on the same tokens (for similarity diagnostics), in the
        layer's own dtype: `x` may come from a forward under autocast."""
        x = x.to(self.router.weight.dtype)
        return torch.stack([expert(x) for expert in self.experts])


def set_dispatch_mode(model: nn.Module, mode: str) -> None:
    """Set the dispatch of every MoE layer inside `model`."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"dispatch mode must be one of {DISPATCH_MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            module.dispatch_mode = mode
