from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_runner, tiny

from iterprune.engine import heap

GLIBC = platform.libc_ver()[0] == "glibc"

# Twenty training steps of a small transformer (the tiny-lm example's size and batch), after ten
# to warm up; prints the page faults a step took (with the thresholds set: none in most steps, a
# few hundred in an odd one while the heap settles).
STEPS = """
import resource, sys, torch
from torch.nn import functional
from iterprune.engine import heap, tinygpt
torch.set_num_threads(1)
if sys.argv[1] == "kept":
    assert heap.keep_freed_blocks()
torch.manual_seed(0)
model = tinygpt.tiny_gpt(width=64, depth=2, heads=4, context=64)
optimizer = torch.optim.Adam(model.parameters())
ids = torch.randint(0, 256, (32, 64))
def step():
    out = model(ids)[:, :-1].reshape(-1, 256)
    functional.cross_entropy(out, ids[:, 1:].reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad()
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(heap.__file__).parents[2])}
    if mode == "default":
        env["ITERPRUNE_MALLOC"] = "default"
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(
    not GLIBC, reason="the thresholds are glibc's; other C libraries are left alone"
)
def test_kept_blocks_stop_a_training_step_faulting_in_fresh_pages() -> None:
    default, kept = faults_per_step("default"), faults_per_step("kept")
    # glibc's defaults map a step's activations afresh (770-1,500 faults a step, measured);
    # with the thresholds set, the heap keeps them (0-50).
    assert default > 200, default
    assert kept < default / 5, (kept, default)


@pytest.mark.parametrize(
    "environ, libc, wanted",
    [
        ({}, "glibc", True),
        ({}, "", False),  # musl, macOS, Windows: not glibc's options
        ({"ITERPRUNE_MALLOC": "default"}, "glibc", False),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", False),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc", False),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "glibc", False),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, "glibc", True),
    ],
)
def test_the_users_own_malloc_settings_stand(
    environ: dict[str, str], libc: str, wanted: bool
) -> None:
    assert heap.wanted(environ, libc) is wanted


def test_a_run_sets_the_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(heap, "_apply", lambda: calls.append("set") or True)
    heap.keep_freed_blocks.cache_clear()
    try:
        make_runner(tmp_path, tiny())
    finally:
        heap.keep_freed_blocks.cache_clear()  # the real one, for what runs next here
    assert calls == ["set"]
