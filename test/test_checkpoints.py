"""Checkpoint round trips in the layouts the publishers use, and refusal of bad files."""
from __future__ import annotations

import argparse
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
from vlm_grasp_locator.checkpoints import (
    CheckpointError,
    CheckpointLayout,
    cache_dir,
    load_checkpoint_into,
    load_into,
    load_state_dict,
    read_checkpoint,
)
from vlm_grasp_locator.models import (
    build_mobile_sam,
    build_tinyclip,
    clip_model_config,
    load_models,
    resolve_device,
)

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
        "clip_zoo": write_clip_variant(clip, SMALL_CLIP, "tinyclip_published", folder / "TinyCLIP-ViT-8M-16-Text-3M-YFCC15M.pt"),
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
    assert sorted(saved["state_dict"]) == sorted(tinyclip_source_keys(clip_model_config(SMALL_CLIP)))
    assert [len(opt["param_groups"]) for opt in saved["optimizer"]] == [2, 2, 2]  # image, text, joint
    assert all(state["exp_avg"].shape == state["exp_avg_sq"].shape for opt in saved["optimizer"] for state in opt["state"].values())
    assert saved["state_dict"]["_logit_scale.module.logit_scale"].exp().item() == pytest.approx(LAION_LOGIT_SCALE)


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
    path = checkpoints["clip_zoo"] if variant == "tinyclip_published" else write_clip_variant(
        checkpoints["clip_model"], SMALL_CLIP, variant, tmp_path / f"{variant}.pt")
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
    torch.save({"args": argparse.Namespace(model=SMALL_CLIP), "state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="not allowed in a weights file"):
        load_state_dict(evil, "TinyCLIP")


def test_training_checkpoint_without_weights_is_refused(tmp_path):
    path = tmp_path / "no_weights.pt"
    torch.save({"args": argparse.Namespace(model=SMALL_CLIP), "epoch": 3, "optimizer": [{"state": {}, "param_groups": []}]}, path)
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
        wrapped = dict(torch.load(checkpoints["clip_zoo"], map_location="cpu", weights_only=True)["state_dict"])
    pruning = tmp_path / "pruning.pt"
    torch.save({"state_dict": {**wrapped, "_image_encoder.module.l0_module.lambda_1": torch.zeros(())}}, pruning)
    with pytest.raises(CheckpointError, match="1 unexpected keys: l0_module.lambda_1.*pruning masks"):
        load_checkpoint_into(build_tinyclip(SMALL_CLIP), pruning, "TinyCLIP")
    doubled = tmp_path / "doubled.pt"
    torch.save({"state_dict": {**wrapped, "visual.proj": wrapped["_image_encoder.module.visual.proj"]}}, doubled)
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


def test_random_weights_only_when_allowed_and_a_checkpoint_is_missing(checkpoints, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level("WARNING"):
        models = load_models(device="cpu", clip_model=SMALL_CLIP, allow_random_weights=True)
    assert models.random_weights
    assert "RANDOM WEIGHTS" in caplog.text and "meaningless" in caplog.text and "mobile_sam.pt" in caplog.text
    present = load_models(
        device="cpu", clip_model=SMALL_CLIP, allow_random_weights=True,
        mobile_sam_checkpoint=str(checkpoints["sam"]), clip_checkpoint=str(checkpoints["clip_zoo"]),
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
    from vlm_grasp_locator.locator import Locator

    assert locator._autocast()._enabled is False
    fake = Locator(locator.config, locator.proposer, locator.scorer, True, torch.device("cuda"))
    ctx = fake._autocast()
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16
