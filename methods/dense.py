"""dense: the encoder as it was, without MoE — the reference every MoE row is read against.

Same model, data, budget, optimizer and selection as the MoE methods; its FFNs are never
upcycled, so it has no router, no experts and no expert diagnostics. A diversity method that
cannot beat this row at equal training has bought nothing with its extra parameters.
"""
from moebench.method import Method


class Dense(Method):
    name = "dense"
    description = "reference: the dense encoder without MoE, trained under the same budget"
    uses_moe = False
