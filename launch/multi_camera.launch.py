"""One grasp_locator node per camera namespace, all from one params file.

    ros2 launch vlm_grasp_locator multi_camera.launch.py cameras:=left,right \
        image_topic:=color/image_raw device:=cuda
    ros2 topic pub --once /left/command std_msgs/msg/String "{data: 'take the cup'}"
    ros2 action send_goal /right/locate vlm_grasp_locator/action/Locate "{command: 'take the cup'}"

Camera `left` gets the node /left/grasp_locator, reading /left/<image_topic> and
/left/command and publishing /left/grasp_target, /left/detections, ... (every topic
name of the node is relative, so each node stays in its namespace). Each node is a
separate process with its own models; on one GPU they share its memory.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vlm_grasp_locator.ros.launch_support import (
    declare_parameter_arguments,
    is_managed,
    parameter_overrides,
)


def camera_nodes(context: LaunchContext) -> list:
    """One node per entry of the comma-separated `cameras` argument."""
    cameras = [c.strip().strip("/") for c in
               LaunchConfiguration("cameras").perform(context).split(",") if c.strip()]
    if not cameras:
        raise RuntimeError("cameras:= names no camera namespace (e.g. cameras:=left,right)")
    if len(set(cameras)) != len(cameras):
        raise RuntimeError(f"cameras:= names a namespace twice: {cameras}")
    managed = is_managed(context)
    executable = "grasp_locator_lifecycle_node" if managed else "grasp_locator_node"
    overrides = parameter_overrides(context, managed=managed)
    return [
        Node(
            package="vlm_grasp_locator",
            executable=executable,
            name="grasp_locator",
            namespace=camera,
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[("image", LaunchConfiguration("image_topic"))],
        )
        for camera in cameras
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vlm_grasp_locator")
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="left,right",
                              description="Comma-separated camera namespaces, one node each"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Image topic inside each camera namespace "
                                          "(relative, e.g. color/image_raw)"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "params.yaml"),
                              description="Parameter file shared by every node"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="Run managed (lifecycle) nodes"),
        *declare_parameter_arguments(),
        OpaqueFunction(function=camera_nodes),
    ])
