"""The core: ``Locator.locate(image, command)`` -> ranked detections. No ROS here.

Pipeline: parse the command (``command_parser``), propose masks over the whole image
(``mask_proposals``), score each mask's crop against the target phrase
(``crop_scoring``), keep what passes the threshold.

Proposals and crop embeddings depend on the image alone, so they are cached for the
last frame: a new command on the same frame only runs the text encoder.

``mode: fast`` (opt-in) lets the target phrase choose where MobileSAM is prompted
(``text_guided_prompts``) instead of the 256-point grid; see ``Locator._fast_frame``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from vlm_grasp_locator.models.checkpoints import normalise_sha256
from vlm_grasp_locator.core.command_parser import parse_command
from vlm_grasp_locator.pipeline.crop_scoring import CROP_MODES, CropScorer, CropSettings
from vlm_grasp_locator.core.image_input import frame_key, fit_long_side, resize_mask, to_rgb_uint8
from vlm_grasp_locator.pipeline.mask_proposals import MaskProposer, ProposalSettings, Proposals
from vlm_grasp_locator.models.registry import DEFAULT_CLIP_MODEL, LoadedModels, available_clip_models, load_models
from vlm_grasp_locator.pipeline.text_guided_prompts import MAX_PROMPTS, choose_prompts, embed_windows, prompt_rank_of, relevance_windows

LOG = logging.getLogger(__name__)

MODES = ("exact", "fast")
BACKENDS = ("torch", "onnxruntime")

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
    mode: str = "exact"  # exact: the founding pipeline's answers; fast: text-guided prompts
    backend: str = "torch"  # torch | onnxruntime (models exported by `export-onnx`)
    onnx_dir: str = ""  # "" = the default cache folder for exported models
    num_threads: int = 0  # CPU threads for torch; 0 keeps torch's default
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
        return CropSettings(mode=self.crop_mode, context=self.crop_context, background_keep=self.crop_background_keep)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.clip_model not in available_clip_models():
            raise ValueError(f"clip_model {self.clip_model!r} unknown; available: {', '.join(available_clip_models())}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        for name in ("num_threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("clip_batch_size", "max_detections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.fast_prompts <= MAX_PROMPTS:
            raise ValueError(f"fast_prompts must be in [1, {MAX_PROMPTS}], got {self.fast_prompts}")
        if self.max_image_side < 64:
            raise ValueError(f"max_image_side must be >= 64, got {self.max_image_side}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        for name in ("mobile_sam_checkpoint_sha256", "clip_checkpoint_sha256"):
            if getattr(self, name):
                normalise_sha256(getattr(self, name), name)
        self.proposal_settings().validate()
        self.crop_settings().validate()

    def model_kwargs(self) -> dict:
        """Keyword arguments for ``models.load_models``."""
        return dict(
            device=self.device,
            clip_model=self.clip_model,
            mobile_sam_checkpoint=self.mobile_sam_checkpoint,
            clip_checkpoint=self.clip_checkpoint,
            mobile_sam_checkpoint_sha256=self.mobile_sam_checkpoint_sha256,
            clip_checkpoint_sha256=self.clip_checkpoint_sha256,
            allow_random_weights=self.allow_random_weights,
            seed=self.seed,
            backend=self.backend,
            onnx_dir=self.onnx_dir,
        )


@dataclass
class Detection:
    """One located object. box_xyxy: pixels of the input image, x1/y1 exclusive."""

    label: str
    score: float  # calibrated, in [0, 1]
    box_xyxy: Tuple[float, float, float, float]
    mask: np.ndarray = field(repr=False)  # bool (H, W) at the input image's size
    mask_area: int
    similarity: float  # raw cosine similarity of crop and phrase


@dataclass
class LocateResult:
    command: str
    target: Optional[str]
    found: bool
    reason: str  # why nothing was found; "" when found
    image_size: Tuple[int, int]  # (width, height)
    detections: List[Detection]
    timings_ms: Dict[str, float]
    proposals: int = 0  # masks MobileSAM proposed (and TinyCLIP scored)
    prompts: int = 0  # fast mode: point prompts MobileSAM decoded for this answer; 0 in exact mode

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
                {"label": d.label, "score": d.score, "box_xyxy": list(d.box_xyxy), "mask_area": d.mask_area}
                for d in self.detections
            ],
            "timings_ms": dict(self.timings_ms),
        }


@dataclass
class _FrameCache:
    key: str
    proposals: Proposals
    embeddings: torch.Tensor
    scale: float
    prompts: int = 0  # fast mode: point prompts that produced ``proposals``


@dataclass
class _FastFrameCache:
    """Fast mode's state for the last frame.

    The relevance windows' embeddings depend on the image alone and serve every target;
    masks and crop embeddings depend on the prompts the target chose, so they are kept
    per target (the last ``FAST_TARGETS_CACHED``). MobileSAM's image embedding of the
    last image is kept by ``MaskProposer``, so a new target on the same frame pays only
    its prompts' decoding and crops, not the encoder.
    """

    key: str
    windows: np.ndarray
    window_embeddings: torch.Tensor
    targets: "OrderedDict[str, _FrameCache]" = field(default_factory=OrderedDict)


def _subset(proposals: Proposals, index: np.ndarray) -> Proposals:
    return Proposals(
        masks=proposals.masks[index],
        boxes_xyxy=proposals.boxes_xyxy[index],
        predicted_iou=proposals.predicted_iou[index],
        stability_score=proposals.stability_score[index],
        point_coords=proposals.point_coords[index],
    )


class Locator:
    """Finds the object a command names. Thread-safe: one query at a time."""

    def __init__(self, config: LocatorConfig, proposer: MaskProposer, scorer: CropScorer, random_weights: bool, device: torch.device) -> None:
        self.config = config
        self.proposer = proposer
        self.scorer = scorer
        self.random_weights = random_weights
        self.device = device
        self._lock = threading.Lock()
        self._cache: Optional[_FrameCache] = None  # exact mode
        self._fast_cache: Optional[_FastFrameCache] = None  # fast mode

    @classmethod
    def from_config(cls, config: LocatorConfig) -> "Locator":
        """Validate ``config`` and load the models (CheckpointError / ValueError on failure)."""
        config.validate()
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        return cls.from_models(config, load_models(**config.model_kwargs()))

    @classmethod
    def from_models(cls, config: LocatorConfig, models: LoadedModels) -> "Locator":
        """A Locator on models already loaded (``load_models(**config.model_kwargs())``).

        ``config.num_threads`` is not applied here (``from_config`` does that)."""
        config.validate()
        return cls(
            config,
            MaskProposer(models.sam, config.proposal_settings()),
            CropScorer(models.clip, config.crop_settings(), config.clip_batch_size),
            models.random_weights,
            models.device,
        )

    def clear_cache(self) -> None:
        with self._lock:
            self._cache = None
            self._fast_cache = None
            self.proposer.clear()

    def locate(
        self,
        image: np.ndarray,
        command: str,
        *,
        channel_order: str = "rgb",
        on_stage: Optional[StageCallback] = None,
    ) -> LocateResult:
        """Find what ``command`` names in ``image`` (HxW, HxWx3 or HxWx4; see ``to_rgb_uint8``).

        Raises ValueError for an unusable image; a command without an object is not an
        error but a result with ``found=False`` and the reason. ``on_stage`` hears
        ``proposing`` and ``scoring`` (see ``StageCallback``), in both modes.
        """
        report: StageCallback = on_stage or (lambda stage, progress: None)
        started = time.perf_counter()
        rgb = to_rgb_uint8(image, channel_order=channel_order)
        height, width = rgb.shape[:2]
        if min(height, width) < 2:
            raise ValueError(f"image of {width}x{height} pixels is too small to search")
        parsed = parse_command(command)
        timings: Dict[str, float] = {}

        def result(found: bool, reason: str, detections: List[Detection], proposals: int = 0, prompts: int = 0) -> LocateResult:
            timings["total"] = (time.perf_counter() - started) * 1e3
            return LocateResult(command, parsed.target, found, reason, (width, height), detections, timings, proposals, prompts)

        if parsed.target is None:
            return result(False, parsed.reason, [])
        with self._lock, self._autocast():
            if self.config.mode == "fast":
                cache = self._fast_frame(rgb, parsed.target, timings, report)
            else:
                cache = self._frame(rgb, timings, report)
            report(STAGE_SCORING, 0.9)
            t0 = time.perf_counter()
            similarity, score = self.scorer.score(cache.embeddings, parsed.target)
            timings["text"] = (time.perf_counter() - t0) * 1e3
        n = len(cache.proposals)
        if n == 0:
            where = f" at the {cache.prompts} points '{parsed.target}' chose" if self.config.mode == "fast" else " in this image"
            return result(False, f"MobileSAM proposed no object masks{where}", [], 0, cache.prompts)
        order = np.lexsort((-similarity, -score))  # by score, ties by similarity
        passing = [i for i in order if score[i] >= self.config.score_threshold][: self.config.max_detections]
        if not passing:
            best = order[0]
            return result(
                False,
                f"no mask scored at least {self.config.score_threshold:.2f} for '{parsed.target}' "
                f"(best {score[best]:.2f} of {n} masks)",
                [],
                n,
                cache.prompts,
            )
        detections = [self._detection(cache, i, parsed.target, score[i], similarity[i], (height, width)) for i in passing]
        return result(True, "", detections, n, cache.prompts)

    def _frame(self, rgb: np.ndarray, timings: Dict[str, float], report: StageCallback) -> _FrameCache:
        """Proposals and crop embeddings for this frame, from the cache when it is the last one."""
        key = frame_key(rgb)
        if self._cache is not None and self._cache.key == key:
            timings["proposals"] = timings["crops"] = 0.0
            return self._cache
        model_image, scale = fit_long_side(rgb, self.config.max_image_side)
        report(STAGE_PROPOSING, 0.0)
        t0 = time.perf_counter()
        proposals = self.proposer(model_image)
        report(STAGE_SCORING, 0.7)
        t1 = time.perf_counter()
        embeddings = self.scorer.embed_crops(model_image, proposals.masks, proposals.boxes_xyxy)
        t2 = time.perf_counter()
        timings["proposals"] = (t1 - t0) * 1e3
        timings["crops"] = (t2 - t1) * 1e3
        self._cache = _FrameCache(key, proposals, embeddings, scale)
        return self._cache

    def _fast_frame(self, rgb: np.ndarray, target: str, timings: Dict[str, float], report: StageCallback) -> _FrameCache:
        """Fast mode: masks at the points ``target`` chose, and their crop embeddings.

        Relevance windows (8 TinyCLIP forwards at 640x480, reused for every target on this
        frame) -> at most ``fast_prompts`` points (``choose_prompts``) -> MobileSAM decodes
        only those -> the masks of the most relevant prompts (at most
        ``max(FAST_SCORED_CROPS, max_detections)``, MobileSAM's predicted IoU breaking
        ties within a prompt) are scored like exact mode's crops. Nothing is cached until
        all of it succeeded.
        """
        key = frame_key(rgb)
        frame = self._fast_cache if self._fast_cache is not None and self._fast_cache.key == key else None
        if frame is not None and target in frame.targets:
            frame.targets.move_to_end(target)
            timings["relevance"] = timings["proposals"] = timings["crops"] = 0.0
            return frame.targets[target]
        model_image, scale = fit_long_side(rgb, self.config.max_image_side)
        height, width = model_image.shape[:2]
        report(STAGE_PROPOSING, 0.0)
        t0 = time.perf_counter()
        if frame is None:
            windows = relevance_windows(width, height)
            embeddings = embed_windows(self.scorer.clip, model_image, windows, self.device, self.scorer.batch_size)
            frame = _FastFrameCache(key, windows, embeddings)
        _, window_scores = self.scorer.score(frame.window_embeddings, target)
        choice = choose_prompts(width, height, frame.windows, window_scores, self.config.fast_prompts)
        t1 = time.perf_counter()
        proposals = self.proposer.propose_points(model_image, choice.points_xy)
        report(STAGE_SCORING, 0.7)
        t2 = time.perf_counter()
        rank = prompt_rank_of(proposals.point_coords, choice.points_xy)
        keep = np.lexsort((-proposals.predicted_iou, rank))[: max(FAST_SCORED_CROPS, self.config.max_detections)]
        proposals = _subset(proposals, keep)
        crop_embeddings = self.scorer.embed_crops(model_image, proposals.masks, proposals.boxes_xyxy)
        t3 = time.perf_counter()
        timings["relevance"] = (t1 - t0) * 1e3
        timings["proposals"] = (t2 - t1) * 1e3
        timings["crops"] = (t3 - t2) * 1e3
        entry = _FrameCache(key, proposals, crop_embeddings, scale, prompts=len(choice.points_xy))
        frame.targets[target] = entry
        while len(frame.targets) > FAST_TARGETS_CACHED:
            frame.targets.popitem(last=False)
        self._fast_cache = frame
        return entry

    @staticmethod
    def _detection(cache: _FrameCache, i: int, label: str, score: float, similarity: float, size_hw: Tuple[int, int]) -> Detection:
        mask = cache.proposals.masks[i]
        box = cache.proposals.boxes_xyxy[i].astype(float)
        if cache.scale != 1.0:
            mask = resize_mask(mask, size_hw)
            box = box / cache.scale
        h, w = size_hw
        x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])
        return Detection(label, float(score), (float(x0), float(y0), float(x1), float(y1)), mask, int(mask.sum()), float(similarity))

    def _autocast(self):
        """fp16 matrix work on CUDA; nothing changes on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return torch.autocast(device_type="cpu", enabled=False)
