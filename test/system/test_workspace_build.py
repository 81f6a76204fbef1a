"""A robot user's build: the repository cloned as ws/src/vlm_grasp_locator, one `colcon build`.

The repository's own install/ provides vision_msgs, as a ROS distribution would on a
robot; this package's own install is kept out of the environment. A second build uses
a rosidl_generator_py made like the apt distributions' (``aptlike-generator.sh`` from
``../shared/ros2-tools/distro-reference``): its Python/NumPy include directories are
PRIVATE, where the PyPI wheel's are PUBLIC, and CMakeLists.txt must work with both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "vlm_grasp_locator"
BUILD_TIMEOUT_S = 900
DISTRO_REFERENCE = REPO.parent / "shared" / "ros2-tools" / "distro-reference"
APTLIKE_GENERATOR = DISTRO_REFERENCE / "aptlike-generator.sh"
PATH_LIST_VARIABLES = (
    "AMENT_PREFIX_PATH",
    "CMAKE_PREFIX_PATH",
    "COLCON_PREFIX_PATH",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "PATH",
)

# Run with the workspace sourced: where the messages come from and what the
# wrappers' modules resolve to, without importing the node (it needs models).
IMPORT_PROBE = """
import importlib.util, json
import vlm_grasp_locator
from vlm_grasp_locator import action, msg
from rclpy.serialization import serialize_message
serialize_message(msg.GraspTarget(command="pick up the mug"))
print(json.dumps({
    "package_init": vlm_grasp_locator.__file__,
    "msg": msg.__file__,
    "action": action.__file__,
    "node": importlib.util.find_spec("vlm_grasp_locator.ros.node").origin,
}))
"""


def _is_own_install(entry: str) -> bool:
    path = Path(entry)
    own_prefix = REPO / "install" / PACKAGE
    return path == REPO / "install" or path == own_prefix or own_prefix in path.parents


def _underlay_environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in PATH_LIST_VARIABLES:
        if name in env:
            entries = env[name].split(os.pathsep)
            env[name] = os.pathsep.join(e for e in entries if e and not _is_own_install(e))
    return env


def _copy_repository(destination: Path) -> None:
    """Copies the tracked and the untracked-but-not-ignored files, as a commit would hold them."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in filter(None, listing.split("\0")):
        source = REPO / relative
        if source.is_file():  # tracked files deleted in the work tree are skipped
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _build_environment() -> dict[str, str]:
    """The underlay environment, or a skip when colcon or vision_msgs is missing."""
    if shutil.which("colcon") is None or shutil.which("git") is None:
        pytest.skip("colcon or git not on PATH: run scripts/setup.sh and source scripts/env.sh")
    env = _underlay_environment()
    ament_prefixes = [Path(p) for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if not any((p / "share" / "vision_msgs" / "package.xml").is_file() for p in ament_prefixes):
        pytest.skip(
            "no vision_msgs on AMENT_PREFIX_PATH: run scripts/setup.sh and source scripts/env.sh"
        )
    return env


def _colcon_build(ws: Path, env: dict[str, str]) -> None:
    """Copy the repository into ws/src and build it (vision_msgs comes from the underlay,
    the repository's own install/, built once by scripts/setup.sh and shared by both builds)."""
    _copy_repository(ws / "src" / PACKAGE)
    build = subprocess.run(
        [shutil.which("colcon") or "colcon", "build",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, (
        f"colcon build failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = _build_environment()
    ws = tmp_path_factory.mktemp("ws")
    _colcon_build(ws, env)
    return ws


@pytest.fixture(scope="module")
def aptlike_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rosidl_generator_py as the apt distributions ship it (include directories PRIVATE)."""
    if not APTLIKE_GENERATOR.is_file():
        pytest.skip(f"{APTLIKE_GENERATOR} absent: the distro reference lives in ../shared next "
                    "to the repository (present in CI; not in a plain clone)")
    prefix = tmp_path_factory.mktemp("aptlike") / "prefix"
    made = subprocess.run(["bash", str(APTLIKE_GENERATOR), sys.prefix, str(prefix)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    return prefix


@pytest.fixture(scope="module")
def aptlike_workspace(tmp_path_factory: pytest.TempPathFactory, aptlike_prefix: Path) -> Path:
    """The same robot build against the distribution-like generator."""
    env = _build_environment()
    env["CMAKE_PREFIX_PATH"] = os.pathsep.join(
        [str(aptlike_prefix), *filter(None, env.get("CMAKE_PREFIX_PATH", "").split(os.pathsep))])
    ws = tmp_path_factory.mktemp("ws_aptlike")
    _colcon_build(ws, env)
    return ws


def test_only_the_package_is_discovered(workspace: Path) -> None:
    """compat/vision_msgs carries COLCON_IGNORE: a robot's distro vision_msgs must win."""
    built = sorted(p.name for p in (workspace / "build").iterdir() if p.is_dir())
    installed = sorted(p.name for p in (workspace / "install").iterdir() if p.is_dir())
    assert built == [PACKAGE]
    assert installed == [PACKAGE]


def _import_probe(ws: Path) -> tuple[dict, Path]:
    """IMPORT_PROBE's findings with ws's install sourced, and the package's site-packages."""
    install = ws / "install"
    command = '. "$1/setup.bash" && exec "$2" -c "$3"'
    probe = subprocess.run(
        ["bash", "-c", command, "_", install, sys.executable, IMPORT_PROBE],
        cwd=ws,  # not the repository: `python -c` puts the cwd first on sys.path
        env=_underlay_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return found, install / PACKAGE / "lib" / python / "site-packages" / PACKAGE


def test_messages_import_from_the_workspace(workspace: Path) -> None:
    found, site_package = _import_probe(workspace)
    assert Path(found["msg"]).parent.parent == site_package
    assert Path(found["action"]).parent.parent == site_package
    assert Path(found["node"]) == site_package / "ros" / "node.py"
    # Our __init__.py (pkgutil.extend_path) must replace rosidl's empty one.
    assert Path(found["package_init"]) == site_package / "__init__.py"
    ours = (REPO / PACKAGE / "__init__.py").read_text()
    assert (site_package / "__init__.py").read_text() == ours


@pytest.mark.parametrize(
    ("executable", "module"),
    [
        ("grasp_locator_node", "vlm_grasp_locator.ros.node"),
        ("vlm-grasp-locator", "vlm_grasp_locator.tools.cli"),
    ],
)
def test_ros2_run_executables(workspace: Path, executable: str, module: str) -> None:
    wrapper = workspace / "install" / PACKAGE / "lib" / PACKAGE / executable
    assert wrapper.is_file()
    assert os.access(wrapper, os.X_OK)
    text = wrapper.read_text()
    assert text.startswith(f"#!{sys.executable}\n")
    assert f"from {module} import main" in text


def test_colcon_test_runs_the_suite(workspace: Path) -> None:
    """`colcon test` knows the suite's four ctests; the lint one runs and passes here
    (the others are the suite this run is part of)."""
    env = _underlay_environment()
    listed = subprocess.run(["ctest", "-N"], cwd=workspace / "build" / PACKAGE, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    for name in ("lint", "unit", "ros", "system"):
        assert f": {name}\n" in listed.stdout + "\n", listed.stdout
    colcon = shutil.which("colcon") or "colcon"
    ran = subprocess.run([colcon, "test", "--ctest-args", "-R", "^lint$"], cwd=workspace,
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    result = subprocess.run([colcon, "test-result", "--all", "--verbose"], cwd=workspace,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 errors, 0 failures" in result.stdout, result.stdout[-4000:]


def test_launch_and_config_installed(workspace: Path) -> None:
    share = workspace / "install" / PACKAGE / "share" / PACKAGE
    assert (share / "package.xml").is_file()
    for launch_file in sorted((REPO / "launch").glob("*.launch.py")):
        assert (share / "launch" / launch_file.name).is_file()
    if (REPO / "config" / "params.yaml").is_file():
        assert (share / "config" / "params.yaml").is_file()


def _generator_py_export(ws: Path) -> str:
    cmake = ws / "install" / PACKAGE / "share" / PACKAGE / "cmake"
    return (cmake / f"export_{PACKAGE}__rosidl_generator_pyExport.cmake").read_text()


def test_aptlike_build_used_the_distribution_like_generator(
        aptlike_workspace: Path, aptlike_prefix: Path) -> None:
    cache = (aptlike_workspace / "build" / PACKAGE / "CMakeCache.txt").read_text()
    line = next(x for x in cache.splitlines() if x.startswith("rosidl_generator_py_DIR:"))
    assert line.split("=", 1)[1].startswith(str(aptlike_prefix)), line


@pytest.mark.parametrize("build", ["workspace", "aptlike_workspace"])
def test_exported_python_library_names_no_build_paths(
        build: str, request: pytest.FixtureRequest) -> None:
    """Neither build exports the build machine's Python/NumPy include directories."""
    ws: Path = request.getfixturevalue(build)
    export = _generator_py_export(ws)
    assert f"{PACKAGE}__rosidl_generator_py" in export
    for path in (sys.prefix, str(REPO), str(ws / "src")):
        assert path not in export, f"{path} exported in the Python library's target"
    assert "numpy" not in export.lower()


def test_aptlike_build_messages_import(aptlike_workspace: Path) -> None:
    found, site_package = _import_probe(aptlike_workspace)
    assert Path(found["msg"]).parent.parent == site_package
