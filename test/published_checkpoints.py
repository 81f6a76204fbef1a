"""Checkpoint files in exactly the layouts their publishers use, from real architectures.

MobileSAM (``mobile_sam.pt``): the plain ``state_dict()`` of mobile_sam's ``vit_t`` Sam.

TinyCLIP model zoo (``TinyCLIP-*.pt``), as microsoft/Cream ``TinyCLIP/src/training/train.py``
saves them: ``{"args": argparse.Namespace, "epoch", "iter_in_epoch", "num_batches",
"samples_per_epoch", "name", "state_dict": model.state_dict(), "optimizer": [one AdamW
state dict per part: image, text, joint], "scaler": GradScaler state}``. ``model`` is
TinyCLIP's ``CLIPBase`` (``src/open_clip/model.py``) after ``ddpify``: its three parts sit
in ``_image_encoder``, ``_text_encoder`` and ``_logit_scale``, each wrapped in
DistributedDataParallel or TinyCLIP's ``FakeDDP`` (attribute ``module``). Inside them
TinyCLIP's modules carry open_clip CLIP's names: ``ImageEncoder.visual`` (conv1,
class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{ln_1,
attn.in_proj_*, attn.out_proj.*, ln_2, mlp.c_fc.*, mlp.c_proj.*}, ln_post, proj), the
``TextEncoder``'s transformer, token_embedding, positional_embedding, ln_final,
text_projection (its ``attn_mask`` is a non-persistent buffer) and ``LogitScale.logit_scale``.
``TinyCLIPTraining`` below rebuilds that module tree around open_clip's tensors, so the
names come from PyTorch's own state_dict, not from a rewrite of the loader's mapping;
``tinyclip_source_keys`` lists the same names independently, from TinyCLIP's source.
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path
from typing import Dict, List, Mapping

import torch
from torch import nn

# TinyCLIP's LAION-400M manual-inheritance runs pass ``--logit-scale 50``, which refills
# the logit scale with ln(50) after every step (train.py), so their checkpoints hold it.
LAION_LOGIT_SCALE = 50.0
BLOCK_KEYS = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


class _DDP(nn.Module):
    """DistributedDataParallel / TinyCLIP's ``FakeDDP``: the wrapped part is ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class _ImageEncoder(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.visual = clip.visual


class _TextEncoder(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)


class _LogitScale(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.logit_scale = clip.logit_scale


class TinyCLIPTraining(nn.Module):
    """TinyCLIP's ``CLIPBase`` module tree during training, sharing ``clip``'s tensors."""

    def __init__(self, clip: nn.Module, ddp: bool = True) -> None:
        super().__init__()
        wrap = _DDP if ddp else (lambda m: m)
        self._image_encoder = wrap(_ImageEncoder(clip))
        self._text_encoder = wrap(_TextEncoder(clip))
        self._logit_scale = wrap(_LogitScale(clip))


def tinyclip_source_keys(config: Mapping, ddp: bool = True) -> List[str]:
    """The state-dict names TinyCLIP's CLIPBase has for ``config``, spelt out from its source."""
    m = "module." if ddp else ""
    vision, text = config["vision_cfg"], config["text_cfg"]
    image = [
        f"_image_encoder.{m}visual.{k}"
        for k in (
            "class_embedding",
            "positional_embedding",
            "proj",
            "conv1.weight",
            "ln_pre.weight",
            "ln_pre.bias",
            "ln_post.weight",
            "ln_post.bias",
        )
    ]
    image += [
        f"_image_encoder.{m}visual.transformer.resblocks.{i}.{k}"
        for i in range(vision["layers"])
        for k in BLOCK_KEYS
    ]
    text_keys = [
        f"_text_encoder.{m}{k}"
        for k in (
            "positional_embedding",
            "text_projection",
            "token_embedding.weight",
            "ln_final.weight",
            "ln_final.bias",
        )
    ]
    text_keys += [
        f"_text_encoder.{m}transformer.resblocks.{i}.{k}"
        for i in range(text["layers"])
        for k in BLOCK_KEYS
    ]
    return image + text_keys + [f"_logit_scale.{m}logit_scale"]


def training_args(model: str, **overrides) -> argparse.Namespace:
    """A Namespace of the kind TinyCLIP's ``parse_args`` builds (the checkpoint's ``args``)."""
    values = dict(
        model=model,
        name=f"exp_{model}",
        lr=1e-4,
        wd=0.2,
        beta1=0.9,
        beta2=0.98,
        eps=1e-6,
        epochs=6.0,
        batch_size=1024,
        warmup=2000,
        seed=0,
        precision="amp",
        logit_scale=LAION_LOGIT_SCALE,
        distillation_teacher="ViT-B-32@laion2b_e16",
        pretrained_image_file="ViT-B-32@laion2b_e16",
        pretrained_text_file="ViT-B-32@laion2b_e16",
        train_data="synthetic",
        report_to="wandb",
        image_mean=None,
        image_std=None,
        distributed=True,
        world_size=8,
        rank=0,
        local_rank=0,
        device="cuda:0",
        grad_checkpointing=True,
        prune_image=False,
        prune_text=False,
        logs="./outputs/ViT-B-32",
        resume=None,
        save_frequency=1,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    # TinyCLIP's build_optimizer: gains, biases and the logit scale are not decayed.
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def training_optimizers(
    training: TinyCLIPTraining, args: argparse.Namespace
) -> List[torch.optim.AdamW]:
    """One AdamW per part, as TinyCLIP's build_optimizer makes them, after one step."""
    optimizers = []
    for part in (training._image_encoder, training._text_encoder, training._logit_scale):
        named = list(part.named_parameters())
        groups = [
            {"params": [p for n, p in named if _no_weight_decay(n, p)], "weight_decay": 0.0},
            {
                "params": [p for n, p in named if not _no_weight_decay(n, p)],
                "weight_decay": args.wd,
            },
        ]
        optimizers.append(
            torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
        )
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(
                    p
                )  # zero gradients: the step fills the state, keeps the weights
    with torch.no_grad():
        saved = {
            id(p): p.clone() for opt in optimizers for g in opt.param_groups for p in g["params"]
        }
        for opt in optimizers:
            opt.step()
        for opt in optimizers:  # AdamW's decoupled weight decay moved the weights: put them back
            for g in opt.param_groups:
                for p in g["params"]:
                    p.copy_(saved[id(p)])
                    p.grad = None
    return optimizers


def tinyclip_training_checkpoint(clip: nn.Module, model_name: str, *, ddp: bool = True) -> Dict:
    """The dict TinyCLIP's train.py passes to torch.save, holding ``clip``'s weights."""
    training = TinyCLIPTraining(clip, ddp=ddp)
    args = training_args(model_name)
    optimizers = training_optimizers(training, args)
    return {
        "args": args,
        "epoch": 5,
        "iter_in_epoch": 48827,
        "num_batches": 48828,
        "samples_per_epoch": 400_000_000,
        "name": args.name,
        "state_dict": training.state_dict(),
        "optimizer": [opt.state_dict() for opt in optimizers],
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
    }


def set_logit_scale(clip: nn.Module, scale: float) -> None:
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(scale))


def write_clip_variant(clip: nn.Module, model_name: str, variant: str, path: Path) -> Path:
    """``clip``'s weights in one of the layouts the loader accepts (see VARIANTS)."""
    state = clip.state_dict()
    if variant == "tinyclip_published":
        obj: object = tinyclip_training_checkpoint(clip, model_name)
    elif variant == "tinyclip_without_ddp":  # CLIPBase saved without DDP wrappers
        obj = {"epoch": 1, "state_dict": TinyCLIPTraining(clip, ddp=False).state_dict()}
    elif variant == "open_clip_plain":
        obj = state
    elif variant == "ddp_prefixed":
        obj = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    elif variant == "open_clip_training":  # open_clip_train under DDP: nested and prefixed
        obj = {
            "epoch": 3,
            "name": "run",
            "state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in state.items()),
        }
    elif variant == "model_nested":
        obj = {"model": state}
    else:
        raise ValueError(f"unknown variant {variant!r}")
    torch.save(obj, path)
    return path


VARIANTS = (
    "tinyclip_published",
    "tinyclip_without_ddp",
    "open_clip_plain",
    "ddp_prefixed",
    "open_clip_training",
    "model_nested",
)


def write_mobile_sam(sam: nn.Module, path: Path) -> Path:
    """``mobile_sam.pt``'s layout: the plain state dict of the vit_t Sam."""
    torch.save(sam.state_dict(), path)
    return path
