"""The managed (lifecycle) variant of the grasp_locator node.

    grasp_locator_lifecycle_node --ros-args -p autostart:=false
    ros2 lifecycle set /grasp_locator configure   # loads the models
    ros2 lifecycle set /grasp_locator activate    # subscriptions live, answers published

configure: models, publishers (lifecycle publishers), action server, worker. activate:
``image``/``command`` (and depth) subscriptions; goals accepted. deactivate: no input, no
output; queued goals end ABORTED, goals are rejected. cleanup: models and the frame
cache freed, back to unconfigured. shutdown: the same from any state. ``autostart``
(default true) walks configure -> activate at start. Parameters are declared (and
checked) in the constructor; diagnostics are published in every state.
"""
from __future__ import annotations

from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from vlm_grasp_locator.ros import params as node_params
from vlm_grasp_locator.ros.node import NODE_NAME, GraspLocatorBase


class GraspLocatorLifecycleNode(GraspLocatorBase, LifecycleNode):
    """``grasp_locator`` as a managed node; same topics, action and behaviour when active."""

    def __init__(self, **kwargs: Any) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        # Raises ParameterError / ImportError: main() reports them.
        self._declare()
        self._configured = False

    # Output publishers are lifecycle publishers: activated and deactivated with the node.
    def _create_output_publisher(self, msg_type: type, topic: str, qos: Any) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def _enter(self, state: str) -> TransitionCallbackReturn:
        self._lifecycle_state = state
        self.get_logger().info(f"lifecycle: {state}")
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from vlm_grasp_locator.models.checkpoints import CheckpointError

        try:
            self._configure()
        except CheckpointError as e:
            self.get_logger().error(
                f"{e} (node: allow_random_weights:=true)".replace("\n", " "))
            return self._configure_failed()
        except (node_params.ParameterError, ValueError, ImportError, RuntimeError) as e:
            self.get_logger().error(f"configure failed: {e}".replace("\n", " "))
            return self._configure_failed()
        self._configured = True
        return self._enter("inactive")

    def _configure_failed(self) -> TransitionCallbackReturn:
        self._cleanup(timeout_s=1.0)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._activate()
        return self._enter("active")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        result = super().on_deactivate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        return self._enter("inactive")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._cleanup():
            self.get_logger().error("cleanup: an inference is still running; try again")
            return TransitionCallbackReturn.FAILURE
        self._configured = False
        super().on_cleanup(state)
        return self._enter("unconfigured")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
        if self._configured:
            self._cleanup(timeout_s=5.0)
            self._configured = False
        return self._enter("finalized")

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle: error while leaving {state.label}; cleaning up")
        if self._active:
            self._deactivate()
        if self._configured and self._cleanup(timeout_s=5.0):
            self._configured = False
            self._lifecycle_state = "unconfigured"
            return TransitionCallbackReturn.SUCCESS
        return TransitionCallbackReturn.FAILURE


def autostart(node: GraspLocatorLifecycleNode) -> bool:
    """With ``autostart`` (default true) configure and activate; False when that failed."""
    if not node.get_parameter("autostart").value:
        node.get_logger().info(
            "autostart is false: waiting in 'unconfigured' for `ros2 lifecycle set "
            f"{node.get_fully_qualified_name()} configure`, then `activate`")
        return True
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def main(args: Any = None) -> int:
    """Entry point of ``grasp_locator_lifecycle_node``."""
    from vlm_grasp_locator.ros.node import main as node_main

    return node_main(args, managed=True)


if __name__ == "__main__":
    import sys

    sys.exit(main())
