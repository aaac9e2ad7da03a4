"""Using an exported model: embeddings of sequences and zero-shot variant scores."""
from .embed import EmbedConfig, Item, embed_fasta, embed_tokens
from .variants import (ScoreVariantsConfig, Window, allele_window, flank_lengths, score_vcf, score_windows,
                       window_log_likelihoods, window_span)

__all__ = [
    "EmbedConfig", "Item", "embed_fasta", "embed_tokens",
    "ScoreVariantsConfig", "Window", "allele_window", "flank_lengths", "score_vcf", "score_windows",
    "window_log_likelihoods", "window_span",
]
