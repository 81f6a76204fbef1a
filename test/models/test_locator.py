"""End-to-end ``Locator.locate`` on random weights: well-formed answers, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_grasp_locator.backends.factory import build_locator
from vlm_grasp_locator.core.command_parser import parse_command
from vlm_grasp_locator.core.referring import parse_referring
from vlm_grasp_locator.pipeline import locator as locator_module
from vlm_grasp_locator.pipeline.locator import LocatorConfig

from scenes import SMALL_PIPELINE, assert_well_formed


def test_locate_returns_ranked_detections(locator, scene):
    result = locator.locate(scene, "Please pick up the red block.")
    assert result.target == "red block"
    assert result.found and result.reason == ""
    assert 1 <= len(result.detections) <= locator.config.max_detections
    assert result.proposals >= len(result.detections)
    assert_well_formed(result, 320, 240)
    assert result.best is result.detections[0]
    # Exact mode is the default: the grid, no text-chosen prompts, no fast-mode state.
    assert locator.config.mode == "exact" and result.prompts == 0
    assert "relevance" not in result.timings_ms
    frame = locator._frame
    assert frame.exact is not None and not frame.targets and frame.windows is None
    # The grid's image embedding stays with the frame: ``track`` on it reuses it.
    assert frame.encoded is not None and frame.encoded.original_size == (240, 320)


def test_second_command_on_same_frame_reuses_proposals(locator, scene):
    first = locator.locate(scene, "take the blue block")
    again = locator.locate(scene.copy(), "grab a green block")  # same pixels, new array
    assert again.timings_ms["proposals"] == 0.0 and again.timings_ms["crops"] == 0.0
    assert again.proposals == first.proposals
    repeat = locator.locate(scene, "take the blue block")
    assert [d.score for d in repeat.detections] == [d.score for d in first.detections]


def test_threshold_gives_not_found_instead_of_least_bad_box(scene):
    strict = build_locator(LocatorConfig(**{**SMALL_PIPELINE, "score_threshold": 1.0}))
    result = strict.locate(scene, "take the scissors")
    assert not result.found and result.detections == []
    assert "scissors" in result.reason and "1.00" in result.reason


@pytest.mark.parametrize("command", ["", "   ", "take the", "?!"])
def test_command_without_object_is_a_reason_not_an_error(locator, scene, command):
    result = locator.locate(scene, command)
    assert result.target is None and not result.found and result.reason
    assert result.detections == []


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s[..., 0],  # grayscale
        lambda s: np.dstack([s, np.full(s.shape[:2], 255, np.uint8)]),  # RGBA
        lambda s: s.astype(np.uint16) * 257,  # 16-bit
        lambda s: s[:, ::-1],  # non-contiguous
        lambda s: s.astype(np.float32) / 255.0,  # float in [0, 1]
    ],
    ids=["gray", "rgba", "uint16", "flipped-view", "float"],
)
def test_image_variants_are_accepted(locator, scene, make):
    result = locator.locate(make(scene), "take the block")
    assert_well_formed(result, 320, 240)


def test_bgr_input_is_the_same_image_as_rgb(locator, scene):
    rgb = locator.locate(scene, "take the block")
    bgr = locator.locate(
        np.ascontiguousarray(scene[..., ::-1]), "take the block", channel_order="bgr"
    )
    assert bgr.timings_ms["proposals"] == 0.0  # converted to the same pixels: cache hit
    assert [d.box_xyxy for d in bgr.detections] == [d.box_xyxy for d in rgb.detections]


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 0, 3), np.uint8), ""),
        (np.zeros((1, 50, 3), np.uint8), "too small"),
        (np.full((20, 20, 3), np.nan, np.float32), ""),
        (np.zeros((20, 20, 2), np.uint8), ""),
        (np.zeros((4, 20, 20, 3), np.uint8), ""),
    ],
    ids=["empty", "1xN", "nan", "two-channels", "4d"],
)
def test_unusable_images_raise_value_error(locator, image, message):
    with pytest.raises(ValueError, match=message or None):
        locator.locate(image, "take the cup")


def test_large_image_is_downscaled_and_answers_map_back(scene):
    small_models = build_locator(LocatorConfig(**{**SMALL_PIPELINE, "max_image_side": 160}))
    big = np.repeat(np.repeat(scene, 2, axis=0), 2, axis=1)  # 640x480
    result = small_models.locate(big, "take the red block")
    assert_well_formed(result, 640, 480)


def test_a_frame_key_names_the_frame_instead_of_its_pixels(locator, scene):
    locator.clear_cache()
    first = locator.locate(scene, "take the blue block", frame_key=7)
    assert first.timings_ms["proposals"] > 0
    # Same key: the frame's proposals, whatever array comes with it (no hashing).
    again = locator.locate(np.zeros_like(scene), "take the red block", frame_key=7)
    assert again.timings_ms["proposals"] == 0.0 and again.proposals == first.proposals
    # Another key: another frame, even with the same pixels; and keys never meet hashes.
    other = locator.locate(scene, "take the blue block", frame_key=8)
    assert other.timings_ms["proposals"] > 0
    hashed = locator.locate(scene, "take the blue block")
    assert hashed.timings_ms["proposals"] > 0
    assert [d.score for d in hashed.detections] == [d.score for d in first.detections]


@pytest.mark.parametrize("parse", [parse_command, parse_referring])
def test_a_parsed_command_is_not_parsed_again(locator, scene, monkeypatch, parse):
    parsed = parse("please take the green block")
    calls = []
    monkeypatch.setattr(locator_module, "parse_referring", lambda text: calls.append(text))
    result = locator.locate(scene, parsed)
    assert calls == [] and result.target == "green block" and result.found
    assert result.command == "please take the green block"


def test_config_validation_names_the_field():
    for field, value in [
        ("points_per_side", 0),
        ("pred_iou_thresh", -0.1),
        ("device", "tpu"),
        ("clip_model", "ViT-H-14"),
        ("crop_mode", "zoom"),
        ("max_detections", 0),
    ]:
        with pytest.raises(ValueError, match=field.split("_thresh")[0]):
            LocatorConfig(**{**SMALL_PIPELINE, field: value}).validate()


def test_release_freed_memory_gives_pages_back_without_failing() -> None:
    """glibc: freeing a large scattered allocation leaves pages that malloc_trim returns."""
    import sys

    from vlm_grasp_locator.runtime.memory import release_freed_memory

    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB below the mmap threshold
    del blocks[::2]
    released = release_freed_memory()
    assert isinstance(released, bool)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).malloc_trim
        except AttributeError:
            return  # not glibc
        assert released
