"""Entry points outside ROS launch: the ``vlm-grasp-locator`` CLI and the demo."""
