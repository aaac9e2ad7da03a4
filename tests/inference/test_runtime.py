"""Settings into the pipeline dataclasses: misspelt, missing and mistyped keys are one-line InputErrors."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from dnamamba.errors import InputError
from dnamamba.inference.embed import EmbedConfig
from dnamamba.inference.runtime import check_writable, config_from
from dnamamba.inference.variants import ScoreVariantsConfig

REQUIRED = {"model": "m", "fasta": "f.fa", "vcf": "v.vcf", "out": "o.vcf"}


def test_values_are_converted_to_the_schema_types():
    cfg = config_from(ScoreVariantsConfig, OmegaConf.create({**REQUIRED, "window": "64", "rc_average": "true"}))
    assert isinstance(cfg, ScoreVariantsConfig) and cfg.window == 64 and cfg.rc_average is True
    emb = config_from(EmbedConfig, {"model": "m", "fasta": "f", "out": "o.npy", "records": ["a", "b"]})
    assert emb.records == ["a", "b"] and emb.pooling == "mean"


@pytest.mark.parametrize("data, match", [
    ({**REQUIRED, "windw": 64}, "unknown setting.*windw"),
    ({"model": "m", "fasta": "f.fa", "out": "o.vcf"}, "missing required setting.*vcf=..."),
    ({**REQUIRED, "vcf": "???"}, "missing required setting.*vcf=..."),
    ({**REQUIRED, "window": "wide"}, "bad setting window"),
    ({**REQUIRED, "strict": "maybe"}, "bad setting strict"),
])
def test_bad_settings(data, match):
    with pytest.raises(InputError, match=match) as e:
        config_from(ScoreVariantsConfig, data)
    assert "\n" not in str(e.value)


def test_check_writable_creates_nothing(tmp_path):
    check_writable(str(tmp_path / "new" / "deeper" / "out.vcf"))
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_writable(str(tmp_path / "file" / "out.vcf"))
    with pytest.raises(InputError, match="is a directory"):
        check_writable(str(tmp_path))
