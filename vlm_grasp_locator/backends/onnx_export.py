"""Export MobileSAM and TinyCLIP to ONNX for the ``onnxruntime`` backend (``export-onnx``).

**Exporter.** ``torch.onnx.export(..., dynamo=True)``: the ``torch.export``-based
exporter, PyTorch's default since 2.9, which needs ``onnx`` and ``onnxscript``. The
TorchScript exporter (``dynamo=False``) still works in torch 2.14 and gives the same
numbers here, but it warns that it is deprecated and will be removed, traces with a
dozen ``TracerWarning``s on TinyViT, needs the ``onnx`` package too, and took longer
(16.6 s against 9.9 s for the image encoder on this 2-core machine). The dynamo
exporter checks dynamic dimensions symbolically instead of hoping a trace generalises.

**Graphs** (opset 18: the dynamo exporter's native opset, run by ONNX Runtime 1.14 and
later, so older Jetson builds load it too), one ``.onnx`` file each, weights inside:

=====================  ==========================================  =====================
graph                  inputs -> outputs                           dynamic axes
=====================  ==========================================  =====================
sam_image_encoder      pixels (1,3,1024,1024) -> features          none (SAM's fixed size)
sam_decoder_image      features, image_pe, dense -> image side     none (once per image)
sam_decoder_prompts    image side, sparse (B,P,256) -> iou, tokens B prompts, P points
sam_decoder_masks      image_tokens, mask_tokens (k,...) -> logits k prompts
clip_image             pixels (N,3,S,S) -> embeddings (N,D)        N crops
clip_text              tokens (B,L), pool_at (B,) -> (B,D)         B texts, L <= 77
=====================  ==========================================  =====================

The decoder is the package's reorganised decoder (``sam_decoder``) split at the same
seams as in torch, so predicted-IoU filtering still happens before the upscaling; the
text tower takes tokens already cut at the last end-of-text token (``text_encoder``).
MobileSAM's prompt encoder (a few kB) stays in torch; its weights are saved beside the
graphs. ``manifest.json`` records what the export was made from, so a stale or partial
export is refused at load time instead of giving silently different answers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from vlm_grasp_locator.models.checkpoints import (
    MOBILE_SAM_FILE,
    cache_dir,
    resolve_checkpoint_path,
    sha256_of,
)
from vlm_grasp_locator.models.registry import TorchModels, clip_remote_file, load_models
from vlm_grasp_locator.models.sam_decoder import (
    ImageSide,
    all_mask_logits,
    decode_tokens,
    image_side,
)
from vlm_grasp_locator.models.text_encoder import can_truncate, encode_cut_tokens

LOG = logging.getLogger(__name__)

OPSET = 18
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PROMPT_ENCODER_FILE = "sam_prompt_encoder.pt"
GRAPHS = (
    "sam_image_encoder",
    "sam_decoder_image",
    "sam_decoder_prompts",
    "sam_decoder_masks",
    "clip_image",
    "clip_text",
)


def default_onnx_dir() -> Path:
    """``$XDG_CACHE_HOME/vlm_grasp_locator/onnx`` (default ``~/.cache/vlm_grasp_locator/onnx``)."""
    return cache_dir() / "onnx"


def resolve_onnx_dir(configured: str) -> Path:
    return Path(os.path.expanduser(configured)) if configured else default_onnx_dir()


def checkpoint_record(path: Path) -> Dict[str, Any]:
    """What identifies a checkpoint file: size and mtime (cheap), SHA-256 (for copies)."""
    stat = path.stat()
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256_of(path),
    }


# --- the graphs as modules: the same functions the torch backend runs ---------------


class _DecoderImageSide(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = decoder.transformer

    def forward(self, features, image_pe, dense_embedding):
        side = image_side(self.transformer, features, image_pe, dense_embedding)
        return side.image, side.pos, side.k0, side.v0, side.q0


class _DecoderPrompts(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image, pos, k0, v0, q0, sparse_embeddings):
        tokens = decode_tokens(self.decoder, ImageSide(image, pos, k0, v0, q0), sparse_embeddings)
        return tokens.iou_pred, tokens.mask_tokens, tokens.image_tokens


class _DecoderMasks(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module, grid_hw: Tuple[int, int]) -> None:
        super().__init__()
        self.decoder = decoder
        self.grid_hw = grid_hw

    def forward(self, image_tokens, mask_tokens):
        return all_mask_logits(self.decoder, image_tokens, mask_tokens, self.grid_hw)


class _ClipImage(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixels):
        return self.clip.encode_image(pixels, normalize=True)


class _ClipText(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens, pool_at):
        return encode_cut_tokens(self.clip, tokens, pool_at)


def _graph_specs(
    models: TorchModels,
) -> Dict[str, Tuple[torch.nn.Module, tuple, list, list, Optional[dict]]]:
    """name -> (module, example inputs, input names, output names, dynamic shapes).

    Dynamic example sizes are >= 2: torch.export specialises dimensions of size 0 and 1.
    """
    from torch.export import Dim

    sam, clip = models.sam, models.clip
    device = models.device
    c = sam.prompt_encoder.embed_dim
    gh, gw = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    decoder = sam.mask_decoder
    n = gh * gw
    crop = clip.visual.image_size
    crop = crop[0] if isinstance(crop, (tuple, list)) else crop

    def randn(*shape):
        return torch.randn(*shape, device=device)

    with torch.inference_mode():
        side = image_side(
            decoder.transformer, randn(1, c, gh, gw), randn(1, c, gh, gw), randn(1, c, gh, gw)
        )
        side = ImageSide(*(t.clone() for t in (side.image, side.pos, side.k0, side.v0, side.q0)))
    prompts, points, masks = (
        Dim("prompts", min=1, max=4096),
        Dim("points", min=1, max=16),
        Dim("masks", min=1, max=4096),
    )
    crops, texts = Dim("crops", min=1, max=4096), Dim("texts", min=1, max=4096)
    length = Dim("length", min=1, max=clip.context_length)
    tokens = torch.randint(1, 1000, (3, 10), device=device)
    return {
        "sam_image_encoder": (
            sam.image_encoder,
            (randn(1, 3, size, size),),
            ["pixels"],
            ["features"],
            None,
        ),
        "sam_decoder_image": (
            _DecoderImageSide(decoder),
            (randn(1, c, gh, gw), randn(1, c, gh, gw), randn(1, c, gh, gw)),
            ["features", "image_pe", "dense_embedding"],
            ["image", "pos", "k0", "v0", "q0"],
            None,
        ),
        "sam_decoder_prompts": (
            _DecoderPrompts(decoder),
            (side.image, side.pos, side.k0, side.v0, side.q0, randn(4, 2, c)),
            ["image", "pos", "k0", "v0", "q0", "sparse_embeddings"],
            ["iou_pred", "mask_tokens", "image_tokens"],
            {
                "image": None,
                "pos": None,
                "k0": None,
                "v0": None,
                "q0": None,
                "sparse_embeddings": {0: prompts, 1: points},
            },
        ),
        "sam_decoder_masks": (
            _DecoderMasks(decoder, (gh, gw)),
            (randn(2, n, c), randn(2, decoder.num_mask_tokens, c)),
            ["image_tokens", "mask_tokens"],
            ["logits"],
            {"image_tokens": {0: masks}, "mask_tokens": {0: masks}},
        ),
        "clip_image": (
            _ClipImage(clip),
            (randn(2, 3, crop, crop),),
            ["pixels"],
            ["embeddings"],
            {"pixels": {0: crops}},
        ),
        "clip_text": (
            _ClipText(clip),
            (tokens, tokens.argmax(dim=-1)),
            ["tokens", "pool_at"],
            ["embeddings"],
            {"tokens": {0: texts, 1: length}, "pool_at": {0: texts}},
        ),
    }


def _export_graph(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    # The exporter reports progress with print(); keep the CLI's stdout for results. One
    # shared Dim on two inputs makes it warn that the second name is unused: it is meant.
    with contextlib.redirect_stdout(io.StringIO()) as chatter, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*will not be used, since it shares the same shape constraints"
        )
        try:
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                opset_version=OPSET,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; say which graph failed
            LOG.error("exporter output for %s:\n%s", path.name, chatter.getvalue())
            raise RuntimeError(f"exporting {path.name} failed: {e}") from e


def _check_export_target(out: Path) -> None:
    """Refuse to replace a folder that holds anything but a previous export."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(
            f"{out} is not empty and holds no ONNX export ({MANIFEST}); refusing to overwrite it"
        )


def export_onnx(
    out: Path,
    *,
    clip_model: str,
    device: str = "cpu",
    mobile_sam_checkpoint: str = "",
    clip_checkpoint: str = "",
    allow_random_weights: bool = False,
    seed: int = 0,
    mobile_sam_checkpoint_sha256: str = "",
    clip_checkpoint_sha256: str = "",
) -> Dict[str, Any]:
    """Build the models as ``load_models`` does and export them into ``out``; returns the manifest.

    The checkpoints are held to their pinned digests as ``load_models`` holds them (the
    published ones for the default files in the cache, the ``*_sha256`` arguments for any).

    Everything is written into a temporary sibling folder first and renamed into place only
    when complete, so ``out`` never holds a partial export. Raises ``CheckpointError``
    (missing checkpoint without ``allow_random_weights``), ``ValueError`` (bad folder,
    device or model name) and ``OSError`` (cannot write).
    """
    import onnxscript

    out = Path(os.path.expanduser(str(out))).absolute()
    _check_export_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"cannot write into {out.parent}")
    models = load_models(
        device=device,
        clip_model=clip_model,
        mobile_sam_checkpoint=mobile_sam_checkpoint,
        clip_checkpoint=clip_checkpoint,
        allow_random_weights=allow_random_weights,
        seed=seed,
        tune=False,  # mobile_sam's own modules; ONNX Runtime folds batch norms itself
        mobile_sam_checkpoint_sha256=mobile_sam_checkpoint_sha256,
        clip_checkpoint_sha256=clip_checkpoint_sha256,
    )
    if not can_truncate(models.clip):
        raise ValueError(
            f"{clip_model}: text tower is not a causal, EOT-pooled open_clip one; cannot export it"
        )
    checkpoints: Dict[str, Optional[Dict[str, Any]]] = {"mobile_sam": None, "clip": None}
    if not models.random_weights:
        checkpoints["mobile_sam"] = checkpoint_record(
            resolve_checkpoint_path(mobile_sam_checkpoint, MOBILE_SAM_FILE)
        )
        checkpoints["clip"] = checkpoint_record(
            resolve_checkpoint_path(clip_checkpoint, clip_remote_file(clip_model).file)
        )

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from the node's user
    try:
        specs = _graph_specs(models)
        graphs: Dict[str, Dict[str, Any]] = {}
        for name in GRAPHS:
            module, args, inputs, outputs, dynamic = specs[name]
            path = staging / f"{name}.onnx"
            started = time.perf_counter()
            _export_graph(module, args, path, inputs, outputs, dynamic)
            LOG.info("exported %s in %.1f s", path.name, time.perf_counter() - started)
            graphs[name] = {
                "file": path.name,
                "size": path.stat().st_size,
                "sha256": sha256_of(path),
                "inputs": inputs,
                "outputs": outputs,
            }
        prompt_encoder = staging / PROMPT_ENCODER_FILE
        torch.save(
            {k: v.detach().cpu() for k, v in models.sam.prompt_encoder.state_dict().items()},
            prompt_encoder,
        )
        sam, clip = models.sam, models.clip
        crop = clip.visual.image_size
        manifest = {
            "format": MANIFEST_FORMAT,
            "clip_model": models.clip_name,
            "random_weights": models.random_weights,
            "seed": seed if models.random_weights else None,
            "checkpoints": checkpoints,
            "opset": OPSET,
            "torch": torch.__version__,
            "exporter": f"torch.onnx.export(dynamo=True), onnxscript {onnxscript.__version__}",
            "graphs": graphs,
            "prompt_encoder": {
                "file": PROMPT_ENCODER_FILE,
                "size": prompt_encoder.stat().st_size,
                "sha256": sha256_of(prompt_encoder),
            },
            "sam": {
                "img_size": sam.image_encoder.img_size,
                "mask_threshold": float(sam.mask_threshold),
                "embed_dim": sam.prompt_encoder.embed_dim,
                "image_embedding_size": list(sam.prompt_encoder.image_embedding_size),
                "input_image_size": list(sam.prompt_encoder.input_image_size),
                "mask_in_chans": sam.prompt_encoder.mask_downscaling[3].out_channels,
                "grid_hw": list(sam.prompt_encoder.image_embedding_size),
            },
            "clip": {
                "image_size": crop[0] if isinstance(crop, (tuple, list)) else crop,
                "context_length": clip.context_length,
                "text_pool_type": clip.text_pool_type,
                "text_eos_id": getattr(clip, "text_eos_id", None),
                "embed_dim": int(clip.text_projection.shape[1]),
                "logit_scale": float(clip.logit_scale.detach().float().cpu()),
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _replace_folder(staging: Path, out: Path) -> None:
    """Move the complete export into place; a previous export is removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "export")
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
