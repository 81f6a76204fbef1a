"""The node's health as one diagnostic_msgs/DiagnosticStatus on ``/diagnostics``.

diagnostic_updater is not on PyPI, so the message is built here and published by a
1 Hz timer. Level: ERROR while random weights are in use (every result is meaningless),
WARN for RECENT_ERROR_S after an error, else OK.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from vlm_grasp_locator.service.jobs import NodeStats

DIAGNOSTICS_TOPIC = "/diagnostics"
PERIOD_S = 1.0
RECENT_ERROR_S = 60.0

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels (bytes)


@dataclass
class NodeHealth:
    """What the node knows about itself besides the counters."""

    name: str  # fully qualified node name
    device: str  # "" before the models are loaded
    mode: str
    backend: str
    models: str
    lifecycle_state: str  # "active" for the plain node
    random_weights: bool
    queue_length: int


def level_and_message(health: NodeHealth, stats: NodeStats,
                      now: Optional[float] = None) -> Tuple[int, str]:
    """The status level and a one-line summary."""
    now = time.monotonic() if now is None else now
    if health.random_weights:
        return ERROR, "RANDOM WEIGHTS: every score, box and mask is meaningless"
    if stats.last_error_time is not None and now - stats.last_error_time < RECENT_ERROR_S:
        return WARN, f"recent error: {stats.last_error}"
    if health.lifecycle_state != "active":
        return OK, f"{health.lifecycle_state}: not answering"
    return OK, "ready"


def key_values(health: NodeHealth, stats: NodeStats) -> List[Tuple[str, str]]:
    """(key, value) pairs, values as text."""
    with stats.lock:
        timings: Dict[str, float] = dict(stats.last_timings_ms)
        pairs = [
            ("device", health.device or "(not loaded)"),
            ("mode", health.mode),
            ("backend", health.backend),
            ("models", health.models),
            ("lifecycle state", health.lifecycle_state),
            ("random weights", str(health.random_weights).lower()),
            ("frames received", str(stats.frames_received)),
            ("frames dropped", str(stats.frames_dropped)),
            ("frames bad", str(stats.frames_bad)),
            ("frames replaced unused", str(stats.frames_replaced_unused)),
            ("commands answered", str(stats.commands_answered)),
            ("goals rejected", str(stats.goals_rejected)),
            ("tracking state", stats.tracking_state),
            ("track id", stats.track_id),
            ("frames tracked", str(stats.frames_tracked)),
            ("re-acquisitions", str(stats.reacquisitions)),
            ("queue length", str(health.queue_length)),
            ("last error", stats.last_error or "none"),
        ]
    for stage in sorted(timings):
        pairs.append((f"last query {stage} ms", f"{timings[stage]:.1f}"))
    return pairs


def diagnostic_array(array_cls: type, status_cls: type, key_value_cls: type, stamp: Any,
                     health: NodeHealth, stats: NodeStats) -> Any:
    """A DiagnosticArray holding the node's one DiagnosticStatus."""
    level, message = level_and_message(health, stats)
    status = status_cls()
    status.level = bytes([level])
    status.name = health.name
    status.hardware_id = health.device
    status.message = message
    status.values = [key_value_cls(key=k, value=v) for k, v in key_values(health, stats)]
    array = array_cls()
    array.header.stamp = stamp
    array.status = [status]
    return array
