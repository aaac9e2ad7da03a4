"""Mamba-1 language model over byte tokens, its config and its export format."""
from .config import MambaConfig
from .export import load_export, save_export
from .mamba import LayerState, MambaLM

__all__ = ["MambaConfig", "MambaLM", "LayerState", "save_export", "load_export"]
