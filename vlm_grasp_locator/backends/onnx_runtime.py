"""The ``onnxruntime`` backend: the graphs ``export-onnx`` wrote, run by ONNX Runtime.

``load_onnx_models`` returns the same ``LoadedModels`` as the torch backend: the
pipeline's protocols (``models.interfaces``) over ONNX Runtime sessions (torch tensors
in, numpy across, torch tensors back on the model device). ``OrtImageEncoder`` replaces
MobileSAM's image encoder inside a mobile_sam ``Sam`` (its prompt encoder stays in torch
with the exported weights) served by the same ``SamSegmenter`` as torch's, with
``OrtMaskDecoder`` as its ``MaskDecoder``; ``OrtClip`` is the ``ImageTextModel``. No
checkpoint is read: the export folder is all an edge device needs.

Execution providers: CUDA first when the device resolves to a GPU and this ONNX Runtime
build offers ``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` wheel), else the CPU.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from vlm_grasp_locator.backends.onnx_export import (
    GRAPHS,
    MANIFEST,
    MANIFEST_FORMAT,
    resolve_onnx_dir,
)
from vlm_grasp_locator.models.adapters import SamSegmenter
from vlm_grasp_locator.models.checkpoints import (
    MOBILE_SAM_FILE,
    CheckpointError,
    resolve_checkpoint_path,
    sha256_of,
)
from vlm_grasp_locator.models.interfaces import LoadedModels
from vlm_grasp_locator.models.registry import (
    RANDOM_WEIGHTS_WARNING,
    clip_remote_file,
    resolve_device,
)
from vlm_grasp_locator.models.sam_decoder import DecodedTokens
from vlm_grasp_locator.models.text_encoder import cut_at_eot

LOG = logging.getLogger(__name__)

UPSCALE_CHUNK = 4  # prompts whose upscaled embeddings (32x256x256 each) exist at once
# The graphs each prompt batch runs: they get a one-thread session too (``OrtGraph``).
PER_BATCH_GRAPHS = ("sam_decoder_prompts", "sam_decoder_masks")


class OnnxExportError(CheckpointError):
    """The ONNX export is missing, partial, stale or was made for another configuration."""


def export_command(onnx_dir: Path, clip_model: str, random_weights: bool) -> str:
    flags = " --random-weights" if random_weights else ""
    return f"vlm-grasp-locator export-onnx --out {onnx_dir} --clip-model {clip_model}{flags}"


def pick_providers(device: torch.device) -> List[Any]:
    """CUDA when the device is a GPU and ONNX Runtime offers it, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return [
                ("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider",
            ]
        LOG.warning(
            "device %s asked for, but this onnxruntime has no CUDAExecutionProvider "
            "(providers: %s; "
            "the onnxruntime-gpu wheel has it): the ONNX graphs run on the CPU",
            device,
            ", ".join(available),
        )
    return ["CPUExecutionProvider"]


class OrtGraph:
    """One graph's ONNX Runtime sessions; called with torch tensors, returns torch tensors on
    ``device``.

    ``threads``: the intra-op threads of its main session. ``single_thread``: also keep a
    one-thread session, used when the calling thread runs torch on one thread (a
    ``CpuWorkers`` thread, which runs a whole prompt batch on one core): the decoder's
    batches then run side by side as torch's do, instead of one after another with every
    small operation split over the cores (``OrtMaskDecoder``).
    """

    def __init__(
        self,
        path: Path,
        providers: List[Any],
        device: torch.device,
        threads: int,
        single_thread: bool = False,
    ) -> None:
        self.name = path.stem
        self.device = device
        self.session = _session(path, providers, threads)
        self._single = (
            _session(path, providers, 1)
            if single_thread and threads != 1 and providers == ["CPUExecutionProvider"]
            else None
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def providers(self) -> List[str]:
        return self.session.get_providers()

    @property
    def single_thread_session(self) -> Optional[Any]:
        """The one-thread session; None where the graph has none (or the main one is)."""
        return self._single

    def session_for_this_thread(self) -> Any:
        """The one-thread session where the caller runs torch on one thread, else the main."""
        if self._single is not None and torch.get_num_threads() == 1:
            return self._single
        return self.session

    def __call__(self, *inputs: torch.Tensor) -> List[torch.Tensor]:
        feed = {name: _to_numpy(t) for name, t in zip(self.input_names, inputs)}
        outputs = self.session_for_this_thread().run(None, feed)
        return [torch.from_numpy(a).to(self.device) for a in outputs]


def session_options(threads: int) -> Any:
    """CPU session settings: ``threads`` intra-op threads that sleep between calls.

    Spinning worker threads (ORT's default) hold the cores between calls, where torch's
    own threads (and the decoder's other batches) need them: measured 2-3x slower wall
    time for the decoder on a shared 2-core machine. Sequential execution (the graphs
    are chains), full graph optimisation (ORT's default).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
    return options


def _session(path: Path, providers: List[Any], threads: int) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
        raise OnnxExportError(f"ONNX Runtime cannot load {path}: {e}") from e


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point():
        t = t.float()
    return np.ascontiguousarray(t.cpu().numpy())


class OrtImageEncoder(torch.nn.Module):
    """MobileSAM's image encoder: (1, 3, 1024, 1024) preprocessed pixels -> (1, 256, 64, 64)."""

    def __init__(self, graph: OrtGraph, img_size: int) -> None:
        super().__init__()
        self.graph = graph
        self.img_size = img_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.graph(pixels)[0]


def select_masks(
    prompt_idx: torch.Tensor,
    mask_idx: torch.Tensor,
    logits_for: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Logits (K, H, W) of the (prompt, mask) pairs asked for, ``UPSCALE_CHUNK`` prompts at a time.

    ``logits_for(prompts)`` gives all masks' logits (k, n_masks, H, W) of those prompts
    (the ONNX Runtime backend's masks graph, which has no per-mask input).
    ``prompt_idx`` must be sorted (as ``nonzero`` returns it), so pairs come out in order.
    """
    prompts, inverse = torch.unique(prompt_idx, return_inverse=True)
    out = []
    for start in range(0, len(prompts), UPSCALE_CHUNK):
        chunk = prompts[start : start + UPSCALE_CHUNK]
        logits = logits_for(chunk)
        # Indexing the upscaled embeddings per mask instead would copy 8 MB each.
        in_chunk = (inverse >= start) & (inverse < start + len(chunk))
        out.append(logits[inverse[in_chunk] - start, mask_idx[in_chunk]])
    return torch.cat(out)


class OrtMaskDecoder(torch.nn.Module):
    """An ``interfaces.MaskDecoder`` on three graphs (a module only to sit inside ``Sam``).

    Its prompt batches run side by side on the entry point's ``CpuWorkers``, one core
    each, like the torch decoder's: the prompts and masks graphs keep a one-thread
    session for those threads (``OrtGraph``). Run one by one instead, every batch's few
    hundred small operations were each split over the cores and paid a fork/join
    (a wake-up, without spinning) apiece: 2.9 s wall and 4.4 s CPU for 16 batches
    against 1.9 s and 3.2 s for torch's side-by-side batches (2-core AMD EPYC, AVX2).
    """

    parallel_batches = True

    def __init__(self, image_side: OrtGraph, prompts: OrtGraph, masks: OrtGraph) -> None:
        super().__init__()
        self.image_side_graph, self.prompts_graph, self.masks_graph = image_side, prompts, masks
        self._side: Optional[List[torch.Tensor]] = None

    def set_image(
        self, features: torch.Tensor, image_pe: torch.Tensor, dense_embedding: torch.Tensor
    ) -> None:
        self._side = self.image_side_graph(features, image_pe, dense_embedding)

    def run_transformer(self, sparse_embeddings: torch.Tensor) -> DecodedTokens:
        if self._side is None:
            raise RuntimeError("set_image must be called before run_transformer")
        iou_pred, mask_tokens, image_tokens = self.prompts_graph(*self._side, sparse_embeddings)
        return DecodedTokens(iou_pred=iou_pred, mask_tokens=mask_tokens, image_tokens=image_tokens)

    def masks_for(
        self, tokens: DecodedTokens, prompt_idx: torch.Tensor, mask_idx: torch.Tensor
    ) -> torch.Tensor:
        return select_masks(
            prompt_idx,
            mask_idx,
            lambda chunk: self.masks_graph(tokens.image_tokens[chunk], tokens.mask_tokens[chunk])[
                0
            ],
        )


class OrtClip:
    """An ``interfaces.ImageTextModel`` on the exported towers; outputs are L2-normalised."""

    def __init__(
        self, image: OrtGraph, text: OrtGraph, info: Dict[str, Any], device: torch.device
    ) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.image_graph, self.text_graph = image, text
        self.device = device
        self.logit_scale = min(float(np.exp(float(info["logit_scale"]))), 100.0)
        self.context_length = int(info["context_length"])
        # What ``text_encoder.cut_at_eot`` reads to find each text's pooling position.
        self.text_pool_type: str = info["text_pool_type"]
        self.text_eos_id: Optional[int] = info["text_eos_id"]
        self.embed_dim = int(info["embed_dim"])
        self.image_size = int(info["image_size"])
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) == 0:
            return torch.zeros((0, self.embed_dim), device=self.device)
        return self.image_graph(pixels)[0].float()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, D), as ``text_encoder.encode_text_until_eot``."""
        if len(tokens) == 0:
            return torch.zeros((0, self.embed_dim), device=self.device)
        cut, pool_at = cut_at_eot(self, tokens)
        return self.text_graph(cut.long(), pool_at.long())[0].float()

    def encode_phrases(self, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        texts = [t.format(p) for p in phrases for t in templates]
        return self.encode_tokens(self.tokenizer(texts)).view(len(phrases), len(templates), -1)


def read_manifest(onnx_dir: Path, clip_model: str, allow_random_weights: bool) -> Dict[str, Any]:
    """The export's manifest, after checking the export is complete (files and sizes)."""
    path = onnx_dir / MANIFEST
    remedy = f"run `{export_command(onnx_dir, clip_model, allow_random_weights)}`"
    if not path.is_file():
        raise OnnxExportError(
            f"backend onnxruntime: no ONNX export in {onnx_dir} ({MANIFEST} missing); {remedy}"
        )
    try:
        manifest = json.loads(path.read_text())
        files = [manifest["graphs"][name] for name in GRAPHS] + [manifest["prompt_encoder"]]
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxExportError(
            f"ONNX export {path} is unreadable or from another version ({e}); {remedy}"
        ) from e
    for entry in files:
        file = onnx_dir / entry["file"]
        if not file.is_file():
            raise OnnxExportError(
                f"ONNX export in {onnx_dir} is incomplete: {entry['file']} missing; {remedy}"
            )
        if file.stat().st_size != entry["size"]:
            raise OnnxExportError(
                f"ONNX export in {onnx_dir} was modified: {entry['file']} has another size; "
                f"{remedy}"
            )
    return manifest


def check_export_matches(
    manifest: Dict[str, Any],
    onnx_dir: Path,
    *,
    clip_model: str,
    mobile_sam_checkpoint: str,
    clip_checkpoint: str,
    allow_random_weights: bool,
    seed: int,
) -> None:
    """Refuse an export that the torch backend would not reproduce with this configuration.

    Checkpoint files that are absent are not an error for an export made from
    checkpoints: the export folder alone serves an edge device.
    """
    remedy = f"run `{export_command(onnx_dir, clip_model, allow_random_weights)}`"
    if manifest["clip_model"] != clip_model:
        raise OnnxExportError(
            f"the ONNX export in {onnx_dir} is of {manifest['clip_model']}, the configuration "
            f"asks for {clip_model}; {remedy}"
        )
    checkpoints = {
        "mobile_sam": resolve_checkpoint_path(mobile_sam_checkpoint, MOBILE_SAM_FILE),
        "clip": resolve_checkpoint_path(clip_checkpoint, clip_remote_file(clip_model).file),
    }
    if manifest["random_weights"]:
        if not allow_random_weights:
            raise OnnxExportError(
                f"the ONNX export in {onnx_dir} was made with RANDOM WEIGHTS; "
                "allow random weights "
                f"(--random-weights, allow_random_weights) to use it, or export from checkpoints: "
                f"`{export_command(onnx_dir, clip_model, False)}`"
            )
        if all(path.is_file() for path in checkpoints.values()):
            raise OnnxExportError(
                f"the ONNX export in {onnx_dir} has random weights but the checkpoints are "
                f"present now; {remedy}"
            )
        if manifest["seed"] != seed:
            raise OnnxExportError(
                f"the ONNX export in {onnx_dir} has random weights from seed {manifest['seed']}, "
                f"the configuration asks for seed {seed}"
            )
        return
    for key, path in checkpoints.items():
        recorded = manifest["checkpoints"][key]
        if not path.is_file():
            LOG.info(
                "checkpoint %s absent; using the ONNX export made from %s", path, recorded["path"]
            )
            continue
        stat = path.stat()
        same = stat.st_size == recorded["size"] and (
            stat.st_mtime_ns == recorded["mtime_ns"] or sha256_of(path) == recorded["sha256"]
        )
        if not same:
            raise OnnxExportError(
                f"the ONNX export in {onnx_dir} is stale: {path} changed since it was exported; "
                f"{remedy}"
            )


def load_onnx_models(
    *,
    device: str,
    clip_model: str,
    mobile_sam_checkpoint: str = "",
    clip_checkpoint: str = "",
    allow_random_weights: bool = False,
    seed: int = 0,
    onnx_dir: str = "",
) -> LoadedModels:
    """The models of ``backend: onnxruntime``: ONNX Runtime sessions on the export in
    ``onnx_dir`` (``backends.factory`` calls this)."""
    torch_device = resolve_device(device)
    folder = resolve_onnx_dir(onnx_dir)
    manifest = read_manifest(folder, clip_model, allow_random_weights)
    check_export_matches(
        manifest,
        folder,
        clip_model=clip_model,
        mobile_sam_checkpoint=mobile_sam_checkpoint,
        clip_checkpoint=clip_checkpoint,
        allow_random_weights=allow_random_weights,
        seed=seed,
    )
    if manifest["random_weights"]:
        LOG.warning("%s (ONNX export %s)", RANDOM_WEIGHTS_WARNING, folder)
    providers = pick_providers(torch_device)
    threads = torch.get_num_threads()
    graphs = {
        name: OrtGraph(
            folder / manifest["graphs"][name]["file"],
            providers,
            torch_device,
            threads,
            single_thread=name in PER_BATCH_GRAPHS,
        )
        for name in GRAPHS
    }
    LOG.info(
        "ONNX Runtime execution providers: %s (export %s)",
        ", ".join(graphs["sam_image_encoder"].providers),
        folder,
    )

    info = manifest["sam"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))  # mobile_sam's timm imports
        from mobile_sam.modeling import PromptEncoder, Sam
    prompt_encoder = PromptEncoder(
        embed_dim=info["embed_dim"],
        image_embedding_size=tuple(info["image_embedding_size"]),
        input_image_size=tuple(info["input_image_size"]),
        mask_in_chans=info["mask_in_chans"],
    )
    weights_file = folder / manifest["prompt_encoder"]["file"]
    try:
        prompt_encoder.load_state_dict(
            torch.load(weights_file, map_location="cpu", weights_only=True)
        )
    except (RuntimeError, OSError, ValueError) as e:
        raise OnnxExportError(
            f"{weights_file} does not hold MobileSAM prompt-encoder weights ({e})"
        ) from e
    sam = Sam(
        image_encoder=OrtImageEncoder(graphs["sam_image_encoder"], int(info["img_size"])),
        prompt_encoder=prompt_encoder,
        mask_decoder=OrtMaskDecoder(
            graphs["sam_decoder_image"], graphs["sam_decoder_prompts"], graphs["sam_decoder_masks"]
        ),
    )
    sam.mask_threshold = float(info["mask_threshold"])
    sam = sam.eval().to(torch_device)
    return LoadedModels(
        # mobile_sam's own generator would call the decoder as a module: not offered.
        segmenter=SamSegmenter(sam, sam.mask_decoder, generator_model=None),
        clip=OrtClip(graphs["clip_image"], graphs["clip_text"], manifest["clip"], torch_device),
        clip_name=clip_model,
        device=torch_device,
        random_weights=bool(manifest["random_weights"]),
    )
