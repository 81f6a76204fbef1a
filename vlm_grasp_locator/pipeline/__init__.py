"""Layer 3, the pipeline: ``Locator`` (proposals -> crop scores -> ranked answer), its
config, the per-frame cache and fast mode. Imports ``core``, ``models`` and
``runtime``; never rclpy.
"""
