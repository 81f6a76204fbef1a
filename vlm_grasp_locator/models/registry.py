"""Building MobileSAM and TinyCLIP, with checkpoints or (only when asked) random weights."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from vlm_grasp_locator.models.checkpoints import (
    MOBILE_SAM,
    MOBILE_SAM_FILE,
    Pin,
    RemoteFile,
    checkpoint_pin,
    load_checkpoint_into,
    resolve_checkpoint_path,
    verify_checkpoint,
)
from vlm_grasp_locator.models.tuning import tune_image_encoder

LOG = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "TinyCLIP-ViT-61M-32-Text-29M"
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: models were built without checkpoints; every score, mask and box "
    "is meaningless. Use this only to exercise the pipeline."
)


def available_clip_models() -> List[str]:
    """Names of the TinyCLIP configurations shipped as data in the package."""
    folder = resources.files(__package__) / "configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def clip_model_config(name: str) -> Dict[str, Any]:
    if name not in available_clip_models():
        raise ValueError(
            f"unknown clip_model {name!r}; available: {', '.join(available_clip_models())}"
        )
    text = (resources.files(__package__) / "configs" / f"{name}.json").read_text()
    return json.loads(text)


def clip_remote_file(name: str) -> RemoteFile:
    """The published checkpoint of a TinyCLIP configuration, with its pinned size/SHA-256
    where known."""
    return RemoteFile(**clip_model_config(name)["checkpoint"])


def mobile_sam_remote_file() -> RemoteFile:
    return MOBILE_SAM


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        return torch.device(device)
    raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")


def build_mobile_sam() -> torch.nn.Module:
    """The MobileSAM ``vit_t`` architecture with freshly initialised weights."""
    with warnings.catch_warnings():
        # mobile_sam re-registers TinyViT names in timm and imports deprecated timm paths.
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=None)


def build_tinyclip(name: str) -> torch.nn.Module:
    """An open_clip CLIP model with a TinyCLIP configuration and fresh weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = clip_model_config(name)
    return CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
        quick_gelu=cfg.get("quick_gelu", False),
    )


@dataclass(frozen=True)
class _CheckpointSource:
    what: str
    build: Callable[[], torch.nn.Module]
    path: Path
    pin: Optional[Pin]
    default_file: bool  # the published file in the cache (no path configured)


@dataclass
class TorchModels:
    """MobileSAM and TinyCLIP as torch modules (``adapters.torch_parts`` puts them behind
    the pipeline's protocols)."""

    sam: torch.nn.Module
    clip: torch.nn.Module
    clip_name: str
    device: torch.device
    random_weights: bool


def load_models(
    *,
    device: str,
    clip_model: str,
    mobile_sam_checkpoint: str = "",
    clip_checkpoint: str = "",
    allow_random_weights: bool = False,
    seed: int = 0,
    tune: bool = True,
    mobile_sam_checkpoint_sha256: str = "",
    clip_checkpoint_sha256: str = "",
) -> TorchModels:
    """Build both models on ``device`` with their checkpoints' weights.

    Where a checkpoint file is missing and ``allow_random_weights`` is set, both models
    keep random weights instead (with a loud warning). Raises ``CheckpointError`` for a
    missing (not allowed), corrupt or mismatched checkpoint and ``ValueError`` for a bad
    device or model name. ``tune`` rewrites the MobileSAM encoder for inference
    (``tuning``: same maths, faster); ``False`` keeps mobile_sam's modules exactly as
    built. (Backends are chosen by ``backends.factory``; this is the torch one's loader
    and the exporter's.)

    Before loading, the default file in the cache is held to its published size and
    SHA-256 (where published; otherwise its digest is logged so it can be pinned) and
    any checkpoint to the ``*_sha256`` configured for it; a file at a configured path
    with no digest configured is not checked. A file that differs raises
    ``CheckpointError`` naming it and both digests.
    """
    torch_device = resolve_device(device)
    # Validates the model name and the configured digests before any heavy work.
    sam_remote, clip_remote = mobile_sam_remote_file(), clip_remote_file(clip_model)
    sources = (
        _CheckpointSource(
            "MobileSAM",
            build_mobile_sam,
            resolve_checkpoint_path(mobile_sam_checkpoint, sam_remote.file),
            checkpoint_pin(mobile_sam_checkpoint, mobile_sam_checkpoint_sha256, sam_remote),
            not mobile_sam_checkpoint,
        ),
        _CheckpointSource(
            f"TinyCLIP {clip_model}",
            lambda: build_tinyclip(clip_model),
            resolve_checkpoint_path(clip_checkpoint, clip_remote.file),
            checkpoint_pin(clip_checkpoint, clip_checkpoint_sha256, clip_remote),
            not clip_checkpoint,
        ),
    )
    missing = [str(source.path) for source in sources if not source.path.is_file()]
    random_weights = bool(missing) and allow_random_weights
    if random_weights:
        LOG.warning("%s (missing: %s)", RANDOM_WEIGHTS_WARNING, ", ".join(missing))
        torch.manual_seed(seed)
    models = []
    for source in sources:
        model = source.build()
        if not random_weights:
            if source.path.is_file():  # a missing file is reported by the loader
                verify_checkpoint(
                    source.path, source.pin, source.what, report_unpinned=source.default_file
                )
            load_checkpoint_into(model, source.path, source.what)
        models.append(model.eval().to(torch_device))
    sam, clip = models
    if tune:
        tune_image_encoder(sam)
    return TorchModels(sam, clip, clip_model, torch_device, random_weights)


def default_checkpoint_paths(clip_model: str) -> Tuple[Path, Path]:
    return (
        resolve_checkpoint_path("", MOBILE_SAM_FILE),
        resolve_checkpoint_path("", clip_remote_file(clip_model).file),
    )
