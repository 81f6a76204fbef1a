"""Building MobileSAM and TinyCLIP, with checkpoints or (only when asked) random weights."""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from .checkpoints import (
    MOBILE_SAM_FILE,
    MOBILE_SAM_URL,
    RemoteFile,
    load_into,
    load_state_dict,
    resolve_checkpoint_path,
)
from .model_tuning import tune_image_encoder

LOG = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "TinyCLIP-ViT-61M-32-Text-29M"
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: models were built without checkpoints; every score, mask and box "
    "is meaningless. Use this only to exercise the pipeline."
)


def available_clip_models() -> List[str]:
    """Names of the TinyCLIP configurations shipped as data in the package."""
    folder = resources.files(__package__) / "model_configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def clip_model_config(name: str) -> Dict[str, Any]:
    if name not in available_clip_models():
        raise ValueError(f"unknown clip_model {name!r}; available: {', '.join(available_clip_models())}")
    text = (resources.files(__package__) / "model_configs" / f"{name}.json").read_text()
    return json.loads(text)


def clip_remote_file(name: str) -> RemoteFile:
    return RemoteFile(**clip_model_config(name)["checkpoint"])


def mobile_sam_remote_file() -> RemoteFile:
    return RemoteFile(file=MOBILE_SAM_FILE, url=MOBILE_SAM_URL)


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


@dataclass
class LoadedModels:
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
    backend: str = "torch",
    onnx_dir: str = "",
    tune: bool = True,
) -> LoadedModels:
    """Build both models on ``device`` with their checkpoints' weights.

    Where a checkpoint file is missing and ``allow_random_weights`` is set, both models
    keep random weights instead (with a loud warning). Raises ``CheckpointError`` for a
    missing (not allowed), corrupt or mismatched checkpoint and ``ValueError`` for a bad
    device or model name. ``backend="onnxruntime"`` runs the graphs ``export-onnx`` wrote
    into ``onnx_dir`` instead (``onnx_backend``; ``OnnxExportError``, a ``CheckpointError``,
    when that export is missing, partial, stale or of another configuration).
    ``tune`` rewrites the torch MobileSAM encoder for inference (``model_tuning``: same
    maths, faster); ``False`` keeps mobile_sam's modules exactly as built.
    """
    if backend == "onnxruntime":
        from .onnx_backend import load_onnx_models

        return load_onnx_models(
            device=device,
            clip_model=clip_model,
            mobile_sam_checkpoint=mobile_sam_checkpoint,
            clip_checkpoint=clip_checkpoint,
            allow_random_weights=allow_random_weights,
            seed=seed,
            onnx_dir=onnx_dir,
        )
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; use torch or onnxruntime")
    torch_device = resolve_device(device)
    clip_file = clip_remote_file(clip_model).file  # validates the name before any heavy work
    sources = (
        (build_mobile_sam, resolve_checkpoint_path(mobile_sam_checkpoint, MOBILE_SAM_FILE), "MobileSAM"),
        (lambda: build_tinyclip(clip_model), resolve_checkpoint_path(clip_checkpoint, clip_file), f"TinyCLIP {clip_model}"),
    )
    missing = [str(path) for _, path, _ in sources if not path.is_file()]
    random_weights = bool(missing) and allow_random_weights
    if random_weights:
        LOG.warning("%s (missing: %s)", RANDOM_WEIGHTS_WARNING, ", ".join(missing))
        torch.manual_seed(seed)
    models = []
    for build, path, what in sources:
        model = build()
        if not random_weights:
            load_into(model, load_state_dict(path, what), path, what)
        models.append(model.eval().to(torch_device))
    sam, clip = models
    if tune:
        tune_image_encoder(sam)
    return LoadedModels(sam, clip, clip_model, torch_device, random_weights)


def default_checkpoint_paths(clip_model: str) -> Tuple[Path, Path]:
    return (
        resolve_checkpoint_path("", MOBILE_SAM_FILE),
        resolve_checkpoint_path("", clip_remote_file(clip_model).file),
    )
