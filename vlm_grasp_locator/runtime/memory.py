"""Handing freed heap memory back to the operating system.

Each inference allocates and frees a few hundred MB of tensors and masks whose sizes
vary with the scene. glibc keeps freed chunks inside its heaps (one per thread that
allocated), so a long-running node's resident size creeps up in steps although nothing
leaks. ``malloc_trim`` returns those free pages; the node calls it when it goes idle
after an inference, where the few milliseconds it takes delay nobody.

glibc also gives threads their own heaps ("arenas", up to 8 per core). The decoder's
worker threads (``cpu_threads``) spread their transient buffers over every arena the
process had: the node's soak peak rose from 2.2 GB (one thread) to 3.2 GB. Capping the
arenas at two (``limit_malloc_arenas``, what ``MALLOC_ARENA_MAX=2`` does) with workers
that live as long as the process brought it to 2.1 GB at the same speed. Only entry
points cap them (``process.configure_process``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any, Optional

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
MALLOC_ARENAS = 2


@functools.lru_cache(maxsize=None)
def _glibc(name: str, *argtypes: Any) -> Optional[Any]:
    """A glibc malloc function, or None (other C libraries and systems have none)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _malloc_trim() -> Optional[Any]:
    return _glibc("malloc_trim", ctypes.c_size_t)


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; True when some memory was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.lru_cache(maxsize=None)
def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let threads created from now on share at most ``arenas`` glibc heaps (process-wide,
    once per process and value, unless ``MALLOC_ARENA_MAX`` already says otherwise); True
    when set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, arenas)) if mallopt is not None else False
