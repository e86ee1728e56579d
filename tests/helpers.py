"""Plain names the test modules share: skip marks, input makers, tolerances and other helpers (fixtures are in
conftest.py).

Imported as `from helpers import ...`: tests/ is no package, and pytest puts it on sys.path as it does for
conftest.py, which imports this module first (after it has set TRITON_INTERPRET) with its asserts rewritten
like a test module's.
"""
import os

import pytest
import torch

# ----------------------------------------------------------------------------- devices and skip marks

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")
# Without a GPU, conftest.py sets TRITON_INTERPRET=1: only then do CPU tensors reach the Triton kernels.
requires_triton_interpreter = pytest.mark.skipif(HAS_CUDA or os.environ.get("TRITON_INTERPRET") != "1",
                                                 reason="CPU tensors reach the kernel only in Triton's interpreter")
