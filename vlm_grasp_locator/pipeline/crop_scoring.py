"""Stage 2: score each proposed mask against the target phrase with TinyCLIP.

``CropScorer`` works on an ``ImageTextModel`` (``models.interfaces``), whichever
backend serves it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np
import torch

from vlm_grasp_locator.models.interfaces import ImageTextModel
from vlm_grasp_locator.pipeline.proposals import Proposals

# CLIP's training statistics; the fill colour is their mean so suppressed pixels look
# like "nothing" to the model rather than like a black or white object.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
FILL_RGB = np.round(CLIP_MEAN * 255).astype(np.uint8)

PROMPT_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a {} on a table.",
)
# Generic things a mask can also be. The calibrated score is the probability that a crop
# shows the target rather than any of these, so it means something on its own.
NEGATIVE_PHRASES: Tuple[str, ...] = (
    "background",
    "table surface",
    "wall",
    "floor",
    "shadow",
    "clutter",
)

CROP_MODES = ("blend", "mask", "box")


@dataclass(frozen=True)
class CropSettings:
    """How a mask becomes a CLIP input.

    ``blend`` (default) keeps the box plus ``context`` margin but fades everything outside
    the mask towards the fill colour, leaving ``background_keep`` of it: a plain box crop
    lets a neighbouring object win the score, while a hard cut-out loses the context that
    thin or partly-masked objects (a pen, scissor blades) need to be recognised.
    ``mask`` is the hard cut-out, ``box`` the plain crop.
    """

    mode: str = "blend"
    context: float = 0.1
    background_keep: float = 0.2
    size: int = 224

    def validate(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {CROP_MODES}, got {self.mode!r}")
        if not 0.0 <= self.context <= 1.0:
            raise ValueError(f"crop context must be in [0, 1], got {self.context}")
        if not 0.0 <= self.background_keep <= 1.0:
            raise ValueError(f"background_keep must be in [0, 1], got {self.background_keep}")


def square_context_box(box_xyxy: Sequence[float], context: float) -> Tuple[int, int, int, int]:
    """The mask's box grown by ``context`` on each side and made square (may leave the image)."""
    x0, y0, x1, y1 = box_xyxy
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * context)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half = side / 2.0
    return (
        int(np.floor(cx - half)),
        int(np.floor(cy - half)),
        int(np.ceil(cx + half)),
        int(np.ceil(cy + half)),
    )


def make_crop(
    image: np.ndarray, mask: np.ndarray, box_xyxy: Sequence[float], settings: CropSettings
) -> np.ndarray:
    """A (size, size, 3) uint8 RGB crop of ``image`` around ``mask`` (see ``CropSettings``)."""
    h, w = mask.shape
    x0, y0, x1, y1 = square_context_box(box_xyxy, settings.context)
    side = x1 - x0
    crop = np.empty((y1 - y0, side, 3), dtype=np.uint8)
    crop[:] = FILL_RGB
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    region = image[iy0:iy1, ix0:ix1]
    if settings.mode != "box":
        inside = mask[iy0:iy1, ix0:ix1, None]
        keep = settings.background_keep if settings.mode == "blend" else 0.0
        faded = region * keep + FILL_RGB * (1.0 - keep)
        region = np.where(inside, region, np.round(faded).astype(np.uint8))
    crop[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = region
    interpolation = cv2.INTER_AREA if crop.shape[0] > settings.size else cv2.INTER_CUBIC
    return cv2.resize(crop, (settings.size, settings.size), interpolation=interpolation)


def crops_to_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack uint8 crops into a normalised (N, 3, S, S) float tensor."""
    batch = (np.stack(crops).astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


class TextEmbeddingCache:
    """Normalised, template-averaged text embeddings per phrase (least recently used out)."""

    def __init__(self, clip: ImageTextModel, capacity: int = 256) -> None:
        self.clip = clip
        self.capacity = capacity
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    @torch.inference_mode()
    def embed(self, phrases: Sequence[str]) -> torch.Tensor:
        """(len(phrases), D) float32 embeddings, computing only the phrases not cached."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if missing:
            features = self.clip.encode_phrases(missing, PROMPT_TEMPLATES).float().mean(dim=1)
            for phrase, feature in zip(missing, torch.nn.functional.normalize(features, dim=-1)):
                self._cache[phrase] = feature
        for p in phrases:
            self._cache.move_to_end(p)
        out = torch.stack([self._cache[p] for p in phrases])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out


class CropScorer:
    """TinyCLIP image embeddings of mask crops and their similarity to a phrase.

    A ``parts.FrameScorer`` (crop embeddings once per frame) and a ``parts.RegionScorer``.
    """

    def __init__(self, clip: ImageTextModel, settings: CropSettings, batch_size: int = 16) -> None:
        settings.validate()
        if batch_size < 1:
            raise ValueError(f"clip batch size must be >= 1, got {batch_size}")
        self.clip = clip
        self.settings = settings
        self.batch_size = batch_size
        self.text = TextEmbeddingCache(clip)

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    @torch.inference_mode()
    def embed_crops(
        self, image: np.ndarray, masks: np.ndarray, boxes_xyxy: np.ndarray
    ) -> torch.Tensor:
        """(N, D) normalised image embeddings, in chunks of ``batch_size`` crops."""
        chunks = []
        for start in range(0, len(masks), self.batch_size):
            stop = start + self.batch_size
            crops = [
                make_crop(image, mask, box, self.settings)
                for mask, box in zip(masks[start:stop], boxes_xyxy[start:stop])
            ]
            chunks.append(self.clip.encode_images(crops_to_tensor(crops)))
        if not chunks:
            return torch.zeros((0, self.clip.embed_dim), device=self.clip.device)
        return torch.cat(chunks)

    def embed_regions(self, image: np.ndarray, proposals: Proposals) -> torch.Tensor:
        return self.embed_crops(image, proposals.masks, proposals.boxes_xyxy)

    def score(self, crop_embeddings: torch.Tensor, target: str) -> Tuple[np.ndarray, np.ndarray]:
        """Cosine similarity to ``target`` and the calibrated score, both (N,).

        The calibrated score is the softmax probability (at CLIP's own temperature) of
        the target phrase against ``NEGATIVE_PHRASES``: in [0, 1], comparable across
        images and phrases, and low when a crop is no more the target than the table.
        In fp32 on the CPU whatever the caller's autocast (``precision: bf16``): the text
        tower is cheap, and rounding similarities to bf16 would tie close crops.
        """
        negatives = [p for p in NEGATIVE_PHRASES if p != target]
        with torch.autocast(device_type="cpu", enabled=False):
            text = self.text.embed([target, *negatives]).to(crop_embeddings.device)
            similarity = crop_embeddings.float() @ text.T  # (N, 1 + negatives)
            probability = torch.softmax(self.logit_scale * similarity, dim=-1)[:, 0]
        return similarity[:, 0].cpu().numpy(), probability.cpu().numpy()

    def __call__(
        self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]
    ) -> np.ndarray:
        """(N, P) calibrated scores of the proposals against each phrase."""
        embeddings = self.embed_regions(image, proposals)
        columns = [self.score(embeddings, phrase)[1] for phrase in phrases]
        return np.stack(columns, axis=1) if columns else np.zeros((len(proposals), 0))
