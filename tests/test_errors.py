"""The CLI's error contract at its one seam: exit_on_input_error turns failures users can act on into one line."""
from __future__ import annotations

import pytest
import torch

from dnamamba.errors import InputError, exit_on_input_error


def raise_(e):
    raise e


def test_input_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as done:
        exit_on_input_error(raise_, InputError("calls.vcf", "REF does not match", record="chr1:5"))
    assert done.value.code == 2
    assert capsys.readouterr().err == "dnamamba: error: calls.vcf: record chr1:5: REF does not match\n"


def test_gpu_out_of_memory_is_one_line_naming_what_to_lower(capsys):
    """Also when a library wrapped it (the OOM is only a cause of the exception that reaches the CLI)."""
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB. GPU 0 has a total "
                                      "capacity of 139.8 GiB\nmore detail")

    def wrapped():
        try:
            raise oom
        except Exception as e:
            raise RuntimeError("hook failed") from e

    with pytest.raises(SystemExit) as done:
        exit_on_input_error(wrapped)
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of GPU memory" in err and "Tried to allocate 40.00 GiB" in err
    assert "batch_size" in err


def test_other_exceptions_pass_through():
    with pytest.raises(ZeroDivisionError):
        exit_on_input_error(lambda: 1 / 0)
