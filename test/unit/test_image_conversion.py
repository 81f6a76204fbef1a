"""Tests for duck-typed sensor_msgs/Image <-> numpy conversion (no ROS needed)."""
import array
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_grasp_locator.ros.encodings import (
    SUPPORTED_COLOR_ENCODINGS,
    SUPPORTED_ENCODINGS,
    image_msg_to_array,
    image_msg_to_rgb,
    mask_to_mono8_fields,
    rgb_to_image_fields,
)

# encoding -> (dtype, channels), written out independently of the module's table
_LAYOUT = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3),
    "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
}


def _msg(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(**{"is_bigendian": 0, **fields})


def _data(raw: bytes, kind: str) -> Any:
    """``raw`` in one of the containers a message's ``data`` may be."""
    if kind == "ndarray":
        return np.frombuffer(raw, np.uint8)
    return {"bytes": raw, "bytearray": bytearray(raw), "array": array.array("B", raw),
            "memoryview": memoryview(raw), "list": list(raw)}[kind]


def _encode(
    array_: np.ndarray, encoding: str, *, bigendian: bool = False, pad: int = 0, extra: int = 0,
    kind: str = "bytes",
) -> SimpleNamespace:
    """Build a message the way a ROS publisher would, with ``pad`` bytes after each row."""
    height, width = array_.shape[:2]
    pixels = array_.astype(array_.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    raw = padded.tobytes() + b"\xcd" * extra
    return _msg(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                step=padded.shape[1], data=_data(raw, kind))


def _sample(encoding: str, height: int = 3, width: int = 5) -> np.ndarray:
    dtype, channels = _LAYOUT[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def test_supported_encodings() -> None:
    assert SUPPORTED_COLOR_ENCODINGS == ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
    assert set(SUPPORTED_ENCODINGS) == set(_LAYOUT)


@pytest.mark.parametrize("encoding", sorted(_LAYOUT))
@pytest.mark.parametrize("pad", [0, 1, 3, 8])
@pytest.mark.parametrize("bigendian", [False, True])
def test_array_round_trip(encoding: str, pad: int, bigendian: bool) -> None:
    expected = _sample(encoding)
    out = image_msg_to_array(_encode(expected, encoding, bigendian=bigendian, pad=pad, extra=pad))
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype and out.dtype.isnative
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "array", "memoryview", "list", "ndarray"])
def test_data_container_kinds(kind: str) -> None:
    expected = _sample("16UC1")
    out = image_msg_to_array(_encode(expected, "16UC1", pad=2, kind=kind))
    np.testing.assert_array_equal(out, expected)


def test_array_does_not_alias_message_data() -> None:
    raw = bytearray(range(12))
    msg = _msg(height=2, width=2, encoding="rgb8", step=6, data=raw)
    for out in (image_msg_to_array(msg), image_msg_to_rgb(msg)):
        out[0, 0, 0] = 99
        assert raw[0] == 0


def test_non_contiguous_memoryview() -> None:
    raw = bytes(range(24))
    msg = _msg(height=2, width=2, encoding="rgb8", step=6, data=memoryview(raw)[::2])
    np.testing.assert_array_equal(image_msg_to_array(msg).ravel(), list(range(0, 24, 2)))


def test_big_endian_known_bytes() -> None:
    data = b"\x01\x02\xff\x00"
    msg = _msg(height=1, width=2, encoding="mono16", is_bigendian=1, step=4, data=data)
    np.testing.assert_array_equal(image_msg_to_array(msg), [[0x0102, 0xFF00]])
    msg.is_bigendian = 0
    np.testing.assert_array_equal(image_msg_to_array(msg), [[0x0201, 0x00FF]])


def test_32fc1_keeps_nan() -> None:
    depth = np.array([[1.5, np.nan], [np.inf, 0.0]], np.float32)
    out = image_msg_to_array(_encode(depth, "32FC1", bigendian=True))
    np.testing.assert_array_equal(out, depth)


@pytest.mark.parametrize("encoding", SUPPORTED_COLOR_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 2])
def test_rgb_from_every_colour_encoding(encoding: str, pad: int) -> None:
    raw = _sample(encoding)
    out = image_msg_to_rgb(_encode(raw, encoding, pad=pad, bigendian=encoding == "mono16"))
    assert out.shape == (3, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    if encoding.startswith("rgb"):
        expected = raw[:, :, :3]
    elif encoding.startswith("bgr"):
        expected = raw[:, :, 2::-1]
    elif encoding == "mono8":
        expected = np.repeat(raw[:, :, None], 3, axis=2)
    else:
        scaled = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
        expected = np.repeat(scaled[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "8UC1", "8UC3", "yuv422", "RGB8"])
def test_rgb_refuses_non_colour_encodings(encoding: str) -> None:
    msg = _msg(height=1, width=1, encoding=encoding, step=4, data=bytes(4))
    with pytest.raises(ValueError, match="rgb8, bgr8, rgba8, bgra8, mono8, mono16"):
        image_msg_to_rgb(msg)


def test_rgb_fields_round_trip() -> None:
    image = _sample("rgb8", 4, 7)
    fields = rgb_to_image_fields(image[::-1])  # non-contiguous input
    assert fields == {"height": 4, "width": 7, "encoding": "rgb8", "is_bigendian": 0, "step": 21,
                      "data": image[::-1].tobytes()}
    assert isinstance(fields["data"], bytes)
    np.testing.assert_array_equal(image_msg_to_rgb(SimpleNamespace(**fields)), image[::-1])


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.uint8), np.zeros((2, 2, 4), np.uint8),
                                 np.zeros((2, 2, 3), np.float32), np.zeros((0, 2, 3), np.uint8)])
def test_rgb_fields_refuse(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        rgb_to_image_fields(bad)
    with pytest.raises(TypeError):
        rgb_to_image_fields([[[0, 0, 0]]])  # type: ignore[arg-type]


def test_mask_fields() -> None:
    mask = np.array([[True, False, True], [False, False, True]])
    fields = mask_to_mono8_fields(mask)
    assert fields["encoding"] == "mono8" and fields["step"] == 3 and fields["is_bigendian"] == 0
    assert (fields["height"], fields["width"]) == (2, 3)
    assert fields["data"] == bytes([255, 0, 255, 0, 0, 255])
    np.testing.assert_array_equal(image_msg_to_array(SimpleNamespace(**fields)) == 255, mask)
    assert mask_to_mono8_fields(mask.astype(np.uint8) * 7)["data"] == fields["data"]


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 1), bool), np.zeros((0, 3), bool), np.zeros(3, bool)]
)
def test_mask_fields_refuse(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        mask_to_mono8_fields(bad)


# ---- errors -----------------------------------------------------------------------------


def test_unknown_encoding_is_named_and_supported_listed() -> None:
    msg = _msg(height=1, width=1, encoding="yuv422", step=2, data=bytes(2))
    with pytest.raises(ValueError, match=r"'yuv422'.*rgb8.*16UC1.*32FC1"):
        image_msg_to_array(msg)


@pytest.mark.parametrize("encoding", [None, 5, ["rgb8"], b"rgb8"])
def test_non_str_encoding(encoding: Any) -> None:
    with pytest.raises(ValueError, match="encoding"):
        image_msg_to_array(_msg(height=1, width=1, encoding=encoding, step=3, data=bytes(3)))


@pytest.mark.parametrize(("height", "width"), [(0, 2), (2, 0), (0, 0), (-1, 2)])
def test_zero_size(height: int, width: int) -> None:
    with pytest.raises(ValueError, match="height and width"):
        image_msg_to_array(
            _msg(height=height, width=width, encoding="mono8", step=2, data=bytes(8))
        )


def test_step_too_small() -> None:
    msg = _msg(height=2, width=3, encoding="mono16", step=5, data=bytes(100))
    with pytest.raises(ValueError, match=r"step 5 .* 6"):
        image_msg_to_array(msg)


def test_data_too_short_says_expected_and_got() -> None:
    msg = _msg(height=2, width=3, encoding="rgb8", step=10, data=bytes(19))
    with pytest.raises(ValueError, match=r"expected .*20 bytes, got 19"):
        image_msg_to_array(msg)


def test_last_row_padding_is_required() -> None:
    """ROS says len(data) == step * height; data that stops after the last pixel is refused."""
    msg = _msg(height=2, width=3, encoding="mono8", step=4, data=bytes(7))
    with pytest.raises(ValueError, match="too short"):
        image_msg_to_array(msg)


@pytest.mark.parametrize(
    "data", [None, "abc", [0, 256], [-1], [[1, 2]], [1.5], object(), [1, "a"]]
)
def test_bad_data(data: Any) -> None:
    with pytest.raises(ValueError, match="data"):
        image_msg_to_array(_msg(height=1, width=1, encoding="mono8", step=1, data=data))


@pytest.mark.parametrize("field", ["height", "width", "step"])
@pytest.mark.parametrize("value", [1.0, "1", None, True])
def test_non_int_fields(field: str, value: Any) -> None:
    fields = {"height": 1, "width": 1, "encoding": "mono8", "step": 1, "data": bytes(1)}
    fields[field] = value
    with pytest.raises(ValueError, match=field):
        image_msg_to_array(_msg(**fields))


def test_missing_field() -> None:
    with pytest.raises(ValueError, match="step"):
        image_msg_to_array(SimpleNamespace(height=1, width=1, encoding="mono8", data=bytes(1)))


_JUNK_ENCODINGS = ["", "rgb16", "RGB8", "mono", "32FC3", "jpeg", "8uc1", " rgb8"]
_ENCODING_NAMES = st.sampled_from(sorted(_LAYOUT) + _JUNK_ENCODINGS)


@settings(max_examples=200, deadline=None)
@given(
    encoding=_ENCODING_NAMES,
    height=st.integers(0, 8),
    width=st.integers(0, 8),
    step=st.integers(0, 64),
    length=st.integers(0, 600),
    bigendian=st.booleans(),
    kind=st.sampled_from(["bytes", "bytearray", "array", "memoryview", "list", "ndarray"]),
)
def test_any_message_decodes_or_raises_value_error(
    encoding: str, height: int, width: int, step: int, length: int, bigendian: bool, kind: str
) -> None:
    raw = bytes(i % 251 for i in range(length))
    msg = _msg(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
               step=step, data=_data(raw, kind))
    try:
        out = image_msg_to_array(msg)
    except ValueError:
        pass
    else:
        dtype, channels = _LAYOUT[encoding]
        assert out.shape == ((height, width) if channels == 1 else (height, width, channels))
        assert out.dtype == dtype
    try:
        rgb = image_msg_to_rgb(msg)
    except ValueError:
        return
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
