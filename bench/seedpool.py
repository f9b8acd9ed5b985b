"""Seeds of a benchmark one after another, or several at once in processes of their own (the
``--jobs`` option of ``lm_frontier`` and ``lm_distill``): on 2 cores, three seeds of a small model
with one thread each finish sooner than one after another with two threads each."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def by_seed(
    one_seed: Callable[[int, Path], Any],
    seeds: list[int],
    jobs: int,
    work: Path,
    setup: Callable[..., None],
    setup_args: tuple = (),
) -> Iterator[tuple[int, Any]]:
    """(seed, ``one_seed(seed, work)``) in seed order. With ``jobs`` > 1 each process first calls
    ``setup(*setup_args, threads)``, ``threads`` being its share of the machine's cores — a spawned
    process starts from the module's defaults, so the parent's settings travel this way."""
    if jobs <= 1:
        for seed in seeds:
            yield seed, one_seed(seed, work)
        return
    threads = max(1, (os.cpu_count() or 2) // jobs)
    context = multiprocessing.get_context("spawn")
    args = (*setup_args, threads)
    with concurrent.futures.ProcessPoolExecutor(jobs, context, setup, args) as pool:
        futures = [pool.submit(one_seed, seed, work) for seed in seeds]
        for seed, future in zip(seeds, futures, strict=True):
            yield seed, future.result()
