"""The real MobileSAM box-prompt path of ``Locator.track`` (random weights: shapes and
flow only; what the answers mean is tested with parts of known semantics in
test/unit/test_tracking.py)."""

from __future__ import annotations

import numpy as np

from synthetic_scenes import frame, moving, true_box
from vlm_grasp_locator.pipeline.locator import Locator
from vlm_grasp_locator.pipeline.tracking import (
    BoxPrompt,
    PromptFrame,
    SamBoxSegmenter,
    TrackSettings,
    deep_points,
)

COMMAND = "pick up the red square"


class Calls:
    """Wraps a method: records each call's arguments, returns what the method returns."""

    def __init__(self, method) -> None:
        self.method, self.args = method, []

    def __call__(self, *args, **kwargs):
        self.args.append(args)
        return self.method(*args, **kwargs)


def test_mobile_sam_box_prompt_flow(locator: Locator, monkeypatch) -> None:
    """Random weights: shapes and flow only. One prompt of box + points decoded, the
    image encoder once per frame (shared with a full query on the same frame), one crop."""
    assert isinstance(locator.prompt_segmenter, SamBoxSegmenter)
    segmenter = locator.prompt_segmenter.segmenter
    encode = Calls(segmenter.encode)
    transformer = Calls(segmenter.decoder.run_transformer)
    crops = Calls(locator.scorer.clip.encode_images)
    monkeypatch.setattr(segmenter, "encode", encode)
    monkeypatch.setattr(segmenter.decoder, "run_transformer", transformer)
    monkeypatch.setattr(locator.scorer.clip, "encode_images", crops)
    targets = moving((60.0, 70.0), (5.0, 2.0), 2)
    first, _ = frame(targets[0], 0)
    second, _ = frame(targets[1], 1)
    located = locator.locate(first, COMMAND, frame_key="tracking-0")
    assert located.found  # score_threshold 0: random weights still answer
    state = locator.start_track(located, stamp_s=0.0)
    encode.args.clear(), transformer.args.clear(), crops.args.clear()

    settings = TrackSettings(min_score=0.0, max_area_ratio=1e6, min_iou=0.0)
    result = locator.track(second, state, frame_key="tracking-1", stamp_s=0.1,
                           settings=settings)
    assert len(encode.args) == 1
    assert len(transformer.args) == 1
    (sparse,), = transformer.args
    assert sparse.shape == (1, 2 + len(state.points_xy), 256)  # box corners + points
    measured = result.detection or result.rejected
    if measured is not None:  # random weights may decode an empty mask
        assert measured.mask.shape == second.shape[:2] and measured.mask.dtype == bool
        assert len(crops.args) == 1 and crops.args[0][0].shape[0] == 1
    else:
        assert not crops.args and "no mask" in result.reason
    assert set(result.timings_ms) >= {"prompt", "crops", "total"}

    # A full query on the same frame reuses its image embedding.
    locator.locate(second, COMMAND, frame_key="tracking-1")
    assert len(encode.args) == 1


def test_mobile_sam_box_segmenter_gives_four_masks_at_the_image_size(locator: Locator) -> None:
    segment = locator.prompt_segmenter
    image, mask = frame(moving((60.0, 70.0), (0.0, 0.0), 1)[0], 0)
    prompted = PromptFrame(image)
    points = deep_points(mask, 3)
    out = segment(prompted, BoxPrompt(true_box(mask), points))
    assert out.masks.shape == (4, *image.shape[:2]) and out.masks.dtype == bool
    assert out.predicted_iou.shape == (4,) and np.isfinite(out.predicted_iou).all()
    assert prompted.encodes == 1
    again = segment(prompted, BoxPrompt(true_box(mask), points[:0]))  # box alone
    assert prompted.encodes == 1 and again.masks.shape == out.masks.shape
    assert prompted.encoded is not None and prompted.encoded.original_size == image.shape[:2]
