"""Pieces shared by the package's launch files (``launch/*.launch.py``).

Launch arguments that mirror a node parameter (``device``, ``use_depth``, ``autostart``)
default to the empty string, meaning "not given": only arguments the user typed override
the params file, so ``device: cuda`` in a params file is not silently replaced by a
launch default. Everything here is evaluated inside an ``OpaqueFunction``, before any
process starts, so a bad argument stops the launch with nothing left running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from vlm_grasp_locator.ros.params import ParameterError, validate


class LaunchArgumentError(RuntimeError):
    """A launch argument has a value the node would refuse, or needs something missing."""


@dataclass(frozen=True)
class ParameterArgument:
    """A launch argument that overrides the node parameter of the same name when given."""

    name: str
    description: str
    is_bool: bool = False


PARAMETER_ARGUMENTS = (
    ParameterArgument("device", "Compute device: auto, cpu, cuda or cuda:N. Empty (default): "
                                "the params file's value"),
    ParameterArgument("use_depth", "true/false: 3D grasp pose from `depth` + `camera_info`. "
                                   "Empty (default): the params file's value", is_bool=True),
    ParameterArgument("autostart", "Managed node only, true/false: configure and activate at "
                                   "start. Empty (default): the params file's value (true)",
                      is_bool=True),
)

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(name: str, text: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no, on/off) as launch users type them."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise LaunchArgumentError(f"launch argument {name}:={text!r} is not true or false")


def declare_parameter_arguments() -> List[Any]:
    """``DeclareLaunchArgument`` for each of :data:`PARAMETER_ARGUMENTS` (default "")."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(a.name, default_value="", description=a.description)
            for a in PARAMETER_ARGUMENTS]


def parameter_overrides(context: Any, *, managed: bool) -> Dict[str, Any]:
    """The node parameters the user gave as launch arguments, checked like the node does."""
    from launch.substitutions import LaunchConfiguration

    overrides: Dict[str, Any] = {}
    for argument in PARAMETER_ARGUMENTS:
        text = LaunchConfiguration(argument.name).perform(context).strip()
        if not text:
            continue
        if argument.name == "autostart" and not managed:
            raise LaunchArgumentError(
                "autostart:= applies to the managed node only; add managed:=true")
        overrides[argument.name] = parse_bool(argument.name, text) if argument.is_bool else text
    try:
        validate(overrides)
    except ParameterError as e:
        raise LaunchArgumentError(f"launch argument: {e}") from e
    return overrides


def is_managed(context: Any) -> bool:
    from launch.substitutions import LaunchConfiguration

    return parse_bool("managed", LaunchConfiguration("managed").perform(context))


def require_package(package: str, why: str) -> None:
    """Stop the launch (nothing started yet) when ``package`` is not installed."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix(package)
    except PackageNotFoundError as e:
        raise LaunchArgumentError(
            f"{why} needs the ROS package '{package}', which is not installed "
            f"(e.g. apt install ros-$ROS_DISTRO-{package.replace('_', '-')})") from e
