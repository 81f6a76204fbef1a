"""Running independent pieces of torch work side by side on the CPU's cores.

torch splits each operation across its intra-op threads, which pays a fork/join (and,
with ``OMP_WAIT_POLICY=PASSIVE``, a wake-up) per operation. For many small operations
on independent inputs, such as the mask decoder's prompt batches, giving each core a
whole batch with one intra-op thread is faster: measured 15-25% on the decoder here.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, TypeVar

import torch

from vlm_grasp_locator.runtime.memory import limit_malloc_arenas

T = TypeVar("T")
R = TypeVar("R")

# torch's thread count has a process-wide part: two overlapping calls must not
# interleave their set/restore. Held for a whole ``map_on_cpu_threads`` call; re-entrant,
# so a caller may run one inside its own ``torch_threads`` block.
_THREADS_LOCK = threading.RLock()
_POOL_LOCK = threading.Lock()
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_WORKERS = 0


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is ``n`` inside the block and restored after it.

    With OpenMP the setting is the calling thread's plus a process-wide default that every
    thread adopts when it first runs torch: threads already running keep theirs, and a
    thread whose first torch work falls inside the block keeps ``n``. The decoder's pool
    threads rely on that: they are created, and first run torch, inside such a block.
    """
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's worker threads, created once (and again only for another size).

    Kept alive on purpose: glibc ties each thread to one malloc arena for its life, so
    the same threads reuse the same heaps inference after inference instead of new
    threads spreading transient buffers over every arena the process has (``memory``).
    """
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS != workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            limit_malloc_arenas()
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpu-work")
            _POOL_WORKERS = workers
        return _POOL


def map_on_cpu_threads(fn: Callable[[T], R], items: Iterable[T], workers: int) -> List[R]:
    """``[fn(x) for x in items]``, in order, on ``workers`` threads with one torch thread each.

    ``workers <= 1`` (or a single item) runs in the caller's thread with its settings
    unchanged. ``fn`` runs under ``torch.inference_mode`` (it is per thread). The first
    exception raised by ``fn`` is raised here; calls not started by then are dropped and
    the running ones finish first. One call at a time (others wait): the workers are
    shared by the process.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]

    def call(x: T) -> R:
        with torch.inference_mode():
            return fn(x)

    with torch_threads(1):
        futures = [_pool(workers).submit(call, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()  # those not started yet
            wait(futures)  # and the running ones, before torch's thread count is restored
            raise
