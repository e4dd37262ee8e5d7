"""Compiled (numba) kernels of the Gram-based methods, one module per method, imported on first
use through :func:`taskgrad.methods._impl.kernel` (importing this package does not import numba).

Every kernel is a line-by-line port of the method's torch path, with the same tolerances and the
same decisions (active sets, stopping rules), so the two agree to rounding
(``tests/methods/test_methods_kernels.py`` compares them). Arrays are float64 C-contiguous
NumPy arrays; batched kernels take (B, k, k) Gram matrices and loop over B. Errors are status
codes (numba cannot raise the library's exceptions), turned into exceptions by the methods.

Compilation: ``njit(cache=True)``; the first call after an install or an edit compiles what it
uses (a few seconds per kernel, ~20 s for CAGrad), later processes load it from ``__pycache__``.
"""
