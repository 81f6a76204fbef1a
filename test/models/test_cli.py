"""The ``vlm-grasp-locator`` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scenes import synthetic_scene

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_grasp_locator.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(synthetic_scene(), cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "small.yaml"
    path.write_text(
        "points_per_side: 4\npred_iou_thresh: 0.0\nstability_score_thresh: 0.0\n"
        "min_mask_region_area: 0\nscore_threshold: 0.0\nnum_threads: 2\n"
    )
    return path


def test_json_output_matches_schema_and_overlay_is_written(scene_file, small_config, tmp_path):
    overlay = tmp_path / "out" / "overlay.png"
    proc = run_cli(
        "locate",
        str(scene_file),
        "grab a red block",
        "--json",
        "--random-weights",
        "--device",
        "cpu",
        "--config",
        str(small_config),
        "--overlay",
        str(overlay),
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert set(record) == {
        "command",
        "target",
        "found",
        "reason",
        "image_size",
        "detections",
        "timings_ms",
        "explanation",
        "targets",
    }
    assert record["command"] == "grab a red block" and record["target"] == "red block"
    assert [t["phrase"] for t in record["targets"]] == ["red block"]
    assert record["targets"][0]["box_xyxy"] == record["detections"][0]["box_xyxy"]
    assert record["explanation"] == ""  # a plain command: the phrase alone decided
    assert record["image_size"] == [320, 240] and isinstance(record["found"], bool)
    assert record["found"] and record["detections"]
    for det in record["detections"]:
        assert set(det) == {"label", "score", "box_xyxy", "mask_area"}
        x0, y0, x1, y1 = det["box_xyxy"]
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240 and det["mask_area"] > 0
        assert 0 <= det["score"] <= 1 and det["label"] == "red block"
    assert record["timings_ms"]["total"] > 0
    assert "RANDOM WEIGHTS" in proc.stderr
    drawn = cv2.imread(str(overlay))
    assert drawn.shape == (240, 320, 3)
    assert not np.array_equal(drawn, cv2.imread(str(scene_file)))


def test_human_summary_and_not_found_exit_zero(scene_file, small_config):
    proc = run_cli(
        "locate",
        str(scene_file),
        "take the",
        "--random-weights",
        "--device",
        "cpu",
        "--config",
        str(small_config),
    )
    assert proc.returncode == 0, proc.stderr
    assert "not found" in proc.stdout and "no object named" in proc.stdout


@pytest.mark.parametrize("image", ["missing.png", "not_an_image.png"])
def test_bad_image_exits_2_with_reason(tmp_path, image):
    (tmp_path / "not_an_image.png").write_text("hello")
    proc = run_cli("locate", str(tmp_path / image), "take the cup", "--random-weights", timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and str(tmp_path / image) in proc.stderr


def test_missing_checkpoints_fail_with_remedy(scene_file, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlm_grasp_locator.tools.cli",
            "locate",
            str(scene_file),
            "take the cup",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "mobile_sam.pt" in proc.stderr and "download-models" in proc.stderr


def test_download_models_refuses_present_files_that_are_not_the_published_ones(tmp_path, capsys):
    """Present files are checked (size first, then SHA-256), so no network is needed here."""
    from vlm_grasp_locator.tools import cli
    from vlm_grasp_locator.models.checkpoints import MOBILE_SAM, sha256_of
    from vlm_grasp_locator.models.registry import clip_remote_file

    small = clip_remote_file("TinyCLIP-ViT-8M-16-Text-3M")
    (tmp_path / "mobile_sam.pt").write_bytes(b"not mobile sam")
    (tmp_path / small.file).write_bytes(b"not tinyclip")
    code = cli.main(
        ["download-models", "--dir", str(tmp_path), "--clip-model", "TinyCLIP-ViT-8M-16-Text-3M"]
    )
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert (
        f"{tmp_path / 'mobile_sam.pt'} is not the published file: 14 bytes, expected 40728226 "
        "bytes"
        in err
    )
    assert f"expected SHA-256 {MOBILE_SAM.sha256}" in err
    actual = sha256_of(tmp_path / small.file)
    assert (
        f"{tmp_path / small.file} is not the published file: SHA-256 {actual}, expected SHA-256 "
        f"{small.sha256}"
        in err
    )
    assert "--force" in err


def test_download_models_prints_the_digest_to_pin_an_unpublished_file(tmp_path, capsys):
    from vlm_grasp_locator.tools import cli
    from vlm_grasp_locator.models.checkpoints import sha256_of
    from vlm_grasp_locator.models.registry import clip_remote_file

    large = clip_remote_file("TinyCLIP-ViT-61M-32-Text-29M")
    assert large.sha256 is None  # not published
    (tmp_path / large.file).write_bytes(b"a checkpoint downloaded earlier")
    (tmp_path / "mobile_sam.pt").write_bytes(b"not mobile sam")  # present: nothing is fetched
    code = cli.main(
        ["download-models", "--dir", str(tmp_path), "--clip-model", "TinyCLIP-ViT-61M-32-Text-29M"]
    )
    out, err = capsys.readouterr()
    assert code == 1 and "mobile_sam.pt is not the published file" in err
    digest = sha256_of(tmp_path / large.file)
    assert f"{tmp_path / large.file}: present, SHA-256 {digest}" in out
    assert f"clip_checkpoint_sha256: {digest}" in out
