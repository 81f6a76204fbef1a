"""Layer 5, the locator service without ROS: frames, jobs, their queue, the worker, outcomes.

The ROS layer converts messages and drives the service (``locator_service``).
"""
