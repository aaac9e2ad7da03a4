import os
import stat

import pytest

from dnamamba.io import atomic_path


def test_atomic_path_renames_on_success_with_normal_permissions(tmp_path):
    target = tmp_path / "out.vcf.gz"
    with atomic_path(target) as tmp:
        assert tmp.endswith(".vcf.gz") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write("x")
        assert not target.exists()
    assert target.read_text() == "x"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert os.listdir(tmp_path) == ["out.vcf.gz"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "emb.npy"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("bad record")
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["emb.npy"]
