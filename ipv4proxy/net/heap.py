"""Give the heap's free pages back to the system after a burst.

Job: after thousands of connections close, CPython has freed their objects and buffers but
glibc's malloc keeps the pages (fragmented arenas, and a heap top that only shrinks when it
is free to the end): RSS stays at the burst's peak, and a pod's memory limit counts it.
``malloc_trim(0)`` returns every whole free page (madvise), wherever it is in the heap.

Rules: one call, done by the server when open connections have fallen to half of a
recent peak (never per connection); a no-op where the C library has no malloc_trim
(musl, macOS).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has, libc among them
    except OSError:  # pragma: no cover - every Linux and macOS process has them
        return None
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return free heap pages to the system; False where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
