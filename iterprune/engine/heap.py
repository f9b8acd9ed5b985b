"""The C heap under CPU tensors: keep freed blocks for the next training step.

PyTorch allocates a CPU tensor with the C library's ``malloc`` and frees it when the last
reference goes. With glibc's defaults, a block over the *mmap threshold* (128 KiB, raised by
glibc as large blocks are freed, up to 32 MiB) is mapped fresh and unmapped when freed, and free
memory at the heap's top beyond the *trim threshold* is handed back to the kernel. A training
step allocates and frees the same activations every time, so every step maps them again and the
kernel zero-fills each new page on first touch: one page fault per 4 KiB. glibc raises the
thresholds only as far as the largest block freed so far, which for a small model's activations
(2 MiB each in the tiny language model) is not far enough. Measured on this project's 2-core
machine, one step of ``schedules/tiny-lm.yaml``'s model took 1,740 page faults and 22.6 ms (with
a teacher, 3,370 and 32.5 ms); with the two thresholds fixed, under 1 fault, 18.5 ms and 27.7 ms.
``iterprune start schedules/tiny-lm.yaml`` took 117, 110 and 87 s against 129, 115 and 98 s in
three pairs of runs, with the same results to the last digit — where memory comes from changes
no arithmetic. The price: up to 64 MiB of freed memory stays resident, and a loop of 16 MiB
blocks (the distillation loss over GPT-2's vocabulary) peaks where the heap's layout puts it:
1.6–1.8 GB over six runs, 1.6–1.7 GB with glibc's defaults.

:func:`keep_freed_blocks` fixes them once per process: blocks under :data:`MMAP_THRESHOLD` come
from the heap, and up to :data:`TRIM_THRESHOLD` of free memory stays there for the next step.
A larger tensor (a big model's weights, a batch of GPT-2 logits) is still mapped on its own and
returned when freed. It does nothing where the C library is not glibc, and nothing when the
process's environment already sets glibc's malloc options (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``): the user's own
choice stands. Set ``ITERPRUNE_MALLOC=default`` to leave glibc's defaults as they are.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Mapping

# The values glibc's own adaptive rule reaches at its ceiling (mallopt(3): the mmap threshold rises
# to at most 32 MiB on 64-bit; malloc.c sets the trim threshold to twice it), fixed from the start.
MMAP_THRESHOLD = 32 << 20  # bytes
TRIM_THRESHOLD = 64 << 20  # bytes of free memory the heap may keep at its top

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def keep_freed_blocks() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); whether they are set."""
    return _apply()


def _apply() -> bool:
    if not wanted(os.environ, platform.libc_ver()[0]):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; setting either stops glibc moving both thresholds itself.
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def wanted(environ: Mapping[str, str], libc: str) -> bool:
    """Whether to set the thresholds: glibc, and no malloc setting of the user's own."""
    if libc != "glibc" or environ.get("ITERPRUNE_MALLOC", "") == "default":
        return False
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    return not any(name in environ for name in _USER_SETTINGS)
