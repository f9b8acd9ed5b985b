"""Inference latency of a model: warm-up, then timed batches (CUDA synchronised), p50 and p99."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    iterations: int,
    warmup: int = 3,
    device: torch.device | str = "cpu",
    tokens: bool = False,
) -> dict[str, float]:
    """Milliseconds per batch of random input (``tokens``: token ids ``[batch, *input_shape]``,
    all 0, since a token's value does not change the work): ``{"p50": ..., "p99": ...}``.

    Runs inside a forked RNG, so measuring never shifts the run's random numbers.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        if tokens:
            x = torch.zeros(batch_size, *input_shape, dtype=torch.long, device=device)
        else:
            x = torch.randn(batch_size, *input_shape, device=device)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    model.train(was_training)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return {"p50": statistics.median(times), "p99": p99}
