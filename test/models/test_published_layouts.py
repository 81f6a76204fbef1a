"""The published TinyCLIP layout of every shipped configuration maps onto open_clip's CLIP.

The configurations are too large to write as files in a test (a training checkpoint of
the 61M model is over a gigabyte), so their module trees are built on the meta device:
names and shapes only, no memory. ``test_checkpoints`` loads a full 8M file.
"""

from __future__ import annotations

import pytest
import torch

from published_checkpoints import TinyCLIPTraining, tinyclip_source_keys
from vlm_grasp_locator.models.checkpoints import CheckpointLayout, fit_problems, unwrap_keys
from vlm_grasp_locator.models.registry import (
    available_clip_models,
    build_tinyclip,
    clip_model_config,
)

# open_clip CLIP state-dict entries per configuration (the count the old loader reported
# missing, and unexpected, for every real file: 266 for the 61M model)
KEYS = {
    "TinyCLIP-ViT-8M-16-Text-3M": 170,
    "TinyCLIP-ViT-40M-32-Text-19M": 230,
    "TinyCLIP-ViT-61M-32-Text-29M": 266,
}


def test_every_shipped_configuration_is_covered():
    assert sorted(KEYS) == available_clip_models()


@pytest.mark.parametrize("name", sorted(KEYS))
@pytest.mark.parametrize("ddp", [True, False], ids=["published", "without_ddp"])
def test_published_names_map_onto_the_architecture(name, ddp):
    with torch.device("meta"):
        clip = build_tinyclip(name)
    expected = clip.state_dict()
    published = TinyCLIPTraining(clip, ddp=ddp).state_dict()
    assert sorted(published) == sorted(tinyclip_source_keys(clip_model_config(name), ddp=ddp))
    assert len(published) == len(expected) == KEYS[name]
    state, layout = unwrap_keys(published, name)
    assert layout is CheckpointLayout.TINYCLIP_TRAINING
    assert fit_problems(expected, state) == []


@pytest.mark.parametrize("name", sorted(KEYS))
def test_another_configuration_is_refused(name):
    others = [n for n in sorted(KEYS) if n != name]
    with torch.device("meta"):
        clip = build_tinyclip(name)
        state, _ = unwrap_keys(TinyCLIPTraining(build_tinyclip(others[0])).state_dict(), others[0])
    assert fit_problems(clip.state_dict(), state)
