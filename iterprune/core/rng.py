"""Random number state: per-attempt seeds, and capture/restore of every generator a run uses.

Resuming bit-exactly needs all of them: Python's, NumPy's, torch's (CPU and CUDA) and each data
loader's own generator. States are stored as tensors and plain Python values, which
``torch.load(weights_only=True)`` accepts (a NumPy state tuple it would refuse).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def deterministic() -> None:
    """What ``torch.use_deterministic_algorithms(True, warn_only=True)`` does for eager code,
    without its import of ``torch._inductor.config`` (1.2 s alone here, 0.26 s more at exit;
    iterprune never compiles). Inductor's own flag is set as well when something (a user's
    factory) has loaded it already."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call, import and all
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True


def derive_seed(seed: int, round_: int, attempt: int, purpose: str = "") -> int:
    """A seed for one attempt (and one purpose within it, such as a recovery), derived from the
    run seed: resumed work draws the same numbers."""
    text = f"{seed}/{round_}/{attempt}" + (f"/{purpose}" if purpose else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int, loaders: tuple[Any, ...] = (), rank: int = 0) -> None:
    """Seed every generator from ``seed``. Under torchrun each rank draws its own numbers (dropout,
    augmentation), while the loaders' distributed samplers share ``seed`` so the shards stay
    disjoint; rank 0 draws exactly what a single process draws."""
    own = seed if rank == 0 else derive_seed(seed, -1, rank)
    random.seed(own)
    np.random.seed(own)
    torch.manual_seed(own)
    for loader in loaders:
        generator = loader_generator(loader)
        if generator is not None:
            generator.manual_seed(own)
        seed_sampler(loader, seed)


def seed_sampler(loader: Any, seed: int) -> None:
    """Give a loader's DistributedSampler the attempt's seed (each epoch adds its number)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch") and hasattr(sampler, "seed"):
        sampler.seed = seed


def loader_generator(loader: Any) -> torch.Generator | None:
    generator = getattr(loader, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


@contextlib.contextmanager
def untouched(loader: Any, device: torch.device | None = None) -> Iterator[None]:
    """Random numbers drawn inside leave the run's own untouched: torch's (forked) and the
    loader's generator (put back), so side work never shifts what the run draws next."""
    generator = loader_generator(loader)
    state = generator.get_state() if generator is not None else None
    sampler_seed = getattr(getattr(loader, "sampler", None), "seed", None)
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        if generator is not None and state is not None:
            generator.set_state(state)
        if sampler_seed is not None:
            seed_sampler(loader, sampler_seed)


def capture() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
