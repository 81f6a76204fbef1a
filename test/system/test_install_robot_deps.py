"""scripts/install_robot_deps.sh: what can run without a robot and without downloads.

Run here: the shell syntax, the mode decision (PEP 668 marker or not), the venv made with
--system-site-packages and a COLCON_IGNORE inside it, the NumPy constraint, the pip
commands it would run (--dry-run), the Jetson path's refusal to take torch from PyPI,
and its errors. NOT run here: the pip installs themselves (torch and friends: gigabytes
of downloads), a colcon build with the venv's interpreter on an apt ROS 2, and the
Jetson check for a CUDA-enabled torch (--dry-run skips it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install_robot_deps.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not on PATH")


def _run(args: Sequence[str], *, distro: Optional[str] = "jazzy",
         python: str = sys.executable) -> subprocess.CompletedProcess:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k != "ROS_DISTRO"}
    if distro is not None:
        env["ROS_DISTRO"] = distro
    return subprocess.run(["bash", str(SCRIPT), "--python", python, *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _numpy_version() -> str:
    import numpy

    return numpy.__version__


def _fake_externally_managed_python(tmp_path: Path) -> Path:
    """A python3 whose stdlib folder carries a PEP 668 marker (as Ubuntu 24.04's does)."""
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'case "$*" in *sysconfig*) echo "{stdlib}"; exit 0 ;; esac\n'
        f'exec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    return fake


def test_script_parses() -> None:
    check = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_venv_mode_makes_a_system_site_packages_venv_colcon_ignores(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    done = _run(["--workspace", str(ws), "--mode", "venv", "--dry-run"])
    assert done.returncode == 0, done.stdout + done.stderr
    venv = ws / "venv"
    assert (venv / "COLCON_IGNORE").is_file()
    assert os.access(venv / "bin" / "python3", os.X_OK)
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config
    constraints = ws / ".vlm_grasp_locator_deps" / "constraints.txt"
    assert f"numpy=={_numpy_version()}" in constraints.read_text().splitlines()
    pip = f"+ {venv}/bin/python3 -m pip install -c {constraints}"
    assert f"{pip} torch torchvision\n" in done.stdout
    assert f"{pip} mobilesam-mirror open_clip_torch onnxruntime\n" in done.stdout
    assert f"-DPython3_EXECUTABLE={venv}/bin/python3" in done.stdout
    assert "dry run: nothing was downloaded or installed" in done.stdout
    # The venv's interpreter sees the base interpreter's site-packages.
    probe = subprocess.run(
        [str(venv / "bin" / "python3"), "-c",
         "import site, sys; print(sys.prefix != sys.base_prefix, "
         "any(p.startswith(sys.base_prefix) for p in site.getsitepackages()))"],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["True", "True"], probe.stderr

    again = _run(["--workspace", str(ws), "--mode", "venv", "--dry-run", "--cpu", "--no-onnx"])
    assert again.returncode == 0, again.stderr
    assert "torch torchvision --index-url https://download.pytorch.org/whl/cpu" in again.stdout
    assert "open_clip_torch onnxruntime" not in again.stdout


def _discovered(ws: Path) -> list:
    """The packages colcon finds under ws (its own discovery: `colcon list` is not installed)."""
    import argparse

    from colcon_core.package_discovery import (
        add_package_discovery_arguments,
        discover_packages,
        get_package_discovery_extensions,
    )
    from colcon_core.package_identification import get_package_identification_extensions

    parser = argparse.ArgumentParser()
    add_package_discovery_arguments(parser)
    found = discover_packages(parser.parse_args(["--base-paths", str(ws)]),
                              get_package_identification_extensions(),
                              discovery_extensions=get_package_discovery_extensions())
    return sorted(d.name for d in found)


def test_colcon_does_not_crawl_the_venv(tmp_path: Path) -> None:
    pytest.importorskip("colcon_core", reason="colcon not installed: source scripts/env.sh")
    ws = tmp_path / "ws"
    assert _run(["--workspace", str(ws), "--mode", "venv", "--dry-run"]).returncode == 0
    # A package inside the venv (as a pip-installed sdist could carry) ...
    planted = ws / "venv" / "lib" / "planted"
    planted.mkdir(parents=True)
    (planted / "package.xml").write_text(
        '<?xml version="1.0"?><package format="3"><name>planted</name><version>0.0.0'
        '</version><description>x</description><maintainer email="a@b.c">a</maintainer>'
        '<license>MIT</license><export><build_type>ament_cmake</build_type></export>'
        '</package>')
    (planted / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(planted)\n")
    assert _discovered(ws) == []
    (ws / "venv" / "COLCON_IGNORE").unlink()  # ... is found without the marker
    assert _discovered(ws) == ["planted"]


def test_auto_mode_follows_the_pep668_marker(tmp_path: Path) -> None:
    plain = _run(["--workspace", str(tmp_path / "humble_ws"), "--dry-run"], distro="humble")
    if "PEP 668 marker: yes" in plain.stdout:
        pytest.skip("this machine's Python is externally managed itself")
    assert plain.returncode == 0, plain.stderr
    assert "mode user" in plain.stdout
    assert f"{sys.executable} -m pip install --user -c" in plain.stdout
    assert not (tmp_path / "humble_ws" / "venv").exists()

    managed = _fake_externally_managed_python(tmp_path)
    ws = tmp_path / "jazzy_ws"
    auto = _run(["--workspace", str(ws), "--dry-run"], python=str(managed))
    assert auto.returncode == 0, auto.stderr
    assert "mode venv" in auto.stdout and "PEP 668 marker: yes" in auto.stdout
    assert (ws / "venv" / "COLCON_IGNORE").is_file()

    refused = _run(["--workspace", str(ws), "--mode", "user", "--dry-run"],
                   python=str(managed))
    assert refused.returncode != 0
    assert "externally managed (PEP 668)" in refused.stderr


def test_jetson_keeps_nvidia_torch(tmp_path: Path) -> None:
    done = _run(["--workspace", str(tmp_path / "ws"), "--mode", "venv", "--jetson",
                 "--dry-run"])
    assert done.returncode == 0, done.stderr
    assert "Jetson: yes" in done.stdout
    assert "torch torchvision" not in done.stdout  # never PyPI's CPU-only aarch64 torch
    assert "onnxruntime-gpu" in done.stdout
    assert done.stdout.count(" -m pip install ") == 1
    assert "mobilesam-mirror open_clip_torch\n" in done.stdout


@pytest.mark.parametrize(
    ("args", "distro", "message"),
    [
        (["--dry-run"], "jazzy", "--workspace <colcon workspace> is required"),
        (["--workspace", "WS", "--dry-run"], None, "source /opt/ros/<distro>/setup.bash"),
        (["--workspace", "WS", "--mode", "conda"], "jazzy", "--mode must be auto, user or venv"),
        (["--workspace", "WS", "--bogus"], "jazzy", "unknown argument: --bogus"),
    ],
)
def test_errors(tmp_path: Path, args: list, distro: Optional[str], message: str) -> None:
    args = [str(tmp_path / "ws") if a == "WS" else a for a in args]
    done = _run(args, distro=distro)
    assert done.returncode != 0
    assert message in done.stderr
