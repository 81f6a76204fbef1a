"""``precision: bf16``: validated, refused where the CPU would emulate it, and close to fp32.

On a CPU without native bf16 (this suite's AVX2 machines) the tests allow emulation
(``VLM_GRASP_LOCATOR_ALLOW_EMULATED_BF16``): the numbers are bf16's, only slower.
Tolerances, measured on the tiny config (random weights, AVX2 EPYC, emulated): the same
masks and best box; crop similarity within 1e-3 (measured 5e-4); score within 1e-3.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from scenes import SMALL_PIPELINE
from vlm_grasp_locator.backends import factory
from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig
from vlm_grasp_locator.ros.params import PARAM_SPECS
from vlm_grasp_locator.runtime import cpu_features
from vlm_grasp_locator.runtime.cpu_features import EMULATED_BF16_ENV, PrecisionError
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers

SIMILARITY_TOLERANCE = 1e-3
AVX2_ONLY = cpu_features.CpuInfo("AMD EPYC 7B13", 2, frozenset({"avx2", "fma"}), "x86_64")


@pytest.fixture()
def emulated_bf16(monkeypatch):
    monkeypatch.setenv(EMULATED_BF16_ENV, "1")


def test_precision_is_validated() -> None:
    LocatorConfig(precision="bf16").validate()
    with pytest.raises(ValueError, match="precision must be one of"):
        LocatorConfig(precision="fp16").validate()
    with pytest.raises(ValueError, match="backend 'onnxruntime' runs the exported fp32"):
        LocatorConfig(precision="bf16", backend="onnxruntime").validate()
    spec = {s.name: s for s in PARAM_SPECS}["precision"]
    assert spec.default == LocatorConfig.precision == "fp32"
    assert spec.problem("bf16") is None and spec.problem("fp16")


def test_bf16_is_refused_before_the_models_load_without_native_bf16(
    monkeypatch, locator
) -> None:
    monkeypatch.delenv(EMULATED_BF16_ENV, raising=False)
    monkeypatch.setattr(cpu_features, "cpu_info", lambda: AVX2_ONLY)

    def must_not_load(config):
        raise AssertionError("models loaded")

    monkeypatch.setitem(factory.LOADERS, factory.Backend.TORCH, must_not_load)
    config = LocatorConfig(**{**SMALL_PIPELINE, "precision": "bf16"})
    with pytest.raises(PrecisionError, match="AMD EPYC 7B13; AVX2, FMA"):
        factory.build_locator(config)
    with pytest.raises(PrecisionError, match="natively"):  # every way to build one
        Locator(config, locator.proposer, locator.scorer, True, torch.device("cpu"))


def test_workers_run_under_the_callers_autocast() -> None:
    workers = CpuWorkers(2)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = workers.map(lambda _: torch.is_autocast_enabled("cpu"), range(2))
            dtypes = workers.map(lambda x: (x @ x).dtype, [torch.ones(2, 2)] * 2)
        outside = workers.map(lambda _: torch.is_autocast_enabled("cpu"), range(2))
    finally:
        workers.close()
    assert inside == [True, True] and dtypes == [torch.bfloat16] * 2
    assert outside == [False, False]


def test_bf16_locate_end_to_end_matches_fp32(emulated_bf16, locator, scene) -> None:
    """The tiny config through ``locate()``: bf16 (MobileSAM and the image tower under
    autocast) gives fp32's masks and best box; scores stay fp32 arithmetic."""
    bf16 = Locator(
        replace(locator.config, precision="bf16"),
        locator.proposer,
        locator.scorer,
        locator.random_weights,
        locator.device,
    )
    command = "take the red block"
    want = locator.locate(scene, command, frame_key="fp32")
    got = bf16.locate(scene, command, frame_key="bf16")
    assert got.found and want.found and got.proposals == want.proposals >= 1
    assert got.best.box_xyxy == want.best.box_xyxy
    for a, b in zip(got.detections, want.detections):
        union = np.logical_or(a.mask, b.mask).sum()
        assert np.logical_and(a.mask, b.mask).sum() / max(union, 1) >= 0.99
        assert abs(a.similarity - b.similarity) <= SIMILARITY_TOLERANCE
        assert abs(a.score - b.score) <= SIMILARITY_TOLERANCE
