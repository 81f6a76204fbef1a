"""grasp_geometry on synthetic scenes with analytic answers: a plane at 0.60 m and a
box whose top face, at 0.45 m, fills a (possibly rotated) rectangle of the image."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vlm_grasp_locator.core.grasp_geometry import (
    CameraModel,
    GraspPose,
    PoseError,
    depth_to_metres,
    grasp_pose_from_mask,
)

W, H = 640, 480
PLANE, TOP = 0.60, 0.45
# K and P differ by 30 px in cx: using the wrong one misplaces the object by > 2 cm.
K = [600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]
P = [560.0, 0.0, 290.0, 0.0, 0.0, 560.0, 255.0, 0.0, 0.0, 0.0, 1.0, 0.0]
TOL = 0.01


def camera_info(k=K, p=P, width=W, height=H, binning=(0, 0), roi=(0, 0, 0, 0)):
    return SimpleNamespace(
        width=width, height=height, k=list(k), p=list(p),
        binning_x=binning[0], binning_y=binning[1],
        roi=SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]),
    )


def rectangle(h, w, centre, size, angle_deg=0.0):
    """Pixels whose centres lie in a rectangle (long side ``size[0]``) turned towards +v."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    a = math.radians(angle_deg)
    du, dv = u - centre[0], v - centre[1]
    along = du * math.cos(a) + dv * math.sin(a)
    across = -du * math.sin(a) + dv * math.cos(a)
    return (np.abs(along) <= size[0] / 2) & (np.abs(across) <= size[1] / 2)


def scene(centre=(400.0, 300.0), size=(60, 30), angle_deg=0.0, h=H, w=W):
    obj = rectangle(h, w, centre, size, angle_deg)
    depth = np.full((h, w), PLANE, np.float32)
    depth[obj] = TOP
    return obj, depth


def expected(centre, z=TOP, fx=P[0], fy=P[5], cx=P[2], cy=P[6]):
    return np.array([(centre[0] - cx) * z / fx, (centre[1] - cy) * z / fy, z])


def assert_close(pose: GraspPose, want, tol=TOL):
    got = np.array(pose.position)
    assert np.linalg.norm(got - want) < tol, (got, want)


def test_camera_model_prefers_p_over_k():
    cam = CameraModel.from_camera_info(camera_info())
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.tx, cam.ty) == (560, 560, 290, 255, 0, 0)
    assert (cam.width, cam.height) == (W, H)


def test_camera_model_uses_k_only_when_p_is_zero():
    cam = CameraModel.from_camera_info(camera_info(p=[0.0] * 12))
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (600, 600, 320, 240)


def test_camera_model_without_intrinsics_raises():
    with pytest.raises(ValueError, match="neither P nor K"):
        CameraModel.from_camera_info(camera_info(k=[0.0] * 9, p=[0.0] * 12))


def test_camera_model_binning_and_roi_by_hand():
    stereo_p = list(P)
    stereo_p[3] = -560.0 * 0.05  # right camera, 5 cm baseline
    cam = CameraModel.from_camera_info(
        camera_info(p=stereo_p, binning=(2, 2), roi=(100, 60, 400, 300))
    )
    # (290 - 100) / 2, (255 - 60) / 2; Tx scales with fx so Tx/fx (the baseline) is kept.
    assert (cam.width, cam.height) == (200, 150)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (280.0, 280.0, 95.0, 97.5)
    assert cam.tx == pytest.approx(-14.0)


def test_pose_with_binning_and_roi_by_hand():
    cam = CameraModel.from_camera_info(camera_info(binning=(2, 2), roi=(100, 60, 400, 300)))
    obj, depth = scene(centre=(120.0, 80.0), size=(30, 16), h=150, w=200)
    pose = grasp_pose_from_mask(obj, depth, cam)
    # By hand: X = (120 - 95) * 0.45 / 280 = 0.040179, Y = (80 - 97.5) * 0.45 / 280 = -0.028125
    assert_close(pose, np.array([0.040179, -0.028125, 0.45]), tol=0.001)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_axis_aligned_box_both_encodings(encoding):
    obj, depth = scene()
    raw = np.rint(depth * 1000).astype(np.uint16) if encoding == "16UC1" else depth
    pose = grasp_pose_from_mask(obj, depth_to_metres(raw, encoding),
                                CameraModel.from_camera_info(camera_info()))
    assert_close(pose, expected((400.0, 300.0)), tol=0.002)
    assert pose.points.dtype == np.float32 and pose.points.shape == (pose.valid_points, 3)
    assert np.allclose(pose.points[:, 2], TOP, atol=1e-3)


def test_using_k_instead_of_p_would_be_caught():
    obj, depth = scene()
    k_cam = CameraModel.from_camera_info(camera_info(p=[0.0] * 12))
    pose = grasp_pose_from_mask(obj, depth, k_cam)
    assert np.linalg.norm(np.array(pose.position) - expected((400.0, 300.0))) > TOL
    assert_close(pose, expected((400.0, 300.0), fx=600, fy=600, cx=320, cy=240), tol=0.002)


def test_half_resolution_depth_with_full_resolution_mask():
    obj, depth = scene(centre=(200.0, 150.0), angle_deg=20.0)
    half_depth = depth[1::2, 1::2]  # the pixel centres resize_mask samples
    half_p = [v * 0.5 if i not in (10,) else v for i, v in enumerate(P)]
    cam = CameraModel.from_camera_info(camera_info(p=half_p, width=W // 2, height=H // 2))
    pose = grasp_pose_from_mask(obj, half_depth, cam)
    assert_close(pose, expected((200.0, 150.0)))
    assert math.degrees(pose.yaw) == pytest.approx(20.0, abs=3.0)


def test_holes_and_nans_in_the_object():
    rng = np.random.default_rng(1)
    obj, depth = scene(angle_deg=-15.0)
    holes = obj & (rng.random(obj.shape) < 0.2)
    nans = obj & (rng.random(obj.shape) < 0.2)
    mm = np.rint(depth * 1000).astype(np.uint16)
    mm[holes] = 0
    metres = depth.copy()
    metres[nans] = np.nan
    metres[holes] = np.inf
    cam = CameraModel.from_camera_info(camera_info())
    for d in (depth_to_metres(mm, "16UC1"), depth_to_metres(metres, "32FC1")):
        assert_close(grasp_pose_from_mask(obj, d, cam), expected((400.0, 300.0)))


@pytest.mark.parametrize("erode_px", [0, 3])
def test_mask_spilling_onto_the_plane(erode_px):
    obj, depth = scene(size=(60, 30))
    spilled = rectangle(H, W, (400.0, 300.0), (64, 34))  # 2 px of plane on every side
    pose = grasp_pose_from_mask(spilled, depth, CameraModel.from_camera_info(camera_info()),
                                erode_px=erode_px)
    assert_close(pose, expected((400.0, 300.0)), tol=0.002)


def test_too_few_valid_pixels_gives_the_reason():
    obj, depth = scene()
    depth[obj] = np.nan
    rows, cols = np.nonzero(obj)
    depth[rows[:5], cols[:5]] = TOP
    with pytest.raises(PoseError, match=r"only 5 valid depth pixels in the mask \(need 20\)"):
        grasp_pose_from_mask(obj, depth, CameraModel.from_camera_info(camera_info()))


def test_empty_mask_and_out_of_range_depth_raise_pose_error():
    obj, depth = scene()
    cam = CameraModel.from_camera_info(camera_info())
    with pytest.raises(PoseError, match="empty"):
        grasp_pose_from_mask(np.zeros_like(obj), depth, cam)
    with pytest.raises(PoseError, match="only 0 valid"):
        grasp_pose_from_mask(obj, depth, cam, min_depth=0.5)


def test_depth_not_matching_camera_is_a_wiring_error():
    obj, depth = scene()
    cam = CameraModel.from_camera_info(camera_info(width=W // 2, height=H // 2))
    with pytest.raises(ValueError, match="camera model"):
        grasp_pose_from_mask(obj, depth, cam)


def test_unsupported_depth_encoding():
    with pytest.raises(ValueError, match="unsupported depth encoding"):
        depth_to_metres(np.zeros((4, 4), np.uint8), "mono8")


@pytest.mark.parametrize(
    "size, angle, want",
    [((60, 30), 0.0, 0.0), ((60, 30), 90.0, 90.0), ((60, 30), 30.0, 30.0),
     ((60, 30), -30.0, -30.0), ((80, 20), 120.0, -60.0)],
)
def test_yaw_follows_the_long_axis(size, angle, want):
    obj, depth = scene(size=size, angle_deg=angle)
    pose = grasp_pose_from_mask(obj, depth, CameraModel.from_camera_info(camera_info()))
    got = math.degrees(pose.yaw)
    assert -90.0 < got <= 90.0
    diff = (got - want + 90.0) % 180.0 - 90.0  # axes: 90 and -90 are the same
    assert abs(diff) < 3.0, got
    x, y, z, w = pose.orientation_xyzw
    assert (x, y) == (0.0, 0.0)
    assert (z, w) == pytest.approx((math.sin(pose.yaw / 2), math.cos(pose.yaw / 2)))
    # Rotating the optical x axis by the quaternion gives the long axis (u, v) direction.
    axis = (1 - 2 * z * z, 2 * z * w)
    long_axis = (math.cos(math.radians(want)), math.sin(math.radians(want)))
    assert abs(abs(axis[0] * long_axis[0] + axis[1] * long_axis[1]) - 1.0) < 0.01


def test_tall_rectangle_is_about_ninety_degrees():
    obj, depth = scene(size=(30, 60))  # wider across than along: long axis is vertical
    pose = grasp_pose_from_mask(obj, depth, CameraModel.from_camera_info(camera_info()))
    assert abs(pose.yaw) == pytest.approx(math.pi / 2, abs=math.radians(3))


masks = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
depths = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
    elements=st.one_of(
        st.floats(0.0, 6.0, width=32),
        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 0.45, 0.6]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks, depth=depths, erode_px=st.integers(0, 4), min_points=st.integers(1, 30))
def test_random_inputs_give_finite_pose_or_pose_error(mask, depth, erode_px, min_points):
    h, w = depth.shape
    cam = CameraModel(width=w, height=h, fx=50.0, fy=55.0, cx=w / 2, cy=h / 2)
    try:
        pose = grasp_pose_from_mask(mask, depth, cam, erode_px=erode_px,
                                    min_valid_points=min_points)
    except PoseError:
        return
    assert np.isfinite(pose.position).all() and math.isfinite(pose.yaw)
    assert np.isfinite(pose.orientation_xyzw).all()
    assert -math.pi / 2 < pose.yaw <= math.pi / 2
    assert pose.valid_points >= min_points and np.isfinite(pose.points).all()
