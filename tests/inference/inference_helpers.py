"""Constants and helpers shared by the inference tests (imported by name: tests/ has no packages)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dnamamba.model import MambaConfig, MambaLM

REPO = Path(__file__).resolve().parents[2]
VCF_FIXTURES = REPO / "tests" / "fixtures" / "vcf"
SHARED_DATA = REPO.parent / "shared" / "data"
LAMBDA = "gi|9626243|ref|NC_001416.1|"  # the record name of the bundled lambda phage genome


def tiny_model(seed: int = 0) -> MambaLM:
    """A random-init model (d_model 32, 2 layers): scores mean nothing, but every code path runs."""
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, d_state=8)).eval()


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{name} not found in {SHARED_DATA} (large real data, not shipped with the package)")
    return path
