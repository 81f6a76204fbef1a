"""The inference rewrites of MobileSAM's encoder keep its outputs (rounding aside)."""

from __future__ import annotations

import copy

import pytest
import torch

from vlm_grasp_locator.models.tuning import fuse_conv_batchnorm, tune_image_encoder
from vlm_grasp_locator.models.registry import build_mobile_sam, load_models


@pytest.fixture(scope="module")
def stock_sam() -> torch.nn.Module:
    torch.manual_seed(3)
    sam = build_mobile_sam().eval()
    # Fresh batch norms are the identity; give them statistics so folding them is tested.
    generator = torch.Generator().manual_seed(4)
    for module in sam.image_encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return sam


def batch_norms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


@torch.inference_mode()
def test_tuned_encoder_gives_the_stock_embedding(stock_sam):
    tuned = copy.deepcopy(stock_sam)
    assert batch_norms(tuned.image_encoder) > 0
    fused = tune_image_encoder(tuned)
    assert fused == batch_norms(stock_sam.image_encoder)  # every conv + norm pair of TinyViT
    assert batch_norms(tuned.image_encoder) == 0
    conv = next(m for m in tuned.image_encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    pixels = torch.randn(
        1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5)
    )  # channels-first, as SamPredictor passes it
    want = stock_sam.image_encoder(pixels)
    got = tuned.image_encoder(pixels)
    assert got.shape == want.shape
    torch.testing.assert_close(got.contiguous(), want, atol=1e-4, rtol=1e-4)


def test_tuning_twice_is_a_no_op_and_training_mode_is_refused(stock_sam):
    tuned = copy.deepcopy(stock_sam)
    assert tune_image_encoder(tuned) > 0
    assert tune_image_encoder(tuned) == 0
    training = copy.deepcopy(stock_sam).train()
    with pytest.raises(ValueError, match="eval mode"):
        tune_image_encoder(training)
    assert batch_norms(training.image_encoder) > 0  # nothing was changed


def test_fusing_leaves_modules_without_conv_batchnorm_alone():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert fuse_conv_batchnorm(plain) == 0
    assert batch_norms(plain) == 1


def test_load_models_tunes_unless_asked_not_to():
    kwargs = dict(
        device="cpu", clip_model="TinyCLIP-ViT-8M-16-Text-3M", allow_random_weights=True, seed=0
    )
    assert batch_norms(load_models(**kwargs).sam.image_encoder) == 0
    assert batch_norms(load_models(**kwargs, tune=False).sam.image_encoder) > 0
