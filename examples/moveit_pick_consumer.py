"""Example: a MoveIt pick consumer of vlm_grasp_locator's ``grasp_target``.

NOT RUN HERE: MoveIt (moveit_py) and tf2 are not installable in this package's test
environment. Written against the documented APIs (rclpy, tf2_ros.Buffer.transform with
tf2_geometry_msgs, moveit_py's MoveItPy / PlanningComponent as in MoveIt 2's Python
tutorial); ROS imports live inside main() so ``python -m py_compile`` passes anywhere.

Distributions: moveit_py (``moveit.planning``) is not released for Humble (its packages
start with Iron; Jazzy and later ship ``ros-<distro>-moveit-py``). On Humble, plan with the
move_group action (moveit_msgs/action/MoveGroup) or a C++ MoveGroupInterface node
instead; the rclpy parts here (``get_logger().warning``, QoS, parameters) exist in Humble.

Pose convention (see vlm_grasp_locator.core.grasp_geometry): the pose is in the camera's
optical frame; its local +z is the approach direction (the camera's viewing ray), +y
the gripper's closing direction and +x the object's long axis. That matches e.g. the
Panda hand (fingers along y, approach along z); map it to your gripper's link if not.
The position is the centre of the object's *visible surface*.

Run (with a MoveIt config providing moveit_py parameters, e.g. via a launch file):
    ros2 run <your_pkg> moveit_pick_consumer --ros-args -p planning_frame:=panda_link0
"""
from __future__ import annotations

import math

PLANNING_GROUP = "panda_arm"
EE_LINK = "panda_hand"
PRE_GRASP_BACKOFF_M = 0.10


def approach_axis(q_xyzw) -> tuple:
    """The pose's local +z axis (third column of its rotation matrix)."""
    x, y, z, w = q_xyzw
    return (2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y))


def backed_off(pose_stamped, distance: float):
    """A copy of ``pose_stamped`` moved ``distance`` back along its approach axis."""
    import copy

    o = pose_stamped.pose.orientation
    ax, ay, az = approach_axis((o.x, o.y, o.z, o.w))
    norm = math.sqrt(ax * ax + ay * ay + az * az) or 1.0
    out = copy.deepcopy(pose_stamped)
    out.pose.position.x -= distance * ax / norm
    out.pose.position.y -= distance * ay / norm
    out.pose.position.z -= distance * az / norm
    return out


def main() -> None:
    import rclpy
    import tf2_geometry_msgs  # noqa: F401 - registers PoseStamped with tf2_ros.Buffer.transform
    from moveit.planning import MoveItPy
    from rclpy.duration import Duration
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_ros import Buffer, TransformListener, TransformException
    from vlm_grasp_locator.msg import GraspTarget

    rclpy.init()
    node = Node("moveit_pick_consumer")
    planning_frame = node.declare_parameter("planning_frame", "panda_link0").value
    tf_buffer = Buffer()
    TransformListener(tf_buffer, node)
    robot = MoveItPy(node_name="moveit_pick_consumer_moveit")
    arm = robot.get_planning_component(PLANNING_GROUP)

    def move_to(pose_stamped) -> bool:
        arm.set_start_state_to_current_state()
        arm.set_goal_state(pose_stamped_msg=pose_stamped, pose_link=EE_LINK)
        plan = arm.plan()
        if not plan:
            node.get_logger().warning("planning failed")
            return False
        robot.execute(plan.trajectory, controllers=[])  # newer MoveIt: execute(group, traj, ...)
        return True

    def on_target(msg: GraspTarget) -> None:
        if not msg.found or not msg.pose_valid:
            node.get_logger().info(f"skip '{msg.target}': {msg.reason or 'no 3D pose'}")
            return
        try:
            grasp = tf_buffer.transform(msg.pose, planning_frame, timeout=Duration(seconds=0.5))
        except TransformException as e:
            node.get_logger().warning(f"no transform to {planning_frame}: {e}")
            return
        pre_grasp = backed_off(grasp, PRE_GRASP_BACKOFF_M)
        node.get_logger().info(f"picking '{msg.target}' at {grasp.pose.position}")
        if move_to(pre_grasp) and move_to(grasp):
            node.get_logger().info("at grasp pose: close the gripper, then lift/place")

    # Transient local, depth 1: a consumer started late still gets the last answer.
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(GraspTarget, "grasp_target", on_target, qos)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
