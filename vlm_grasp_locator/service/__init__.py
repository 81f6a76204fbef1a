"""Layer 5, the locator service without ROS: jobs, their queue and outcomes.

The ROS layer converts messages and schedules work around it.
"""
