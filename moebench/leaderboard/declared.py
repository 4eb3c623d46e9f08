"""What a board needs to know about a method, from what the method declares (`Method.control`,
`Method.board_columns`), read through the registry without importing the method (and torch)."""
from __future__ import annotations

from moebench.registry import METHODS


# metric logged by every trial -> (column title, decimals, scale); arrows: the "more diverse" way.
# Upcycled experts start identical, so similarities differ from 1 in the 4th or 5th decimal
# at small budgets: rounding to 3 would hide every method's effect.
METHOD_COLUMNS = "<methods' own>"
DIAGNOSTIC_COLUMNS = {
    "expert_cka": ("expert CKA ↓", 5, 1.0),
    "expert_cosine": ("expert cos ↓", 5, 1.0),
    "expert_label_mi_norm": ("expert–label MI / H(label)", 3, 1.0),
    "top1_changed": ("top-1 changed", 3, 1.0),
    "routing_entropy": ("routing entropy", 3, 1.0),
    "routing_cv": ("load CV", 3, 1.0),  # coefficient of variation of the experts' token counts: 0 is balanced
    "experts_per_token": ("experts/token", 2, 1.0),  # what the gate chose: k for top-k, anything for remoe, hash...
    # where the method started: |upcycled - dense| / |dense| before the first step (0: the dense function)
    "step0_logit_change": ("step-0 logit change", 4, 1.0),
    "step0_hidden_change": ("step-0 hidden change", 4, 1.0),
    METHOD_COLUMNS: ("", 0, 1.0),  # here: the columns the board's methods declare (Method.board_columns)
    "dead_experts": ("dead experts", 1, 1.0),
    "train_time_s": ("train s", 1, 1.0),
    "params_total": ("params (M)", 2, 1e-6),
    "params_active_per_token": ("active params/token (M)", 2, 1e-6),
}


def is_control(method: str) -> bool:
    """A registered positive control (`Method.control`); an unknown plugin's rows are methods."""
    return method in METHODS and bool(METHODS.declared(method, "control", False))


def diagnostic_columns(methods: list[str]) -> dict[str, tuple[str, int, float]]:
    """The diagnostic columns a board of these methods can show: every trial's, with the columns
    each registered method declares for its own diagnostics in METHOD_COLUMNS' place."""
    declared = {}
    for method in methods:
        if method in METHODS:
            declared |= {name: (title, digits, 1.0) for name, (title, digits) in METHODS.declared(method, "board_columns", {}).items()}
    out = {}
    for name, column in DIAGNOSTIC_COLUMNS.items():
        out |= declared if name == METHOD_COLUMNS else {name: column}
    return out
