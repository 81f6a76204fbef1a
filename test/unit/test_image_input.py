"""Tests for numpy image normalisation and resizing."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vlm_grasp_locator.core.image_input import fit_long_side, resize_mask, to_rgb_uint8


def _rgb(h: int = 4, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _assert_rgb(out: np.ndarray, h: int, w: int) -> None:
    assert out.shape == (h, w, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


# ---- to_rgb_uint8 -----------------------------------------------------------------------


def test_rgb_uint8_is_returned_itself() -> None:
    image = _rgb()
    assert to_rgb_uint8(image) is image


def test_bgr_is_swapped() -> None:
    image = _rgb()
    out = to_rgb_uint8(image, channel_order="bgr")
    _assert_rgb(out, 4, 5)
    np.testing.assert_array_equal(out, image[:, :, ::-1])


def test_rgba_drops_alpha() -> None:
    rgba = np.dstack([_rgb(), np.full((4, 5), 7, np.uint8)])
    out = to_rgb_uint8(rgba)
    _assert_rgb(out, 4, 5)
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_bgra_drops_alpha_and_swaps() -> None:
    bgra = np.dstack([_rgb(), np.full((4, 5), 7, np.uint8)])
    np.testing.assert_array_equal(to_rgb_uint8(bgra, channel_order="bgr"), bgra[:, :, 2::-1])


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_gray_is_repeated(channel_order: str) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    for image in (gray, gray[:, :, np.newaxis]):
        out = to_rgb_uint8(image, channel_order=channel_order)
        _assert_rgb(out, 4, 5)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)


def test_uint16_is_scaled_by_257_with_rounding() -> None:
    values = np.array([[0, 128, 129, 257, 385, 386, 65535]], dtype=np.uint16)
    out = to_rgb_uint8(values)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 1, 2, 255])
    expanded = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    np.testing.assert_array_equal(to_rgb_uint8(expanded)[:, :, 0], np.arange(256).reshape(16, 16))


def test_big_endian_uint16() -> None:
    values = np.array([[0, 65535, 257 * 10]], dtype=">u2")
    np.testing.assert_array_equal(to_rgb_uint8(values)[0, :, 1], [0, 255, 10])


def test_bool() -> None:
    out = to_rgb_uint8(np.array([[True, False]]))
    np.testing.assert_array_equal(out[0, :, 2], [255, 0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_is_scaled_and_clipped(dtype: type) -> None:
    values = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, 1 / 255]], dtype=dtype)
    np.testing.assert_array_equal(to_rgb_uint8(values)[0, :, 0], [0, 0, 128, 255, 255, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_nan_inf_refused(bad: float) -> None:
    image = np.zeros((2, 2, 3), np.float32)
    image[1, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        to_rgb_uint8(image)


def test_non_contiguous_and_negative_strides() -> None:
    base = _rgb(8, 10)
    views = (base[::-1, ::-1], base[::2, 1::3], np.asfortranarray(base), base.transpose(1, 0, 2))
    for view in views:
        out = to_rgb_uint8(view)
        _assert_rgb(out, *view.shape[:2])
        np.testing.assert_array_equal(out, view)
    out = to_rgb_uint8(base[::-1], channel_order="bgr")
    np.testing.assert_array_equal(out, base[::-1, :, ::-1])


def test_one_by_n_is_valid() -> None:
    _assert_rgb(to_rgb_uint8(np.zeros((1, 7), np.uint8)), 1, 7)
    _assert_rgb(to_rgb_uint8(np.zeros((7, 1, 3), np.uint8)), 7, 1)


def test_not_an_array() -> None:
    with pytest.raises(TypeError):
        to_rgb_uint8([[1, 2], [3, 4]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((5,), "HxW"), ((2, 2, 3, 1), "HxW"), ((), "HxW"),
        ((0, 4), "non-zero"), ((4, 0, 3), "non-zero"),
        ((4, 4, 2), "1, 3 or 4 channels"), ((4, 4, 5), "1, 3 or 4 channels"),
        ((4, 4, 0), "1, 3 or 4"),
    ],
)
def test_bad_shapes(shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(np.zeros(shape, np.uint8))


@pytest.mark.parametrize(
    "dtype", [np.complex64, object, np.int64, np.int8, np.uint32, "U1", "M8[s]"]
)
def test_bad_dtypes(dtype: object) -> None:
    with pytest.raises(ValueError, match="unsupported image dtype"):
        to_rgb_uint8(np.zeros((2, 2, 3), dtype=dtype))


@pytest.mark.parametrize("order", ["RGB", "bgra", "", "gbr"])
def test_unknown_channel_order(order: str) -> None:
    with pytest.raises(ValueError, match="channel_order"):
        to_rgb_uint8(_rgb(), channel_order=order)


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.bool_, np.float32, np.float64, np.dtype(">u2")])


@st.composite
def _images(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(_DTYPES))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    if dtype.kind == "f":
        elements = st.floats(-0.5, 1.5, width=32)
    else:
        elements = None
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        image = image[::-1, ::-1]
    return image


@settings(max_examples=200, deadline=None)
@given(_images(), st.sampled_from(["rgb", "bgr"]))
def test_any_supported_image_becomes_rgb(image: np.ndarray, order: str) -> None:
    out = to_rgb_uint8(image, channel_order=order)
    _assert_rgb(out, image.shape[0], image.shape[1])
    if image.ndim == 2 or image.shape[2] == 1:
        assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] >= 3:
        expected = image[:, :, 2::-1] if order == "bgr" else image[:, :, :3]
        np.testing.assert_array_equal(out, expected)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    )
)
def test_any_array_converts_or_raises_value_error(image: np.ndarray) -> None:
    try:
        out = to_rgb_uint8(image)
    except ValueError:
        return
    _assert_rgb(out, image.shape[0], image.shape[1])


# ---- fit_long_side ----------------------------------------------------------------------


def test_small_image_is_untouched() -> None:
    image = _rgb(40, 30)
    out, scale = fit_long_side(image, 40)
    assert out is image and scale == 1.0


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [((2000, 1000, 3), 1000, (1000, 500, 3)), ((1000, 3000), 300, (100, 300)),
     ((1, 5000, 3), 100, (1, 100, 3)), ((5000, 1, 1), 10, (10, 1, 1)),
     ((333, 1000, 4), 100, (33, 100, 4))],
)
def test_large_image_long_side_becomes_max_side(
    shape: tuple, max_side: int, expected: tuple
) -> None:
    image = np.zeros(shape, np.uint8)
    out, scale = fit_long_side(image, max_side)
    assert out.shape == expected
    assert out.dtype == image.dtype
    assert scale == pytest.approx(max_side / max(shape[:2]))


def test_area_interpolation_averages() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, ::2] = 200  # alternate columns: INTER_AREA averages to 100
    out, scale = fit_long_side(image, 2)
    assert scale == 0.5
    np.testing.assert_array_equal(out, np.full((2, 2, 3), 100, np.uint8))


def test_boxes_map_back_by_dividing_by_scale() -> None:
    image = np.zeros((1200, 1600, 3), np.uint8)
    image[300:600, 400:800] = 255
    out, scale = fit_long_side(image, 400)
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / scale
    np.testing.assert_allclose(box, [400, 300, 800, 600], atol=4)


def test_fit_negative_strides() -> None:
    image = _rgb(50, 20)[::-1, ::-1]
    out, _ = fit_long_side(image, 10)
    assert out.shape == (10, 4, 3)


@pytest.mark.parametrize("max_side", [0, -1, 2.5, True, "10"])
def test_fit_bad_max_side(max_side: object) -> None:
    with pytest.raises(ValueError, match="max_side"):
        fit_long_side(_rgb(), max_side)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.bool_, np.int64])
def test_fit_unsupported_dtype_is_value_error(dtype: type) -> None:
    with pytest.raises(ValueError, match="cannot resize"):
        fit_long_side(np.zeros((20, 20), dtype), 5)


def test_fit_bad_image() -> None:
    with pytest.raises(TypeError):
        fit_long_side([[1]], 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fit_long_side(np.zeros((0, 5), np.uint8), 5)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300), st.integers(1, 300), st.sampled_from([None, 1, 3, 4]),
    st.sampled_from([np.uint8, np.uint16, np.float32]), st.integers(1, 300),
)
def test_fit_property(h: int, w: int, channels: object, dtype: type, max_side: int) -> None:
    shape = (h, w) if channels is None else (h, w, channels)
    image = np.zeros(shape, dtype)
    out, scale = fit_long_side(image, max_side)
    if max(h, w) <= max_side:
        assert out is image and scale == 1.0
        return
    assert max(out.shape[:2]) == max_side
    assert min(out.shape[:2]) >= 1
    assert out.shape[2:] == image.shape[2:]
    assert out.dtype == image.dtype
    assert scale == pytest.approx(max_side / max(h, w))
    for old, new in zip(image.shape[:2], out.shape[:2]):
        assert abs(old * scale - new) <= 0.5 + 1e-9 or new == 1


# ---- resize_mask ------------------------------------------------------------------------


def test_resize_mask_up_and_down() -> None:
    mask = np.array([[True, False], [False, True]])
    up = resize_mask(mask, (4, 6))
    assert up.dtype == np.bool_ and up.shape == (4, 6)
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 3), bool)))
    np.testing.assert_array_equal(resize_mask(up, (2, 2)), mask)


def test_resize_mask_same_size_is_a_copy() -> None:
    mask = np.eye(3, dtype=bool)
    out = resize_mask(mask, (3, 3))
    np.testing.assert_array_equal(out, mask)
    assert out is not mask and not np.shares_memory(out, mask)


def test_resize_mask_is_centred() -> None:
    """A centred object stays centred (cv2.INTER_NEAREST would shift it)."""
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    out = resize_mask(mask, (3, 3))
    np.testing.assert_array_equal(out, np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], bool))


def test_resize_mask_non_bool_counts_non_zero() -> None:
    out = resize_mask(np.array([[0, 255], [0, 1]], np.uint8), (2, 2))
    np.testing.assert_array_equal(out, [[False, True], [False, True]])


@pytest.mark.parametrize("size", [(0, 3), (3, 0), (-1, 2), (2,), (1, 2, 3), (2.0, 3), (True, 3)])
def test_resize_mask_bad_size(size: tuple) -> None:
    with pytest.raises(ValueError, match="size_hw"):
        resize_mask(np.ones((2, 2), bool), size)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 2, 1), (4,), (0, 3)])
def test_resize_mask_bad_mask(shape: tuple) -> None:
    with pytest.raises(ValueError):
        resize_mask(np.ones(shape, bool), (2, 2))


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)),
    st.integers(1, 40), st.integers(1, 40),
)
def test_resize_mask_property(mask: np.ndarray, out_h: int, out_w: int) -> None:
    out = resize_mask(mask, (out_h, out_w))
    assert out.shape == (out_h, out_w) and out.dtype == np.bool_
    if out.any():
        assert mask.any()
    if mask.all():
        assert out.all()
    # Integer upscaling repeats every pixel exactly.
    up = resize_mask(mask, (mask.shape[0] * 2, mask.shape[1] * 3))
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 3), bool)))
