"""The launch file, params.yaml and the node's parameter table agree.

These checks are static (compile, AST, YAML); test_launch.py runs the launch files for
real with ``ros2 launch``.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path
from typing import List

import pytest
import yaml

from vlm_grasp_locator.ros.params import PARAM_NAMES, PARAM_SPECS, ParameterError, validate

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "grasp_locator.launch.py"
MULTI_CAMERA_FILE = ROOT / "launch" / "multi_camera.launch.py"
PARAMS_FILE = ROOT / "config" / "params.yaml"
RVIZ_FILE = ROOT / "config" / "grasp_locator.rviz"
# Declared in the launch files themselves; both also declare launch_support's
# PARAMETER_ARGUMENTS (device, use_depth, autostart), which override parameters when given.
LAUNCH_ARGUMENTS = {
    "namespace", "image_topic", "command_topic", "params_file", "use_rviz", "managed"}
MULTI_CAMERA_ARGUMENTS = {"cameras", "image_topic", "params_file", "managed"}
PARAMETER_ARGUMENTS = {"device", "use_depth", "autostart"}
EXECUTABLES = {"grasp_locator_node": "vlm_grasp_locator.ros.node",
               "grasp_locator_lifecycle_node": "vlm_grasp_locator.ros.lifecycle_node",
               "vlm-grasp-locator": "vlm_grasp_locator.tools.cli"}


def _declared_arguments(tree: ast.AST) -> List[str]:
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if getattr(node.func, "id", getattr(node.func, "attr", "")) == "DeclareLaunchArgument":
            assert node.args and isinstance(node.args[0], ast.Constant), "name must be a literal"
            names.append(node.args[0].value)
            keywords = {k.arg for k in node.keywords}
            assert "description" in keywords, f"{node.args[0].value} has no description"
    return names


def _params() -> dict:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(data) == ["/**"], "params.yaml must use the /** wildcard"
    return data["/**"]["ros__parameters"]


def test_launch_file_compiles_and_declares_the_documented_arguments() -> None:
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), "exec")
    tree = ast.parse(source)
    names = _declared_arguments(tree)
    assert sorted(names) == sorted(LAUNCH_ARGUMENTS)
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert "declare_parameter_arguments" in source
    assert "grasp_locator_node" in source and "grasp_locator.rviz" in source
    assert "grasp_locator_lifecycle_node" in source  # managed:=true


def _argument_defaults(tree: ast.AST) -> dict:
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            for k in node.keywords:
                if k.arg == "default_value" and isinstance(k.value, ast.Constant):
                    defaults[node.args[0].value] = k.value.value
    return defaults


def test_multi_camera_launch_declares_its_arguments_and_one_node_per_camera() -> None:
    source = MULTI_CAMERA_FILE.read_text()
    compile(source, str(MULTI_CAMERA_FILE), "exec")
    tree = ast.parse(source)
    assert sorted(_declared_arguments(tree)) == sorted(MULTI_CAMERA_ARGUMENTS)
    defaults = _argument_defaults(tree)
    assert defaults["cameras"] == "left,right" and defaults["managed"] == "false"
    assert "declare_parameter_arguments" in source
    assert defaults["image_topic"] == "image"  # relative: stays in each namespace
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {"generate_launch_description", "camera_nodes"} <= functions
    node_calls = [n for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    assert len(node_calls) == 1  # built once per camera in a comprehension
    keywords = {k.arg for k in node_calls[0].keywords}
    assert {"namespace", "parameters", "name", "executable"} <= keywords
    assert "OpaqueFunction" in source
    assert "grasp_locator_node" in source and "grasp_locator_lifecycle_node" in source


def test_launch_files_use_relative_topic_names() -> None:
    for path in (LAUNCH_FILE, MULTI_CAMERA_FILE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "remappings":
                for pair in ast.walk(node.value):
                    if isinstance(pair, ast.Constant) and isinstance(pair.value, str):
                        assert not pair.value.startswith("/"), (path.name, pair.value)


def test_executables_agree_across_cmake_setup_py_and_launch_files() -> None:
    cmake = (ROOT / "CMakeLists.txt").read_text()
    setup_py = (ROOT / "setup.py").read_text()
    for name, module in EXECUTABLES.items():
        assert f"add_python_executable({name} {module})" in cmake, name
        assert f'"{name} = {module}:main"' in setup_py, name
        assert importlib.util.find_spec(module) is not None, module


def test_params_yaml_names_exactly_the_declared_parameters() -> None:
    assert sorted(_params()) == sorted(PARAM_NAMES)


def test_params_yaml_values_are_valid_and_equal_the_defaults() -> None:
    params = _params()
    validate(params)  # types and ranges
    for spec in PARAM_SPECS:
        assert params[spec.name] == spec.default, spec.name


def test_every_parameter_has_a_description_and_a_descriptor() -> None:
    for spec in PARAM_SPECS:
        assert len(spec.description) > 20, spec.name
        descriptor = spec.descriptor()
        assert descriptor.description == spec.description
        assert descriptor.read_only == (not spec.dynamic)


@pytest.mark.parametrize("name, value", [
    ("points_per_side", 0), ("score_threshold", 1.5), ("score_threshold", 0), ("device", "gpu"),
    ("image_qos", "fast"), ("max_image_age", -1.0), ("continuous", "yes"), ("nonsense", 1),
])
def test_validation_names_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ParameterError, match=name):
        validate({name: value})


def test_locator_parameters_match_locator_config() -> None:
    locator = pytest.importorskip("vlm_grasp_locator.pipeline.locator")
    fields = {f.name: f for f in dataclasses.fields(locator.LocatorConfig)}
    defaults = locator.LocatorConfig()
    for spec in PARAM_SPECS:
        if spec.locator:
            assert spec.name in fields, f"{spec.name} is no LocatorConfig field"
            assert getattr(defaults, spec.name) == spec.default, spec.name


def test_rviz_config_shows_overlay_and_mask() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    topics = {d["Name"]: d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]
              if d["Class"] == "rviz_default_plugins/Image"}
    assert topics["Overlay"] == "overlay" and topics["Mask"] == "mask"


def test_parameter_arguments_are_parameters() -> None:
    from vlm_grasp_locator.ros.launch_support import PARAMETER_ARGUMENTS as ARGS

    assert {a.name for a in ARGS} == PARAMETER_ARGUMENTS <= set(PARAM_NAMES)


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros is not installed (no ROS installation, no ros2-tools)")
def test_launch_description_builds() -> None:
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("grasp_locator_launch", LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == LAUNCH_ARGUMENTS | PARAMETER_ARGUMENTS

    spec = importlib.util.spec_from_file_location("multi_camera_launch", MULTI_CAMERA_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == MULTI_CAMERA_ARGUMENTS | PARAMETER_ARGUMENTS
