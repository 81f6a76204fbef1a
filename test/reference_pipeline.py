"""The founding notes' pipeline, composed the straightforward way.

mobile_sam's ``SamAutomaticMaskGenerator``, then one TinyCLIP forward per crop. It is
the yardstick: the equivalence test holds ``Locator`` to its answers and the benchmark
measures the speed-up against it. Not used for serving.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from vlm_grasp_locator.pipeline.crop_scoring import CropScorer, crops_to_tensor, make_crop
from vlm_grasp_locator.pipeline.mask_proposals import (
    ProposalSettings,
    Proposals,
    proposals_from_records,
)


@torch.inference_mode()
def reference_proposals(
    sam: torch.nn.Module, image: np.ndarray, settings: ProposalSettings
) -> Proposals:
    from mobile_sam import SamAutomaticMaskGenerator

    records = SamAutomaticMaskGenerator(sam, **settings.generator_kwargs()).generate(image)
    return proposals_from_records(records, image.shape[:2])


@torch.inference_mode()
def reference_crop_embeddings(
    scorer: CropScorer, image: np.ndarray, proposals: Proposals
) -> torch.Tensor:
    """One image-tower forward per crop, as the founding notes did."""
    rows = [
        scorer.clip.encode_images(crops_to_tensor([make_crop(image, m, b, scorer.settings)]))
        for m, b in zip(proposals.masks, proposals.boxes_xyxy)
    ]
    return torch.cat(rows) if rows else torch.zeros((0, scorer.clip.embed_dim))


def reference_locate(
    sam: torch.nn.Module,
    scorer: CropScorer,
    image: np.ndarray,
    target: str,
    settings: ProposalSettings,
) -> Tuple[Proposals, np.ndarray, np.ndarray]:
    """Proposals, their cosine similarity to ``target`` and calibrated scores."""
    proposals = reference_proposals(sam, image, settings)
    similarity, score = scorer.score(reference_crop_embeddings(scorer, image, proposals), target)
    return proposals, similarity, score
