"""Start the grasp_locator node (and optionally RViz2 showing its overlay and mask).

    ros2 launch vlm_grasp_locator grasp_locator.launch.py \
        image_topic:=/camera/color/image_raw device:=cuda use_rviz:=true
    # use_depth:=true adds a 3D grasp pose (target_pose, object_cloud, markers) from the
    # `depth` and `camera_info` topics (a depth image registered to the colour image, and
    # the depth image's camera info), relative to the namespace.
    ros2 topic pub --once /command std_msgs/msg/String "{data: 'take the cup'}"
    ros2 action send_goal /locate vlm_grasp_locator/action/Locate "{command: 'take the cup'}" --feedback
    # managed:=true starts the lifecycle node (grasp_locator_lifecycle_node); with the
    # default autostart it configures and activates itself, `ros2 lifecycle set` drives it.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vlm_grasp_locator")
    namespace = LaunchConfiguration("namespace")
    image_topic = LaunchConfiguration("image_topic")
    command_topic = LaunchConfiguration("command_topic")
    params_file = LaunchConfiguration("params_file")
    device = LaunchConfiguration("device")
    use_rviz = LaunchConfiguration("use_rviz")
    use_depth = LaunchConfiguration("use_depth")
    managed = LaunchConfiguration("managed")

    arguments = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Camera image topic (remap of `image`)"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="Command topic, std_msgs/String (remap of `command`)"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "params.yaml"),
                              description="Parameter file for the node"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Compute device: auto, cpu, cuda or cuda:N "
                                          "(overrides params_file)"),
        DeclareLaunchArgument("use_depth", default_value="false",
                              description="Compute a 3D grasp pose from `depth` + `camera_info` "
                                          "(overrides params_file)"),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="Start RViz2 showing the overlay and the mask"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="Run the managed (lifecycle) node; its `autostart` "
                                          "parameter (default true) walks it to active"),
    ]

    def locator_node(executable: str, condition: object) -> Node:
        return Node(
            package="vlm_grasp_locator",
            executable=executable,
            name="grasp_locator",
            output="screen",
            emulate_tty=True,
            parameters=[params_file, {"device": device,
                                      "use_depth": ParameterValue(use_depth, value_type=bool)}],
            remappings=[("image", image_topic), ("command", command_topic)],
            condition=condition,
        )

    group = GroupAction([
        PushRosNamespace(namespace),
        locator_node("grasp_locator_node", UnlessCondition(managed)),
        locator_node("grasp_locator_lifecycle_node", IfCondition(managed)),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", PathJoinSubstitution([share, "config", "grasp_locator.rviz"])],
            condition=IfCondition(use_rviz),
            output="screen",
        ),
    ])
    return LaunchDescription(arguments + [group])
