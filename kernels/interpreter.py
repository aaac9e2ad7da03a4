"""Whether the kernels run through Triton's interpreter: read at each call, so one process can run compiled
kernels on CUDA tensors and interpreted ones on CPU tensors (the kernel tests set it per test)."""
import os


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1 is set now: kernels then run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
