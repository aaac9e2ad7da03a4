"""Kernel tests run the real Triton code on CPU through Triton's interpreter (TRITON_INTERPRET=1).

The kernels read the variable at each call, so setting it per test is enough and leaves the rest of
the suite on the plain PyTorch paths.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
