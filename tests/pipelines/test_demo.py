import json
import subprocess
import sys

import numpy as np
import pysam


def test_demo_pretrains_embeds_and_scores(tmp_path):
    run_dir = tmp_path / "demo"
    shrink = '["model.d_model=16","model.n_layer=1","data.seq_len=128","trainer.max_steps=4","trainer.enable_progress_bar=false"]'
    proc = subprocess.run([sys.executable, "-m", "dnamamba.cli", "demo", f"run_dir={run_dir}",
                           f"pretrain_overrides={shrink}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val_bits_per_base" in json.loads((run_dir / "metrics.json").read_text())
    emb = np.load(run_dir / "embeddings.npy")
    assert emb.shape == (4, 16) and np.isfinite(emb).all()  # four BED windows, mean-pooled
    records = list(pysam.VariantFile(str(run_dir / "variants.scored.vcf")))
    assert len(records) == 6
    assert all(np.isfinite(r.info["DNAMAMBA_LLR"][0]) for r in records)
    assert "demo summary" in proc.stderr
