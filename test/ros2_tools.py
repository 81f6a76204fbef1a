"""Run the real ROS 2 command-line tools (``ros2 launch``, ``ros2 topic``, ...) from tests.

Each launch gets its own ROS_DOMAIN_ID (localhost discovery) and is stopped with SIGINT,
as a user's Ctrl-C would, so Fast DDS cleans up its shared memory. ``ros2`` verbs that
go through the ros2 daemon can answer "node not found" while the daemon is still
discovering: :func:`run_ros2` retries those, and :meth:`Ros2Launch.stop` stops the
daemon of its domain.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import yaml

from node_harness import SMALL_PARAMS, messages_unavailable
from vlm_grasp_locator.tools.node_client import reserve_domain_id, ros_env


def tools_unavailable() -> Optional[str]:
    """Why ``ros2 launch`` cannot run here (None when it can)."""
    why = messages_unavailable()
    if why:
        return why
    if shutil.which("ros2") is None:
        return "the `ros2` command is not installed (no ROS installation, no ../shared/ros2-tools)"
    for module in ("ros2launch", "launch_ros", "composition_interfaces"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (scripts/setup.sh installs the ROS 2 tools)"
    return None


def write_params_file(path: Path, **overrides: Any) -> Path:
    """A params file in the layout of config/params.yaml with the tests' tiny pipeline."""
    params: Dict[str, Any] = {**SMALL_PARAMS, **overrides}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=True))
    return path


class Ros2Launch:
    """``ros2 launch <args>`` as a child process on a private ROS domain."""

    def __init__(self, args: Sequence[str], log_path: Path,
                 domain_id: Optional[int] = None) -> None:
        if domain_id is None:
            domain_id, self._lock = reserve_domain_id()
        else:
            self._lock = None
        self.domain_id = domain_id
        self.env = ros_env(domain_id)
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.command = ["ros2", "launch", *args]
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def run(self, line: str, timeout_s: float = 60.0,
            retries: int = 3) -> "subprocess.CompletedProcess[str]":
        return run_ros2(line, self.env, timeout_s=timeout_s, retries=retries)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGINT to ``ros2 launch`` (it stops its nodes), SIGKILL to the group last."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            subprocess.run(["ros2", "daemon", "stop"], env=self.env, capture_output=True,
                           timeout=30, check=False)
            return self.proc.returncode
        finally:
            self._log.close()
            if self._lock is not None:
                self._lock.close()


def run_ros2(line: str, env: Mapping[str, str], *, timeout_s: float = 60.0,
             retries: int = 3) -> "subprocess.CompletedProcess[str]":
    """Run one shell line as a user types it; retry a failure (discovery may be under way)."""
    assert shlex.split(line)[0] == "ros2", line
    result: Optional[subprocess.CompletedProcess[str]] = None
    for attempt in range(retries):
        result = subprocess.run(["bash", "-c", line], env=dict(env), capture_output=True,
                                text=True, timeout=timeout_s, check=False)
        if result.returncode == 0 and "Node not found" not in result.stdout + result.stderr:
            return result
        time.sleep(1.0 + attempt)
    assert result is not None
    return result
