"""Fast mode: the target phrase chooses at most 32 MobileSAM prompts; answers look like
exact mode's."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest

from vlm_grasp_locator.pipeline.crop_scoring import CropScorer
from vlm_grasp_locator.pipeline.locator import FAST_SCORED_CROPS, Locator, LocatorConfig
from vlm_grasp_locator.pipeline.mask_proposals import MaskProposer
from vlm_grasp_locator.pipeline.text_guided_prompts import (
    MAX_PROMPTS,
    MAX_WINDOWS_PER_AXIS,
    candidate_points,
    choose_prompts,
    relevance_at,
    relevance_windows,
)

from scenes import SMALL_PIPELINE, assert_well_formed

# Box NMS off: random-weight masks all have near image-sized boxes, and NMS would leave one.
FAST = dict(SMALL_PIPELINE, mode="fast", box_nms_thresh=1.0)


class PromptRecorder:
    """Wraps a real ``MaskProposer.propose`` and records what it was asked to decode, and
    counts the images its encoder ran on."""

    def __init__(self, proposer: MaskProposer) -> None:
        self.calls: List[Tuple[Tuple[int, int], np.ndarray]] = []
        self.encoded = 0
        inner, inner_encode = proposer.propose, proposer.encode

        def record(encoded, points=None):
            assert points is not None, "fast mode decodes chosen points, never the grid"
            points = np.array(points, dtype=np.float64).reshape(-1, 2)
            self.calls.append((encoded.original_size, points))
            return inner(encoded, points)

        def encode(image):
            self.encoded += 1
            return inner_encode(image)

        proposer.propose = record
        proposer.encode = encode


class ImageCounter:
    """Counts the images that go through TinyCLIP's ``encode_image``."""

    def __init__(self, clip, monkeypatch) -> None:
        self.images = 0
        inner = clip.encode_images

        def count(pixels):
            self.images += len(pixels)
            return inner(pixels)

        monkeypatch.setattr(clip, "encode_images", count)


def fast_locator(base: Locator, **overrides) -> Tuple[Locator, PromptRecorder]:
    """A fast-mode Locator on the session's models (random weights), prompts recorded."""
    config = LocatorConfig(**{**FAST, **overrides})
    config.validate()
    proposer = MaskProposer(base.proposer.segmenter, config.proposal_settings())
    scorer = CropScorer(base.scorer.clip, config.crop_settings(), config.clip_batch_size)
    recorder = PromptRecorder(proposer)
    return Locator(config, proposer, scorer, base.random_weights, base.device), recorder


# ---------------------------------------------------------------- prompt choice, no models


def test_windows_tile_the_image_at_two_scales():
    windows = relevance_windows(640, 480)
    assert len(windows) == 8  # 2 of side 480, 6 of side 240
    sides = windows[:, 2] - windows[:, 0]
    assert sorted(set(sides.tolist())) == [240, 480]
    assert (sides == windows[:, 3] - windows[:, 1]).all()
    assert (
        (windows[:, :2] >= 0).all()
        and (windows[:, 2] <= 640).all()
        and (windows[:, 3] <= 480).all()
    )
    for side in (240, 480):  # every pixel lies in a window of each scale
        cover = np.zeros((480, 640), bool)
        for x0, y0, x1, y1 in windows[sides == side]:
            cover[y0:y1, x0:x1] = True
        assert cover.all()
    assert len(relevance_windows(1280, 720)) == 10
    assert len(relevance_windows(300, 300)) == 5


@pytest.mark.parametrize("width, height", [(2048, 8), (8, 2048), (2, 2), (3, 2)])
def test_degenerate_images_get_few_windows_and_prompts_inside(width, height):
    windows = relevance_windows(width, height)
    assert 1 <= len(windows) <= 2 * MAX_WINDOWS_PER_AXIS**2
    assert (
        (windows[:, :2] >= 0).all()
        and (windows[:, 2] <= width).all()
        and (windows[:, 3] <= height).all()
    )
    assert ((windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])).all()
    choice = choose_prompts(width, height, windows, np.linspace(0, 1, len(windows)), MAX_PROMPTS)
    points = choice.points_xy
    assert 1 <= len(points) <= MAX_PROMPTS
    assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()


def fake_relevance(windows: np.ndarray, hot_xy: Tuple[float, float]) -> np.ndarray:
    """A deterministic stand-in for TinyCLIP: windows containing ``hot_xy`` score high,
    smaller ones higher (a more specific view of the object); the rest fade with distance."""
    x, y = hot_xy
    inside = (
        (windows[:, 0] <= x) & (x < windows[:, 2]) & (windows[:, 1] <= y) & (y < windows[:, 3])
    )
    cx, cy = (windows[:, 0] + windows[:, 2]) / 2, (windows[:, 1] + windows[:, 3]) / 2
    side = windows[:, 2] - windows[:, 0]
    return np.where(inside, 0.9 - side / 4000.0, 0.3 / (1.0 + np.hypot(cx - x, cy - y) / 100.0))


@pytest.mark.parametrize("max_prompts", [1, 5, 16, MAX_PROMPTS])
def test_prompts_start_at_the_relevant_region_and_stay_inside(max_prompts):
    width, height, hot = 640, 480, (560.0, 90.0)
    windows = relevance_windows(width, height)
    choice = choose_prompts(width, height, windows, fake_relevance(windows, hot), max_prompts)
    points = choice.points_xy
    assert 1 <= len(points) <= max_prompts
    assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()
    # Best first, and the first prompt inside the small window around the hot spot.
    assert (np.diff(choice.relevance) <= 1e-12).all()
    assert points[0, 0] >= 400 and points[0, 1] < 240
    # Spread out: no two prompts closer than a quarter of the small window's side.
    if len(points) > 1:
        gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
        assert gaps[np.triu_indices(len(points), 1)].min() >= 60 - 1e-9
    np.testing.assert_allclose(
        choice.relevance, relevance_at(points, windows, choice.window_scores)
    )


def test_flat_relevance_still_gives_spread_prompts_from_the_centre():
    windows = relevance_windows(320, 240)
    choice = choose_prompts(320, 240, windows, np.full(len(windows), 0.5), 8)
    assert len(choice.points_xy) == 8
    candidates = candidate_points(windows)
    nearest = np.hypot(candidates[:, 0] - 160, candidates[:, 1] - 120).min()
    assert np.hypot(*(choice.points_xy[0] - (160, 120))) == pytest.approx(nearest)
    assert len(np.unique(choice.points_xy, axis=0)) == 8


@pytest.mark.parametrize("bad", [0, MAX_PROMPTS + 1])
def test_prompt_budget_outside_1_to_32_is_refused(bad):
    windows = relevance_windows(320, 240)
    with pytest.raises(ValueError, match="max_prompts"):
        choose_prompts(320, 240, windows, np.zeros(len(windows)), bad)


def test_config_validates_mode_and_prompt_budget():
    assert LocatorConfig().mode == "exact"  # exact stays the default
    for value in (0, 33):
        with pytest.raises(ValueError, match="fast_prompts"):
            LocatorConfig(**{**FAST, "fast_prompts": value}).validate()
    with pytest.raises(ValueError, match="mode"):
        LocatorConfig(**{**FAST, "mode": "turbo"}).validate()
    LocatorConfig(**{**FAST, "fast_prompts": MAX_PROMPTS}).validate()


# ---------------------------------------------------------------- real models, random weights


def test_fast_mode_decodes_at_most_32_prompts_inside_the_image(locator, scene):
    fast, recorder = fast_locator(locator, fast_prompts=MAX_PROMPTS)
    result = fast.locate(scene, "take the red block")
    assert len(recorder.calls) == 1  # one decoding pass, no grid
    ((size_hw, points),) = recorder.calls
    assert size_hw == scene.shape[:2]
    assert 1 <= len(points) <= MAX_PROMPTS and result.prompts == len(points)
    assert (
        (points >= 0).all()
        and (points[:, 0] < scene.shape[1]).all()
        and (points[:, 1] < scene.shape[0]).all()
    )
    assert len(np.unique(points, axis=0)) == len(points)
    # Same shape of answer as exact mode: sorted, image-sized masks, boxes from the masks.
    assert result.target == "red block" and result.found
    assert 1 <= len(result.detections) <= fast.config.max_detections
    assert 1 <= result.proposals <= max(FAST_SCORED_CROPS, fast.config.max_detections)
    assert_well_formed(result, scene.shape[1], scene.shape[0])
    assert {"relevance", "proposals", "crops", "text", "total"} <= set(result.timings_ms)


def test_fast_mode_reports_stages_and_reuses_the_frame(locator, scene, monkeypatch):
    fast, recorder = fast_locator(locator, fast_prompts=6)
    images = ImageCounter(fast.scorer.clip, monkeypatch)
    stages: List[Tuple[str, float]] = []
    first = fast.locate(scene, "take the blue block", on_stage=lambda s, p: stages.append((s, p)))
    assert [s for s, _ in stages] == ["proposing", "scoring", "scoring"]
    assert [p for _, p in stages] == sorted(p for _, p in stages)
    assert first.prompts <= 6 and len(recorder.calls) == 1 and recorder.encoded == 1
    windows = len(relevance_windows(scene.shape[1], scene.shape[0]))
    assert images.images == windows + first.proposals  # relevance windows, then the mask crops

    # Same frame (another array), same target: nothing is decoded or embedded again.
    stages.clear()
    images.images = 0
    again = fast.locate(
        scene.copy(), "grab the blue block", on_stage=lambda s, p: stages.append((s, p))
    )
    assert len(recorder.calls) == 1 and images.images == 0
    assert (
        again.timings_ms["relevance"]
        == again.timings_ms["proposals"]
        == again.timings_ms["crops"]
        == 0.0
    )
    assert [d.box_xyxy for d in again.detections] == [d.box_xyxy for d in first.detections]
    assert [d.score for d in again.detections] == [d.score for d in first.detections]
    assert [s for s, _ in stages] == ["scoring"]

    # Same frame, new target: the window embeddings and MobileSAM's image embedding are
    # reused, the prompts are the new target's.
    other = fast.locate(scene, "take the green block")
    assert len(recorder.calls) == 2 and recorder.encoded == 1
    assert images.images == other.proposals  # mask crops only, no relevance windows
    assert_well_formed(other, scene.shape[1], scene.shape[0])
    assert fast._frame.exact is None  # exact mode's results are not made
    assert list(fast._frame.targets) == ["blue block", "green block"]

    # A new frame (by key) starts again: windows, encoder, prompts.
    fast.locate(scene, "take the green block", frame_key="next")
    assert len(recorder.calls) == 3 and recorder.encoded == 2


def test_fast_mode_on_a_downscaled_image_maps_answers_back(locator, scene):
    big = np.repeat(np.repeat(scene, 2, axis=0), 2, axis=1)  # 640x480, models see 320x240
    fast, recorder = fast_locator(locator, max_image_side=320, fast_prompts=4)
    result = fast.locate(big, "take the red block")
    ((size_hw, points),) = recorder.calls
    assert size_hw == (240, 320) and (points[:, 0] < 320).all() and (points[:, 1] < 240).all()
    assert result.found
    assert_well_formed(result, 640, 480)
