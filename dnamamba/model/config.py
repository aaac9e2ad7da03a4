"""The model schema. YAML under conf/model/ only fills in these fields."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

SCAN_BACKENDS = ("auto", "torch", "naive", "triton")
FUSED_MODES = ("auto", True, False)


@dataclass
class MambaConfig:
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16), as in Mamba
    vocab_size: int = 256  # byte tokens; id 0 is padding
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    scan_backend: str = "auto"  # auto | torch | naive | triton
    scan_chunk_size: int = 32  # time steps per chunk of the PyTorch scan
    checkpoint_blocks: bool = False  # recompute each block in backward: activations O(L * d_model) per layer
    # The fused path (model/fused.py: one autograd Function per block over the Triton kernels) or the modules
    # of mamba.py, which stay the reference and the CPU path. auto: fused on CUDA.
    fused: bool | str = "auto"

    def __post_init__(self):
        self.validate()
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)

    def validate(self) -> None:
        """ValueError("key=value: why") for a value the model cannot be built with."""
        def bad(key: str, why: str):
            return ValueError(f"{key}={getattr(self, key)!r}: {why}")

        if self.scan_backend not in SCAN_BACKENDS:
            raise bad("scan_backend", f"must be one of {', '.join(SCAN_BACKENDS)}")
        if self.fused not in FUSED_MODES:
            raise bad("fused", "must be auto, true or false")
        for key in ("d_model", "n_layer", "d_state", "d_conv", "expand", "scan_chunk_size"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise bad("dt_rank", "must be at least 1 (or null for ceil(d_model / 16))")
        if not 2 <= self.vocab_size <= 256:
            raise bad("vocab_size", "must be in [2, 256]: tokens are bytes")
        if not 0 < self.dt_min <= self.dt_max:
            raise bad("dt_min", f"must be positive and at most dt_max={self.dt_max}")
        if self.dt_init_floor <= 0 or self.norm_eps <= 0:
            raise bad("dt_init_floor" if self.dt_init_floor <= 0 else "norm_eps", "must be positive")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MambaConfig fields: {sorted(unknown)}")
        return cls(**d)
