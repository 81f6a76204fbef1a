"""Stage 1: object mask proposals from MobileSAM's "segment everything" mode.

``MaskProposer`` gives the same masks as mobile_sam's ``SamAutomaticMaskGenerator``
for a single crop layer (the founding settings), but orders the work so that nothing
is paid for a mask that a later filter throws away:

* the predicted IoU comes from the decoder's IoU token alone, so masks are filtered
  on it *before* their upscaling convolutions and full-resolution resampling run;
* prompts go through the decoder a few at a time, so memory stays small and the
  per-prompt tensors stay in the CPU cache; on the CPU the batches run side by side, one
  thread per core, when the entry point hands over its ``CpuWorkers``;
* box NMS runs on per-batch boxes, so only the masks it keeps are gathered;
* masks stay boolean arrays instead of round-tripping through RLE.

With ``crop_n_layers > 0`` the generator from mobile_sam itself is used.

The proposer works on a ``Segmenter`` (``models.interfaces``), whichever backend
serves it, and keeps nothing of an image: ``encode`` returns the image embedding and
``propose`` takes it, so whoever caches per frame (the ``Locator``) keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from vlm_grasp_locator.models.interfaces import EncodedImage, Segmenter
from vlm_grasp_locator.pipeline.proposals import Proposals
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers, map_inline_or_on

__all__ = ["MaskProposer", "ProposalSettings", "Proposals", "PROMPT_BATCH"]

# Prompts decoded together. Small on purpose: the decoder's per-prompt image tensors
# (4096x256 floats) then stay in the CPU cache, which measured 2x faster than 64 at once.
# Results do not depend on it; ``points_per_batch`` only matters for the crop-layer path.
PROMPT_BATCH = 4
# Masks resized to the image's size together (each is 4 MB of float logits at 1024x1024).
POSTPROCESS_CHUNK = 3


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                 iou_threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms``, imported on first use: importing torchvision pulls
    in torch._dynamo, about 1.5 s that every process importing the pipeline would pay."""
    from torchvision.ops.boxes import batched_nms

    return batched_nms(boxes, scores, idxs, iou_threshold)


@dataclass(frozen=True)
class ProposalSettings:
    """The automatic mask generator's knobs (names as in segment-anything)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.85
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    min_mask_region_area: int = 200

    def validate(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.stability_score_offset <= 0:
            raise ValueError(
                f"stability_score_offset must be > 0, got {self.stability_score_offset}"
            )
        if self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")

    def generator_kwargs(self) -> dict:
        """Keyword arguments for mobile_sam's ``SamAutomaticMaskGenerator``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Boxes around boolean masks with exclusive x1/y1; (0, 0, 0, 0) for empty masks."""
    from mobile_sam.utils.amg import batched_mask_to_box

    boxes = batched_mask_to_box(masks).float()
    nonempty = masks.flatten(1).any(dim=1)
    boxes[:, 2:] += nonempty[:, None].float()
    return boxes


@dataclass
class _BatchMasks:
    """What one batch of prompts contributes: masks on the CPU and their prompt numbers."""

    masks: torch.Tensor
    boxes: torch.Tensor  # inclusive boxes, as mobile_sam's NMS uses them
    predicted_iou: torch.Tensor
    stability_score: torch.Tensor
    prompt_index: np.ndarray


class MaskProposer:
    """Segment-everything with MobileSAM; see the module docstring for what is different.

    A ``parts.Proposer``. ``workers``: run the decoder's prompt batches side by side on
    these threads (CPU, decoders with ``parallel_batches``); None runs them in the
    calling thread.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        settings: ProposalSettings,
        workers: Optional[CpuWorkers] = None,
    ) -> None:
        from mobile_sam.utils.amg import build_point_grid

        settings.validate()
        if settings.crop_n_layers > 0 and segmenter.generator_model is None:
            raise ValueError(
                "crop_n_layers > 0 runs mobile_sam's own generator, which needs backend 'torch'"
            )
        self.segmenter = segmenter
        self.settings = settings
        self.workers = workers
        self.grid = build_point_grid(settings.points_per_side)

    @property
    def device(self) -> torch.device:
        return self.segmenter.device

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Proposals:
        """Propose masks for an HxWx3 uint8 RGB image (the point grid)."""
        if self.settings.crop_n_layers > 0:
            return self._with_mobile_sam_generator(image)
        return self.propose(self.encode(image))

    def encode(self, image: np.ndarray) -> EncodedImage:
        """MobileSAM's image embedding of an HxWx3 uint8 RGB image, for ``propose``."""
        return self.segmenter.encode(image)

    @torch.inference_mode()
    def propose(self, encoded: EncodedImage, points: Optional[np.ndarray] = None) -> Proposals:
        """Masks prompted by single foreground ``points`` ((N, 2) pixel x, y of the image
        ``encoded`` was made of); None: the point grid.

        The same decoding and filters as the grid (multimask output, predicted-IoU and
        stability thresholds, box NMS, small-region cleaning); ``crop_n_layers`` is ignored.
        """
        h, w = encoded.original_size
        if points is None:
            points = self.grid * np.array([[w, h]])
        return self._propose(encoded, np.asarray(points, dtype=np.float64).reshape(-1, 2))

    def _propose(self, encoded: EncodedImage, points: np.ndarray) -> Proposals:
        s = self.settings
        size_hw = encoded.original_size
        if len(points) == 0:
            return Proposals.empty(size_hw)
        segmenter = self.segmenter
        in_points = torch.as_tensor(
            segmenter.to_input_coords(points, size_hw), dtype=torch.float32, device=self.device
        )
        _, dense = segmenter.embed_points(in_points[:1])
        segmenter.decoder.set_image(encoded.features, segmenter.dense_pe(), dense)
        starts = range(0, len(points), PROMPT_BATCH)
        # The torch decoder's batches are independent, and each is many small operations:
        # on the CPU they run on one thread per core rather than splitting every operation.
        parallel = self.device.type == "cpu" and segmenter.decoder.parallel_batches
        batches = map_inline_or_on(
            self.workers if parallel else None,
            lambda start: self._decode_batch(
                encoded, in_points[start : start + PROMPT_BATCH], start  # noqa: E203
            ),
            starts,
        )
        kept = [b for b in batches if b is not None and len(b.masks) > 0]
        if not kept:
            return Proposals.empty(size_hw)
        iou_preds = torch.cat([b.predicted_iou for b in kept])
        stability = torch.cat([b.stability_score for b in kept])
        point_coords = np.concatenate([points[b.prompt_index] for b in kept])

        # Duplicates: the same box-NMS as the generator (inclusive boxes, like mobile_sam).
        # Boxes come with each batch, so only the masks NMS keeps are copied together.
        keep = _batched_nms(
            torch.cat([b.boxes for b in kept]),
            iou_preds,
            torch.zeros(len(iou_preds)),
            iou_threshold=s.box_nms_thresh,
        )
        every_mask = [mask for b in kept for mask in b.masks]
        masks = torch.stack([every_mask[i] for i in keep.tolist()])
        iou_preds, stability = iou_preds[keep], stability[keep]
        point_coords = point_coords[keep.numpy()]
        if s.min_mask_region_area > 0:
            # As in the generator, the NMS after cleaning uses the larger of the two thresholds.
            nms_thresh = max(s.box_nms_thresh, s.crop_nms_thresh)
            keep, masks = remove_small_regions_and_duplicates(
                masks, s.min_mask_region_area, nms_thresh
            )
            iou_preds, stability = iou_preds[keep], stability[keep]
            point_coords = point_coords[keep.numpy()]
        return Proposals(
            masks=masks.numpy(),
            boxes_xyxy=masks_to_boxes_xyxy(masks).numpy(),
            predicted_iou=iou_preds.numpy(),
            stability_score=stability.numpy(),
            point_coords=point_coords.astype(np.float32),
        )

    @torch.inference_mode()
    def _decode_batch(
        self, encoded: EncodedImage, in_points: torch.Tensor, first: int
    ) -> Optional["_BatchMasks"]:
        """Masks of the prompts ``in_points`` (model coordinates; the first is prompt number
        ``first``) that pass the predicted-IoU and stability thresholds, or None."""
        from mobile_sam.utils.amg import batched_mask_to_box, calculate_stability_score

        s = self.settings
        decoder = self.segmenter.decoder
        sparse, _ = self.segmenter.embed_points(in_points)
        tokens = decoder.run_transformer(sparse)
        iou = tokens.iou_pred[:, 1:]  # multimask output: masks 1..3
        keep = (
            iou > s.pred_iou_thresh
            if s.pred_iou_thresh > 0
            else torch.ones_like(iou, dtype=torch.bool)
        )
        prompt_idx, mask_idx = keep.nonzero(as_tuple=True)
        if len(prompt_idx) == 0:
            return None
        low_res = decoder.masks_for(tokens, prompt_idx, mask_idx + 1)
        threshold = self.segmenter.mask_threshold
        img_size = self.segmenter.img_size
        masks, stability, ok = [], [], []
        for part in low_res.split(POSTPROCESS_CHUNK):  # full-size logits are 4 MB a mask
            logits = masks_at_image_size(part, img_size, encoded.input_size, encoded.original_size)
            part_stability = calculate_stability_score(logits, threshold, s.stability_score_offset)
            part_ok = (
                part_stability >= s.stability_score_thresh
                if s.stability_score_thresh > 0
                else torch.ones_like(part_stability, dtype=torch.bool)
            )
            masks.append((logits[part_ok] > threshold).cpu())
            stability.append(part_stability)
            ok.append(part_ok)
        ok = torch.cat(ok)
        masks = torch.cat(masks)
        return _BatchMasks(
            masks=masks,
            boxes=batched_mask_to_box(masks).float(),
            predicted_iou=iou[prompt_idx, mask_idx][ok].float().cpu(),
            stability_score=torch.cat(stability)[ok].float().cpu(),
            prompt_index=first + prompt_idx[ok].cpu().numpy(),
        )

    def _with_mobile_sam_generator(self, image: np.ndarray) -> Proposals:
        from mobile_sam import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(
            self.segmenter.generator_model, **self.settings.generator_kwargs()
        )
        records = generator.generate(image)
        return proposals_from_records(records, image.shape[:2])


def masks_at_image_size(
    low_res: torch.Tensor,
    img_size: int,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
) -> torch.Tensor:
    """``Sam.postprocess_masks`` for (K, h, w) low-resolution logits -> (K, H, W) at the
    image's size.

    The same two bilinear resizes, but the first one skips the padding that is cropped
    away after it: the low-resolution rows and columns it never reads are dropped first,
    and resizing by the same factor then computes every kept pixel from the same source
    coordinates, so the result is identical (tested) for a quarter less work at 4:3.
    """
    scale = img_size // low_res.shape[-1]
    # Output pixel y reads source rows floor((y + 0.5) / scale - 0.5) and the one after.
    rows, cols = (
        min(n, math.floor((size - 0.5) / scale - 0.5) + 2)
        for n, size in zip(low_res.shape[-2:], input_size)
    )
    upsampled = F.interpolate(
        low_res[None, :, :rows, :cols], scale_factor=scale, mode="bilinear", align_corners=False
    )
    cropped = upsampled[..., : input_size[0], : input_size[1]]
    return F.interpolate(cropped, original_size, mode="bilinear", align_corners=False)[0]


def remove_small_regions_and_duplicates(
    masks: torch.Tensor, min_area: int, nms_thresh: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fill small holes, drop small islands, then NMS again preferring untouched masks.

    The generator's ``postprocess_small_regions`` on boolean masks: returns the kept
    indices (into ``masks``) and the kept, cleaned masks.
    """
    from mobile_sam.utils.amg import batched_mask_to_box, remove_small_regions

    cleaned = []
    scores = []
    for mask in masks.numpy():
        mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
        mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(torch.as_tensor(mask))
        scores.append(0.0 if holes_changed or islands_changed else 1.0)
    cleaned_masks = torch.stack(cleaned)
    keep = _batched_nms(
        batched_mask_to_box(cleaned_masks).float(),
        torch.as_tensor(scores),
        torch.zeros(len(cleaned_masks)),
        iou_threshold=nms_thresh,
    )
    return keep, cleaned_masks[keep]


def proposals_from_records(records: List[dict], size_hw: Tuple[int, int]) -> Proposals:
    """Convert ``SamAutomaticMaskGenerator.generate`` records (binary_mask mode)."""
    if not records:
        return Proposals.empty(size_hw)
    masks = torch.as_tensor(np.stack([r["segmentation"] for r in records]).astype(bool))
    return Proposals(
        masks=masks.numpy(),
        boxes_xyxy=masks_to_boxes_xyxy(masks).numpy(),
        predicted_iou=np.array([r["predicted_iou"] for r in records], dtype=np.float32),
        stability_score=np.array([r["stability_score"] for r in records], dtype=np.float32),
        point_coords=np.array([r["point_coords"][0] for r in records], dtype=np.float32),
    )
