"""Byte-level Mamba language models for long DNA."""

__version__ = "0.1.0"
