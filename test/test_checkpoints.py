"""Checkpoint round trips in the official formats, and refusal of bad files."""
from __future__ import annotations

import argparse
import collections
import os

import pytest
import torch

from vlm_grasp_locator.checkpoints import CheckpointError, cache_dir, load_into, load_state_dict
from vlm_grasp_locator.models import build_mobile_sam, build_tinyclip, load_models, resolve_device

SMALL_CLIP = "TinyCLIP-ViT-8M-16-Text-3M"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Random-weight models saved as the publishers save them."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(1)
    sam, clip = build_mobile_sam().eval(), build_tinyclip(SMALL_CLIP).eval()
    paths = {
        "sam": folder / "mobile_sam.pt",
        "clip_plain": folder / "clip_plain.pt",
        # model-zoo style: nested, DistributedDataParallel prefix, training metadata
        "clip_zoo": folder / "clip_zoo.pt",
    }
    torch.save(sam.state_dict(), paths["sam"])
    torch.save(clip.state_dict(), paths["clip_plain"])
    torch.save(
        {
            "epoch": 25,
            "args": argparse.Namespace(lr=1e-4, model=SMALL_CLIP),
            "state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in clip.state_dict().items()),
        },
        paths["clip_zoo"],
    )
    return {"sam_model": sam, "clip_model": clip, **paths}


@torch.inference_mode()
def clip_outputs(clip, seed: int = 0):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    tokens = torch.randint(1, 49000, (2, 77), generator=torch.Generator().manual_seed(seed))
    return clip.encode_image(pixels), clip.encode_text(tokens)


@pytest.mark.parametrize("variant", ["clip_plain", "clip_zoo"])
def test_tinyclip_round_trip_gives_identical_outputs(checkpoints, variant):
    models = load_models(
        device="cpu",
        clip_model=SMALL_CLIP,
        mobile_sam_checkpoint=str(checkpoints["sam"]),
        clip_checkpoint=str(checkpoints[variant]),
        tune=False,  # the tuned encoder's fused modules have other keys (test_model_tuning)
    )
    assert not models.random_weights
    for got, want in zip(clip_outputs(models.clip), clip_outputs(checkpoints["clip_model"])):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for name, tensor in checkpoints["sam_model"].state_dict().items():
        assert torch.equal(models.sam.state_dict()[name], tensor), name


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
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="not allowed in a weights file"):
        load_state_dict(evil, "TinyCLIP")


def test_wrong_architecture_is_refused_with_the_difference(checkpoints):
    big_clip = build_tinyclip("TinyCLIP-ViT-40M-32-Text-19M")
    state = load_state_dict(checkpoints["clip_plain"], "TinyCLIP")
    with pytest.raises(CheckpointError, match="does not match the architecture") as info:
        load_into(big_clip, state, checkpoints["clip_plain"], "TinyCLIP")
    assert "shape mismatches" in str(info.value) or "missing keys" in str(info.value)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_into(build_mobile_sam(), state, checkpoints["clip_plain"], "MobileSAM")


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
        mobile_sam_checkpoint=str(checkpoints["sam"]), clip_checkpoint=str(checkpoints["clip_plain"]),
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
