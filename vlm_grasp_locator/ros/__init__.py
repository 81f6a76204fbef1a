"""Layer 6, the thin ROS 2 layer: the node, its parameters, messages, action and
diagnostics, and the launch files' helpers.
"""
