"""Independent torch work side by side on CPU threads: order, settings, failures, same
masks; and the process policy only an entry point applies."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from vlm_grasp_locator.pipeline.mask_proposals import PROMPT_BATCH, MaskProposer
from vlm_grasp_locator.runtime import process
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers, torch_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workers():
    pool = CpuWorkers(2)
    yield pool
    pool.close()


def test_results_keep_the_order_and_each_worker_has_one_torch_thread(two_threads, workers):
    seen = []

    def work(x: int) -> int:
        seen.append(
            (
                threading.current_thread().name,
                torch.get_num_threads(),
                torch.is_inference_mode_enabled(),
            )
        )
        time.sleep(0.002 * (x % 3))  # finish out of order
        return x * x

    assert workers.map(work, range(12)) == [x * x for x in range(12)]
    assert {name for name, _, _ in seen} <= {"cpu-work_0", "cpu-work_1"}
    assert {(threads, inference) for _, threads, inference in seen} == {(1, True)}
    assert torch.get_num_threads() == 2  # restored


def test_one_item_runs_inline_with_the_callers_settings(two_threads, workers):
    seen = []
    out = workers.map(
        lambda x: seen.append((threading.current_thread(), torch.get_num_threads())) or x, [1]
    )
    assert out == [1]
    assert seen == [(threading.current_thread(), 2)]


def test_a_caller_held_to_one_thread_runs_inline(two_threads, workers):
    seen = []
    with torch_threads(1):
        assert workers.map(lambda x: seen.append(threading.current_thread()) or x, [1, 2]) == [
            1,
            2,
        ]
    assert seen == [threading.current_thread()] * 2


def test_a_failure_is_raised_stops_the_rest_and_restores_the_threads(two_threads, workers):
    calls = []

    def work(x: int) -> int:
        calls.append(x)
        if x == 0:
            raise RuntimeError("out of memory in batch 0")
        time.sleep(0.01)
        return x

    with pytest.raises(RuntimeError, match="batch 0"):
        workers.map(work, range(200))
    assert len(calls) < 100  # the queued calls were dropped
    assert torch.get_num_threads() == 2


def test_torch_threads_restores_after_an_error(two_threads):
    with pytest.raises(KeyError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyError("x")
    assert torch.get_num_threads() == 2


def test_fewer_than_two_workers_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        CpuWorkers(1)


def test_the_pipeline_changes_no_process_state(locator, scene, two_threads, monkeypatch):
    """Without workers from the entry point the proposer never touches torch's threads."""
    changes = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: changes.append(n) or real(n))
    proposer = MaskProposer(locator.proposer.segmenter, locator.proposer.settings)
    assert proposer.workers is None
    assert len(proposer(scene)) >= 1
    assert changes == []


def test_configure_process_is_the_entry_points_policy(two_threads, monkeypatch):
    monkeypatch.setattr(process, "_workers", None)
    capped = []
    monkeypatch.setattr(process, "limit_malloc_arenas", lambda n: capped.append(n) or True)
    settings = process.configure_process(num_threads=2, malloc_arena_max=2)
    try:
        assert settings.num_threads == torch.get_num_threads() == 2
        assert settings.workers is not None and settings.workers.workers == 2  # one per core
        assert capped == [2] and settings.malloc_arenas_capped
        assert process.configured_workers() is settings.workers
        # The same policy again keeps the same threads; no workers ends them.
        same = process.configure_process(num_threads=2, malloc_arena_max=None)
        assert same.workers is settings.workers and capped == [2]
        inline = process.configure_process(decoder_workers=0, malloc_arena_max=None)
        assert inline.workers is None and process.configured_workers() is None
    finally:
        process.configure_process(decoder_workers=0, malloc_arena_max=None)
    with pytest.raises(ValueError, match="num_threads"):
        process.configure_process(num_threads=-1)


def test_proposer_gives_the_same_masks_on_threads_as_in_one(locator, scene, two_threads, workers):
    """The decoder's batches on two worker threads against all of them in the caller's
    thread; both with one torch thread per batch, so the arithmetic is the same."""
    settings = replace(
        locator.proposer.settings, box_nms_thresh=1.0, min_mask_region_area=0
    )  # keep them all
    threaded_proposer = MaskProposer(locator.proposer.segmenter, settings, workers)
    inline_proposer = MaskProposer(locator.proposer.segmenter, settings)
    assert len(threaded_proposer.grid) > 2 * PROMPT_BATCH  # several batches per worker
    encoded = threaded_proposer.encode(scene)
    threaded = threaded_proposer.propose(encoded)
    with torch_threads(1):
        inline = inline_proposer.propose(encoded)  # the same image embedding, decoded again
    assert len(threaded) == len(inline) >= 10
    np.testing.assert_array_equal(threaded.masks, inline.masks)
    np.testing.assert_array_equal(threaded.predicted_iou, inline.predicted_iou)
    np.testing.assert_array_equal(threaded.stability_score, inline.stability_score)
    np.testing.assert_array_equal(threaded.point_coords, inline.point_coords)
