"""Running independent pieces of torch work side by side on the CPU's cores.

torch splits each operation across its intra-op threads, which pays a fork/join (and,
with ``OMP_WAIT_POLICY=PASSIVE``, a wake-up) per operation. For many small operations
on independent inputs, such as the mask decoder's prompt batches, giving each core a
whole batch with one intra-op thread is faster: measured 15-25% on the decoder here.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, TypeVar

import torch

from .memory import limit_malloc_arenas

T = TypeVar("T")
R = TypeVar("R")

# torch's thread count is process-wide: two overlapping calls must not interleave
# their set/restore.
_THREADS_LOCK = threading.Lock()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is ``n`` inside the block and restored after it.

    Process-wide: torch work on other threads meanwhile also runs with ``n`` threads.
    """
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def map_on_cpu_threads(fn: Callable[[T], R], items: Iterable[T], workers: int) -> List[R]:
    """``[fn(x) for x in items]``, in order, on ``workers`` threads with one torch thread each.

    ``workers <= 1`` (or a single item) runs in the caller's thread with its settings
    unchanged. ``fn`` runs under ``torch.inference_mode`` (it is per thread). The first
    exception raised by ``fn`` is raised here; calls not started by then are dropped and
    the running ones finish first.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]

    def call(x: T) -> R:
        with torch.inference_mode():
            return fn(x)

    limit_malloc_arenas()  # see ``memory``: each new thread's own heap costs peak memory
    with torch_threads(1), ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="cpu-work") as pool:
        futures = [pool.submit(call, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()  # those not started yet; leaving the block waits for the rest
            raise
