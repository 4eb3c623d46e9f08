"""Whether this machine computes bf16 natively: what `--precision auto` decides from.

bf16 autocast pays only where the hardware multiplies bf16: on this project's 2-core AMD EPYC
with AVX-512 BF16 it evaluates MiniLM 3.2x faster than fp32, while on a CPU with AVX2 only
(oneDNN limited to AVX2) it ran 3.6x *slower* (benchmarks/eval_throughput.py). So `auto` is
bf16 where that instruction set (or AMX) or an Ampere-or-later GPU is there, fp32 elsewhere.
"""
from __future__ import annotations


def bf16_is_native(on_gpu: bool) -> tuple[bool, str]:
    """(native, why) for the device a local trial trains on."""
    import torch

    if on_gpu:
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16"
        return False, f"{name} has no native bf16"
    # torch.cpu's checks are private; a torch without them is treated as a CPU without bf16.
    checks = {"AVX-512 BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    found = [name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()]
    if found:
        return True, f"this CPU has {' and '.join(found)} instructions"
    return False, "this CPU has neither AVX-512 BF16 nor AMX instructions (bf16 would be emulated, slower than fp32)"
