"""The ONNX Runtime backend against torch, on random weights.

One ``export-onnx`` run (the real command line, small TinyCLIP) serves the module. Each
graph must match torch to within ``TOLERANCE`` of its output's scale (max |ORT - torch|
/ max |torch|; measured 5e-7 to 1.2e-6 on this machine: ORT fuses and reorders float
work), and the whole pipeline must give the same proposals and best box.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scenes import SMALL_PIPELINE
from vlm_grasp_locator.backends.factory import LOADERS, build_locator
from vlm_grasp_locator.backends.onnx_runtime import OnnxExportError, OrtClip, load_onnx_models
from vlm_grasp_locator.models.adapters import OpenClipModel
from vlm_grasp_locator.models.interfaces import LoadedModels
from vlm_grasp_locator.models.registry import load_models
from vlm_grasp_locator.models.sam_decoder import FastMaskDecoder
from vlm_grasp_locator.models.text_encoder import encode_text_until_eot
from vlm_grasp_locator.pipeline.crop_scoring import PROMPT_TEMPLATES
from vlm_grasp_locator.pipeline.mask_proposals import MaskProposer, ProposalSettings
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers
from vlm_grasp_locator.pipeline.locator import Backend, LocatorConfig

REPO = Path(__file__).resolve().parents[2]
CLIP = "TinyCLIP-ViT-8M-16-Text-3M"  # the smallest tower: the export is the slow part
SEED = 3
TOLERANCE = 1e-5  # of the output's largest magnitude; measured <= 1.2e-6


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_grasp_locator.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    scale = float(want.abs().max())
    error = float((got.float() - want.float()).abs().max())
    assert error <= TOLERANCE * max(
        scale, 1e-6
    ), f"{what}: max error {error:.3g} at output scale {scale:.3g}"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    proc = run_cli(
        "export-onnx",
        "--out",
        str(out),
        "--clip-model",
        CLIP,
        "--random-weights",
        "--seed",
        str(SEED),
    )
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stdout and str(out) in proc.stdout
    return out


@pytest.fixture(scope="module")
def torch_models():
    torch.set_num_threads(2)
    return load_models(device="cpu", clip_model=CLIP, allow_random_weights=True, seed=SEED)


@pytest.fixture(scope="module")
def ort_models(export_dir):
    return load_onnx_models(
        device="cpu",
        clip_model=CLIP,
        allow_random_weights=True,
        seed=SEED,
        onnx_dir=str(export_dir),
    )


def test_manifest_records_the_export(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert (
        manifest["clip_model"] == CLIP
        and manifest["random_weights"] is True
        and manifest["seed"] == SEED
    )
    assert manifest["opset"] == 18 and manifest["torch"] == torch.__version__
    for entry in manifest["graphs"].values():
        assert (export_dir / entry["file"]).stat().st_size == entry["size"]
    assert not [
        p for p in export_dir.parent.iterdir() if p.name.startswith(".")
    ], "staging folder left behind"


def test_both_backends_are_registered_and_load_the_same_protocols(ort_models):
    assert set(LOADERS) == set(Backend)
    assert isinstance(ort_models, LoadedModels) and isinstance(ort_models.clip, OrtClip)
    # Capabilities are declared, not probed: the decoder's batches run side by side on
    # the workers (one-thread sessions), as torch's do; no module for mobile_sam's own
    # generator.
    assert ort_models.segmenter.decoder.parallel_batches is True
    assert ort_models.segmenter.generator_model is None
    assert ort_models.clip.device == ort_models.device == torch.device("cpu")


def test_image_encoder_matches_torch(torch_models, ort_models):
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = torch_models.sam.image_encoder(pixels)
        got = ort_models.segmenter.sam.image_encoder(pixels)
    assert_close_to_scale(got, want, "image encoder")


def test_decoder_graphs_match_torch(torch_models, ort_models):
    sam = torch_models.sam
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(1, 256, 64, 64, generator=gen)
    points = torch.rand(5, 1, 2, generator=gen) * 1024  # 5 prompts: not the export's example size
    labels = torch.ones(5, 1, dtype=torch.int)
    with torch.inference_mode():
        # The prompt encoder stays in torch; the export carries its weights.
        sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        ort_sparse, ort_dense = ort_models.segmenter.sam.prompt_encoder(
            points=(points, labels), boxes=None, masks=None
        )
        assert torch.equal(sparse, ort_sparse) and torch.equal(dense, ort_dense)
        pe = sam.prompt_encoder.get_dense_pe()
        reference, onnx = FastMaskDecoder(sam.mask_decoder), ort_models.segmenter.decoder
        reference.set_image(features, pe, dense[:1])
        onnx.set_image(features, pe, dense[:1])
        want, got = reference.run_transformer(sparse), onnx.run_transformer(sparse)
        for name in ("iou_pred", "mask_tokens", "image_tokens"):
            assert_close_to_scale(getattr(got, name), getattr(want, name), name)
        prompt_idx, mask_idx = torch.tensor([0, 0, 2, 3, 4, 4]), torch.tensor([1, 3, 2, 1, 1, 2])
        assert_close_to_scale(
            onnx.masks_for(got, prompt_idx, mask_idx),
            reference.masks_for(want, prompt_idx, mask_idx),
            "mask logits",
        )


def test_decoder_batches_side_by_side_use_one_thread_sessions(ort_models, scene):
    """On ``CpuWorkers`` (one torch thread each) the decoder's graphs run their one-thread
    sessions, in the caller's thread the main ones; the proposals are the same."""
    decoder = ort_models.segmenter.decoder
    graphs = (decoder.prompts_graph, decoder.masks_graph)
    if torch.get_num_threads() < 2:
        pytest.skip("one CPU thread: the graphs have no separate one-thread session")
    assert all(g.single_thread_session is not None for g in graphs)
    assert decoder.image_side_graph.single_thread_session is None  # once per image
    settings = ProposalSettings(
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_mask_region_area=0,
        box_nms_thresh=1.0,
    )
    workers = CpuWorkers(2)
    try:
        seen = workers.map(lambda g: g.session_for_this_thread(), graphs)
        side_by_side = MaskProposer(ort_models.segmenter, settings, workers)(scene)
    finally:
        workers.close()
    assert seen == [g.single_thread_session for g in graphs]
    assert all(g.session_for_this_thread() is g.session for g in graphs)
    inline = MaskProposer(ort_models.segmenter, settings)(scene)
    assert len(inline) == len(side_by_side) == 48  # 16 prompts x 3 masks, nothing filtered
    assert (inline.masks != side_by_side.masks).mean() <= 1e-4
    np.testing.assert_allclose(side_by_side.predicted_iou, inline.predicted_iou, atol=1e-5)


def test_clip_towers_match_torch(torch_models, ort_models):
    from open_clip.tokenizer import SimpleTokenizer

    clip, onnx = torch_models.clip, ort_models.clip
    adapted = OpenClipModel(clip, torch_models.device)
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    texts = [
        "a photo of a red pen.",
        "scissors",
        "a close-up photo of a blue mug on a wooden table.",
        "x",
        "cup",
        "a",
        "b",
    ]
    tokens = SimpleTokenizer(context_length=clip.context_length)(texts)
    phrases = ["red pen", "blue mug on a wooden table", "x"]
    with torch.inference_mode():
        want = clip.encode_image(pixels, normalize=True)
        assert_close_to_scale(onnx.encode_images(pixels), want, "image tower")
        assert_close_to_scale(adapted.encode_images(pixels), want, "image tower (adapter)")
        want = encode_text_until_eot(clip, tokens)
        assert_close_to_scale(onnx.encode_tokens(tokens), want, "text tower")
        assert_close_to_scale(
            onnx.encode_phrases(phrases, PROMPT_TEMPLATES),
            adapted.encode_phrases(phrases, PROMPT_TEMPLATES),
            "templated phrases",
        )
    assert onnx.logit_scale == pytest.approx(adapted.logit_scale, rel=1e-6)
    assert onnx.embed_dim == adapted.embed_dim


def test_locator_onnxruntime_gives_the_torch_answer(export_dir, scene):
    # No box NMS and every mask reported, so all decoded masks are compared (random
    # weights make most of them overlap heavily).
    config = dict(
        SMALL_PIPELINE, clip_model=CLIP, seed=SEED, box_nms_thresh=1.0, max_detections=1000
    )
    results = []
    for backend in ("torch", "onnxruntime"):
        locator = build_locator(
            LocatorConfig(**config, backend=backend, onnx_dir=str(export_dir)), workers=None
        )
        assert locator.random_weights
        results.append(locator.locate(scene, "take the red block"))
    want, got = results
    assert got.found and want.found
    assert got.proposals == want.proposals > 1 and len(got.detections) == len(want.detections)
    assert box_iou(got.best.box_xyxy, want.best.box_xyxy) >= 0.99
    for d in got.detections:  # each ORT mask has its torch twin (order may differ on near-ties)
        agreement = [(d.mask == w.mask).mean() for w in want.detections]
        twin = want.detections[int(np.argmax(agreement))]
        assert max(agreement) >= 0.99 and abs(d.score - twin.score) <= 1e-3


def test_box_prompts_run_on_onnxruntime_as_on_torch(torch_models, ort_models, export_dir, scene):
    """Tracking's box prompt (``tracking.SamBoxSegmenter``): the prompt encoder stays in
    torch, and a box (2 corner tokens) plus points fits the prompts graph's dynamic
    points axis, so the exported decoder serves it with torch's answer."""
    from vlm_grasp_locator.models.adapters import torch_parts
    from vlm_grasp_locator.pipeline.tracking import (
        BoxPrompt,
        PromptFrame,
        SamBoxSegmenter,
        TrackSettings,
    )

    prompt = BoxPrompt((30.0, 20.0, 130.0, 100.0), np.array([[80, 60], [60, 50]], np.float32))
    outputs = []
    for segmenter in (torch_parts(torch_models).segmenter, ort_models.segmenter):
        frame = PromptFrame(scene)
        outputs.append(SamBoxSegmenter(segmenter)(frame, prompt))
        assert frame.encodes == 1
    want, got = outputs
    assert got.masks.shape == want.masks.shape == (4, *scene.shape[:2])
    assert_close_to_scale(
        torch.from_numpy(got.predicted_iou), torch.from_numpy(want.predicted_iou), "IoU"
    )
    assert (got.masks == want.masks).mean() >= 0.99

    locator = build_locator(_onnx_config(export_dir), workers=None)
    located = locator.locate(scene, "take the red block", frame_key=0)
    state = locator.start_track(located, stamp_s=0.0)
    lenient = TrackSettings(min_score=0.0, max_area_ratio=1e6, min_iou=0.0)
    result = locator.track(scene, state, frame_key=1, stamp_s=0.1, settings=lenient)
    assert result.track_id == "1" and "prompt" in result.timings_ms


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _onnx_config(onnx_dir: Path, **overrides) -> LocatorConfig:
    values = dict(
        SMALL_PIPELINE, clip_model=CLIP, seed=SEED, backend="onnxruntime", onnx_dir=str(onnx_dir)
    )
    values.update(overrides)
    return LocatorConfig(**values)


def test_missing_export_says_to_run_export_onnx(tmp_path):
    with pytest.raises(
        OnnxExportError,
        match=r"no ONNX export in .*manifest\.json missing.*vlm-grasp-locator export-onnx",
    ):
        build_locator(_onnx_config(tmp_path / "nothing"))


def test_partial_export_is_refused(export_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(export_dir / "manifest.json", partial / "manifest.json")
    with pytest.raises(
        OnnxExportError, match=r"incomplete: sam_image_encoder\.onnx missing.*export-onnx"
    ):
        build_locator(_onnx_config(partial))


def test_export_of_another_configuration_is_refused(export_dir):
    with pytest.raises(OnnxExportError, match=rf"is of {CLIP}.*asks for TinyCLIP-ViT-40M"):
        build_locator(_onnx_config(export_dir, clip_model="TinyCLIP-ViT-40M-32-Text-19M"))
    with pytest.raises(OnnxExportError, match="RANDOM WEIGHTS"):
        build_locator(_onnx_config(export_dir, allow_random_weights=False))
    with pytest.raises(OnnxExportError, match=f"seed {SEED}"):
        build_locator(_onnx_config(export_dir, seed=SEED + 1))


def test_export_from_checkpoints_detects_a_changed_checkpoint(export_dir, tmp_path):
    """A manifest saying 'made from checkpoints' is checked against the files configured now."""
    from vlm_grasp_locator.backends.onnx_runtime import check_export_matches, read_manifest
    from vlm_grasp_locator.backends.onnx_export import checkpoint_record

    sam_file, clip_file = tmp_path / "sam.pt", tmp_path / "clip.pt"
    sam_file.write_bytes(b"sam weights")
    clip_file.write_bytes(b"clip weights")
    manifest = read_manifest(export_dir, CLIP, True)
    manifest.update(
        random_weights=False,
        seed=None,
        checkpoints={
            "mobile_sam": checkpoint_record(sam_file),
            "clip": checkpoint_record(clip_file),
        },
    )
    kwargs = dict(
        clip_model=CLIP,
        mobile_sam_checkpoint=str(sam_file),
        clip_checkpoint=str(clip_file),
        allow_random_weights=False,
        seed=0,
    )
    check_export_matches(manifest, export_dir, **kwargs)  # unchanged: accepted
    os.utime(clip_file, ns=(0, 0))  # copied with a new mtime, same content: still accepted
    check_export_matches(manifest, export_dir, **kwargs)
    check_export_matches(
        manifest, export_dir, **{**kwargs, "clip_checkpoint": str(tmp_path / "absent.pt")}
    )  # edge device
    clip_file.write_bytes(b"other weights")
    with pytest.raises(OnnxExportError, match=r"stale: .*clip\.pt changed.*export-onnx"):
        check_export_matches(manifest, export_dir, **kwargs)


def test_export_cli_exit_codes(tmp_path, monkeypatch, capsys):
    """Errors come before any model is exported (in-process: the export fixture runs the
    real command line for the success path)."""
    from vlm_grasp_locator.tools.cli import main

    def export(*args: str):
        code = main(["export-onnx", *args])
        return code, capsys.readouterr().err

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, err = export("--out", str(tmp_path / "out"))  # no checkpoints, no --random-weights
    assert code == 1 and "mobile_sam.pt" in err and "download-models" in err
    assert not (tmp_path / "out").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, err = export("--out", str(occupied), "--random-weights")
    assert code == 2 and "refusing to overwrite" in err
    assert (occupied / "notes.txt").read_text() == "mine"

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = export("--out", str(blocker / "sub"), "--random-weights")
    assert code == 2 and str(blocker) in err

    code, err = export("--clip-model", "NoSuchCLIP", "--random-weights")
    assert code == 2 and "NoSuchCLIP" in err


def test_providers_cuda_first_when_offered_else_cpu(monkeypatch, caplog):
    """Provider choice alone (no GPU here): the real sessions above ran on the CPU provider."""
    import onnxruntime as ort

    from vlm_grasp_locator.backends.onnx_runtime import pick_providers

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert pick_providers(torch.device("cuda", 1)) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert pick_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert pick_providers(torch.device("cuda")) == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text


def test_sessions_report_the_cpu_provider(ort_models):
    assert ort_models.segmenter.sam.image_encoder.graph.providers == ["CPUExecutionProvider"]


def test_crop_layers_need_the_torch_generator(ort_models):
    from vlm_grasp_locator.pipeline.mask_proposals import MaskProposer, ProposalSettings

    with pytest.raises(ValueError, match="backend 'torch'"):
        MaskProposer(ort_models.segmenter, ProposalSettings(crop_n_layers=1))
