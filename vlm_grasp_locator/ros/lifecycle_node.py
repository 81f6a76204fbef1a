"""Entry point of ``grasp_locator_lifecycle_node``: the grasp_locator node, managed.

    grasp_locator_lifecycle_node --ros-args -p autostart:=false
    ros2 lifecycle set /grasp_locator configure   # loads the models
    ros2 lifecycle set /grasp_locator activate    # subscriptions live, answers published

The node class is :class:`vlm_grasp_locator.ros.node.GraspLocatorNode` (a lifecycle node
behind both executables); this executable honours its ``autostart`` parameter (default
true: configured and activated at start).
"""
from __future__ import annotations

import sys
from typing import List, Optional

from vlm_grasp_locator.ros.node import main as node_main


def main(args: Optional[List[str]] = None) -> int:
    """Run the node; ``autostart:=false`` leaves it unconfigured."""
    return node_main(args, managed=True)


if __name__ == "__main__":
    sys.exit(main())
