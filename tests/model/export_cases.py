"""Models and fixtures shared by the export tests (imported as `export_cases`; tests/model is on sys.path)."""
from __future__ import annotations

import torch

from dnamamba.model import MambaConfig, MambaLM
from support import FIXTURES

V1_EXPORT = FIXTURES / "export_v1"
V1_LOGITS = FIXTURES / "export_v1_logits.safetensors"


def perturbed_model(seed: int = 0, **cfg) -> MambaLM:
    """A small model with noise on every parameter: A_log rows, D, the conv bias and the norms all differ from
    their structured init, so a tensor loaded under the wrong name changes the output."""
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(**{"d_model": 32, "n_layer": 2, "d_state": 8, **cfg}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()
