"""Inference-only rewrites of a loaded MobileSAM: the same maths with less work per call.

* Every TinyViT ``Conv2d_BN`` (a convolution followed by a frozen batch norm) becomes
  one convolution with the norm folded into its weights and bias (TinyViT's own
  ``Conv2d_BN.fuse``). That is one pass over each feature map fewer.
* On the CPU the encoder runs in channels-last layout (weights and input), which oneDNN's
  convolutions, the depthwise ones above all, run much faster than channels-first.

Outputs move by float rounding only (~1e-5 on the image embedding). Weights must be
loaded first: the fused modules no longer match the checkpoint's keys.
"""

from __future__ import annotations

import torch


def fuse_conv_batchnorm(module: torch.nn.Module) -> int:
    """Replace each TinyViT ``Conv2d_BN`` inside ``module`` by its fused convolution;
    returns how many."""
    from mobile_sam.modeling.tiny_vit_sam import Conv2d_BN

    fused = 0
    for name, child in module.named_children():
        if isinstance(child, Conv2d_BN):
            weight = child.c.weight
            setattr(
                module,
                name,
                child.fuse().to(device=weight.device, dtype=weight.dtype).train(child.training),
            )
            fused += 1
        else:
            fused += fuse_conv_batchnorm(child)
    return fused


def _channels_last_input(_module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def tune_image_encoder(sam: torch.nn.Module) -> int:
    """Tune ``sam.image_encoder`` in place for inference (see the module docstring).

    Returns the number of fused convolutions (0 for an encoder other than TinyViT, which
    is left alone). Call it once, after the weights are loaded and the model is in eval
    mode on its device.
    """
    encoder = sam.image_encoder
    if getattr(encoder, "_vlm_tuned", False):
        return 0
    if encoder.training:
        raise ValueError(
            "tune_image_encoder needs a model in eval mode (batch norm statistics are frozen "
            "into the weights)"
        )
    fused = fuse_conv_batchnorm(encoder)
    if fused and next(encoder.parameters()).device.type == "cpu":
        encoder.to(memory_format=torch.channels_last)
        encoder.register_forward_pre_hook(_channels_last_input)
    encoder._vlm_tuned = True
    return fused
