"""Pure-Python install of the core (``pip install -e .``) for use from a venv.

colcon ignores this file: package.xml declares the package as ament_cmake, and
CMakeLists.txt installs the same sources next to the generated messages.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["vlm_grasp_locator", "vlm_grasp_locator.*"]),
    package_data={"vlm_grasp_locator": ["data/*", "data/eval/*"], "vlm_grasp_locator.models": ["configs/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "opencv-python-headless",
        "torch",
        "torchvision",
        "mobilesam-mirror",
        "open_clip_torch",
    ],
    extras_require={
        "onnx": ["onnxruntime", "onnx", "onnxscript"],
        "test": ["pytest", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "vlm-grasp-locator = vlm_grasp_locator.tools.cli:main",
            "grasp_locator_node = vlm_grasp_locator.ros.node:main",
            "grasp_locator_lifecycle_node = vlm_grasp_locator.ros.lifecycle_node:main",
        ],
    },
)
