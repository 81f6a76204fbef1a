"""The core: ``Locator.locate(image, command)`` -> ranked detections. No ROS here.

Pipeline: parse the command (``core.referring``: targets, relations, ordinals,
exclusions), propose regions over the whole image (a ``parts.Proposer``; MobileSAM by
default, ``mask_proposals``), score each region against every phrase the command names
(a ``parts.RegionScorer``; TinyCLIP on mask crops by default, ``crop_scoring``), keep
what passes the threshold. A plain command ("take the red pen") ranks by the target
phrase's score alone; relations, ordinals and exclusions ("the cup left of the plate",
"the second bottle from the left", "the red one, not the blue one") are resolved over
the regions' geometry (``core.relations``), and several targets ("the pen and then the
cup") are answered in order.

**Building one.** The pipeline does not choose engines: ``backends.factory.build_locator
(config)`` loads the models of ``config.backend`` and calls ``Locator.from_models``;
``Locator.from_parts`` takes plug-in parts (and models for the default ones).
Process-wide settings (threads, allocator) are the entry point's: see
``runtime.process.configure_process``.

**One cache, per frame.** Everything that depends on the image alone (proposals, their
region features, fast mode's windows and MobileSAM's image embedding) lives in one
``_Frame``, for the last frame, under one key: the caller's ``frame_key`` (the node's
frame number) or else a hash of the pixels. A new command on the same frame only runs
the text encoder.

``mode: fast`` (opt-in) lets the target phrase choose where MobileSAM is prompted
(``text_guided_prompts``) instead of the 256-point grid; see ``Locator._fast_frame``.

**Following an answer.** ``Locator.start_track(result)`` and ``Locator.track(image,
state)`` follow the object onto the next frames with one box prompt and one crop score
(``tracking``, where ``Tracker`` runs the whole loop with ids and re-acquisition); the
image embedding they compute lives in the same per-frame cache as a query's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from vlm_grasp_locator.core.command_parser import ParsedCommand
from vlm_grasp_locator.core.referring import ReferringCommand, Target, parse_referring
from vlm_grasp_locator.core.relations import (
    PhraseScores,
    Regions,
    TargetResolution,
    phrases_to_score,
    resolve_command,
)
from vlm_grasp_locator.core.image_input import fit_long_side, resize_mask, to_rgb_uint8
from vlm_grasp_locator.core.image_input import frame_key as pixels_key
from vlm_grasp_locator.models.checkpoints import normalise_sha256
from vlm_grasp_locator.models.interfaces import EncodedImage, LoadedModels
from vlm_grasp_locator.models.registry import DEFAULT_CLIP_MODEL, available_clip_models
from vlm_grasp_locator.pipeline.crop_scoring import CROP_MODES, CropScorer, CropSettings
from vlm_grasp_locator.pipeline.detection import Detection
from vlm_grasp_locator.pipeline.mask_proposals import MaskProposer, ProposalSettings
from vlm_grasp_locator.pipeline.parts import CallableScorer, FrameScorer, Proposer, RegionScorer
from vlm_grasp_locator.pipeline.proposals import Proposals
from vlm_grasp_locator.pipeline.tracking import (
    PromptFrame,
    PromptSegmenter,
    SamBoxSegmenter,
    TrackResult,
    TrackSettings,
    TrackState,
    follow,
    prompt_for,
    select_mask,
    visible_fraction,
)
from vlm_grasp_locator.pipeline.text_guided_prompts import (
    MAX_PROMPTS,
    choose_prompts,
    embed_windows,
    prompt_rank_of,
    relevance_windows,
)
from vlm_grasp_locator.runtime.cpu_features import PRECISIONS, Precision, check_precision
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers

LOG = logging.getLogger(__name__)


class Mode(str, Enum):
    EXACT = "exact"  # the grid: the founding pipeline's answers
    FAST = "fast"  # text-guided prompts

    def __str__(self) -> str:
        return self.value


class Backend(str, Enum):
    """Inference engines; ``backends.factory`` maps each to its loader."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"  # the graphs `export-onnx` wrote

    def __str__(self) -> str:
        return self.value


MODES = tuple(m.value for m in Mode)
BACKENDS = tuple(b.value for b in Backend)

# Called between pipeline stages with (stage, progress in [0, 1]); it may raise to cancel
# the query (the exception propagates out of ``locate``; nothing half-done is cached).
StageCallback = Callable[[str, float], None]
STAGE_PROPOSING = "proposing"
STAGE_SCORING = "scoring"

# Fast mode scores at most this many masks (or max_detections, if larger): the masks of
# the most relevant prompts. Each crop is one TinyCLIP forward (~4 GFLOP).
FAST_SCORED_CROPS = 6
# Targets whose fast-mode masks and crop embeddings are kept for the current frame.
FAST_TARGETS_CACHED = 8


@dataclass
class LocatorConfig:
    """Everything that shapes a ``Locator``; the ROS parameters map onto these fields."""

    device: str = "auto"
    mode: str = Mode.EXACT.value  # exact: the founding pipeline's answers; fast: text-guided
    backend: str = Backend.TORCH.value  # torch | onnxruntime (models from `export-onnx`)
    onnx_dir: str = ""  # "" = the default cache folder for exported models
    # CPU threads for torch; 0 keeps torch's default. Process-wide, so applied by the entry
    # point: ``runtime.process.configure_process(num_threads=config.num_threads)``.
    num_threads: int = 0
    allow_random_weights: bool = False  # random weights where a checkpoint file is missing
    mobile_sam_checkpoint: str = ""  # "" = the default cache path
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_checkpoint: str = ""
    mobile_sam_checkpoint_sha256: str = ""  # "" = the published digest (default file only)
    clip_checkpoint_sha256: str = ""  # "" = the published digest (default file only)
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.85
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 200
    crop_mode: str = "blend"
    crop_context: float = 0.1
    crop_background_keep: float = 0.2
    clip_batch_size: int = 16
    score_threshold: float = 0.3
    max_detections: int = 5
    max_image_side: int = 2048  # larger images are downscaled for the models
    seed: int = 0  # for random weights only
    fast_prompts: int = 12  # fast mode: point prompts MobileSAM decodes, 1..32
    # fp32 | bf16: MobileSAM and TinyCLIP's image tower under bf16 autocast on a CPU that
    # multiplies bf16 natively (AMX, AVX512-BF16), refused on others (runtime.cpu_features);
    # torch backend only. CUDA runs fp16 autocast either way.
    precision: str = Precision.FP32.value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "LocatorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def proposal_settings(self) -> ProposalSettings:
        """The generator settings this config names (same field names); defaults for the rest."""
        shared = {f.name for f in fields(ProposalSettings)} & {f.name for f in fields(self)}
        return ProposalSettings(**{name: getattr(self, name) for name in shared})

    def crop_settings(self) -> CropSettings:
        return CropSettings(
            mode=self.crop_mode,
            context=self.crop_context,
            background_keep=self.crop_background_keep,
        )

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.mode not in MODES:  # str fields: the ROS parameters are strings
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.clip_model not in available_clip_models():
            known = ", ".join(available_clip_models())
            raise ValueError(f"clip_model {self.clip_model!r} unknown; available: {known}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        for name in ("num_threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("clip_batch_size", "max_detections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.fast_prompts <= MAX_PROMPTS:
            raise ValueError(
                f"fast_prompts must be in [1, {MAX_PROMPTS}], got {self.fast_prompts}"
            )
        if self.max_image_side < 64:
            raise ValueError(f"max_image_side must be >= 64, got {self.max_image_side}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision != Precision.FP32 and self.backend != Backend.TORCH:
            raise ValueError(
                f"precision {self.precision!r} is torch's autocast: backend {self.backend!r} "
                "runs the exported fp32 graphs; use precision 'fp32' or backend 'torch'"
            )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        for name in ("mobile_sam_checkpoint_sha256", "clip_checkpoint_sha256"):
            if getattr(self, name):
                normalise_sha256(getattr(self, name), name)
        self.proposal_settings().validate()
        self.crop_settings().validate()

    def model_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``models.registry.load_models`` (the torch models)."""
        return dict(
            device=self.device,
            clip_model=self.clip_model,
            mobile_sam_checkpoint=self.mobile_sam_checkpoint,
            clip_checkpoint=self.clip_checkpoint,
            mobile_sam_checkpoint_sha256=self.mobile_sam_checkpoint_sha256,
            clip_checkpoint_sha256=self.clip_checkpoint_sha256,
            allow_random_weights=self.allow_random_weights,
            seed=self.seed,
        )


@dataclass
class TargetAnswer:
    """The answer for one target of a command (a command may name several, in order)."""

    phrase: str  # what was scored, e.g. "cup"
    found: bool
    reason: str  # why nothing was found; "" when found
    explanation: str  # what decided it, e.g. "cup 0.91: left of plate (plate 0.81 at #2)"
    detections: List[Detection]


@dataclass
class LocateResult:
    """The answer to a command. ``target``, ``found``, ``reason`` and ``detections`` are
    the first target's; ``targets`` holds every target's answer in the command's order."""

    command: str
    target: Optional[str]
    found: bool
    reason: str  # why nothing was found; "" when found
    image_size: Tuple[int, int]  # (width, height)
    detections: List[Detection]
    timings_ms: Dict[str, float]
    proposals: int = 0  # masks proposed (and scored)
    prompts: int = 0  # fast mode: point prompts MobileSAM decoded for this answer; 0 in exact mode
    targets: List[TargetAnswer] = field(default_factory=list)
    explanation: str = ""  # the first target's: what decided it, what was not understood

    @property
    def best(self) -> Optional[Detection]:
        return self.detections[0] if self.detections else None

    def to_json_dict(self) -> Dict[str, Any]:
        """The CLI's ``--json`` record (masks left out; their areas stay)."""
        return {
            "command": self.command,
            "target": self.target,
            "found": self.found,
            "reason": self.reason,
            "image_size": list(self.image_size),
            "detections": [
                {
                    "label": d.label,
                    "score": d.score,
                    "box_xyxy": list(d.box_xyxy),
                    "mask_area": d.mask_area,
                }
                for d in self.detections
            ],
            "timings_ms": dict(self.timings_ms),
            "explanation": self.explanation,
            "targets": [
                {
                    "phrase": t.phrase,
                    "found": t.found,
                    "reason": t.reason,
                    "explanation": t.explanation,
                    "box_xyxy": list(t.detections[0].box_xyxy) if t.detections else None,
                }
                for t in self.targets
            ],
        }


@dataclass
class _Scored:
    """Regions of one frame and what the scorer made of them (``embed_regions``)."""

    proposals: Proposals
    features: object
    prompts: int = 0  # fast mode: point prompts that produced ``proposals``


FrameKey = Tuple[str, Hashable]


@dataclass
class _Frame:
    """Everything computed for one frame: the locator's only per-frame cache.

    Exact mode fills ``exact``. Fast mode fills the relevance windows' embeddings and
    MobileSAM's image embedding (both serve every target) and, per target, the masks
    and crop features its prompts gave (the last ``FAST_TARGETS_CACHED`` targets).
    """

    key: FrameKey
    scale: float  # model image / input image
    exact: Optional[_Scored] = None
    encoded: Optional[EncodedImage] = None
    windows: Optional[np.ndarray] = None
    window_embeddings: Optional[torch.Tensor] = None
    targets: "OrderedDict[str, _Scored]" = field(default_factory=OrderedDict)


def _no_report(stage: str, progress: float) -> None:
    return None


class Locator:
    """Finds the object a command names. Thread-safe: one query at a time.

    ``proposer``: a ``parts.Proposer``; ``scorer``: a ``parts.FrameScorer`` (wrap a
    plain ``RegionScorer`` in ``parts.CallableScorer``, or use ``from_parts``). Fast mode
    needs the default parts (``MaskProposer``, ``CropScorer``): it prompts MobileSAM at
    points TinyCLIP chose.
    """

    def __init__(
        self,
        config: LocatorConfig,
        proposer: Proposer,
        scorer: FrameScorer,
        random_weights: bool = False,
        device: torch.device = torch.device("cpu"),
        prompt_segmenter: Optional[PromptSegmenter] = None,
    ) -> None:
        self.config = config
        self.proposer = proposer
        self.scorer = scorer
        # ``track``'s box-prompt segmenter: MobileSAM's when the proposer is the default.
        if prompt_segmenter is None and isinstance(proposer, MaskProposer):
            prompt_segmenter = SamBoxSegmenter(proposer.segmenter)
        self.prompt_segmenter = prompt_segmenter
        self.random_weights = random_weights
        self.device = device
        check_precision(config.precision, device)  # bf16: refused where it would be emulated
        self._lock = threading.Lock()
        self._frame: Optional[_Frame] = None
        if config.mode == Mode.FAST:
            self._fast_parts()

    @classmethod
    def from_models(
        cls, config: LocatorConfig, models: LoadedModels, workers: Optional[CpuWorkers] = None
    ) -> "Locator":
        """MobileSAM and TinyCLIP as loaded by a backend (``backends.factory.load``).

        ``workers``: the decoder's CPU threads (``runtime.process.configure_process``);
        None decodes in the calling thread."""
        return cls.from_parts(config, models=models, workers=workers)

    @classmethod
    def from_parts(
        cls,
        config: LocatorConfig,
        *,
        proposer: Optional[Proposer] = None,
        scorer: Optional[RegionScorer] = None,
        models: Optional[LoadedModels] = None,
        workers: Optional[CpuWorkers] = None,
        prompt_segmenter: Optional[PromptSegmenter] = None,
    ) -> "Locator":
        """A Locator on plug-in parts (``parts``); the parts not given are MobileSAM and
        TinyCLIP from ``models``. A plug-in scorer is called once per query with the
        frame's (cached) proposals. ``prompt_segmenter``: ``track``'s box-prompt
        segmenter (``tracking.PromptSegmenter``); by default MobileSAM's from ``models``
        (none without them: ``track`` then raises). Raises ValueError for a bad config,
        for a missing part without ``models``, and for fast mode on plug-in parts."""
        config.validate()
        if (proposer is None or scorer is None) and models is None:
            raise ValueError(
                "the default proposer and scorer need models: pass models="
                "backends.factory.load(config), or both parts"
            )
        if proposer is None:
            proposer = MaskProposer(models.segmenter, config.proposal_settings(), workers)
        frame_scorer: FrameScorer
        if scorer is None:
            frame_scorer = CropScorer(models.clip, config.crop_settings(), config.clip_batch_size)
        else:
            frame_scorer = CallableScorer(scorer)
        if prompt_segmenter is None and models is not None:
            prompt_segmenter = SamBoxSegmenter(models.segmenter)
        if models is None:
            return cls(config, proposer, frame_scorer, prompt_segmenter=prompt_segmenter)
        return cls(
            config, proposer, frame_scorer, models.random_weights, models.device, prompt_segmenter
        )

    def clear_cache(self) -> None:
        with self._lock:
            self._frame = None

    def locate(
        self,
        image: np.ndarray,
        command: Union[str, ReferringCommand, ParsedCommand],
        *,
        channel_order: str = "rgb",
        on_stage: Optional[StageCallback] = None,
        frame_key: Optional[Hashable] = None,
        depth_m: Optional[np.ndarray] = None,
    ) -> LocateResult:
        """Find what ``command`` names in ``image`` (HxW, HxWx3 or HxWx4; see ``to_rgb_uint8``).

        ``command``: the text, or what ``parse_referring`` (or ``parse_command``) made of
        it (a caller that parsed it already; it is not parsed again). ``frame_key``: names
        the frame (the node's frame number): the same key must mean the same pixels; None
        hashes the pixels. ``depth_m``: optional depth in metres registered to ``image``
        (HxW; 0, NaN and inf = unknown); relations such as "closest to me" and "behind"
        use it, and fall back to the image (lower = nearer) without it.
        Raises ValueError for an unusable image; a command without an object is not an
        error but a result with ``found=False`` and the reason. ``on_stage`` hears
        ``proposing`` and ``scoring`` (see ``StageCallback``), in both modes.
        """
        report: StageCallback = on_stage or _no_report
        started = time.perf_counter()
        rgb = to_rgb_uint8(image, channel_order=channel_order)
        height, width = rgb.shape[:2]
        if min(height, width) < 2:
            raise ValueError(f"image of {width}x{height} pixels is too small to search")
        parsed = _referring(command)
        timings: Dict[str, float] = {}
        not_understood = (
            "not understood: " + ", ".join(repr(u) for u in parsed.unparsed)
            if parsed.unparsed else ""
        )

        def result(
            found: bool,
            reason: str,
            detections: List[Detection],
            proposals: int = 0,
            prompts: int = 0,
            answers: Optional[List[TargetAnswer]] = None,
        ) -> LocateResult:
            timings["total"] = (time.perf_counter() - started) * 1e3
            if answers is None:
                answers = [TargetAnswer(t.phrase, found, reason, "", detections if i == 0 else [])
                           for i, t in enumerate(parsed.targets)]
            explanation = "; ".join(x for x in (answers[0].explanation if answers else "",
                                                not_understood) if x)
            if not found and not_understood:
                reason = f"{reason} ({not_understood})" if reason else not_understood
            return LocateResult(
                parsed.command,
                parsed.targets[0].phrase if parsed.targets else None,
                found,
                reason,
                (width, height),
                detections,
                timings,
                proposals,
                prompts,
                answers,
                explanation,
            )

        if not parsed.targets:
            return result(False, parsed.reason or "no object named in the command", [])
        target = parsed.targets[0].phrase
        plain = len(parsed.targets) == 1 and parsed.targets[0].is_plain
        key: FrameKey = (
            ("frame", frame_key) if frame_key is not None else ("pixels", pixels_key(rgb))
        )
        with self._lock, self._autocast():
            last = self._frame
            frame = last if last is not None and last.key == key else None
            if self.config.mode == Mode.FAST:
                scored, self._frame = self._fast_frame(rgb, key, frame, target, timings, report)
            else:
                scored, self._frame = self._exact_frame(rgb, key, frame, timings, report)
            report(STAGE_SCORING, 0.9)
            t0 = time.perf_counter()
            by_phrase = {p: self.scorer.score(scored.features, p)
                         for p in phrases_to_score(parsed)}
            timings["text"] = (time.perf_counter() - t0) * 1e3
            scale = self._frame.scale
        similarity, score = by_phrase[target]
        n = len(scored.proposals)
        if n == 0:
            where = (
                f" at the {scored.prompts} points '{target}' chose"
                if self.config.mode == Mode.FAST
                else " in this image"
            )
            return result(False, f"no object masks were proposed{where}", [], 0, scored.prompts)
        if not plain:
            t0 = time.perf_counter()
            answers = self._resolve(parsed, scored.proposals, by_phrase, scale, (height, width),
                                    depth_m)
            timings["relations"] = (time.perf_counter() - t0) * 1e3
            first = answers[0]
            return result(first.found, first.reason, first.detections, n, scored.prompts,
                          answers)
        order = np.lexsort((-similarity, -score))  # by score, ties by similarity
        threshold = self.config.score_threshold
        passing = [i for i in order if score[i] >= threshold][: self.config.max_detections]
        if not passing:
            best = order[0]
            return result(
                False,
                f"no mask scored at least {threshold:.2f} for '{target}' "
                f"(best {score[best]:.2f} of {n} masks)",
                [],
                n,
                scored.prompts,
            )
        detections = [
            _detection(
                scored.proposals, scale, i, target, score[i], similarity[i], (height, width)
            )
            for i in passing
        ]
        return result(True, "", detections, n, scored.prompts)

    def start_track(
        self,
        result: LocateResult,
        *,
        track_id: str = "1",
        stamp_s: Optional[float] = None,
        settings: Optional[TrackSettings] = None,
    ) -> TrackState:
        """A track on ``result``'s best detection (its first target's), for ``track``.

        ``stamp_s``: the time of the frame ``result`` answered (``time.monotonic()`` when
        None; use the same clock for ``track``). Raises ValueError when nothing was found.
        ``tracking.Tracker`` does this (and the ids) for a whole stream.
        """
        best = result.best
        if not result.found or best is None:
            raise ValueError(f"nothing to track: {result.reason or 'nothing found'}")
        points = (settings or TrackSettings()).prompt_points
        stamp = time.monotonic() if stamp_s is None else stamp_s
        return TrackState.from_detection(best, result.target or best.label, track_id, stamp,
                                         points)

    def track(
        self,
        image: np.ndarray,
        track: TrackState,
        *,
        frame_key: Optional[Hashable] = None,
        stamp_s: Optional[float] = None,
        settings: Optional[TrackSettings] = None,
        channel_order: str = "rgb",
    ) -> TrackResult:
        """Follow ``track`` onto the frame ``image`` (taken at ``stamp_s``, default now):
        one box prompt decoded, one crop scored (``tracking``). The result's status is
        TRACKING with the detection and the advanced ``state``, or LOST with the reason
        (then run ``locate`` on the same ``frame_key``: the image embedding is shared).
        Raises ValueError for an unusable image or without a prompt segmenter."""
        settings = settings if settings is not None else TrackSettings()
        settings.validate()
        segment = self.prompt_segmenter
        if segment is None:
            raise ValueError(
                "tracking needs a prompt segmenter: build the Locator with models or pass "
                "prompt_segmenter= to Locator.from_parts"
            )
        started = time.perf_counter()
        stamp = time.monotonic() if stamp_s is None else float(stamp_s)
        rgb = to_rgb_uint8(image, channel_order=channel_order)
        height, width = rgb.shape[:2]
        if (width, height) != track.image_size:
            raise ValueError(
                f"frame of {width}x{height} pixels, the track was started on "
                f"{track.image_size[0]}x{track.image_size[1]}"
            )
        timings: Dict[str, float] = {}
        predicted = track.predicted_box(stamp)
        detection: Optional[Detection] = None
        if visible_fraction(predicted, (width, height)) >= settings.min_visible:
            key: FrameKey = (
                ("frame", frame_key) if frame_key is not None else ("pixels", pixels_key(rgb))
            )
            with self._lock, self._autocast():
                last = self._frame
                frame = last if last is not None and last.key == key else None
                model_image, scale = fit_long_side(rgb, self.config.max_image_side)
                prompted = PromptFrame(model_image, frame.encoded if frame is not None else None)
                t0 = time.perf_counter()
                candidates = segment(prompted, prompt_for(track, stamp, (width, height), scale))
                t1 = time.perf_counter()
                chosen = select_mask(candidates, tuple(v * scale for v in predicted))
                if chosen is not None:
                    one = Proposals.from_masks(candidates.masks[chosen:chosen + 1],
                                               candidates.predicted_iou[chosen:chosen + 1])
                    similarity, score = self.scorer.score(
                        self.scorer.embed_regions(model_image, one), track.phrase
                    )
                    detection = _detection(one, scale, 0, track.phrase, score[0],
                                           similarity[0], (height, width))
                timings["prompt"] = (t1 - t0) * 1e3
                timings["crops"] = (time.perf_counter() - t1) * 1e3
                frame = frame if frame is not None else _Frame(key, scale)
                frame.encoded = prompted.encoded if prompted.encoded is not None else frame.encoded
                self._frame = frame
        timings["total"] = (time.perf_counter() - started) * 1e3
        return follow(track, detection, predicted, stamp, settings, timings)

    def _resolve(
        self,
        parsed: ReferringCommand,
        proposals: Proposals,
        by_phrase: Dict[str, Tuple[np.ndarray, np.ndarray]],
        scale: float,
        size_hw: Tuple[int, int],
        depth_m: Optional[np.ndarray] = None,
    ) -> List[TargetAnswer]:
        """Each target's answer from the regions' geometry and every phrase's scores.

        A region must score at least ``score_threshold`` for its target phrase (it must
        look like the thing); among those, the resolver's combined score (phrase score
        times the relations', ordinal's and exclusions' factors) ranks them and is the
        detection's score.
        """
        phrases = tuple(by_phrase)
        matrix = np.stack([by_phrase[p][1] for p in phrases], axis=1)
        regions = _regions(proposals, depth_m)
        resolutions = resolve_command(parsed, regions, PhraseScores(phrases, matrix))
        return [self._answer(r, proposals, by_phrase, scale, size_hw) for r in resolutions]

    def _answer(
        self,
        resolution: TargetResolution,
        proposals: Proposals,
        by_phrase: Dict[str, Tuple[np.ndarray, np.ndarray]],
        scale: float,
        size_hw: Tuple[int, int],
    ) -> TargetAnswer:
        phrase = resolution.target.phrase
        similarity, score = by_phrase[phrase]
        threshold = self.config.score_threshold
        passing = [r for r in resolution.ranked if score[r.index] >= threshold and r.score > 0]
        passing = passing[: self.config.max_detections]
        if not passing:
            best = resolution.best
            why = f"no region fits '{resolution.target.text or phrase}'"
            if best is not None:
                why += f" (best: {best.reason})"
            return TargetAnswer(phrase, False, why, best.reason if best else "", [])
        detections = [
            _detection(proposals, scale, r.index, phrase, r.score, similarity[r.index], size_hw)
            for r in passing
        ]
        return TargetAnswer(phrase, True, "", passing[0].reason, detections)

    def _exact_frame(
        self,
        rgb: np.ndarray,
        key: FrameKey,
        frame: Optional[_Frame],
        timings: Dict[str, float],
        report: StageCallback,
    ) -> Tuple[_Scored, _Frame]:
        """Proposals and region features for this frame, from the cache when it is the last."""
        if frame is not None and frame.exact is not None:
            timings["proposals"] = timings["crops"] = 0.0
            return frame.exact, frame
        model_image, scale = fit_long_side(rgb, self.config.max_image_side)
        report(STAGE_PROPOSING, 0.0)
        t0 = time.perf_counter()
        encoded = frame.encoded if frame is not None else None
        proposer = self.proposer
        if isinstance(proposer, MaskProposer) and proposer.settings.crop_n_layers == 0:
            # What ``proposer(image)`` does, with the frame's image embedding shared with
            # ``track`` (a lost track's re-acquisition runs on the frame it was lost on).
            encoded = encoded if encoded is not None else proposer.encode(model_image)
            proposals = proposer.propose(encoded)
        else:
            proposals = proposer(model_image)
        report(STAGE_SCORING, 0.7)
        t1 = time.perf_counter()
        features = self.scorer.embed_regions(model_image, proposals)
        t2 = time.perf_counter()
        timings["proposals"] = (t1 - t0) * 1e3
        timings["crops"] = (t2 - t1) * 1e3
        frame = frame if frame is not None else _Frame(key, scale)
        frame.exact = _Scored(proposals, features)
        frame.encoded = encoded if encoded is not None else frame.encoded
        return frame.exact, frame

    def _fast_parts(self) -> Tuple[MaskProposer, CropScorer]:
        proposer, scorer = self.proposer, self.scorer
        if not isinstance(proposer, MaskProposer) or not isinstance(scorer, CropScorer):
            raise ValueError(
                "mode 'fast' prompts MobileSAM where TinyCLIP points: it needs the default "
                "MaskProposer and CropScorer, not plug-in parts"
            )
        return proposer, scorer

    def _fast_frame(
        self,
        rgb: np.ndarray,
        key: FrameKey,
        frame: Optional[_Frame],
        target: str,
        timings: Dict[str, float],
        report: StageCallback,
    ) -> Tuple[_Scored, _Frame]:
        """Fast mode: masks at the points ``target`` chose, and their crop embeddings.

        Relevance windows (8 TinyCLIP forwards at 640x480, reused for every target on this
        frame) -> at most ``fast_prompts`` points (``choose_prompts``) -> MobileSAM decodes
        only those (its image embedding, too, reused for every target on this frame) ->
        the masks of the most relevant prompts (at most
        ``max(FAST_SCORED_CROPS, max_detections)``, MobileSAM's predicted IoU breaking
        ties within a prompt) are scored like exact mode's crops. Nothing is cached until
        all of it succeeded.
        """
        if frame is not None and target in frame.targets:
            frame.targets.move_to_end(target)
            timings["relevance"] = timings["proposals"] = timings["crops"] = 0.0
            return frame.targets[target], frame
        proposer, scorer = self._fast_parts()
        model_image, scale = fit_long_side(rgb, self.config.max_image_side)
        height, width = model_image.shape[:2]
        report(STAGE_PROPOSING, 0.0)
        t0 = time.perf_counter()
        windows = frame.windows if frame is not None else None
        window_embeddings = frame.window_embeddings if frame is not None else None
        if windows is None or window_embeddings is None:
            windows = relevance_windows(width, height)
            window_embeddings = embed_windows(scorer.clip, model_image, windows, scorer.batch_size)
        _, window_scores = scorer.score(window_embeddings, target)
        choice = choose_prompts(width, height, windows, window_scores, self.config.fast_prompts)
        t1 = time.perf_counter()
        encoded = frame.encoded if frame is not None else None
        if encoded is None:
            encoded = proposer.encode(model_image)
        proposals = proposer.propose(encoded, choice.points_xy)
        report(STAGE_SCORING, 0.7)
        t2 = time.perf_counter()
        rank = prompt_rank_of(proposals.point_coords, choice.points_xy)
        budget = max(FAST_SCORED_CROPS, self.config.max_detections)
        proposals = proposals.subset(np.lexsort((-proposals.predicted_iou, rank))[:budget])
        crop_embeddings = scorer.embed_regions(model_image, proposals)
        t3 = time.perf_counter()
        timings["relevance"] = (t1 - t0) * 1e3
        timings["proposals"] = (t2 - t1) * 1e3
        timings["crops"] = (t3 - t2) * 1e3
        entry = _Scored(proposals, crop_embeddings, prompts=len(choice.points_xy))
        frame = frame if frame is not None else _Frame(key, scale)
        frame.windows, frame.window_embeddings, frame.encoded = windows, window_embeddings, encoded
        frame.targets[target] = entry
        while len(frame.targets) > FAST_TARGETS_CACHED:
            frame.targets.popitem(last=False)
        return entry, frame

    def _autocast(self) -> AbstractContextManager:
        """fp16 matrix work on CUDA; bf16 on the CPU with ``precision: bf16``, else fp32.

        The CPU's bf16 covers the models' matrix products (autocast's list: linear,
        convolutions, matmul/bmm) in this thread and in the decoder's ``CpuWorkers``
        (which carry the caller's autocast over); ``CropScorer.score`` (the text tower
        and the similarities) turns it off again.
        """
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        bf16 = self.config.precision == Precision.BF16
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16)


def _referring(command: Union[str, ReferringCommand, ParsedCommand]) -> ReferringCommand:
    """The parsed command; a ``ParsedCommand`` (one phrase) becomes a plain target."""
    if isinstance(command, ReferringCommand):
        return command
    if isinstance(command, ParsedCommand):
        targets = (Target(command.target),) if command.target else ()
        return ReferringCommand(command.command, targets, reason=command.reason)
    return parse_referring(command)


def _regions(proposals: Proposals, depth_m: Optional[np.ndarray] = None) -> Regions:
    """The proposals' geometry for the relation resolver: boxes, areas, mask centroids
    and, with a depth image, each mask's median valid depth."""
    masks = proposals.masks
    n, height, width = masks.shape
    areas = proposals.areas.astype(np.float64)
    safe = np.maximum(areas, 1.0)
    cy = masks.sum(axis=2) @ np.arange(height, dtype=np.float64) / safe + 0.5
    cx = masks.sum(axis=1) @ np.arange(width, dtype=np.float64) / safe + 0.5
    depths = None
    if depth_m is not None:
        depth = np.asarray(depth_m, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth_m must be HxW, got shape {depth.shape}")
        if depth.shape != (height, width):
            depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        valid = np.isfinite(depth) & (depth > 0)
        depths = np.full(n, np.nan)
        for i in range(n):
            values = depth[masks[i] & valid]
            if values.size:
                depths[i] = float(np.median(values))
    return Regions(proposals.boxes_xyxy, areas, np.stack([cx, cy], axis=1), (width, height),
                   depths)


def _detection(
    proposals: Proposals,
    scale: float,
    i: int,
    label: str,
    score: float,
    similarity: float,
    size_hw: Tuple[int, int],
) -> Detection:
    mask = proposals.masks[i]
    box = proposals.boxes_xyxy[i].astype(float)
    if scale != 1.0:
        mask = resize_mask(mask, size_hw)
        box = box / scale
    h, w = size_hw
    x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])
    return Detection(
        label,
        float(score),
        (float(x0), float(y0), float(x1), float(y1)),
        mask,
        int(mask.sum()),
        float(similarity),
    )
