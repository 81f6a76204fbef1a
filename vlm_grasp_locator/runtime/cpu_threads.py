"""Running independent pieces of torch work side by side on the CPU's cores.

torch splits each operation across its intra-op threads, which pays a fork/join (and,
with ``OMP_WAIT_POLICY=PASSIVE``, a wake-up) per operation. For many small operations
on independent inputs, such as the mask decoder's prompt batches, giving each core a
whole batch with one intra-op thread is faster: measured 15-25% on the decoder here.

``CpuWorkers`` is that executor. Nothing creates one behind the caller's back: an entry
point makes it (``runtime.process.configure_process``) and hands it to the pipeline;
without one the pipeline runs its batches in the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# torch's thread count has a process-wide part: two overlapping calls must not
# interleave their set/restore. Held for a whole ``CpuWorkers.map`` call; re-entrant,
# so a caller may run one inside its own ``torch_threads`` block.
_THREADS_LOCK = threading.RLock()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is ``n`` inside the block and restored after it.

    With OpenMP the setting is the calling thread's plus a process-wide default that every
    thread adopts when it first runs torch: threads already running keep theirs, and a
    thread whose first torch work falls inside the block keeps ``n``. The workers rely on
    that: they are created, and first run torch, inside such a block.
    """
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class CpuWorkers:
    """``workers`` long-lived threads that each run whole pieces of torch work on one core.

    The threads live as long as this object (``close`` ends them): glibc ties each thread
    to one malloc arena for its life, so the same threads reuse the same heaps inference
    after inference instead of new threads spreading transient buffers over every arena
    the process has (``memory``). Create it after capping the arenas
    (``configure_process`` does both, in that order).

    ``map`` sets torch's process-wide thread count to 1 while it runs (restored after):
    that is the price of one thread per core, and why only an entry point should make one.
    """

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"CpuWorkers needs at least 2 workers, got {workers}")
        self.workers = workers
        self._lock = threading.Lock()  # one map at a time: the threads are shared
        self._pool: Optional[ThreadPoolExecutor] = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="cpu-work"
            )
        return self._pool

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> List[R]:
        """``[fn(x) for x in items]``, in order, on the workers with one torch thread each.

        A single item, or a caller held to one torch thread (``torch_threads(1)``, e.g. to
        count FLOPs with a thread-local mode), runs in the caller's thread with its settings
        unchanged. ``fn`` runs
        under ``torch.inference_mode`` and the caller's CPU autocast (both are per thread:
        so ``precision: bf16`` reaches the workers). The first exception raised by
        ``fn`` is raised here; calls not started by then are dropped and the running ones
        finish first. One call at a time (others wait).
        """
        items = list(items)
        if len(items) <= 1 or torch.get_num_threads() <= 1:
            return [fn(x) for x in items]

        autocast_on = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")

        def call(x: T) -> R:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=autocast_on):
                return fn(x)

        with self._lock, torch_threads(1):
            futures = [self._executor().submit(call, x) for x in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # those not started yet
                wait(futures)  # and the running ones, before torch's thread count is restored
                raise

    def close(self) -> None:
        """End the threads (after the running work); a later ``map`` starts new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def map_inline_or_on(
    workers: Optional[CpuWorkers], fn: Callable[[T], R], items: Iterable[T]
) -> List[R]:
    """``workers.map(fn, items)``, or a plain loop in the caller's thread when None."""
    if workers is None:
        return [fn(x) for x in items]
    return workers.map(fn, items)
