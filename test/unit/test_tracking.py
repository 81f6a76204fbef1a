"""Following an object: ``Locator.track`` and ``tracking.Tracker`` on moving scenes.

Random weights cannot segment, so the answers come from parts of known semantics,
through the real ``Locator`` and ``Tracker`` code: a proposer of the scene's true
object masks, a box-prompt segmenter that returns the true mask of the object under
the prompt box, and ``synthetic_scenes.OracleScorer`` (colour and shape read from the
pixels). The frames are rendered scenes where a coloured shape moves a few pixels a
frame. test/models/test_tracking_mobile_sam.py runs the real MobileSAM box-prompt path.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import cv2
import numpy as np
import pytest

from synthetic_scenes import COLOURS, OracleScorer, SceneObject, frame, moving, true_box
from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig
from vlm_grasp_locator.pipeline.proposals import Proposals
from vlm_grasp_locator.pipeline.tracking import (
    BoxPrompt,
    PromptFrame,
    PromptMasks,
    PromptSegmenter,
    TrackEvent,
    Tracker,
    TrackSettings,
    TrackStatus,
    TrackState,
    box_iou,
    deep_points,
)

PHRASE = "red square"
COMMAND = f"pick up the {PHRASE}"
FPS = 10.0


# ---------------------------------------------------------------- known-semantics parts


def colour_components(image: np.ndarray) -> List[np.ndarray]:
    """The objects of a rendered scene: connected regions of each object colour."""
    found = []
    pixels = image.astype(np.int32)
    for rgb in COLOURS.values():
        near = (np.abs(pixels - np.array(rgb)).max(axis=2) < 40).astype(np.uint8)
        count, labels = cv2.connectedComponents(near)
        found += [labels == i for i in range(1, count) if (labels == i).sum() >= 20]
    return found


class TrueMasks:
    """A ``Proposer``: every object's true mask, read from the pixels; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> Proposals:
        self.calls += 1
        masks = colour_components(image)
        if not masks:
            return Proposals.empty(image.shape[:2])
        return Proposals.from_masks(np.stack(masks))


class ObjectUnderBox:
    """A ``PromptSegmenter``: the true mask of the object that overlaps the prompt box
    most (none: an empty mask). Records its prompts."""

    def __init__(self) -> None:
        self.prompts: List[BoxPrompt] = []

    def __call__(self, frame: PromptFrame, prompt: BoxPrompt) -> PromptMasks:
        self.prompts.append(prompt)
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box_xyxy)
        best = np.zeros(frame.image.shape[:2], bool)
        overlap = 0
        for mask in colour_components(frame.image):
            inside = int(mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].sum())
            if inside > overlap:
                best, overlap = mask, inside
        return PromptMasks(best[None], np.ones(1, np.float32))


class Oracle:
    """A ``RegionScorer``: ``OracleScorer`` on the proposals' masks."""

    def __init__(self) -> None:
        self.oracle = OracleScorer()
        self.crops = 0

    def __call__(self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]):
        self.crops += len(proposals)
        return self.oracle.score(image, proposals.masks, phrases)


class Parts:
    def __init__(self) -> None:
        self.proposer, self.segmenter, self.scorer = TrueMasks(), ObjectUnderBox(), Oracle()

    def locator(self) -> Locator:
        segmenter: PromptSegmenter = self.segmenter
        return Locator.from_parts(
            LocatorConfig(device="cpu", score_threshold=0.3),
            proposer=self.proposer,
            scorer=self.scorer,
            prompt_segmenter=segmenter,
        )


# ---------------------------------------------------------------- moving scenes


def run(tracker: Tracker, targets: Sequence[Optional[SceneObject]],
        stamps: Optional[Sequence[float]] = None):
    results = []
    for i, target in enumerate(targets):
        image, mask = frame(target, seed=i)
        stamp = stamps[i] if stamps is not None else i / FPS
        results.append((tracker.step(image, stamp_s=stamp, frame_key=i), mask))
    return results


# ---------------------------------------------------------------- the tests


def test_the_id_stays_stable_while_the_object_moves() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = moving((50.0, 60.0), (6.0, 3.0), 20)
    results = run(tracker, targets)
    events = [r.event for r, _ in results]
    assert events == [TrackEvent.STARTED] + [TrackEvent.TRACKED] * 19
    assert {r.track_id for r, _ in results} == {"1"}
    assert all(r.status == TrackStatus.TRACKING and r.found for r, _ in results)
    for r, mask in results:
        assert box_iou(r.detection.box_xyxy, true_box(mask)) > 0.95
        assert r.detection.label == PHRASE
    # The full query ran once; afterwards one prompt and one crop a frame.
    assert parts.proposer.calls == 1
    assert len(parts.segmenter.prompts) == 19
    assert parts.scorer.crops == len(colour_components(frame(targets[0], 0)[0])) + 19
    assert tracker.frames_tracked == results[-1][0].frames_tracked == 19
    assert tracker.state == TrackStatus.TRACKING and tracker.track_id == "1"
    # The constant-velocity model learns the motion: later predictions sit on the object.
    for r, mask in results[5:]:
        assert box_iou(r.predicted_box, true_box(mask)) > 0.85
    # The prompt carries points inside the object.
    last = parts.segmenter.prompts[-1]
    assert 1 <= len(last.points_xy) <= TrackSettings().prompt_points
    x, y = last.points_xy.astype(int).T
    assert results[-1][1][y, x].all()


def test_lost_when_the_object_leaves_the_image_then_the_track_expires() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = moving((200.0, 110.0), (12.0, 0.0), 14)  # gone from x = 320 + 14
    results = run(tracker, targets)
    assert {r.track_id for r, _ in results} == {"1"}
    lost = [r for r, _ in results if r.event == TrackEvent.LOST]
    assert lost and "left the image" in lost[0].reason
    assert lost[0].detection is None and lost[0].located is not None
    last, _ = results[-1]
    assert last.status == TrackStatus.LOST and last.detection is None
    assert tracker.state == TrackStatus.LOST
    image, _ = frame(None, seed=99)
    expired = tracker.step(image, stamp_s=5.0, frame_key=99)
    assert expired.event == TrackEvent.EXPIRED and expired.status == TrackStatus.IDLE
    assert "ended" in expired.reason and expired.track_id is None
    assert tracker.state == TrackStatus.IDLE and tracker.track_id is None


def swapped(n: int, swap: range) -> List[SceneObject]:
    """The moving red square, blue on the frames in ``swap``."""
    return [o.with_(colour="blue") if i in swap else o
            for i, o in enumerate(moving((40.0, 60.0), (5.0, 2.0), n))]


def test_lost_on_a_colour_swap_and_reacquired_with_the_same_id() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    results = run(tracker, swapped(16, range(10, 12)))
    events = [r.event for r, _ in results]
    assert events[:10] == [TrackEvent.STARTED] + [TrackEvent.TRACKED] * 9
    lost, searching, back = (results[i][0] for i in (10, 11, 12))
    assert lost.event == TrackEvent.LOST and lost.status == TrackStatus.LOST
    assert "crop score" in lost.reason and PHRASE in lost.reason
    assert lost.rejected is not None and lost.track_id == "1"
    assert searching.event == TrackEvent.SEARCHING and searching.track_id == "1"
    assert back.event == TrackEvent.REACQUIRED and back.track_id == "1"
    assert "crop score" in back.reason and back.reacquisitions == 1
    assert box_iou(back.detection.box_xyxy, true_box(results[12][1])) > 0.95
    assert events[13:] == [TrackEvent.TRACKED] * 3
    assert {r.track_id for r, _ in results} == {"1"}
    assert tracker.reacquisitions == 1


def test_found_again_after_the_window_gets_a_new_id() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = swapped(13, range(10, 12))
    stamps = [i / FPS for i in range(11)] + [1.1, 3.5]  # back 2.6 s after its last frame
    results = run(tracker, targets, stamps)
    back = results[-1][0]
    assert back.event == TrackEvent.STARTED and back.track_id == "2"
    assert "new track" in back.reason and "2.6 s" in back.reason
    assert back.reacquisitions == 0 and back.frames_tracked == 0


def test_a_frame_after_the_window_ends_the_track_and_the_next_find_is_new() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = swapped(13, range(10, 12))
    stamps = [i / FPS for i in range(11)] + [3.0, 3.1]
    results = run(tracker, targets, stamps)
    assert results[11][0].event == TrackEvent.EXPIRED
    assert results[11][0].status == TrackStatus.IDLE
    assert results[12][0].event == TrackEvent.STARTED and results[12][0].track_id == "2"
    assert results[12][0].reason == ""  # the old track had ended: nothing to explain


def test_a_mask_that_grows_too_much_loses_the_track() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = moving((80.0, 100.0), (4.0, 0.0), 8)
    targets[5:] = [o.with_(half_size=30) for o in targets[5:]]
    results = run(tracker, targets)
    jumped = results[5][0]
    assert "area" in jumped.reason and "jumped" in jumped.reason
    # The full query finds the grown square; it overlaps the prediction too little to be
    # the same object by the rule: a new id, which says why.
    assert jumped.event == TrackEvent.STARTED and jumped.track_id == "2"
    assert "new track" in jumped.reason
    assert [r.event for r, _ in results[6:]] == [TrackEvent.TRACKED] * 2


def test_a_mask_that_jumps_away_from_the_prediction_loses_the_track() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = moving((80.0, 100.0), (4.0, 0.0), 6)
    targets[5] = targets[4].with_(centre=(targets[4].centre[0] + 20, targets[4].centre[1] + 20))
    results = run(tracker, targets)
    assert "IoU" in results[5][0].reason and "jumped" in results[5][0].reason
    assert results[5][0].track_id == "2"


def test_tracking_off_runs_the_full_query_every_frame_and_keeps_the_id() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND, TrackSettings(enabled=False))
    results = run(tracker, moving((50.0, 60.0), (6.0, 3.0), 5))
    assert [r.event for r, _ in results] == [TrackEvent.STARTED] + [TrackEvent.TRACKED] * 4
    assert {r.track_id for r, _ in results} == {"1"}
    assert parts.proposer.calls == 5 and not parts.segmenter.prompts


def test_a_new_frame_size_starts_over() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    run(tracker, moving((50.0, 60.0), (6.0, 3.0), 3))
    image, _ = frame(moving((70.0, 60.0), (0.0, 0.0), 1)[0], seed=5)
    bigger = cv2.resize(image, (480, 360), interpolation=cv2.INTER_NEAREST)
    result = tracker.step(bigger, stamp_s=0.3, frame_key=5)
    assert result.event == TrackEvent.STARTED and result.track_id == "2"
    assert result.detection.mask.shape == (360, 480)


class Cancelled(Exception):
    pass


def test_a_cancelled_full_query_leaves_the_track_lost() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    targets = swapped(12, range(3, 12))
    stages: List[str] = []
    run(tracker, targets[:3])

    def cancel(stage: str, progress: float) -> None:
        stages.append(stage)
        raise Cancelled(stage)  # what a cancelled goal's callback does

    image, _ = frame(targets[3], seed=3)
    with pytest.raises(Cancelled):
        tracker.step(image, stamp_s=0.3, frame_key=3, on_stage=cancel)
    assert stages == ["proposing"]
    assert tracker.state == TrackStatus.LOST and tracker.track_id == "1"
    image, _ = frame(targets[0].with_(centre=(55.0, 62.0)), seed=4)  # red again, near
    result = tracker.step(image, stamp_s=0.4, frame_key=4)
    assert result.event == TrackEvent.REACQUIRED and result.track_id == "1"


def test_nothing_found_stays_idle() -> None:
    parts = Parts()
    tracker = Tracker(parts.locator(), COMMAND)
    image, _ = frame(None, seed=0)
    result = tracker.step(image, stamp_s=0.0, frame_key=0)
    assert result.event == TrackEvent.NOT_FOUND and result.status == TrackStatus.IDLE
    assert result.reason and result.track_id is None and tracker.state == TrackStatus.IDLE


def test_a_track_starts_from_a_locate_result() -> None:
    parts = Parts()
    locator = parts.locator()
    targets = moving((50.0, 60.0), (6.0, 3.0), 2)
    first, _ = frame(targets[0], 0)
    located = locator.locate(first, COMMAND, frame_key=0)
    state = locator.start_track(located, track_id="7", stamp_s=0.0)
    assert state.track_id == "7" and state.phrase == PHRASE
    second, mask = frame(targets[1], 1)
    result = locator.track(second, state, frame_key=1, stamp_s=0.1)
    assert result.status == TrackStatus.TRACKING and result.track_id == "7"
    assert box_iou(result.detection.box_xyxy, true_box(mask)) > 0.95
    # The motion it measured: 6 px right, 3 down in 0.1 s, weighted by the filter gain.
    vx, vy = result.state.velocity_xy
    assert vx == pytest.approx(60 * 0.7, abs=8) and vy == pytest.approx(30 * 0.7, abs=8)
    tracker = Tracker(locator, COMMAND)
    adopted = tracker.start(located, stamp_s=0.0)
    assert adopted.event == TrackEvent.STARTED and adopted.track_id == "1"
    with pytest.raises(ValueError, match="nothing to track"):
        locator.start_track(locator.locate(frame(None, 3)[0], COMMAND))


def test_settings_are_validated() -> None:
    TrackSettings().validate()
    for bad in (dict(min_score=1.5), dict(max_area_ratio=0.5), dict(min_iou=-0.1),
                dict(reacquire_window_s=-1.0), dict(prompt_points=9),
                dict(max_area_ratio=float("nan"))):
        with pytest.raises(ValueError):
            TrackSettings(**bad).validate()
    with pytest.raises(ValueError):
        Tracker(Parts().locator(), COMMAND, TrackSettings(min_iou=2.0))


def test_a_locator_without_a_prompt_segmenter_says_so() -> None:
    locator = Locator.from_parts(LocatorConfig(device="cpu"), proposer=TrueMasks(),
                                 scorer=Oracle())
    image, mask = frame(moving((50.0, 60.0), (0.0, 0.0), 1)[0], 0)
    state = TrackState(
        "1", PHRASE, true_box(mask), int(mask.sum()), deep_points(mask, 3), (0.0, 0.0), 0.0,
        1.0, (image.shape[1], image.shape[0]),
    )
    with pytest.raises(ValueError, match="prompt segmenter"):
        locator.track(image, state, stamp_s=0.1)


def test_deep_points_lie_well_inside_the_mask() -> None:
    mask = np.zeros((60, 80), bool)
    mask[10:50, 10:70] = True
    points = deep_points(mask, 3)
    assert len(points) >= 1
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    x, y = points.astype(int).T
    assert (depth[y, x] >= depth.max() / 2).all()
    assert len(deep_points(np.zeros((5, 5), bool), 3)) == 0
    everything = deep_points(np.ones((40, 60), bool), 3)  # no outside pixel: the edge counts
    x, y = everything[0]
    assert min(x, y, 60 - x, 40 - y) >= 19  # as deep as a 40-pixel-high mask allows


# ---------------------------------------------------------------- the real MobileSAM path
