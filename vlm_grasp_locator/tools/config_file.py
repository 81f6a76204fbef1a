"""The ``--config FILE`` / ``--device`` / ``--random-weights`` (/ ``--precision``) options
the tools share."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from vlm_grasp_locator.pipeline.locator import LocatorConfig


def locator_config(args: argparse.Namespace) -> "LocatorConfig":
    """A validated ``LocatorConfig`` from a YAML mapping of its fields and the overrides.

    Raises ValueError (naming the file) for a file that is not a YAML mapping of known
    fields, and for a bad value.
    """
    import yaml

    from vlm_grasp_locator.pipeline.locator import LocatorConfig

    values: Dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{args.config}: not YAML: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"{args.config}: expected a mapping of config keys")
    config = LocatorConfig.from_mapping(values)
    if args.device:
        config.device = args.device
    if getattr(args, "precision", None):
        config.precision = args.precision
    if args.random_weights:
        config.allow_random_weights = True
    config.validate()
    return config
