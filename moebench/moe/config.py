"""Every MoE option of a trial in one typed dataclass, validated when it is made.

Apart from `moebench.moe.upcycle`, which builds the model from it, so a run configuration (and a
board reading an export) can hold and check MoE options without importing torch. What each
upcycling mode does is told in `moebench.moe.upcycle`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moebench.errors import UsageError

UPCYCLE_MODES = ("copy", "noise", "drop", "split")
SPLIT_BY = ("random", "importance")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 4
    top_k: int = 2
    layers: str = "all"  # "all", "every_other" (1, 3, 5, ...), or a comma list of layer indices
    router_jitter: float = 0.0  # multiplicative uniform noise on the router input while training
    router_init_std: float = 0.02
    # Gate = the top-k probabilities renormalised to sum 1 (True) or the raw softmax probabilities
    # (False, Switch). None: renormalise with top-k >= 2, raw with top-1, where a renormalised gate
    # is always 1 and the router would get no gradient from the task. Top-1 with True is refused.
    renormalize: bool | None = None
    upcycle: str = "copy"  # how experts are made from the dense FFN: one of UPCYCLE_MODES
    upcycle_noise: float = 0.05  # "noise": std of the noise relative to each tensor's std
    upcycle_ratio: float = 0.5  # "drop": share of each expert's neurons re-initialised
    share_neurons: int = 0  # "split": neurons in every expert
    split_by: str = "random"  # "split": how neurons are ranked, one of SPLIT_BY

    def __post_init__(self):
        if self.num_experts < 1:
            raise UsageError(f"--num-experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise UsageError(f"--top-k must be between 1 and --num-experts ({self.num_experts}), got {self.top_k}")
        if not 0.0 <= self.router_jitter < 1.0:
            raise UsageError(f"--router-jitter must be in [0, 1), got {self.router_jitter}")
        if not (math.isfinite(self.router_init_std) and self.router_init_std >= 0.0):
            raise UsageError(f"--router-init-std must be a finite number >= 0, got {self.router_init_std}")
        if self.layers not in ("all", "every_other"):
            try:
                [int(i) for i in self.layers.split(",")]
            except ValueError:
                raise UsageError(
                    f"--moe-layers must be 'all', 'every_other' or a comma list of layer indices, got {self.layers!r}"
                ) from None
        if self.renormalize is None:
            object.__setattr__(self, "renormalize", self.top_k > 1)  # frozen: resolved once, then a plain bool
        elif self.renormalize and self.top_k == 1:
            raise UsageError("--renormalize with --top-k 1 makes the gate a constant 1, so the router would learn nothing "
                             "from the task; drop --renormalize (top-1 then uses Switch's raw-probability gate)")
        if self.upcycle not in UPCYCLE_MODES:
            raise UsageError(f"--upcycle must be one of {', '.join(UPCYCLE_MODES)}, got {self.upcycle!r}")
        if not (math.isfinite(self.upcycle_noise) and self.upcycle_noise >= 0.0):
            raise UsageError(f"--upcycle-noise must be a finite number >= 0, got {self.upcycle_noise}")
        if not 0.0 < self.upcycle_ratio <= 1.0:
            raise UsageError(f"--upcycle-ratio must be in (0, 1], got {self.upcycle_ratio}")
        if isinstance(self.share_neurons, bool) or not isinstance(self.share_neurons, int) or self.share_neurons < 0:
            raise UsageError(f"--share-neurons must be an integer >= 0, got {self.share_neurons!r}")
        if self.split_by not in SPLIT_BY:
            raise UsageError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}")

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

    @property
    def needs_importance(self) -> bool:
        return self.upcycle == "split" and self.split_by == "importance"
