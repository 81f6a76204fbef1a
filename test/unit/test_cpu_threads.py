"""Independent torch work side by side on CPU threads: order, settings, failures, same masks."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from vlm_grasp_locator.runtime.cpu_threads import map_on_cpu_threads, torch_threads
from vlm_grasp_locator.pipeline.mask_proposals import PROMPT_BATCH, MaskProposer


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_keep_the_order_and_each_worker_has_one_torch_thread(two_threads):
    seen = []

    def work(x: int) -> int:
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled()))
        time.sleep(0.002 * (x % 3))  # finish out of order
        return x * x

    assert map_on_cpu_threads(work, range(12), workers=2) == [x * x for x in range(12)]
    assert {name for name, _, _ in seen} <= {"cpu-work_0", "cpu-work_1"}
    assert {(threads, inference) for _, threads, inference in seen} == {(1, True)}
    assert torch.get_num_threads() == 2  # restored


def test_one_worker_runs_inline_with_the_callers_settings(two_threads):
    seen = []
    out = map_on_cpu_threads(lambda x: seen.append((threading.current_thread(), torch.get_num_threads())) or x, [1, 2], 1)
    assert out == [1, 2]
    assert seen == [(threading.current_thread(), 2)] * 2


def test_a_failure_is_raised_stops_the_rest_and_restores_the_threads(two_threads):
    calls = []

    def work(x: int) -> int:
        calls.append(x)
        if x == 0:
            raise RuntimeError("out of memory in batch 0")
        time.sleep(0.01)
        return x

    with pytest.raises(RuntimeError, match="batch 0"):
        map_on_cpu_threads(work, range(200), workers=2)
    assert len(calls) < 100  # the queued calls were dropped
    assert torch.get_num_threads() == 2


def test_torch_threads_restores_after_an_error(two_threads):
    with pytest.raises(KeyError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyError("x")
    assert torch.get_num_threads() == 2


def test_proposer_gives_the_same_masks_on_threads_as_in_one(locator, scene, two_threads):
    """The decoder's batches on two worker threads against all of them in the caller's
    thread; both with one torch thread per batch, so the arithmetic is the same."""
    settings = replace(locator.proposer.settings, box_nms_thresh=1.0, min_mask_region_area=0)  # keep them all
    proposer = MaskProposer(locator.proposer.sam, settings)
    assert len(proposer.grid) > 2 * PROMPT_BATCH  # several batches per worker
    threaded = proposer(scene)
    with torch_threads(1):
        inline = proposer(scene)  # same frame: the kept image embedding, only the decoding again
    assert len(threaded) == len(inline) >= 10
    np.testing.assert_array_equal(threaded.masks, inline.masks)
    np.testing.assert_array_equal(threaded.predicted_iou, inline.predicted_iou)
    np.testing.assert_array_equal(threaded.stability_score, inline.stability_score)
    np.testing.assert_array_equal(threaded.point_coords, inline.point_coords)
