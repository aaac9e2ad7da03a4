"""Embedding and scoring on CUDA with the Triton scan: chunked equals one pass, and CUDA agrees with CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from support import LAMBDA, VCF_FIXTURES, tiny_model

from dnamamba import alphabet
from dnamamba.inference.embed import embed_tokens
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_chunked_embedding_equals_one_pass(lambda_fasta):
    model = tiny_model().cuda()
    seqs = [alphabet.encode(lambda_fasta.fetch(LAMBDA, 0, 48502)),
            alphabet.encode(lambda_fasta.fetch(LAMBDA, 777, 30000))]
    one = embed_tokens(model, seqs, pooling="none", chunk_size=1 << 20)
    chunked = embed_tokens(model, seqs, pooling="none", chunk_size=7777)
    cpu = embed_tokens(tiny_model(), [s[:3000] for s in seqs], pooling="none", chunk_size=1 << 20)
    for a, b in zip(one, chunked):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    for a, c in zip(one, cpu):
        np.testing.assert_allclose(a[:3000], c, rtol=0, atol=1e-3)


def test_cuda_scores_match_cpu(tmp_path, tiny_export, lambda_path):
    def run(device):
        cfg = ScoreVariantsConfig(model=tiny_export, fasta=lambda_path, vcf=str(VCF_FIXTURES / "lambda_variants.vcf"),
                                  out=str(tmp_path / f"{device}.tsv"), window=512, rc_average=True, device=device,
                                  progress=False)
        score_vcf(cfg)
        rows = [line.split("\t") for line in (tmp_path / f"{device}.tsv").read_text().splitlines()[1:]]
        return np.array([float(r[5]) for r in rows if r[6] == "ok"])

    cuda, cpu = run("cuda"), run("cpu")
    assert len(cuda) == 11
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("context", ["window", "tile"])
def test_cuda_shared_method_equals_plain(tmp_path, tiny_export, lambda_path, context):
    """On CUDA, the shared-context reading (pinned uploads, queued work, one sync per block) gives the
    scores of reading every window whole, on the lambda fixture's SNVs, indels and contig-edge variants."""
    def run(method):
        out = tmp_path / f"{method}.tsv"
        vcf = str(VCF_FIXTURES / "lambda_variants.vcf")
        score_vcf(ScoreVariantsConfig(model=tiny_export, fasta=lambda_path, vcf=vcf, out=str(out), window=2048,
                                      context=context, tile_size=4096, rc_average=True, method=method,
                                      device="cuda", batch_size=5, progress=False))
        rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
        return np.array([float(r[5]) for r in rows if r[6] == "ok"])

    shared, plain = run("shared"), run("plain")
    assert len(shared) == 11
    np.testing.assert_allclose(shared, plain, rtol=1e-4, atol=1e-3)
