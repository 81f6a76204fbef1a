"""Layer 3, the pipeline: ``Locator`` (proposals -> region scores -> ranked answer), its
config, the per-frame cache, fast mode and the plug-in parts' protocols (``parts``).
Imports ``core``, ``models`` and ``runtime``; never rclpy, never ``backends``.
"""
