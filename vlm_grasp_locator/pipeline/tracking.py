"""Follow the object after the first answer: one box prompt and one crop a frame.

A full query (``Locator.locate``) proposes and scores dozens of masks. Once it has
answered, the next frames need much less: the object is near where it was.
``Locator.track`` (the entry point; this module holds the logic) does, per frame:

1. **Predict** where the object is now: the last box moved by a constant-velocity
   model of its centre (``TrackState.predicted_box``), plus a few points deep inside
   the last mask moved the same way (``TrackState.predicted_points``).
2. **Segment that prompt only** (a ``PromptSegmenter``; MobileSAM's box prompt,
   ``SamBoxSegmenter``, by default): the image embedding of the frame is computed once
   and shared with any query on the same frame (the Locator's per-frame cache). Of the
   decoder's masks the one that best fits the predicted box is kept (``select_mask``).
3. **Check it** with ONE crop score against the phrase and its geometry against the
   prediction (``judge``). Any failure loses the track, with the reason.

``Tracker`` runs the whole loop for one command: the first frame is a full query that
starts a track; the next frames are tracked; a lost track is re-acquired by a full
query (exact or fast, per ``config.mode``), which keeps the track's id when it finds
the same object soon (``TrackSettings.reacquire_window_s``) and near where the lost
track was heading (``TrackSettings.reacquire_min_iou``), and gives a new id otherwise.

Boxes and points are pixels of the input image (as in ``Detection``) unless named
otherwise; the prompt given to a segmenter is in pixels of the model image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import (
    Callable,
    Dict,
    Hashable,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

import cv2
import numpy as np
import torch

from vlm_grasp_locator.models.interfaces import EncodedImage, Segmenter
from vlm_grasp_locator.pipeline.detection import Detection
from vlm_grasp_locator.pipeline.mask_proposals import masks_at_image_size

Box = Tuple[float, float, float, float]

# Weight of the newest measured centre velocity against the running estimate (an
# exponential filter): fast enough to follow a hand-moved object within 2-3 frames,
# smooth enough that one jittery mask does not throw the next prediction off.
VELOCITY_GAIN = 0.7
# At most this many points go with the box: the ONNX export's prompt graph takes up to
# 16 sparse tokens (the box's two corners count), and more points add nothing to a box.
MAX_PROMPT_POINTS = 8
# ``select_mask``: the predicted IoU (clipped to [0, 1]) counts this much against the
# IoU of a mask's box with the predicted box, which decides.
PREDICTED_IOU_WEIGHT = 0.25


class TrackStatus(str, Enum):
    IDLE = "idle"  # no track: nothing found yet, or the lost track expired
    TRACKING = "tracking"  # the object is followed
    LOST = "lost"  # lost, and searched for by full queries; the id may still come back

    def __str__(self) -> str:
        return self.value


class TrackEvent(str, Enum):
    """What happened on one frame."""

    STARTED = "started"  # a full query found the object: a new track id
    TRACKED = "tracked"  # followed by its box prompt
    REACQUIRED = "reacquired"  # lost, then found again by a full query: same id
    LOST = "lost"  # lost on this frame, and the full query did not find it
    SEARCHING = "searching"  # still lost (a full query ran and found nothing)
    EXPIRED = "expired"  # lost for longer than the window: the track ended
    NOT_FOUND = "not found"  # no track, and the full query found nothing

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrackSettings:
    """When a track counts as lost, and when a re-acquired object keeps its id.

    enabled: follow by box prompts; False re-runs the full query every frame (the old
      continuous mode; ids still follow the re-acquisition rule).
    min_score: the tracked crop's calibrated score below which the track is lost. Under
      ``LocatorConfig.score_threshold``'s default 0.3 on purpose (hysteresis): a crop
      that passed the full query may score a little lower on a blurred frame.
    max_area_ratio: the mask's area may grow or shrink by at most this factor from one
      frame to the next.
    min_iou: least IoU of the mask's box with the motion-predicted box.
    min_visible: least share of the predicted box inside the image; below it the object
      has left the image (then nothing is decoded).
    reacquire_window_s: a track lost at most this long ago (since its last good frame)
      keeps its id when re-acquired ...
    reacquire_min_iou: ... if the new box overlaps the lost track's predicted box by at
      least this IoU. Otherwise the object gets a new id.
    prompt_points: foreground points inside the last mask sent with the box (0..8).
    """

    enabled: bool = True
    min_score: float = 0.2
    max_area_ratio: float = 2.0
    min_iou: float = 0.3
    min_visible: float = 0.5
    reacquire_window_s: float = 2.0
    reacquire_min_iou: float = 0.3
    prompt_points: int = 3

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("min_score", "min_iou", "min_visible", "reacquire_min_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"tracking {name} must be in [0, 1], got {value}")
        if not self.max_area_ratio >= 1.0:  # also refuses NaN
            raise ValueError(f"tracking max_area_ratio must be >= 1, got {self.max_area_ratio}")
        if not self.reacquire_window_s >= 0.0:
            raise ValueError(
                f"tracking reacquire_window_s must be >= 0, got {self.reacquire_window_s}"
            )
        if not 0 <= self.prompt_points <= MAX_PROMPT_POINTS:
            raise ValueError(
                f"tracking prompt_points must be in [0, {MAX_PROMPT_POINTS}], "
                f"got {self.prompt_points}"
            )


# ---------------------------------------------------------------- geometry


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two x0, y0, x1, y1 boxes; 0 when either is empty."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(
        0.0, by1 - by0
    ) - inter
    return float(inter / union) if union > 0 else 0.0


def visible_fraction(box: Sequence[float], size_wh: Tuple[int, int]) -> float:
    """Share of ``box``'s area inside an image of ``size_wh``; 0 for an empty box."""
    x0, y0, x1, y1 = box
    w, h = size_wh
    area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    if area <= 0:
        return 0.0
    inside = max(0.0, min(x1, w) - max(x0, 0.0)) * max(0.0, min(y1, h) - max(y0, 0.0))
    return float(inside / area)


def clip_box(box: Sequence[float], size_wh: Tuple[int, int]) -> Box:
    w, h = size_wh
    x0, y0, x1, y1 = box
    return (
        float(min(max(x0, 0.0), w)),
        float(min(max(y0, 0.0), h)),
        float(min(max(x1, 0.0), w)),
        float(min(max(y1, 0.0), h)),
    )


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """The box around a boolean mask (x1/y1 exclusive), None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def deep_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` (x, y) pixel centres well inside ``mask``: (K, 2) float32.

    Greedy on the distance to the mask's edge: the deepest point, then the deepest
    point at least that distance away from the ones taken, ... keeping only points at
    least half as deep as the first. Deep points stay inside the object after a small
    motion-model error, which edge points would not.
    """
    if count <= 0 or not mask.any():
        return np.zeros((0, 2), np.float32)
    # The image's edge counts as the mask's edge (a mask without any outside pixel would
    # otherwise have no finite depth).
    padded = np.pad(mask.astype(np.uint8), 1)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    deepest = float(depth.max())
    taken: List[Tuple[float, float]] = []
    remaining = depth.copy()
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        if remaining[y, x] < max(deepest / 2.0, 1.0) and taken:
            break
        taken.append((float(x) + 0.5, float(y) + 0.5))
        cv2.circle(remaining, (int(x), int(y)), max(int(deepest), 1), 0.0, thickness=-1)
    return np.array(taken, np.float32)


def _heading_iou(previous: "TrackState", found: Detection, stamp_s: float) -> float:
    """IoU of a found box with where ``previous`` was heading, within the image."""
    heading = clip_box(previous.predicted_box(stamp_s), previous.image_size)
    return box_iou(found.box_xyxy, heading)


# ---------------------------------------------------------------- the track's memory


@dataclass(frozen=True)
class TrackState:
    """What a track remembers of its object after a frame (input-image pixels).

    box_xyxy, area, points_xy: the last accepted mask's box, pixel count and deep
    points (``deep_points``); velocity_xy: its centre's estimated velocity in pixels per
    second; stamp_s: the time of that frame (any monotonic clock, the same for every
    call); score: its crop score.
    """

    track_id: str
    phrase: str
    box_xyxy: Box
    area: int
    points_xy: np.ndarray = field(repr=False)
    velocity_xy: Tuple[float, float]
    stamp_s: float
    score: float
    image_size: Tuple[int, int]  # (width, height)

    @classmethod
    def from_detection(
        cls,
        detection: Detection,
        phrase: str,
        track_id: str,
        stamp_s: float,
        prompt_points: int = TrackSettings.prompt_points,
    ) -> "TrackState":
        """A new track on ``detection`` (at rest: no velocity yet)."""
        h, w = detection.mask.shape
        return cls(
            track_id=track_id,
            phrase=phrase,
            box_xyxy=tuple(float(v) for v in detection.box_xyxy),  # type: ignore[arg-type]
            area=int(detection.mask_area),
            points_xy=deep_points(detection.mask, prompt_points),
            velocity_xy=(0.0, 0.0),
            stamp_s=float(stamp_s),
            score=float(detection.score),
            image_size=(int(w), int(h)),
        )

    def offset(self, stamp_s: float) -> Tuple[float, float]:
        """How far the constant-velocity model moves the object by ``stamp_s``."""
        dt = max(0.0, stamp_s - self.stamp_s)
        return (self.velocity_xy[0] * dt, self.velocity_xy[1] * dt)

    def predicted_box(self, stamp_s: float) -> Box:
        dx, dy = self.offset(stamp_s)
        x0, y0, x1, y1 = self.box_xyxy
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def predicted_points(self, stamp_s: float) -> np.ndarray:
        dx, dy = self.offset(stamp_s)
        return self.points_xy + np.array([dx, dy], np.float32)

    def advanced(
        self, detection: Detection, stamp_s: float, prompt_points: int
    ) -> "TrackState":
        """The track after accepting ``detection`` at ``stamp_s``.

        A box cut by the image's edge does not measure motion along that axis (its
        centre moves at half the speed, or stops): there the velocity is kept.
        """
        dt = stamp_s - self.stamp_s
        velocity = list(self.velocity_xy)
        if dt > 0:
            new, old = detection.box_xyxy, self.box_xyxy
            for axis, size in enumerate(self.image_size):
                cut = any(b[axis] <= 0 or b[axis + 2] >= size for b in (new, old))
                if not cut:
                    measured = ((new[axis] + new[axis + 2]) - (old[axis] + old[axis + 2])) / (
                        2.0 * dt
                    )
                    velocity[axis] = (
                        VELOCITY_GAIN * measured + (1.0 - VELOCITY_GAIN) * velocity[axis]
                    )
        return replace(
            self,
            box_xyxy=tuple(float(v) for v in detection.box_xyxy),  # type: ignore[arg-type]
            area=int(detection.mask_area),
            points_xy=deep_points(detection.mask, prompt_points),
            velocity_xy=(float(velocity[0]), float(velocity[1])),
            stamp_s=float(stamp_s),
            score=float(detection.score),
        )


# ---------------------------------------------------------------- segmenting one prompt


@dataclass(frozen=True)
class BoxPrompt:
    """One prompt, in pixels of the model image: a box and foreground points in it."""

    box_xyxy: Box
    points_xy: np.ndarray = field(repr=False)  # (K, 2) float32, K may be 0


@dataclass
class PromptMasks:
    """A segmenter's candidate masks for one prompt, at the model image's size.

    masks: (M, H, W) bool; predicted_iou: (M,) the segmenter's own quality estimate
    (1.0 where it has none).
    """

    masks: np.ndarray
    predicted_iou: np.ndarray


class PromptFrame:
    """The frame a prompt is segmented on: the model image and, computed at most once
    and kept by the Locator's per-frame cache, MobileSAM's image embedding of it."""

    def __init__(self, image: np.ndarray, encoded: Optional[EncodedImage] = None) -> None:
        self.image = image
        self.encoded = encoded
        self.encodes = 0  # image encoder runs for this frame here (0 when it was cached)

    def embedding(self, encode: Callable[[np.ndarray], EncodedImage]) -> EncodedImage:
        """The image embedding, from the cache or by ``encode(image)`` (then kept)."""
        if self.encoded is None:
            self.encoded = encode(self.image)
            self.encodes += 1
        return self.encoded


class PromptSegmenter(Protocol):
    """Masks of the object under a box prompt (``SamBoxSegmenter`` is MobileSAM's).

    Any function of this signature will do (``Locator.from_parts(prompt_segmenter=...)``);
    one that needs no image embedding just ignores ``frame.embedding``.
    """

    def __call__(self, frame: PromptFrame, prompt: BoxPrompt) -> PromptMasks: ...


class SamBoxSegmenter:
    """MobileSAM's box prompt (with points) on a ``Segmenter``, whichever backend serves it.

    One prompt through the prompt encoder (torch on both backends; box corners labelled
    2 and 3), the decoder's image side for this frame, its transformer for the one
    prompt, and the four masks it predicts (the single-mask token SAM uses for box
    prompts and the three multimask ones) upscaled together, since one upscaling of the
    prompt's image tokens serves all four.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    @torch.inference_mode()
    def __call__(self, frame: PromptFrame, prompt: BoxPrompt) -> PromptMasks:
        segmenter = self.segmenter
        device = segmenter.device
        encoded = frame.embedding(segmenter.encode)
        size_hw = encoded.original_size
        corners = segmenter.to_input_coords(
            np.asarray(prompt.box_xyxy, np.float64).reshape(2, 2), size_hw
        )
        box = torch.as_tensor(corners.reshape(1, 4), dtype=torch.float32, device=device)
        points: Optional[torch.Tensor] = None
        labels: Optional[torch.Tensor] = None
        if len(prompt.points_xy):
            coords = segmenter.to_input_coords(
                np.asarray(prompt.points_xy, np.float64).reshape(-1, 2), size_hw
            )
            points = torch.as_tensor(coords[None], dtype=torch.float32, device=device)
            labels = torch.ones(points.shape[:2], dtype=torch.int, device=device)
        sparse, dense = segmenter.embed_prompt(points, labels, box)
        decoder = segmenter.decoder
        decoder.set_image(encoded.features, segmenter.dense_pe(), dense)
        tokens = decoder.run_transformer(sparse)
        n_masks = tokens.iou_pred.shape[1]
        low_res = decoder.masks_for(
            tokens,
            torch.zeros(n_masks, dtype=torch.long, device=tokens.iou_pred.device),
            torch.arange(n_masks, device=tokens.iou_pred.device),
        )
        logits = masks_at_image_size(
            low_res, segmenter.img_size, encoded.input_size, encoded.original_size
        )
        return PromptMasks(
            masks=(logits > segmenter.mask_threshold).cpu().numpy(),
            predicted_iou=tokens.iou_pred[0].float().cpu().numpy(),
        )


def select_mask(candidates: PromptMasks, predicted_box: Sequence[float]) -> Optional[int]:
    """The candidate that best fits the predicted box, None when all are empty.

    Ranked by the IoU of its box with ``predicted_box`` plus ``PREDICTED_IOU_WEIGHT``
    times the segmenter's predicted IoU: a box prompt's masks differ mostly in extent
    (part, object, object and neighbour), and the box says which extent is meant.
    """
    best, best_key = None, -math.inf
    for i, mask in enumerate(candidates.masks):
        box = mask_box(mask)
        if box is None:
            continue
        quality = float(np.clip(candidates.predicted_iou[i], 0.0, 1.0))
        key = box_iou(box, predicted_box) + PREDICTED_IOU_WEIGHT * quality
        if key > best_key:
            best, best_key = i, key
    return best


def prompt_for(
    track: TrackState, stamp_s: float, size_wh: Tuple[int, int], scale: float
) -> BoxPrompt:
    """The prompt for the frame at ``stamp_s``: predicted box and points, clipped to the
    image, in pixels of the model image (``scale`` = model image / input image)."""
    w, h = size_wh
    box = clip_box(track.predicted_box(stamp_s), size_wh)
    x0, y0, x1, y1 = box
    points = track.predicted_points(stamp_s)
    inside = (
        (points[:, 0] >= max(x0, 0.0)) & (points[:, 0] < min(x1, w))
        & (points[:, 1] >= max(y0, 0.0)) & (points[:, 1] < min(y1, h))
    )
    return BoxPrompt(
        box_xyxy=tuple(v * scale for v in box),  # type: ignore[arg-type]
        points_xy=(points[inside] * scale).astype(np.float32),
    )


# ---------------------------------------------------------------- judging a frame


def judge(
    track: TrackState,
    predicted_box: Sequence[float],
    detection: Optional[Detection],
    settings: TrackSettings,
) -> str:
    """Why the tracked mask is not the object any more, or "" when it is.

    In this order: it left the image (the predicted box mostly outside, or a mask on
    the border that shrank beyond the area limit), the prompt gave no mask, the mask
    jumped (area ratio beyond ``max_area_ratio``, or its box's IoU with the predicted
    box, cut at the image's edges like the mask, under ``min_iou``), the crop does not
    look like the phrase (score under ``min_score``).
    """
    w, h = track.image_size
    visible = visible_fraction(predicted_box, track.image_size)
    if visible < settings.min_visible:
        return (
            f"left the image: only {visible:.0%} of the predicted box is inside "
            f"(min {settings.min_visible:.0%})"
        )
    if detection is None or detection.mask_area == 0:
        return "the box prompt gave no mask: nothing under the predicted box"
    ratio = detection.mask_area / max(track.area, 1)
    x0, y0, x1, y1 = detection.box_xyxy
    on_border = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
    if on_border and ratio < 1.0 / settings.max_area_ratio:
        return (
            f"left the image: the mask on the border has {ratio:.0%} of its previous area "
            f"(min {1.0 / settings.max_area_ratio:.0%})"
        )
    if not 1.0 / settings.max_area_ratio <= ratio <= settings.max_area_ratio:
        return (
            f"mask jumped: its area changed x{ratio:.2f} from the last frame "
            f"(limit x{settings.max_area_ratio:g} either way)"
        )
    iou = box_iou(detection.box_xyxy, clip_box(predicted_box, track.image_size))
    if iou < settings.min_iou:
        return (
            f"mask jumped: its box has IoU {iou:.2f} with the predicted box "
            f"(min {settings.min_iou:.2f})"
        )
    if detection.score < settings.min_score:
        return (
            f"crop score {detection.score:.2f} for '{track.phrase}' is below "
            f"{settings.min_score:.2f}: it does not look like the object any more"
        )
    return ""


@dataclass
class TrackResult:
    """One frame of a track: ``Locator.track``'s answer, or ``Tracker.step``'s.

    status: the track after this frame; event: what happened on it; track_id: the id
    the detection carries (the lost track's while LOST, None when IDLE); detection: the
    object on this frame, None unless status is TRACKING; reason: why the track was lost
    (LOST, SEARCHING, EXPIRED), why a new id was given (STARTED after a loss), why it
    was lost before it was re-acquired (REACQUIRED), or why nothing was found
    (NOT_FOUND); "" otherwise. rejected: the tracked mask that failed ``judge``.
    state: the track's memory after this frame (None when IDLE). located: the full
    query's ``LocateResult`` when this frame ran one. frames_tracked, reacquisitions:
    the current track's counts (``Tracker`` only; 0 from ``Locator.track``).
    """

    status: TrackStatus
    event: TrackEvent
    track_id: Optional[str]
    detection: Optional[Detection]
    reason: str
    predicted_box: Optional[Box]
    timings_ms: Dict[str, float]
    state: Optional[TrackState]
    rejected: Optional[Detection] = None
    located: Optional["LocateAnswer"] = None
    frames_tracked: int = 0
    reacquisitions: int = 0

    @property
    def found(self) -> bool:
        return self.status == TrackStatus.TRACKING and self.detection is not None


def follow(
    track: TrackState,
    detection: Optional[Detection],
    predicted_box: Box,
    stamp_s: float,
    settings: TrackSettings,
    timings_ms: Dict[str, float],
) -> TrackResult:
    """``Locator.track``'s verdict on the frame's tracked mask (``judge``)."""
    reason = judge(track, predicted_box, detection, settings)
    if reason:
        return TrackResult(
            TrackStatus.LOST, TrackEvent.LOST, track.track_id, None, reason, predicted_box,
            timings_ms, track, rejected=detection,
        )
    assert detection is not None  # judge refuses a missing mask
    state = track.advanced(detection, stamp_s, settings.prompt_points)
    return TrackResult(
        TrackStatus.TRACKING, TrackEvent.TRACKED, track.track_id, detection, "",
        predicted_box, timings_ms, state,
    )


# ---------------------------------------------------------------- the loop


class LocateAnswer(Protocol):
    """What ``Tracker`` reads of a ``LocateResult``."""

    found: bool
    reason: str
    target: Optional[str]
    timings_ms: Dict[str, float]

    @property
    def best(self) -> Optional[Detection]: ...


class TrackingLocator(Protocol):
    """What ``Tracker`` needs of a ``Locator``."""

    def locate(
        self,
        image: np.ndarray,
        command: str,
        *,
        channel_order: str = "rgb",
        on_stage: Optional[Callable[[str, float], None]] = None,
        frame_key: Optional[Hashable] = None,
    ) -> LocateAnswer: ...

    def track(
        self,
        image: np.ndarray,
        track: TrackState,
        *,
        frame_key: Optional[Hashable] = None,
        stamp_s: Optional[float] = None,
        settings: Optional[TrackSettings] = None,
        channel_order: str = "rgb",
    ) -> TrackResult: ...


@dataclass
class _Lost:
    """A lost track: its last good state (the id, where it was heading) and why."""

    state: TrackState
    reason: str


class Tracker:
    """Follows what one command names, frame after frame (see the module docstring).

    ``step(image, stamp_s=..., frame_key=...)`` once per frame, in time order; ids are
    "1", "2", ... for this Tracker. ``start(result, stamp_s=...)`` adopts a full query
    the caller already ran on a frame. Not thread-safe: one caller feeds the frames.
    """

    def __init__(
        self,
        locator: TrackingLocator,
        command: str,
        settings: Optional[TrackSettings] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.locator = locator
        self.command = command
        self.settings = settings if settings is not None else TrackSettings()
        self.settings.validate()
        self.clock = clock
        self.track: Optional[TrackState] = None
        self.frames_tracked = 0  # frames the current track was followed by its prompt
        self.reacquisitions = 0  # times the current track was lost and found again
        self.tracks_started = 0
        self._lost: Optional[_Lost] = None

    @property
    def state(self) -> TrackStatus:
        if self._lost is not None:
            return TrackStatus.LOST
        return TrackStatus.TRACKING if self.track is not None else TrackStatus.IDLE

    @property
    def track_id(self) -> Optional[str]:
        if self._lost is not None:
            return self._lost.state.track_id
        return self.track.track_id if self.track is not None else None

    def reset(self) -> None:
        """Forget the track (the next frame runs a full query; ids go on counting)."""
        self.track, self._lost = None, None
        self.frames_tracked = self.reacquisitions = 0

    def start(self, result: LocateAnswer, *, stamp_s: Optional[float] = None) -> TrackResult:
        """Adopt a full query's answer on the frame at ``stamp_s``: a new track (or the
        lost one's id, by the re-acquisition rule) when it found something."""
        stamp = self.clock() if stamp_s is None else float(stamp_s)
        return self._adopt(result, stamp, {}, "")

    def step(
        self,
        image: np.ndarray,
        *,
        stamp_s: Optional[float] = None,
        frame_key: Optional[Hashable] = None,
        channel_order: str = "rgb",
        on_stage: Optional[Callable[[str, float], None]] = None,
    ) -> TrackResult:
        """The next frame: tracked when there is a track, else (or when tracking is off,
        or the track is lost on this frame) a full query on it. ``on_stage``: passed to
        that query (``locator.StageCallback``: it may raise to cancel it)."""
        stamp = self.clock() if stamp_s is None else float(stamp_s)
        lost_now = ""
        timings: Dict[str, float] = {}
        size = (int(image.shape[1]), int(image.shape[0])) if image.ndim >= 2 else (0, 0)
        for track in (self.track, self._lost.state if self._lost else None):
            if track is not None and track.image_size != size:
                # Another camera mode: no box carries over; the full query starts anew.
                self.reset()
        if self.track is not None and self._lost is None and self.settings.enabled:
            tracked = self.locator.track(
                image,
                self.track,
                frame_key=frame_key,
                stamp_s=stamp,
                settings=self.settings,
                channel_order=channel_order,
            )
            if tracked.status == TrackStatus.TRACKING:
                self.track = tracked.state
                self.frames_tracked += 1
                return self._counted(tracked)
            self._lost = _Lost(self.track, tracked.reason)
            lost_now = tracked.reason
            timings = {f"track_{k}": v for k, v in tracked.timings_ms.items()}
            rejected = tracked.rejected
        else:
            rejected = None
        located = self.locator.locate(
            image, self.command, channel_order=channel_order, on_stage=on_stage,
            frame_key=frame_key,
        )
        result = self._adopt(located, stamp, timings, lost_now)
        result.rejected = rejected
        return result

    def _adopt(
        self, located: LocateAnswer, stamp: float, timings: Dict[str, float], lost_now: str
    ) -> TrackResult:
        timings = {**timings, **located.timings_ms}
        best = located.best if located.found else None
        previous = self._lost.state if self._lost is not None else self.track
        if best is not None:
            phrase = located.target or best.label
            if previous is not None and self._same_object(previous, best, stamp):
                if self._lost is not None:
                    # Found where it was heading: its motion so far still holds.
                    state = previous.advanced(best, stamp, self.settings.prompt_points)
                    event = TrackEvent.REACQUIRED
                    reason = f"re-acquired after: {self._lost.reason}"
                    self.reacquisitions += 1
                else:  # tracking off: a full query every frame, the same object
                    state = previous.advanced(best, stamp, self.settings.prompt_points)
                    event, reason = TrackEvent.TRACKED, ""
                    self.frames_tracked += 1
            else:
                self.tracks_started += 1
                state = TrackState.from_detection(
                    best, phrase, str(self.tracks_started), stamp, self.settings.prompt_points
                )
                reason = self._why_new(previous, best, stamp)
                event = TrackEvent.STARTED
                self.frames_tracked = self.reacquisitions = 0
            self.track, self._lost = state, None
            return self._counted(TrackResult(
                TrackStatus.TRACKING, event, state.track_id, best, reason,
                previous.predicted_box(stamp) if previous is not None else None, timings, state,
                located=located,
            ))
        not_found = located.reason or "not found"
        if previous is None:
            return self._counted(TrackResult(
                TrackStatus.IDLE, TrackEvent.NOT_FOUND, None, None, not_found, None, timings,
                None, located=located,
            ))
        if self._lost is None:  # tracking off, and the full query lost it
            self._lost = _Lost(previous, not_found)
            lost_now = not_found
        elapsed = stamp - previous.stamp_s
        if elapsed > self.settings.reacquire_window_s:
            reason = (
                f"track {previous.track_id} ended: not found for {elapsed:.1f} s "
                f"(window {self.settings.reacquire_window_s:g} s; lost: {self._lost.reason})"
            )
            self.reset()
            return self._counted(TrackResult(
                TrackStatus.IDLE, TrackEvent.EXPIRED, None, None, reason, None, timings, None,
                located=located,
            ))
        event = TrackEvent.LOST if lost_now else TrackEvent.SEARCHING
        reason = lost_now or f"searching ({not_found}); lost: {self._lost.reason}"
        return self._counted(TrackResult(
            TrackStatus.LOST, event, previous.track_id, None, reason,
            previous.predicted_box(stamp), timings, previous, located=located,
        ))

    def _same_object(self, previous: TrackState, best: Detection, stamp: float) -> bool:
        """The re-acquisition rule: soon enough, and where the lost track was heading
        (its predicted box cut at the image's edges, as any detection is)."""
        s = self.settings
        return (
            stamp - previous.stamp_s <= s.reacquire_window_s
            and _heading_iou(previous, best, stamp) >= s.reacquire_min_iou
        )

    def _why_new(self, previous: Optional[TrackState], best: Detection, stamp: float) -> str:
        if previous is None:
            return ""
        lost = f"; track {previous.track_id} lost: {self._lost.reason}" if self._lost else ""
        elapsed = stamp - previous.stamp_s
        if elapsed > self.settings.reacquire_window_s:
            return (
                f"new track: found {elapsed:.1f} s after track {previous.track_id}'s last "
                f"frame (window {self.settings.reacquire_window_s:g} s){lost}"
            )
        iou = _heading_iou(previous, best, stamp)
        return (
            f"new track: found elsewhere (IoU {iou:.2f} with track {previous.track_id}'s "
            f"predicted box, min {self.settings.reacquire_min_iou:.2f}){lost}"
        )

    def _counted(self, result: TrackResult) -> TrackResult:
        result.frames_tracked, result.reacquisitions = self.frames_tracked, self.reacquisitions
        return result
