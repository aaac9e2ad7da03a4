"""The order-k Markov baseline: log-probabilities against a brute-force count, streaming with its state,
fitting in pieces, and scoring a VCF through score-variants' code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dnamamba.errors import InputError
from dnamamba.inference import markov
from dnamamba.inference.markov import FitMarkovConfig, MarkovLM, fit_markov, load_scorer
from dnamamba.inference.variants import ScoreVariantsConfig, Window, score_vcf, score_windows, window_log_likelihoods
from dnamamba.model import MambaLM

from support import LAMBDA, VCF_FIXTURES

RC = str.maketrans("ACGT", "TGCA")


def occurrences(text: str, word: str) -> int:
    return sum(text.startswith(word, i) for i in range(len(text) - len(word) + 1))


def brute_log_prob(train: list[str], context: str, base: str, alpha: float) -> float:
    """log P(base | context) from counting the context and context+base in every training string."""
    hits = sum(occurrences(s, context + base) for s in train)
    total = sum(occurrences(s, context + b) for s in train for b in "ACGT")
    return math.log((hits + alpha) / (total + 4 * alpha))


@pytest.mark.parametrize("k, both_strands", [(0, False), (2, True), (3, False), (4, True)])
def test_log_probs_equal_a_brute_force_count(lambda_fasta, k, both_strands):
    train = lambda_fasta.fetch(LAMBDA, 0, 600).decode()
    model = MarkovLM.fit([train.encode()], k=k, alpha=0.5, both_strands=both_strands)
    texts = [train, train.translate(RC)[::-1]] if both_strands else [train]
    # A test window with an N: the context shrinks after it, and is the sequence start at position 0.
    window = lambda_fasta.fetch(LAMBDA, 3000, 3030).decode()
    window = window[:12] + "N" + window[13:]
    logp = torch.log_softmax(model(torch.tensor([list(window.encode())])).double(), -1)[0]  # (L, 256)
    checked = 0
    for t in range(len(window) - 1):
        target = window[t + 1]
        if target == "N":
            continue
        start = t + 1 - k
        context = window[max(0, start):t + 1]
        context = context[context.rfind("N") + 1:]  # the run of bases before the target, at most k
        expected = brute_log_prob(texts, context, target, 0.5) + math.log1p(-markov.CASE_CHANGE)
        assert logp[t, ord(target)].item() == pytest.approx(expected, abs=1e-5), (t, context, target)
        checked += 1
    assert checked == len(window) - 2


def test_lowercase_is_predicted_in_the_case_of_the_current_base(lambda_fasta):
    seq = lambda_fasta.fetch(LAMBDA, 100, 140)
    model = MarkovLM.fit([lambda_fasta.fetch(LAMBDA, 0, 5000)], k=3)
    upper = torch.log_softmax(model(torch.tensor([list(seq)])).double(), -1)[0]
    lower = torch.log_softmax(model(torch.tensor([list(seq.lower())])).double(), -1)[0]
    up_ids, low_ids = list(seq[1:]), list(seq.lower()[1:])
    torch.testing.assert_close(upper[torch.arange(39), up_ids], lower[torch.arange(39), low_ids])
    assert (upper.exp()[:, list(b"ACGTacgt")].sum(-1) - 1).abs().max() < 1e-6  # a distribution over bases


def test_state_carries_the_context_exactly(lambda_fasta):
    model = MarkovLM.fit([lambda_fasta.fetch(LAMBDA, 0, 8000)], k=5)
    tokens = torch.tensor([list(lambda_fasta.fetch(LAMBDA, 9000, 9100))])
    whole = model(tokens)
    first, state = model(tokens[:, :37], return_state=True)
    rest = model(tokens[:, 37:], state=state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole)


def test_shared_prefix_scoring_equals_whole_windows(lambda_fasta):
    """score-variants' fast path (state carried past the shared prefix) agrees with whole windows."""
    model = MarkovLM.fit([lambda_fasta.fetch(LAMBDA, 0, 20000)], k=6)
    ctx = lambda_fasta.fetch(LAMBDA, 30000, 30101)
    ref = Window(ctx, left=50, right=50)
    alts = [Window(ctx[:50] + a + ctx[51:], left=50, right=50) for a in (b"A", b"C", b"G", b"T") if a != ctx[50:51]]
    fast = score_windows(model, [(ref, a) for a in alts])
    whole = window_log_likelihoods(model, alts) - window_log_likelihoods(model, [ref])[0]
    np.testing.assert_allclose(fast, whole, atol=1e-4)
    assert np.all(np.isfinite(fast)) and np.any(fast != 0)


def test_fit_in_pieces_equals_fit_in_one(tmp_path, monkeypatch, lambda_path, lambda_fasta):
    monkeypatch.setattr(markov, "_PIECE", 1000)  # lambda (48,502 bases) in 49 pieces
    fit_markov(FitMarkovConfig(fasta=lambda_path, out=str(tmp_path / "m"), k=4))
    loaded = load_scorer(str(tmp_path / "m"))
    whole = MarkovLM.fit([lambda_fasta.fetch(LAMBDA, 0, lambda_fasta.length(LAMBDA))], k=4)
    assert isinstance(loaded, MarkovLM) and loaded.k == 4
    assert torch.equal(loaded.counts, whole.counts)
    assert int(whole.counts[0].sum()) == 2 * 48502


def test_score_variants_takes_a_markov_folder(tmp_path, lambda_path, tiny_export):
    fit_markov(FitMarkovConfig(fasta=lambda_path, out=str(tmp_path / "m"), k=3))
    summary = score_vcf(ScoreVariantsConfig(model=str(tmp_path / "m"), fasta=lambda_path, out=str(tmp_path / "s.tsv"),
                                            vcf=str(VCF_FIXTURES / "lambda_variants.vcf"), window=32, device="cpu",
                                            progress=False))
    assert summary["scored"] == 11 and summary["nonfinite_scores"] == 0
    rows = [line.split("\t") for line in (tmp_path / "s.tsv").read_text().splitlines()[1:]]
    assert any(r[5] not in ("NA", "0") for r in rows)
    assert isinstance(load_scorer(tiny_export), MambaLM)


@pytest.mark.parametrize("change, words", [({"k": 13}, "k=13 must be in 0..12"), ({"alpha": 0}, "alpha=0")])
def test_bad_settings(tmp_path, lambda_path, change, words):
    with pytest.raises(InputError, match=words):
        fit_markov(FitMarkovConfig(fasta=lambda_path, out=str(tmp_path / "m"), **change))
    assert not (tmp_path / "m").exists()


def test_unreadable_markov_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"format": "dnamamba-markov", "k": 2, "alpha": 1.0}')
    with pytest.raises(InputError, match="unreadable Markov model"):
        load_scorer(str(tmp_path))
