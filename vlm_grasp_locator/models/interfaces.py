"""What the pipeline needs of the models, as typed protocols, and the bundle a backend loads.

A backend (``backends.factory``) satisfies these with whatever engine it runs: the torch
modules through the adapters in ``adapters``, ONNX Runtime sessions through
``backends.onnx_runtime``. The pipeline uses nothing else of them, so it never asks
which engine it holds: capabilities that differ are explicit fields
(``MaskDecoder.parallel_batches``, ``Segmenter.generator_model``), not attributes to
probe for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from vlm_grasp_locator.models.sam_decoder import DecodedTokens


class MaskDecoder(Protocol):
    """MobileSAM's mask decoder split at its seams (``sam_decoder.FastMaskDecoder``)."""

    # True when independent prompt batches may run side by side on CPU worker threads
    # (torch); False when the engine spreads one call over the cores itself (ONNX Runtime).
    parallel_batches: bool

    def set_image(
        self, features: torch.Tensor, image_pe: torch.Tensor, dense_embedding: torch.Tensor
    ) -> None:
        """Prepare the image side once per image (features (1, C, h, w))."""

    def run_transformer(self, sparse_embeddings: torch.Tensor) -> DecodedTokens:
        """Tokens of a batch of prompts (B, points, C) against the image set last."""

    def masks_for(
        self, tokens: DecodedTokens, prompt_idx: torch.Tensor, mask_idx: torch.Tensor
    ) -> torch.Tensor:
        """Low-resolution logits (K, h, w) of the (prompt, mask) pairs asked for."""


@dataclass(frozen=True)
class EncodedImage:
    """An image through MobileSAM's image encoder: what every prompt on it reuses.

    features: (1, C, h, w) on the model device. input_size: (h, w) of the image resized
    for the encoder (before padding). original_size: (h, w) of the image itself.
    """

    features: torch.Tensor
    input_size: Tuple[int, int]
    original_size: Tuple[int, int]


class Segmenter(Protocol):
    """MobileSAM as ``MaskProposer`` uses it: an image encoder, a point prompt encoder
    and a ``MaskDecoder``, all on ``device``."""

    device: torch.device
    img_size: int  # the encoder's input side (1024)
    mask_threshold: float  # logit above which a pixel is in the mask
    decoder: MaskDecoder
    # The whole mobile_sam ``Sam`` module for mobile_sam's own automatic mask generator
    # (``crop_n_layers > 0``); None where the engine has none (ONNX Runtime).
    generator_model: Optional[torch.nn.Module]

    def encode(self, image: np.ndarray) -> EncodedImage:
        """Run the image encoder on an HxWx3 uint8 RGB image."""

    def to_input_coords(self, points_xy: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        """Pixel (x, y) points of the original image -> the encoder input's coordinates."""

    def embed_points(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, 2, C) and dense (B, C, h, w) embeddings of single foreground points
        (B, 2), in the encoder input's coordinates."""

    def embed_prompt(
        self, points: Optional[torch.Tensor], labels: Optional[torch.Tensor], box: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, K + 2, C) and dense (B, C, h, w) embeddings of B box prompts: boxes
        (B, 4) x0, y0, x1, y1 (their corners get the box-corner labels 2 and 3) plus K
        points each (B, K, 2) with labels (B, K) (1 foreground, 0 background), or None;
        all in the encoder input's coordinates."""

    def dense_pe(self) -> torch.Tensor:
        """The positional encoding of the image embedding's grid (1, C, h, w)."""


class ImageTextModel(Protocol):
    """CLIP as ``CropScorer`` uses it: normalised image and text embeddings on ``device``."""

    device: torch.device
    embed_dim: int  # width of the joint embedding
    # The learned temperature, exponentiated and at most 100: softmax(logit_scale * cosine).
    logit_scale: float

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels (any device) -> (N, D) float32, L2-normalised,
        on ``device``."""

    def encode_phrases(self, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``template.format(phrase)`` texts -> (len(phrases), len(templates), D),
        L2-normalised per text."""


@dataclass
class LoadedModels:
    """The models a backend loaded, behind the pipeline's protocols."""

    segmenter: Segmenter
    clip: ImageTextModel
    clip_name: str
    device: torch.device
    random_weights: bool
