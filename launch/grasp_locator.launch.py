"""Start the grasp_locator node (and optionally RViz 2 showing its overlay and mask).

    ros2 launch vlm_grasp_locator grasp_locator.launch.py namespace:=wrist \
        image_topic:=/camera/color/image_raw device:=cuda
    ros2 topic pub --once /wrist/command std_msgs/msg/String "{data: 'take the cup'}"
    ros2 action send_goal /wrist/locate vlm_grasp_locator/action/Locate "{command: 'take the cup'}"

``device``, ``use_depth`` and ``autostart`` override the params file only when given.
``managed:=true`` starts the lifecycle node; ``autostart:=false`` leaves it unconfigured
for ``ros2 lifecycle set``. ``use_rviz:=true`` needs rviz2: without it the launch stops
before starting anything.
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
    parse_bool,
    require_package,
)


def launch_nodes(context: LaunchContext) -> list:
    """The locator node (plain or managed) and, with use_rviz, RViz 2; checked first."""
    share = get_package_share_directory("vlm_grasp_locator")
    managed = is_managed(context)
    overrides = parameter_overrides(context, managed=managed)
    use_rviz = parse_bool("use_rviz", LaunchConfiguration("use_rviz").perform(context))
    if use_rviz:
        require_package("rviz2", "use_rviz:=true")
    namespace = LaunchConfiguration("namespace").perform(context).strip("/")
    nodes = [Node(
        package="vlm_grasp_locator",
        executable="grasp_locator_lifecycle_node" if managed else "grasp_locator_node",
        name="grasp_locator",
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("image", LaunchConfiguration("image_topic")),
                    ("command", LaunchConfiguration("command_topic"))],
    )]
    if use_rviz:
        nodes.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=namespace,
            arguments=["-d", os.path.join(share, "config", "grasp_locator.rviz")],
            output="screen",
        ))
    return nodes


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vlm_grasp_locator")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Camera image topic (remap of `image`)"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="Command topic, std_msgs/String (remap of `command`)"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "params.yaml"),
                              description="Parameter file for the node"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="Run the managed (lifecycle) node"),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="Start RViz 2 showing the overlay and the mask "
                                          "(needs rviz2)"),
        *declare_parameter_arguments(),
        OpaqueFunction(function=launch_nodes),
    ])
