"""``export --format semi_structured``: without a suitable GPU a clear error and no file; with one,
a model whose 2:4 Linear weights are semi-structured sparse tensors and whose outputs equal the
masked dense model's within float16 tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SPARSE_RUN, merged, write

from iterprune.cli import table as cli

NM = merged(SPARSE_RUN, name="nm", prune={"pattern": "2:4", "step": None, "target_sparsity": None})
CUDA_24 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("nm")
    state = str(root / "state")
    assert cli.main(["start", str(write(root / "nm.yaml", NM)), "--state-dir", state]) == 0
    return state


@pytest.mark.skipif(CUDA_24, reason="checks the message of a machine without 2:4 kernels")
def test_without_a_suitable_gpu_it_says_what_is_needed_and_writes_nothing(
    run: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "m.pt"
    argv = ["export", "nm", "--format", "semi_structured", "--out", str(out), "--state-dir", run]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU with 2:4 sparse tensor cores" in err or "capability 8.0" in err
    assert not out.exists()


@pytest.mark.skipif(not CUDA_24, reason="2:4 kernels need a CUDA GPU of compute capability 8.0+")
def test_on_a_gpu_the_24_linears_become_sparse_and_agree_with_the_masked_model(
    run: str, tmp_path: Path, capsys
) -> None:
    from torch.sparse import SparseSemiStructuredTensor

    import iterprune

    out = tmp_path / "m.pt"
    argv = ["export", "nm", "--format", "semi_structured", "--out", str(out), "--state-dir", run]
    assert cli.main(argv) == 0
    assert "2:4 sparse Linear layers:" in capsys.readouterr().out
    model = torch.load(out, weights_only=False)
    sparse = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(isinstance(m.weight, SparseSemiStructuredTensor) for m in sparse)
    dense = iterprune.Run("nm", run).model().to("cuda", torch.float16).eval()
    x = torch.randn(64, 1, 8, 8, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        want, got = dense(x).float(), model(x).float()
    assert torch.allclose(got, want, atol=1e-2 * float(want.abs().max()))
