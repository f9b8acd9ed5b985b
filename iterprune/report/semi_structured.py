"""``export --format semi_structured``: the model with its 2:4 ``Linear`` weights as PyTorch's
semi-structured sparse tensors (``torch.sparse.to_sparse_semi_structured``), which NVIDIA GPUs
from Ampere on (compute capability 8.0+) multiply on their sparse tensor cores, in float16 or
bfloat16.

A Linear is converted when its weight holds 2:4 along its input dimension (at most two non-zeros
in every four consecutive weights of a row: what ``prune.pattern: "2:4"`` leaves) and its shape
fits the kernels' rules (both sides multiples of the backend's minimum tile); every other layer
stays dense, and the summary says which and why. Before it is written the model is checked: on
the run's example input its output must equal the masked dense model's in the same dtype, within
that dtype's tolerance. The file is ``torch.save(model)`` — a whole pickled module; load it with
``torch.load(path, weights_only=False)`` on a CUDA machine with the same torch release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from iterprune.core import patterns
from iterprune.errors import UserError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}  # relative to the output's scale


def require_cuda() -> torch.device:
    """The GPU the kernels run on, or a clear error saying what is needed."""
    if not torch.cuda.is_available():
        raise UserError(
            "--format semi_structured needs an NVIDIA GPU with 2:4 sparse tensor cores (compute "
            "capability 8.0 or newer: A100, H100, L4, RTX 30xx/40xx) and a CUDA build of torch; "
            "this machine has no CUDA device. Export as safetensors here and convert on the GPU "
            "machine, or run this command there"
        )
    device = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        name = torch.cuda.get_device_name(device)
        raise UserError(
            f"--format semi_structured needs compute capability 8.0 or newer for 2:4 sparse "
            f"kernels; {name} has {major}.{minor}"
        )
    return device


def convert(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Swap every convertible Linear weight (in place, the model on CUDA in its final dtype);
    the converted layers, and the others with why they stay dense."""
    from torch.sparse import to_sparse_semi_structured

    done: list[str] = []
    dense: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight.detach()
        if w.shape[1] % 4 or not patterns.holds(w != 0, 2, 4, False):
            dense[name] = "its weight does not hold 2:4"
            continue
        try:
            sparse = to_sparse_semi_structured(w.contiguous())
        except RuntimeError as exc:  # a shape or dtype the kernels do not take
            dense[name] = str(exc).splitlines()[0][:160]
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(name)
    return done, dense


@torch.no_grad()
def write(model: nn.Module, example: tuple | dict, out: Path, dtype_name: str) -> dict[str, Any]:
    """Convert, check against the masked dense model, and save; what was done."""
    device = require_cuda()
    dtype = DTYPES[dtype_name]
    model = model.to(device=device, dtype=dtype).eval()
    args = example if isinstance(example, dict) else tuple(example)
    args = _to(args, device, dtype)
    call = (lambda m: m(**args)) if isinstance(args, dict) else (lambda m: m(*args))
    expected = _first(call(model)).float()
    converted, dense = convert(model)
    if not converted:
        raise UserError(
            "no Linear layer holds 2:4 with a shape the kernels take; prune with prune.pattern: "
            f'"2:4" (kept dense: {dense})'
        )
    got = _first(call(model)).float()
    error = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if error > TOLERANCE[dtype] * scale:
        raise UserError(
            f"the semi-structured model's output differs from the masked dense model's by "
            f"{error:.3g} (scale {scale:.3g}); nothing written"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, out)
    return {"converted": converted, "dense": dense, "max_abs_error": error, "dtype": dtype_name}


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """An example moved to the GPU; floating tensors in the model's dtype, token ids as they are."""
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to(v, device, dtype) for v in value)
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype=dtype if value.is_floating_point() else value.dtype)
    return value


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.logits
