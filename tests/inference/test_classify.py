"""The classifier's inputs and its zero-shot score: the LLR from the classifier's own forward pass is
score-variants' LLR; the export round-trips and still loads as a plain model export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dnamamba.errors import InputError
from dnamamba.inference.classify import classify_pairs, variant_batch
from dnamamba.inference.variants import Window, allele_window, score_windows, window_span
from dnamamba.model import load_export
from dnamamba.model.classifier import (Classifier, ClassifierConfig, load_classifier_export,
                                       save_classifier_export)

from support import LAMBDA, tiny_model


def pairs_from(fasta, cases, window):
    """(REF window, ALT window) per (0-based start, REF length, ALT bytes), as score-variants builds them."""
    out = []
    length = fasta.length(LAMBDA)
    for start, ref_len, alt in cases:
        lo, hi = window_span(start, ref_len, length, window)
        ctx = fasta.fetch(LAMBDA, lo, hi)
        out.append((allele_window(ctx, lo, start, ref_len, ctx[start - lo:start - lo + ref_len]),
                    allele_window(ctx, lo, start, ref_len, alt)))
    return out


CASES = [(1000, 1, b"T"), (0, 1, b"A"), (48501, 1, b"C"), (3000, 3, b"CAT"), (5000, 1, b"CTTA"), (7000, 2, b"G")]


def test_classifier_llr_is_score_variants_llr(lambda_fasta):
    torch.manual_seed(0)
    model = Classifier(tiny_model(), ClassifierConfig(kind="variant", classes=["a", "b"], window=40))
    pairs = pairs_from(lambda_fasta, CASES, 40)
    batch = variant_batch(pairs, "site", 3)
    with torch.no_grad():
        _, llr = model.variant_logits(batch["tokens"], batch["pool"], batch["scored"])
    expected = score_windows(model.backbone, pairs)
    # score-variants reads the shared prefix once and sums fp32 log-probabilities; the classifier reads
    # whole windows: the same sums up to fp32 rounding.
    np.testing.assert_allclose(llr.numpy(), expected, rtol=1e-5, atol=2e-5)
    assert np.all(expected != 0)


def test_variant_batch_masks_hand_checked():
    ref = Window(b"ACGTNACGTA", left=4, right=5)  # allele N at 4
    alt = Window(b"ACGTGGACGTA", left=4, right=5)  # insertion GG
    batch = variant_batch([(ref, alt)], "site", 2)
    assert batch["tokens"].shape == (2, 11)
    assert batch["scored"][0].tolist() == [False] * 4 + [False] + [True] * 5 + [False]  # N is not scored
    assert batch["scored"][1].tolist() == [False] * 4 + [True] * 7
    assert batch["pool"][0].nonzero().flatten().tolist() == [4, 5, 6]  # the allele and 2 after it
    assert batch["pool"][1].nonzero().flatten().tolist() == [4, 5, 6, 7]
    mean = variant_batch([(ref, alt)], "mean", 2)["pool"]
    assert mean.sum(1).tolist() == [10, 11]


def test_export_round_trip(tmp_path, lambda_fasta):
    torch.manual_seed(1)
    model = Classifier(tiny_model(), ClassifierConfig(kind="variant", classes=["x", "y", "z"], window=32,
                                                      pooling="site")).eval()
    save_classifier_export(model, tmp_path / "c", extra={"note": "test"})
    loaded = load_classifier_export(tmp_path / "c")
    assert loaded.cfg == model.cfg
    pairs = pairs_from(lambda_fasta, CASES[:3], 32)
    p1, s1 = classify_pairs(model, pairs, 2, torch.device("cpu"), "fp32")
    p2, s2 = classify_pairs(loaded, pairs, 3, torch.device("cpu"), "fp32")
    np.testing.assert_allclose(p1, p2, rtol=1e-6)
    np.testing.assert_allclose(p1.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    # The classifier export is also a model export: embed and score-variants read its backbone.
    backbone = load_export(tmp_path / "c")
    for a, b in zip(backbone.state_dict().values(), model.backbone.state_dict().values()):
        assert torch.equal(a, b)


def test_plain_export_is_not_a_classifier(tiny_export):
    with pytest.raises(InputError, match="not a classifier export"):
        load_classifier_export(tiny_export)
