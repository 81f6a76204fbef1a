"""The generated ROS interfaces: vision_msgs wire compatibility, GraspTarget, Locate.

Needs the colcon workspace on the environment (scripts/test.sh sources scripts/env.sh).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# Type hash of vision_msgs/msg/Detection2DArray in upstream vision_msgs 4.1.1: a
# subscriber built against the distribution's package only matches this one.
UPSTREAM_DETECTION2DARRAY_HASH = (
    "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"
)

ament_index_python = pytest.importorskip("ament_index_python")
try:
    from vlm_grasp_locator.action import Locate
    from vlm_grasp_locator.msg import GraspTarget
except ImportError as error:
    pytest.skip(
        f"generated messages not importable ({error}): run scripts/setup.sh and "
        "source scripts/env.sh",
        allow_module_level=True,
    )

from geometry_msgs.msg import PoseWithCovariance  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose  # noqa: E402


def _type_hash(package: str, interface: str) -> str:
    share = Path(ament_index_python.get_package_share_directory(package))
    description = json.loads((share / f"{interface}.json").read_text())
    return description["type_hashes"][0]["hash_string"]


def test_detection2darray_type_hash_matches_upstream() -> None:
    assert _type_hash("vision_msgs", "msg/Detection2DArray") == UPSTREAM_DETECTION2DARRAY_HASH


def test_grasp_target_fields() -> None:
    assert GraspTarget.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "command": "string",
        "target": "string",
        "found": "boolean",
        "reason": "string",
        "explanation": "string",
        "track_id": "string",
        "detection": "vision_msgs/Detection2D",
        "mask": "sensor_msgs/Image",
        "pose_valid": "boolean",
        "pose": "geometry_msgs/PoseStamped",
    }


def test_locate_action_fields() -> None:
    assert Locate.Goal.get_fields_and_field_types() == {"command": "string",
                                                        "include_mask": "boolean"}
    assert Locate.Goal().include_mask is False  # the mask only on request
    assert Locate.Result.get_fields_and_field_types() == {
        "target": "vlm_grasp_locator/GraspTarget",
        "targets": "sequence<vlm_grasp_locator/GraspTarget>",
    }


def test_grasp_target_array_fields() -> None:
    from vlm_grasp_locator.msg import GraspTargetArray

    assert GraspTargetArray.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "targets": "sequence<vlm_grasp_locator/GraspTarget>",
    }
    assert Locate.Feedback.get_fields_and_field_types() == {
        "stage": "string",
        "progress": "float",
    }


def _filled_grasp_target() -> GraspTarget:
    message = GraspTarget(command="pick up the red mug", target="red mug", found=True)
    message.header.stamp.sec = 17
    message.header.stamp.nanosec = 250_000_000
    message.header.frame_id = "camera_color_optical_frame"

    detection = Detection2D(header=message.header, id="0")
    hypothesis = ObjectHypothesisWithPose(pose=PoseWithCovariance())
    hypothesis.hypothesis.class_id = "red mug"
    hypothesis.hypothesis.score = 0.83
    detection.results.append(hypothesis)
    detection.bbox.center.position.x = 120.5
    detection.bbox.center.position.y = 64.25
    detection.bbox.size_x = 40.0
    detection.bbox.size_y = 32.0
    message.detection = detection

    message.mask.header = message.header
    message.mask.height, message.mask.width = 2, 3
    message.mask.encoding = "mono8"
    message.mask.step = 3
    message.mask.data = bytes([0, 255, 255, 0, 0, 255])

    message.pose_valid = True
    message.pose.header = message.header
    message.pose.pose.position.z = 0.42
    message.pose.pose.orientation.w = 1.0
    return message


def test_grasp_target_serialization_round_trip() -> None:
    message = _filled_grasp_target()
    restored = deserialize_message(serialize_message(message), GraspTarget)
    assert restored == message
    assert restored.detection.results[0].hypothesis.class_id == "red mug"
    assert bytes(restored.mask.data) == bytes([0, 255, 255, 0, 0, 255])


def test_locate_messages_serialization_round_trip() -> None:
    result = Locate.Result(target=_filled_grasp_target())
    assert deserialize_message(serialize_message(result), Locate.Result) == result
    feedback = Locate.Feedback(stage="scoring", progress=0.5)
    assert deserialize_message(serialize_message(feedback), Locate.Feedback) == feedback
