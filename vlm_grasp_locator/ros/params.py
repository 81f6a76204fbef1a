"""The node's parameters: one table of specs shared by the node, params.yaml and the tests.

Every parameter is declared with a description (``ros2 param describe`` shows it) and
checked at start-up; a bad value becomes one :class:`ParameterError` naming the
parameter. The table itself needs no ROS; descriptors are built on demand.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

IMAGE_QOS_CHOICES = ("sensor_data", "reliable")

Check = Callable[[Any], Optional[str]]  # returns a complaint, or None when the value is fine


class ParameterError(ValueError):
    """A parameter has a value the node cannot run with."""


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}]"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of: {', '.join(choices)}"


def _device(v: str) -> Optional[str]:
    if v in ("auto", "cpu", "cuda"):
        return None
    if v.startswith("cuda:") and v[5:].isdigit():
        return None
    return "must be auto, cpu, cuda or cuda:N"


def _sha256(v: str) -> Optional[str]:
    if not v or re.fullmatch(r"(sha256:)?[0-9a-fA-F]{64}", v.strip()):
        return None
    return "must be a SHA-256 digest (64 hex digits) or empty"


def _clip_model(v: str) -> Optional[str]:
    return None if v.strip() else "must name a TinyCLIP configuration"


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default (which fixes its type), description, check.

    ``locator``: the value goes to the same-named :class:`LocatorConfig` field (read at
    start-up, read-only afterwards); otherwise it is a node setting. ``dynamic``: may be
    changed at runtime with ``ros2 param set``.
    """

    name: str
    default: Any
    description: str
    constraints: str = ""
    check: Optional[Check] = None
    locator: bool = True
    dynamic: bool = False

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "integer", float: "double", str: "string"}[type(self.default)]

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not acceptable for this parameter, or None."""
        expected = type(self.default)
        if type(value) is not expected:  # bool is an int subclass: compare exactly
            hint = ""
            if expected is float and type(value) is int:
                hint = " (write a decimal point, e.g. 0.0)"
            return f"must be a {self.type_name}, got {type(value).__name__} {value!r}{hint}"
        if expected is float and not math.isfinite(value):
            return "must be a finite number"
        return self.check(value) if self.check else None

    def descriptor(self) -> Any:
        """An ``rcl_interfaces/ParameterDescriptor`` (type is filled in by rclpy)."""
        from rcl_interfaces.msg import ParameterDescriptor

        return ParameterDescriptor(
            name=self.name,
            description=self.description,
            additional_constraints=self.constraints,
            read_only=not self.dynamic,
        )


PARAM_SPECS: Tuple[ParamSpec, ...] = (
    ParamSpec("device", "auto",
              "Compute device for both models: auto (CUDA when available), cpu, cuda or cuda:N.",
              "auto | cpu | cuda | cuda:N", _device),
    ParamSpec("mode", "exact",
              "exact: the founding pipeline (segment everything, score every mask); fast: "
              "TinyCLIP picks where to prompt MobileSAM (at most 32 prompts; accuracy not "
              "measured).", "exact | fast", _one_of("exact", "fast")),
    ParamSpec("fast_prompts", 12,
              "Fast mode: point prompts MobileSAM decodes (chosen by TinyCLIP relevance).",
              "1 .. 32", _between(1, 32)),
    ParamSpec("backend", "torch",
              "Inference engine: torch, or onnxruntime with the models exported by "
              "`vlm-grasp-locator export-onnx` (CUDA provider when available, else CPU).",
              "torch | onnxruntime", _one_of("torch", "onnxruntime")),
    ParamSpec("onnx_dir", "",
              "Folder of the exported ONNX models for backend onnxruntime; empty = "
              "~/.cache/vlm_grasp_locator/onnx."),
    ParamSpec("allow_random_weights", False,
              "Run with randomly initialised models when checkpoints are missing "
              "(pipeline smoke tests only: every result is meaningless)."),
    ParamSpec("mobile_sam_checkpoint", "",
              "Path of the MobileSAM checkpoint (mobile_sam.pt); empty = the default cache "
              "(~/.cache/vlm_grasp_locator, filled by `vlm-grasp-locator download-models`)."),
    ParamSpec("clip_model", "TinyCLIP-ViT-61M-32-Text-29M",
              "TinyCLIP configuration scoring the mask crops against the target phrase.",
              "a configuration shipped in vlm_grasp_locator/models/configs", _clip_model),
    ParamSpec("clip_checkpoint", "",
              "Path of the TinyCLIP checkpoint; empty = the default file for clip_model "
              "in the cache."),
    ParamSpec("mobile_sam_checkpoint_sha256", "",
              "SHA-256 the MobileSAM checkpoint must have; empty = the published digest for "
              "the default file, no check for a configured path.", "64 hex digits or empty",
              _sha256),
    ParamSpec("clip_checkpoint_sha256", "",
              "SHA-256 the TinyCLIP checkpoint must have; empty = the published digest for "
              "the default file (none is published for the 61M model: `download-models` "
              "prints the digest to pin), no check for a configured path.",
              "64 hex digits or empty", _sha256),
    ParamSpec("points_per_side", 16,
              "MobileSAM automatic mask generator: prompt grid points per image side "
              "(cost grows with the square).", ">= 1", _at_least(1)),
    ParamSpec("pred_iou_thresh", 0.8,
              "MobileSAM: drop masks whose predicted IoU is below this.", "0.0 .. 1.0",
              _between(0.0, 1.0)),
    ParamSpec("stability_score_thresh", 0.85,
              "MobileSAM: drop masks whose stability score is below this.", "0.0 .. 1.0",
              _between(0.0, 1.0)),
    ParamSpec("min_mask_region_area", 200,
              "MobileSAM: remove mask islands and holes smaller than this many pixels (0 = off).",
              ">= 0", _at_least(0)),
    ParamSpec("score_threshold", 0.3,
              "Minimum calibrated score (0..1) for a mask to count as the target.", "0.0 .. 1.0",
              _between(0.0, 1.0)),
    ParamSpec("max_detections", 5,
              "Publish at most this many detections, best first.", ">= 1", _at_least(1)),
    ParamSpec("num_threads", 0,
              "CPU threads for inference (torch.set_num_threads); 0 = the library default.",
              ">= 0", _at_least(0)),
    ParamSpec("precision", "fp32",
              "CPU arithmetic of MobileSAM and TinyCLIP's image tower: fp32, or bf16 (torch "
              "autocast) on a CPU that multiplies bf16 natively (AMX-BF16, AVX512-BF16); "
              "refused at start-up elsewhere, where it would be emulated 5-25x slower. "
              "Backend torch only; a GPU runs fp16 either way.",
              "fp32 | bf16", _one_of("fp32", "bf16")),
    ParamSpec("continuous", False,
              "After a command, keep locating its target on every new frame (skipping frames "
              "while busy) until an empty or stop command.", locator=False, dynamic=True),
    ParamSpec("tracking", True,
              "Continuous mode: after the first answer follow the object by one MobileSAM "
              "box prompt and one crop score a frame, with a stable track id; false runs the "
              "full query on every frame.", locator=False, dynamic=True),
    ParamSpec("track_min_score", 0.2,
              "Tracking: the tracked crop's calibrated score below which the track is lost "
              "(and a full query re-acquires it).", "0.0 .. 1.0", _between(0.0, 1.0),
              locator=False, dynamic=True),
    ParamSpec("track_max_area_ratio", 2.0,
              "Tracking: the mask's area may grow or shrink by at most this factor from one "
              "frame to the next, else the track is lost.", ">= 1.0", _at_least(1.0),
              locator=False, dynamic=True),
    ParamSpec("track_min_iou", 0.3,
              "Tracking: least IoU of the mask's box with the motion-predicted box, else the "
              "track is lost.", "0.0 .. 1.0", _between(0.0, 1.0), locator=False, dynamic=True),
    ParamSpec("track_reacquire_window", 2.0,
              "Tracking: seconds within which a lost object found again near where it was "
              "heading keeps its track id; later it gets a new id.", ">= 0.0", _at_least(0.0),
              locator=False, dynamic=True),
    ParamSpec("max_image_age", 2.0,
              "Seconds: answer a command only on a frame received at most this long ago "
              "(node receive time, not the header stamp); 0 disables the check.", ">= 0.0",
              _at_least(0.0), locator=False, dynamic=True),
    ParamSpec("publish_overlay", True,
              "Publish the annotated image (mask tint, box, label and score) on `overlay`.",
              locator=False, dynamic=True),
    ParamSpec("image_qos", "sensor_data",
              "QoS of the image subscription: sensor_data (best effort, depth 5) or reliable "
              "(reliable, depth 1).", " | ".join(IMAGE_QOS_CHOICES), _one_of(*IMAGE_QOS_CHOICES),
              locator=False),
    ParamSpec("command_wait_timeout", 2.0,
              "Seconds a command waits for a fresh frame before it is answered not-found.",
              ">= 0.0", _at_least(0.0), locator=False, dynamic=True),
    ParamSpec("use_depth", False,
              "Also compute a 3D grasp pose: subscribe `depth` (sensor_msgs/Image registered "
              "to the colour image, 16UC1 mm or 32FC1 m) and `camera_info` (of the depth "
              "image); publish `target_pose`, `object_cloud` and `markers`.", locator=False),
    ParamSpec("depth_max_dt", 0.05,
              "Seconds: pair a colour frame only with a depth frame whose header stamp is at "
              "most this far from the colour stamp.", ">= 0.0", _at_least(0.0), locator=False),
    ParamSpec("autostart", True,
              "Managed (lifecycle) node only: configure and activate at start, so the node "
              "answers without `ros2 lifecycle set`; false = wait in 'unconfigured'. The "
              "plain node ignores it.", locator=False),
)

SPECS_BY_NAME: Dict[str, ParamSpec] = {s.name: s for s in PARAM_SPECS}
PARAM_NAMES: Tuple[str, ...] = tuple(s.name for s in PARAM_SPECS)


@dataclass
class NodeSettings:
    """The node-side (non-model) settings."""

    continuous: bool = False
    tracking: bool = True
    track_min_score: float = 0.2
    track_max_area_ratio: float = 2.0
    track_min_iou: float = 0.3
    track_reacquire_window: float = 2.0
    max_image_age: float = 2.0
    publish_overlay: bool = True
    image_qos: str = "sensor_data"
    command_wait_timeout: float = 2.0
    use_depth: bool = False
    depth_max_dt: float = 0.05


def defaults() -> Dict[str, Any]:
    return {s.name: s.default for s in PARAM_SPECS}


def validate(values: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterError` for the first unknown name or unacceptable value."""
    for name, value in values.items():
        spec = SPECS_BY_NAME.get(name)
        if spec is None:
            raise ParameterError(f"unknown parameter '{name}'")
        problem = spec.problem(value)
        if problem:
            raise ParameterError(f"invalid parameter '{name}' = {value!r}: {problem}")


def node_settings(values: Mapping[str, Any]) -> NodeSettings:
    """The :class:`NodeSettings` part of a complete, validated value map."""
    names = {f.name for f in dataclasses.fields(NodeSettings)}
    return NodeSettings(**{k: v for k, v in values.items() if k in names})


def locator_config(values: Mapping[str, Any]) -> Any:
    """A validated ``LocatorConfig`` from the locator part of a value map."""
    from vlm_grasp_locator.pipeline.locator import LocatorConfig

    fields = {f.name for f in dataclasses.fields(LocatorConfig)}
    kwargs = {}
    for spec in PARAM_SPECS:
        if spec.locator and spec.name in values:
            if spec.name not in fields:
                raise ParameterError(f"parameter '{spec.name}' has no LocatorConfig field")
            kwargs[spec.name] = values[spec.name]
    cfg = LocatorConfig(**kwargs)
    try:
        cfg.validate()
    except ValueError as e:
        raise ParameterError(f"invalid parameter: {e}") from e
    return cfg


def declare_all(node: Any) -> Dict[str, Any]:
    """Declare every parameter on ``node``; return the validated values.

    Raises :class:`ParameterError` (one line, naming the parameter) for a value of the
    wrong type or out of range.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    values: Dict[str, Any] = {}
    for spec in PARAM_SPECS:
        try:
            param = node.declare_parameter(spec.name, spec.default, spec.descriptor())
        except InvalidParameterTypeException as e:
            override = getattr(node, "_parameter_overrides", {}).get(spec.name)
            got = override.value if override is not None else "?"
            raise ParameterError(
                f"invalid parameter '{spec.name}' = {got!r}: "
                f"{spec.problem(got) if override is not None else str(e)}"
            ) from e
        except InvalidParameterValueException as e:
            raise ParameterError(f"invalid parameter '{spec.name}': {e}") from e
        values[spec.name] = param.value
        if param.type_ == Parameter.Type.NOT_SET:
            raise ParameterError(f"parameter '{spec.name}' has no value")
    validate(values)
    return values


def unknown_overrides(node: Any) -> List[str]:
    """Names given on the command line / params file that this node does not declare."""
    overrides: Iterable[str] = getattr(node, "_parameter_overrides", {}).keys()
    return sorted(n for n in overrides
                  if not node.has_parameter(n) and not n.startswith("qos_overrides."))
