"""The real architectures (random weights) behind the ROS-free seams: a plug-in
proposer with the default TinyCLIP scorer, and LocatorService answering with the real
locator. The scheduling and known-answer tests of both live in test/unit."""

from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np

from node_harness import RecordingOutputs
from scenes import assert_well_formed
from vlm_grasp_locator.models.interfaces import LoadedModels
from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig
from vlm_grasp_locator.pipeline.proposals import Proposals
from vlm_grasp_locator.service.jobs import Job, Outcome
from vlm_grasp_locator.service.locator_service import LocatorService, ServiceSettings

LOG = logging.getLogger("test_real_parts")


def test_a_plugin_proposer_with_the_default_tinyclip_scorer(locator, scene):
    """Models for the part not given: TinyCLIP (random weights) scores two true blocks."""
    models = LoadedModels(
        segmenter=locator.proposer.segmenter,
        clip=locator.scorer.clip,
        clip_name=locator.config.clip_model,
        device=locator.device,
        random_weights=True,
    )
    blocks = np.zeros((2, *scene.shape[:2]), bool)
    blocks[0, 24:96, 32:128] = True  # the red block of ``scenes.synthetic_scene``
    blocks[1, 120:216, 160:288] = True  # the blue one
    mixed = Locator.from_parts(
        LocatorConfig(device="cpu", score_threshold=0.0),
        proposer=lambda image: Proposals.from_masks(blocks),
        models=models,
    )
    result = mixed.locate(scene, "take the red block")
    assert mixed.random_weights and result.found and result.proposals == 2
    assert_well_formed(result, scene.shape[1], scene.shape[0])
    assert {d.mask_area for d in result.detections} <= {int(b.sum()) for b in blocks}


def test_a_real_locator_answers_through_the_service(locator: object, scene: np.ndarray) -> None:
    out = RecordingOutputs()
    service = LocatorService(lambda: locator, out, LOG,  # type: ignore[arg-type, return-value]
                             settings=ServiceSettings(max_image_age=0.0))
    service.load()
    service.activate()
    try:
        frame = service.put_frame("header", lambda: scene)
        jobs: List[Optional[Job]] = [Job("take the red block"), Job("take the blue block")]
        for job in jobs:
            assert job is not None
            service.submit(job)
        for job in jobs:
            assert job is not None and job.wait(120.0) and job.outcome is Outcome.SUCCEEDED
        replies = out.published
        assert [r.frame for r in replies] == [frame, frame]
        assert all(r.result is not None and r.result.image_size == scene.shape[1::-1]
                   for r in replies)
        assert service.stats.last_timings_ms.get("total", 0.0) > 0.0
    finally:
        assert service.stop(60.0)
        service.unload()
