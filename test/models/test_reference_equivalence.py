"""The package's pipeline gives the founding composition's answers (guards every speed-up)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_grasp_locator.backends.factory import build_locator
from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig
from reference_pipeline import reference_locate

from scenes import SMALL_PIPELINE

# Batched and per-crop forwards differ by float rounding (~1e-6); with random weights
# the top scores can tie closer than that, and then either mask is a right answer.
SCORE_TIE = 1e-4


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def many_masks() -> Locator:
    """No box NMS, so random weights leave dozens of distinct masks to compare."""
    return build_locator(
        LocatorConfig(
            **{
                **SMALL_PIPELINE,
                "box_nms_thresh": 1.0,
                "min_mask_region_area": 60,
                "max_detections": 100,
            }
        )
    )


def test_same_masks_scores_and_best_box_as_reference(many_masks, scene):
    target = "red block"
    result = many_masks.locate(scene, f"take the {target}")
    proposals, similarity, score = reference_locate(
        many_masks.proposer.segmenter.sam,
        many_masks.scorer,
        scene,
        target,
        many_masks.config.proposal_settings(),
    )
    ours = many_masks._frame.exact.proposals
    assert len(ours) == len(proposals) >= 10

    # Same mask set: every reference mask has a partner with IoU ~1 (rounding may flip
    # pixels whose logit is within 1e-6 of the threshold), and the same quality figures.
    partner = [
        max(range(len(ours)), key=lambda j: mask_iou(m, ours.masks[j])) for m in proposals.masks
    ]
    assert sorted(partner) == list(range(len(ours)))
    assert min(mask_iou(m, ours.masks[j]) for m, j in zip(proposals.masks, partner)) > 0.995
    np.testing.assert_allclose(ours.predicted_iou[partner], proposals.predicted_iou, atol=1e-5)
    np.testing.assert_allclose(ours.stability_score[partner], proposals.stability_score, atol=1e-3)

    # Same crop scores.
    our_similarity, our_score = many_masks.scorer.score(many_masks._frame.exact.features, target)
    np.testing.assert_allclose(our_similarity[partner], similarity, atol=1e-5)
    np.testing.assert_allclose(our_score[partner], score, atol=1e-5)

    # Same best mask and box, unless the top two are a near-tie.
    ranked = np.argsort(-score)
    if score[ranked[0]] - score[ranked[1]] > SCORE_TIE:
        best = result.best
        assert mask_iou(best.mask, proposals.masks[ranked[0]]) > 0.995
        np.testing.assert_allclose(best.box_xyxy, proposals.boxes_xyxy[ranked[0]], atol=1.0)


def _prompted(locator, scene, n: int, seed: int):
    """The scene's image embedding, and sparse/dense embeddings of ``n`` random points."""
    sam = locator.proposer.segmenter.sam
    features = locator.proposer.encode(scene).features
    points = torch.rand(n, 1, 2, generator=torch.Generator().manual_seed(seed)) * 1024
    sparse, dense = sam.prompt_encoder(
        points=(points, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None
    )
    return sam, features, sparse, dense


@torch.inference_mode()
def test_fast_decoder_matches_mobile_sam_decoder(locator, scene):
    from vlm_grasp_locator.models.sam_decoder import FastMaskDecoder

    sam, features, sparse, dense = _prompted(locator, scene, 6, seed=0)
    want_masks, want_iou = sam.mask_decoder(
        image_embeddings=features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    decoder = FastMaskDecoder(sam.mask_decoder)
    decoder.set_image(features, sam.prompt_encoder.get_dense_pe(), dense[:1])
    tokens = decoder.run_transformer(sparse)
    prompt_idx, mask_idx = torch.meshgrid(torch.arange(6), torch.arange(1, 4), indexing="ij")
    masks = decoder.masks_for(tokens, prompt_idx.flatten(), mask_idx.flatten()).view(
        6, 3, 256, 256
    )
    torch.testing.assert_close(tokens.iou_pred[:, 1:], want_iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masks, want_masks, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_fast_decoder_gives_any_subset_of_masks(locator, scene):
    """Only the (prompt, mask) pairs asked for are upscaled; they equal those of all masks."""
    from vlm_grasp_locator.models.sam_decoder import FastMaskDecoder, all_mask_logits

    sam, features, sparse, dense = _prompted(locator, scene, 5, seed=1)
    decoder = FastMaskDecoder(sam.mask_decoder)
    decoder.set_image(features, sam.prompt_encoder.get_dense_pe(), dense[:1])
    tokens = decoder.run_transformer(sparse)
    everything = all_mask_logits(
        sam.mask_decoder, tokens.image_tokens, tokens.mask_tokens, decoder.grid_hw
    )
    prompt_idx = torch.tensor([0, 0, 2, 3, 3, 3])
    mask_idx = torch.tensor([1, 3, 2, 0, 1, 3])
    torch.testing.assert_close(
        decoder.masks_for(tokens, prompt_idx, mask_idx),
        everything[prompt_idx, mask_idx],
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "original_hw", [(480, 640), (720, 1280), (640, 480), (1024, 1024), (37, 1900)]
)
def test_masks_at_image_size_equals_mobile_sam_postprocessing(locator, original_hw):
    from vlm_grasp_locator.pipeline.mask_proposals import masks_at_image_size

    from mobile_sam.utils.transforms import ResizeLongestSide

    sam = locator.proposer.segmenter.sam
    input_hw = ResizeLongestSide.get_preprocess_shape(*original_hw, sam.image_encoder.img_size)
    low_res = torch.randn(4, 256, 256, generator=torch.Generator().manual_seed(2))
    want = sam.postprocess_masks(low_res[:, None], input_hw, original_hw)[:, 0]
    assert torch.equal(
        masks_at_image_size(low_res, sam.image_encoder.img_size, input_hw, original_hw), want
    )
