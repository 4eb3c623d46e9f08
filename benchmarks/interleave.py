"""Timing shared by the benchmarks: steps of several setups interleaved round by round, so
that machine noise hits them all alike; ratios of medians are what the benchmarks report."""
import functools
import statistics
import time
from typing import Callable

import torch


def random_batch(batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-length token ids (no padding, so an MoE gets no help from skipped tokens)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


def train_steps(models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], lr: float = 1e-5) -> dict[str, Callable[[], None]]:
    """One AdamW train step per model on the same batch, as zero-argument callables to time."""

    def step(model, optimizer):
        output = model(**batch)
        output = output[0] if isinstance(output, tuple) else output  # an MoEModel returns (output, routing)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = functools.partial(step, model, torch.optim.AdamW(model.parameters(), lr=lr))
    return steps


def interleaved_times(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def print_ratios(times: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(times[baseline])
    for name, samples in times.items():
        print(f"  {name:<15} {statistics.median(samples) / base:.2f}x {baseline}")
