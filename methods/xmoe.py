"""xmoe: X-MoE routing, cosine scores on a low-dimensional hypersphere with a learned temperature.

X-MoE (Chi, Dong, Huang, Dai, Ma, Patra, Singhal, Bajaj, Song, Mao, Huang, Wei; "On the
Representation Collapse of Sparse Mixture of Experts", arXiv 2204.09179, NeurIPS 2022). The
paper's routing score between token h and expert i:

    s_i(h) = cos(W_p h, e_i) / tau = <W_p h / |W_p h|, e_i / |e_i|> / tau

with W_p a projection to a low dimension d_e, expert embeddings e_i in R^{d_e} and tau a
learnable temperature; then softmax over experts and top-k as usual. Projecting to few
dimensions and normalising keeps the router from pulling token representations toward the
expert centroids (the representation collapse the paper measures).

Facts taken from the official code (microsoft/torchscale, torchscale/component/xmoe/routing.py,
`Top1Gate`/`Top2Gate` with use_xmoe=True; unilm/xmoe/README.md points there):
- d_e = 16: `wg_reduction = Linear(model_dim, 16, bias=False)`;
- expert embeddings `wg` (E, 16) initialised `orthogonal_(gain=0.32)`;
- before each forward, under no_grad, each expert embedding is rescaled to L2 norm 1.5
  (`self.wg.mul_(1.5 / wg_norm)`), then L2-normalised inside the cosine (`_cosine`);
- a temperature is read through `_get_gating_temperature`, floored at 1e-4.
Where moebench differs or had to choose: (a) the released `_cosine` leaves the token projection
unnormalised (`# mat1 = F.normalize(...)` is commented out) and the release never creates the
temperature parameter its `_get_gating_temperature` reads; moebench follows the paper, normalising
both sides and dividing by a learnable tau; (b) tau's initial value is not in the release: moebench
starts it at 0.07, the fixed temperature the same file uses for its balance loss
(`TEMPERATURE_FOR_L_UAX = 0.07`), a reconstruction; (c) the expert embeddings are rescaled only
in training forwards (evaluation never writes weights); (d) gate weights follow moebench's top-k
rule (renormalised with top-k >= 2), where torchscale's X-MoE config samples the second expert
(`moe_second_expert_policy = "random"`); (e) X-MoE trains with a load-balancing loss; this method
is the routing function alone, so it compares with `vanilla`, not with `load_balancing`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moebench.method import Method
from moebench.moe.routing import Gate, Gating, freeze_router, top_k_gating

MIN_TEMPERATURE = 1e-4  # torchscale's _get_gating_temperature floor
EXPERT_NORM = 1.5  # torchscale rescales the expert embeddings to this norm before each forward


class XMoEGate(Gate):
    def __init__(self, d_model: int, num_experts: int, routing_dim: int, temperature: float):
        super().__init__()
        self.project = nn.Linear(d_model, routing_dim, bias=False)  # W_p
        self.expert_embeddings = nn.Parameter(torch.empty(num_experts, routing_dim))  # e_i
        nn.init.orthogonal_(self.expert_embeddings, gain=0.32)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))  # 0-dim: no weight decay

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """(T, E) cos(W_p x, e_i), in [-1, 1]."""
        tokens = F.normalize(self.project(x).float(), dim=-1)
        experts = F.normalize(self.expert_embeddings.float(), dim=-1)
        return tokens @ experts.t()

    def forward(self, layer, x, token_mask, token_ids) -> Gating:
        if self.training:
            with torch.no_grad():  # keeps the embeddings' scale, so their effective step size, fixed
                self.expert_embeddings.mul_(EXPERT_NORM / self.expert_embeddings.norm(dim=1, keepdim=True))
        logits = self.cosine(layer.router_input(x)) / self.temperature.float().clamp_min(MIN_TEMPERATURE)
        return top_k_gating(logits, layer.top_k, layer.renormalize)


class XMoE(Method):
    name = "xmoe"
    description = "X-MoE: cosine routing on a 16-d hypersphere, learned temperature (no aux loss)"
    board_columns = {"xmoe_temperature": ("X-MoE temperature", 4)}

    @dataclass(frozen=True)
    class Params:
        routing_dim: int = 16  # d_e, torchscale's wg_reduction width
        temperature: float = 0.07  # tau's initial value (reconstructed, see the module docstring)

        def __post_init__(self):
            if self.routing_dim < 1:
                raise ValueError(f"routing_dim must be >= 1, got {self.routing_dim}")
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    search_space = {"routing_dim": [8, 16, 32], "temperature": [0.03, 0.07, 0.3, 1.0]}

    def attach(self, model: nn.Module) -> None:
        self.gates = []
        for layer in model.moe_layers:
            freeze_router(layer)  # replaced by W_p and the expert embeddings
            like = layer.router.weight
            # Built in fp32 (orthogonal_ needs it), then in the layer's device and dtype.
            gate = XMoEGate(layer.router.in_features, layer.num_experts, self.params.routing_dim, self.params.temperature)
            layer.gate = gate.to(device=like.device, dtype=like.dtype)
            self.gates.append(layer.gate)

    def diagnostics(self) -> dict[str, float]:
        if not self.gates:
            return {}
        return {"xmoe_temperature": sum(g.temperature.item() for g in self.gates) / len(self.gates)}
