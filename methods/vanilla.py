"""vanilla: the top-k router trained by the task loss alone — the baseline every paper compares against."""
from moebench.method import Method


class Vanilla(Method):
    name = "vanilla"
    description = "top-k router, task loss only (no auxiliary loss)"
