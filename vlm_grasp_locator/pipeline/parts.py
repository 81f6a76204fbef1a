"""The two parts a ``Locator`` is made of, as typed protocols users and tests can fill.

* ``Proposer(image) -> Proposals``: candidate object regions of an HxWx3 uint8 RGB image.
  The default is MobileSAM's segment-everything (``mask_proposals.MaskProposer``).
* ``RegionScorer(image, proposals, phrases) -> (N, P) array``: for each of the N
  regions and P phrases, a calibrated score in [0, 1] that the region shows what the
  phrase names (comparable across images and phrases: the locator applies one
  ``score_threshold`` to it). The default is TinyCLIP on mask crops
  (``crop_scoring.CropScorer``).

``Locator.from_parts(config, proposer=..., scorer=...)`` builds a locator on any of
them; plain functions of those signatures will do. The locator caches a frame's
proposals and calls a plug-in scorer once per query with them.

``FrameScorer`` is the split form the locator uses internally, so that a scorer whose
work is mostly per image (TinyCLIP's crop embeddings) does it once per frame;
``CallableScorer`` puts any ``RegionScorer`` in that form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, Sequence, Tuple, TypeVar

import numpy as np

from vlm_grasp_locator.pipeline.proposals import Proposals

F = TypeVar("F")


class Proposer(Protocol):
    """Candidate object regions (``Proposals``: masks at the image's size) of an image."""

    def __call__(self, image: np.ndarray) -> Proposals: ...


class RegionScorer(Protocol):
    """(N regions x P phrases) calibrated scores in [0, 1]; see the module docstring."""

    def __call__(
        self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]
    ) -> np.ndarray: ...


class FrameScorer(Protocol, Generic[F]):
    """A scorer split at the frame: ``embed_regions`` once per frame (cached by the
    locator), ``score`` once per query on what it returned."""

    def embed_regions(self, image: np.ndarray, proposals: Proposals) -> F: ...

    def score(self, features: F, target: str) -> Tuple[np.ndarray, np.ndarray]:
        """Raw similarity and calibrated score in [0, 1] of each region, both (N,).
        Regions are ranked by score, ties broken by similarity."""


@dataclass(frozen=True)
class FrameRegions:
    """What ``CallableScorer`` keeps of a frame: the image and its proposals."""

    image: np.ndarray
    proposals: Proposals


class CallableScorer:
    """A ``RegionScorer`` as a ``FrameScorer``: called per query, similarity = score."""

    def __init__(self, scorer: RegionScorer) -> None:
        self.scorer = scorer

    def embed_regions(self, image: np.ndarray, proposals: Proposals) -> FrameRegions:
        return FrameRegions(image, proposals)

    def score(self, features: FrameRegions, target: str) -> Tuple[np.ndarray, np.ndarray]:
        n = len(features.proposals)
        scores = np.asarray(self.scorer(features.image, features.proposals, [target]), float)
        if scores.shape != (n, 1):
            raise ValueError(f"region scorer returned shape {scores.shape}, expected ({n}, 1)")
        if not np.all((scores >= 0.0) & (scores <= 1.0)):  # also refuses NaN
            raise ValueError("region scorer returned scores outside [0, 1]")
        return scores[:, 0], scores[:, 0]
