"""The process-wide settings an entry point chooses: torch threads, decoder workers, malloc.

The library below (models, pipeline, backends) never changes process-wide state on its
own. An entry point (the node's ``main``, the CLI, the benchmark) calls
``configure_process`` once, before it builds a ``Locator``, and passes the workers it
returns on (``backends.factory.build_locator(config, workers=...)`` picks up the last
ones configured when it is not given any).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import torch

from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers
from vlm_grasp_locator.runtime.memory import MALLOC_ARENAS, limit_malloc_arenas

# ``decoder_workers`` default: one worker per torch intra-op thread (i.e. per core).
PER_CORE = -1

_LOCK = threading.Lock()
_workers: Optional[CpuWorkers] = None


@dataclass(frozen=True)
class ProcessSettings:
    """What ``configure_process`` left in force."""

    num_threads: int  # torch's intra-op threads now
    workers: Optional[CpuWorkers]  # the decoder's workers; None = batches run inline
    malloc_arenas_capped: bool  # this call capped glibc's arenas


def configure_process(
    *,
    num_threads: int = 0,
    decoder_workers: int = PER_CORE,
    malloc_arena_max: Optional[int] = MALLOC_ARENAS,
) -> ProcessSettings:
    """Apply the process-wide policy; returns what is in force.

    num_threads: torch's intra-op threads (``torch.set_num_threads``); 0 keeps torch's
        default (one per core). Also sizes ONNX Runtime's sessions, which read it when
        they are created, so call this before loading models.
    decoder_workers: threads that run MobileSAM's prompt batches side by side, each with
        one torch thread (``CpuWorkers``; 15-25% faster decoding on the CPU). ``PER_CORE``
        (default): one per torch thread; 0 or 1: the batches run in the calling thread
        and torch's thread count is never toggled. Kept for the process's life; a call
        with another count replaces them.
    malloc_arena_max: cap glibc's malloc arenas for threads created from now on (what
        ``MALLOC_ARENA_MAX`` does; the worker threads otherwise raise the resident size
        by ~1 GB, see ``memory``); None leaves malloc alone. Call early, before other
        threads exist, for it to cover them too.
    """
    global _workers
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    if decoder_workers < 0 and decoder_workers != PER_CORE:
        raise ValueError(f"decoder_workers must be >= 0 or PER_CORE, got {decoder_workers}")
    capped = limit_malloc_arenas(malloc_arena_max) if malloc_arena_max else False
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    count = torch.get_num_threads() if decoder_workers == PER_CORE else decoder_workers
    with _LOCK:
        if _workers is not None and (count < 2 or _workers.workers != count):
            _workers.close()
            _workers = None
        if _workers is None and count >= 2:
            _workers = CpuWorkers(count)
        workers = _workers
    return ProcessSettings(torch.get_num_threads(), workers, capped)


def configured_workers() -> Optional[CpuWorkers]:
    """The decoder workers the last ``configure_process`` made; None if none (inline)."""
    with _LOCK:
        return _workers
