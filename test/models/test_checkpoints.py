"""Checkpoint round trips in the layouts the publishers use, and refusal of bad files."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os

import pytest
import torch

from published_checkpoints import (
    LAION_LOGIT_SCALE,
    VARIANTS,
    set_logit_scale,
    tinyclip_source_keys,
    write_clip_variant,
    write_mobile_sam,
)
from vlm_grasp_locator.models import checkpoints as checkpoints_module
from vlm_grasp_locator.models import registry as models_module
from vlm_grasp_locator.models.checkpoints import (
    MOBILE_SAM,
    CheckpointError,
    CheckpointLayout,
    RemoteFile,
    cache_dir,
    download,
    load_checkpoint_into,
    load_into,
    load_state_dict,
    read_checkpoint,
    sha256_of,
)
from vlm_grasp_locator.models.registry import (
    build_mobile_sam,
    build_tinyclip,
    clip_model_config,
    clip_remote_file,
    load_models,
    mobile_sam_remote_file,
    resolve_device,
)

published_clip_file = clip_remote_file  # the real table, kept before a test patches it

SMALL_CLIP = "TinyCLIP-ViT-8M-16-Text-3M"
EXPECTED_LAYOUT = {
    "tinyclip_published": (CheckpointLayout.TINYCLIP_TRAINING, "state_dict"),
    "tinyclip_without_ddp": (CheckpointLayout.TINYCLIP_TRAINING, "state_dict"),
    "open_clip_plain": (CheckpointLayout.PLAIN, None),
    "ddp_prefixed": (CheckpointLayout.DDP_PREFIXED, None),
    "open_clip_training": (CheckpointLayout.DDP_PREFIXED, "state_dict"),
    "model_nested": (CheckpointLayout.PLAIN, "model"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Random-weight models saved as the publishers save them (published_checkpoints)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(1)
    sam, clip = build_mobile_sam().eval(), build_tinyclip(SMALL_CLIP).eval()
    set_logit_scale(clip, LAION_LOGIT_SCALE)
    return {
        "sam_model": sam,
        "clip_model": clip,
        "sam": write_mobile_sam(sam, folder / "mobile_sam.pt"),
        "clip_zoo": write_clip_variant(
            clip,
            SMALL_CLIP,
            "tinyclip_published",
            folder / "TinyCLIP-ViT-8M-16-Text-3M-YFCC15M.pt",
        ),
    }


@torch.inference_mode()
def clip_outputs(clip, seed: int = 0):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    tokens = torch.randint(1, 49000, (2, 77), generator=torch.Generator().manual_seed(seed))
    return clip.encode_image(pixels), clip.encode_text(tokens)


def assert_same_clip(got, want) -> None:
    for a, b in zip(clip_outputs(got), clip_outputs(want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got.logit_scale.item() == want.logit_scale.item()


def test_fixture_is_the_published_training_layout(checkpoints):
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(checkpoints["clip_zoo"], map_location="cpu", weights_only=True)
    assert {"args", "epoch", "optimizer", "state_dict"} <= set(saved)
    assert isinstance(saved["args"], argparse.Namespace) and saved["args"].model == SMALL_CLIP
    assert sorted(saved["state_dict"]) == sorted(
        tinyclip_source_keys(clip_model_config(SMALL_CLIP))
    )
    assert [len(opt["param_groups"]) for opt in saved["optimizer"]] == [
        2,
        2,
        2,
    ]  # image, text, joint
    assert all(
        state["exp_avg"].shape == state["exp_avg_sq"].shape
        for opt in saved["optimizer"]
        for state in opt["state"].values()
    )
    assert saved["state_dict"]["_logit_scale.module.logit_scale"].exp().item() == pytest.approx(
        LAION_LOGIT_SCALE
    )


def test_published_checkpoints_load_through_load_models(checkpoints):
    models = load_models(
        device="cpu",
        clip_model=SMALL_CLIP,
        mobile_sam_checkpoint=str(checkpoints["sam"]),
        clip_checkpoint=str(checkpoints["clip_zoo"]),
        tune=False,  # the tuned encoder's fused modules have other keys (test_model_tuning)
    )
    assert not models.random_weights
    assert_same_clip(models.clip, checkpoints["clip_model"])
    for name, tensor in checkpoints["sam_model"].state_dict().items():
        assert torch.equal(models.sam.state_dict()[name], tensor), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_accepted_layout_gives_identical_outputs(checkpoints, variant, tmp_path):
    path = (
        checkpoints["clip_zoo"]
        if variant == "tinyclip_published"
        else write_clip_variant(
            checkpoints["clip_model"], SMALL_CLIP, variant, tmp_path / f"{variant}.pt"
        )
    )
    clip = build_tinyclip(SMALL_CLIP).eval()
    contents = load_checkpoint_into(clip, path, "TinyCLIP")
    assert (contents.layout, contents.container) == EXPECTED_LAYOUT[variant]
    assert contents.trained_as == (SMALL_CLIP if variant == "tinyclip_published" else None)
    assert_same_clip(clip, checkpoints["clip_model"])


def test_truncated_checkpoint_is_refused(checkpoints, tmp_path):
    data = checkpoints["sam"].read_bytes()
    truncated = tmp_path / "mobile_sam.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_state_dict(truncated, "MobileSAM")
    assert str(truncated) in str(info.value)


def test_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict(junk, "MobileSAM")


class Payload:
    """Stands in for any object a malicious pickle might carry."""


def test_pickled_objects_are_refused_not_executed(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save(
        {"args": argparse.Namespace(model=SMALL_CLIP), "state_dict": {}, "payload": Payload()},
        evil,
    )
    with pytest.raises(CheckpointError, match="not allowed in a weights file"):
        load_state_dict(evil, "TinyCLIP")


def test_training_checkpoint_without_weights_is_refused(tmp_path):
    path = tmp_path / "no_weights.pt"
    torch.save(
        {
            "args": argparse.Namespace(model=SMALL_CLIP),
            "epoch": 3,
            "optimizer": [{"state": {}, "param_groups": []}],
        },
        path,
    )
    with pytest.raises(CheckpointError, match="does not contain a state dict of tensors") as info:
        read_checkpoint(path, "TinyCLIP")
    assert "args, epoch, optimizer" in str(info.value)


def test_wrong_architecture_is_refused_with_the_difference(checkpoints):
    big_clip = build_tinyclip("TinyCLIP-ViT-40M-32-Text-19M")
    path = checkpoints["clip_zoo"]
    contents = read_checkpoint(path, "TinyCLIP")
    with pytest.raises(CheckpointError, match="does not match the architecture") as info:
        load_into(big_clip, contents.state, path, "TinyCLIP", contents=contents)
    message = str(info.value)
    assert "shape mismatches" in message or "missing keys" in message
    assert CheckpointLayout.TINYCLIP_TRAINING.value in message and repr(SMALL_CLIP) in message
    with pytest.raises(CheckpointError, match="missing keys"):
        load_into(build_mobile_sam(), contents.state, path, "MobileSAM")


def test_stray_and_doubled_weights_are_refused(checkpoints, tmp_path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        wrapped = dict(
            torch.load(checkpoints["clip_zoo"], map_location="cpu", weights_only=True)[
                "state_dict"
            ]
        )
    pruning = tmp_path / "pruning.pt"
    torch.save(
        {"state_dict": {**wrapped, "_image_encoder.module.l0_module.lambda_1": torch.zeros(())}},
        pruning,
    )
    with pytest.raises(
        CheckpointError, match="1 unexpected keys: l0_module.lambda_1.*pruning masks"
    ):
        load_checkpoint_into(build_tinyclip(SMALL_CLIP), pruning, "TinyCLIP")
    doubled = tmp_path / "doubled.pt"
    torch.save(
        {"state_dict": {**wrapped, "visual.proj": wrapped["_image_encoder.module.visual.proj"]}},
        doubled,
    )
    with pytest.raises(CheckpointError, match="stores 'visual.proj' twice"):
        read_checkpoint(doubled, "TinyCLIP")


def test_missing_checkpoint_names_file_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "vlm_grasp_locator"
    with pytest.raises(CheckpointError) as info:
        load_models(device="cpu", clip_model=SMALL_CLIP)
    message = str(info.value)
    assert str(tmp_path / "vlm_grasp_locator" / "mobile_sam.pt") in message
    assert "download-models" in message and "--random-weights" in message


def test_random_weights_only_when_allowed_and_a_checkpoint_is_missing(
    checkpoints, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level("WARNING"):
        models = load_models(device="cpu", clip_model=SMALL_CLIP, allow_random_weights=True)
    assert models.random_weights
    assert (
        "RANDOM WEIGHTS" in caplog.text
        and "meaningless" in caplog.text
        and "mobile_sam.pt" in caplog.text
    )
    present = load_models(
        device="cpu",
        clip_model=SMALL_CLIP,
        allow_random_weights=True,
        mobile_sam_checkpoint=str(checkpoints["sam"]),
        clip_checkpoint=str(checkpoints["clip_zoo"]),
    )
    assert not present.random_weights


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_locator_uses_fp16_autocast_only_on_cuda(locator):
    from vlm_grasp_locator.pipeline.locator import Locator

    assert locator._autocast()._enabled is False
    fake = Locator(locator.config, locator.proposer, locator.scorer, True, torch.device("cuda"))
    ctx = fake._autocast()
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16


# --------------------------------------------------------------- the checkpoint's temperature


def test_calibrated_score_uses_the_checkpoint_logit_scale(checkpoints, tmp_path):
    """The calibrated score is softmax(exp(logit_scale) * cosine) over target and negatives,
    at the temperature stored in the checkpoint (ln 50 in TinyCLIP's LAION runs)."""
    import copy

    from vlm_grasp_locator.models.adapters import OpenClipModel
    from vlm_grasp_locator.pipeline.crop_scoring import NEGATIVE_PHRASES, CropScorer, CropSettings

    laion = build_tinyclip(SMALL_CLIP).eval()
    load_checkpoint_into(laion, checkpoints["clip_zoo"], "TinyCLIP")
    hundred = copy.deepcopy(checkpoints["clip_model"])
    set_logit_scale(hundred, 100.0)
    other = build_tinyclip(SMALL_CLIP).eval()
    load_checkpoint_into(
        other,
        write_clip_variant(hundred, SMALL_CLIP, "open_clip_plain", tmp_path / "scale100.pt"),
        "TinyCLIP",
    )

    cpu = torch.device("cpu")
    scorer_50 = CropScorer(OpenClipModel(laion, cpu), CropSettings())
    scorer_100 = CropScorer(OpenClipModel(other, cpu), CropSettings())
    assert scorer_50.logit_scale == pytest.approx(LAION_LOGIT_SCALE)
    assert scorer_100.logit_scale == pytest.approx(100.0)
    crops = torch.nn.functional.normalize(
        torch.randn(6, 512, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    similarity_50, score_50 = scorer_50.score(crops, "red block")
    similarity_100, score_100 = scorer_100.score(crops, "red block")
    torch.testing.assert_close(
        torch.from_numpy(similarity_50), torch.from_numpy(similarity_100)
    )  # same towers
    cosines = crops @ scorer_50.text.embed(["red block", *NEGATIVE_PHRASES]).T
    for scale, score in ((LAION_LOGIT_SCALE, score_50), (100.0, score_100)):
        expected = torch.softmax(scale * cosines, dim=-1)[:, 0]
        torch.testing.assert_close(torch.from_numpy(score), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.from_numpy(score_50), torch.from_numpy(score_100), atol=1e-3)


# --------------------------------------------------------------------------- digests


@functools.lru_cache(maxsize=None)
def fixture_digest(path) -> str:
    return sha256_of(path)


def own_pin(remote: RemoteFile, path) -> RemoteFile:
    """``remote`` pinned to the fixture at ``path`` (stands in for the real published file)."""
    return dataclasses.replace(remote, sha256=fixture_digest(path), size=path.stat().st_size)


@pytest.fixture
def cache(checkpoints, tmp_path, monkeypatch):
    """The fixtures in the model cache under the published names (substituted files)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = cache_dir()
    folder.mkdir(parents=True)
    (folder / mobile_sam_remote_file().file).symlink_to(checkpoints["sam"])
    (folder / clip_remote_file(SMALL_CLIP).file).symlink_to(checkpoints["clip_zoo"])
    return folder


def test_substituted_cache_file_is_refused_naming_file_and_both_digests(
    checkpoints, cache, monkeypatch
):
    monkeypatch.setattr(
        models_module, "mobile_sam_remote_file", lambda: own_pin(MOBILE_SAM, checkpoints["sam"])
    )
    published = clip_remote_file(SMALL_CLIP).sha256
    assert published == "3d9f86a556cd13acc1aa6cc18495a79ffd1f58b6f17a552400bdefd244c3a92c"
    with pytest.raises(CheckpointError, match="not the published file") as info:
        load_models(device="cpu", clip_model=SMALL_CLIP, tune=False)
    message = str(info.value)
    assert str(cache / "TinyCLIP-ViT-8M-16-Text-3M-YFCC15M.pt") in message
    assert f"expected SHA-256 {published}" in message
    assert f"SHA-256 {sha256_of(checkpoints['clip_zoo'])}" in message
    assert "download-models --force" in message


def test_size_is_checked_before_the_digest(checkpoints, cache, monkeypatch):
    assert MOBILE_SAM.size == 40_728_226
    assert MOBILE_SAM.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"

    def no_hashing(path):
        raise AssertionError(f"hashed {path} although its size differs")

    monkeypatch.setattr(checkpoints_module, "sha256_of", no_hashing)
    with pytest.raises(CheckpointError, match="not the published file") as info:
        load_models(device="cpu", clip_model=SMALL_CLIP, tune=False)
    message = str(info.value)
    assert str(cache / "mobile_sam.pt") in message
    assert f"{checkpoints['sam'].stat().st_size} bytes, expected 40728226 bytes" in message
    assert f"expected SHA-256 {MOBILE_SAM.sha256}" in message


def test_published_file_in_the_cache_loads(checkpoints, cache, monkeypatch):
    monkeypatch.setattr(
        models_module, "mobile_sam_remote_file", lambda: own_pin(MOBILE_SAM, checkpoints["sam"])
    )
    monkeypatch.setattr(
        models_module,
        "clip_remote_file",
        lambda name: own_pin(published_clip_file(name), checkpoints["clip_zoo"]),
    )
    models = load_models(device="cpu", clip_model=SMALL_CLIP, tune=False)
    assert_same_clip(models.clip, checkpoints["clip_model"])


def test_unpinned_default_file_logs_its_digest(checkpoints, cache, monkeypatch, caplog):
    """Like the 61M model, whose digest is not published: loaded, and its digest logged to pin."""
    monkeypatch.setattr(
        models_module, "mobile_sam_remote_file", lambda: own_pin(MOBILE_SAM, checkpoints["sam"])
    )
    monkeypatch.setattr(
        models_module,
        "clip_remote_file",
        lambda name: dataclasses.replace(published_clip_file(name), sha256=None),
    )
    with caplog.at_level(logging.INFO, logger="vlm_grasp_locator.models.checkpoints"):
        models = load_models(device="cpu", clip_model=SMALL_CLIP, tune=False)
    assert not models.random_weights
    assert (
        sha256_of(checkpoints["clip_zoo"]) in caplog.text
        and "no digest is published" in caplog.text
    )


def test_configured_path_loads_unless_its_own_pin_differs(checkpoints):
    """A user's checkpoint at a configured path is not held to the published digest; a digest
    the user pins for it is."""
    paths = dict(
        mobile_sam_checkpoint=str(checkpoints["sam"]), clip_checkpoint=str(checkpoints["clip_zoo"])
    )
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match="not the configured file") as info:
        load_models(
            device="cpu", clip_model=SMALL_CLIP, tune=False, clip_checkpoint_sha256=wrong, **paths
        )
    assert f"expected SHA-256 {wrong}" in str(info.value) and str(checkpoints["clip_zoo"]) in str(
        info.value
    )
    models = load_models(
        device="cpu",
        clip_model=SMALL_CLIP,
        tune=False,
        clip_checkpoint_sha256=sha256_of(checkpoints["clip_zoo"]).upper(),
        **paths,
    )
    assert_same_clip(models.clip, checkpoints["clip_model"])
    with pytest.raises(ValueError, match="64 hex digits"):
        load_models(device="cpu", clip_model=SMALL_CLIP, mobile_sam_checkpoint_sha256="abc123")


@pytest.fixture
def served(tmp_path):
    """A file behind a file:// URL (urllib serves it with its Content-Length)."""
    path = tmp_path / "served" / "weights.pt"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 << 20))
    return path


def test_download_keeps_only_the_pinned_file(served, tmp_path):
    remote = RemoteFile(
        file="weights.pt",
        url=served.as_uri(),
        sha256=sha256_of(served),
        size=served.stat().st_size,
    )
    destination = tmp_path / "cache" / "weights.pt"
    got = download(remote, destination, progress=lambda *a: None)
    assert (got.sha256, got.size) == (remote.sha256, remote.size)
    assert destination.read_bytes() == served.read_bytes()

    wrong = dataclasses.replace(remote, sha256="f" * 64)
    destination.unlink()
    with pytest.raises(CheckpointError, match="not the published file") as info:
        download(wrong, destination, progress=lambda *a: None)
    message = str(info.value)
    assert (
        "weights.pt" in message
        and f"SHA-256 {remote.sha256}, expected SHA-256 {'f' * 64}" in message
    )
    assert not destination.exists() and not list(destination.parent.glob("*.part"))


def test_download_of_the_wrong_size_stops_before_fetching(served, tmp_path):
    remote = RemoteFile(
        file="weights.pt", url=served.as_uri(), sha256="e" * 64, size=served.stat().st_size + 1
    )
    fetched = []
    with pytest.raises(CheckpointError, match="not the published file") as info:
        download(
            remote,
            tmp_path / "weights.pt",
            progress=lambda done, total, name: fetched.append(done),
        )
    assert f"{served.stat().st_size} bytes, expected {remote.size} bytes" in str(info.value)
    assert fetched == [] and not list(tmp_path.glob("weights.pt*"))
