"""Handing freed heap memory back to the operating system.

Each inference allocates and frees a few hundred MB of tensors and masks whose sizes
vary with the scene. glibc keeps freed chunks inside its heaps (one per thread that
allocated), so a long-running node's resident size creeps up in steps although nothing
leaks. ``malloc_trim`` returns those free pages; the node calls it when it goes idle
after an inference, where the few milliseconds it takes delay nobody.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Optional


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Any]:
    """glibc's ``malloc_trim``, or None (other C libraries and systems have none)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; True when some memory was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
