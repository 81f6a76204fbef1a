"""The depth side of the node (``use_depth``): pairing depth with colour frames, the 3D pose.

Each colour frame is paired on arrival (see ``core.frame_pairing``) and its pairing
travels with the frame (``Frame.context``). After a query, :meth:`DepthInput.pose` turns
the best mask and the paired depth frame into a grasp pose, or a :class:`PoseFailure`
saying why not (published as ``pose_valid=false`` with ``reason`` "pose: ...").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from vlm_grasp_locator.core.frame_pairing import (
    DEPTH_WAIT_S,
    FramePairer,
    Pairing,
    stamp_to_seconds,
)
from vlm_grasp_locator.core.grasp_geometry import (
    CameraModel,
    GraspPose,
    PoseError,
    depth_to_metres,
    grasp_pose_from_mask,
)
from vlm_grasp_locator.ros.encodings import image_msg_to_array
from vlm_grasp_locator.service.jobs import Frame

if TYPE_CHECKING:
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

POSE_REASON_PREFIX = "pose: "


@dataclass(frozen=True)
class PoseFailure:
    """Why a found object has no 3D pose."""

    detail: str

    @property
    def reason(self) -> str:
        """The text of GraspTarget.reason."""
        return POSE_REASON_PREFIX + self.detail


@dataclass(frozen=True)
class PoseFound:
    depth_header: "Header"  # std_msgs/Header of the depth frame (its optical frame)
    grasp: GraspPose


PoseOutcome = Union[PoseFound, PoseFailure]


class DepthInput:
    """Buffers depth frames and camera infos and pairs them with colour frames."""

    def __init__(self, max_dt: float) -> None:
        self.pairer = FramePairer(max_dt)
        self.depth_topic = "depth"  # resolved names, for the reasons
        self.info_topic = "camera_info"

    def pair(self, color_stamp: "Time") -> Pairing:
        """Open the pairing of a colour frame with this header stamp (on its arrival)."""
        return self.pairer.open(stamp_to_seconds(color_stamp))

    def add_depth(self, msg: "Image") -> None:
        """Buffer a depth Image (decoded only when a query uses it); ValueError if unusable."""
        self.pairer.add_depth(stamp_to_seconds(msg.header.stamp), msg)

    def add_camera_info(self, msg: "CameraInfo") -> None:
        """Pair a CameraInfo with the depth frame of the same stamp; ValueError if unusable."""
        self.pairer.add_camera_info(stamp_to_seconds(msg.header.stamp), msg)

    def pose(self, frame: Frame, mask: np.ndarray) -> PoseOutcome:
        """The grasp pose of ``mask`` (on ``frame``) from the depth frame paired with it."""
        try:
            return self._pose(frame, mask)
        except (PoseError, ValueError, TypeError) as e:  # PoseError: a ValueError too
            return PoseFailure(str(e))

    def _pose(self, frame: Frame, mask: np.ndarray) -> PoseOutcome:
        pairer = self.pairer
        pairing = frame.context if isinstance(frame.context, Pairing) else None
        if pairing is None:  # not paired on arrival: what is buffered now
            pairing = pairer.pair_buffered(stamp_to_seconds(frame.header.stamp))
        # A fast inference may end before the depth frame taken with the image arrives.
        paired = pairer.resolve(pairing, wait_until=frame.received + DEPTH_WAIT_S)
        if paired.camera_info is None:
            return PoseFailure(f"no camera_info received on '{self.info_topic}'")
        if paired.depth is None:
            return PoseFailure(f"no depth frame within {pairer.max_dt:g} s of the image "
                               f"stamp ({len(pairer)} buffered on '{self.depth_topic}')")
        depth_msg = paired.depth.payload
        try:
            camera = CameraModel.from_camera_info(paired.camera_info)
        except ValueError as e:
            return PoseFailure(f"bad camera_info: {e}")
        depth_m = depth_to_metres(image_msg_to_array(depth_msg), depth_msg.encoding)
        return PoseFound(depth_msg.header, grasp_pose_from_mask(mask, depth_m, camera))
