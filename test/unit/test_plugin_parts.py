"""Plug-in parts through the real ``Locator`` code path: ``Locator.from_parts`` with a
proposer that returns the scene's true masks and a scorer that reads colour and shape
from the pixels (``synthetic_scenes.OracleScorer``), so the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from scenes import assert_well_formed
from synthetic_scenes import CommandKind, CountingOracle, TrueMasks, generate
from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig
from vlm_grasp_locator.pipeline.parts import Proposer, RegionScorer

PLAIN = generate(24, seed=11, kinds=(CommandKind.PLAIN,))


def plugin_config(**overrides) -> LocatorConfig:
    return LocatorConfig(**{"device": "cpu", "score_threshold": 0.3, **overrides})


def test_plain_functions_satisfy_the_protocols():
    proposer: Proposer = TrueMasks(PLAIN[0].scene)
    scorer: RegionScorer = CountingOracle()
    locator = Locator.from_parts(plugin_config(), proposer=proposer, scorer=scorer)
    assert not locator.random_weights and locator.device.type == "cpu"


@pytest.mark.parametrize("case", PLAIN, ids=[c.command for c in PLAIN])
def test_locate_picks_the_named_object(case):
    proposer, scorer = TrueMasks(case.scene), CountingOracle()
    locator = Locator.from_parts(plugin_config(), proposer=proposer, scorer=scorer)
    result = locator.locate(case.scene.image, case.command)
    height, width = case.scene.image.shape[:2]
    assert result.found, (case.command, result.target, result.reason)
    assert result.proposals == len(case.scene.objects) + 1
    assert_well_formed(result, width, height)
    best = result.best
    assert np.array_equal(best.mask, case.scene.masks[case.answer[0]]), (case.command, result)
    assert best.similarity == best.score  # a plug-in scorer's score stands for both
    assert scorer.phrases == [result.target]


def test_the_frame_is_proposed_once_and_each_query_scored():
    case = PLAIN[0]
    proposer, scorer = TrueMasks(case.scene), CountingOracle()
    locator = Locator.from_parts(plugin_config(), proposer=proposer, scorer=scorer)
    image = case.scene.image
    first = locator.locate(image, case.command, frame_key=1)
    again = locator.locate(image.copy(), "take the yellow one", frame_key=1)
    assert proposer.calls == 1 and scorer.phrases == [first.target, again.target]
    assert again.timings_ms["proposals"] == again.timings_ms["crops"] == 0.0
    locator.locate(image, case.command, frame_key=2)
    assert proposer.calls == 2


def test_a_big_image_is_proposed_at_the_model_size_and_answers_map_back():
    case = PLAIN[1]
    big = np.repeat(np.repeat(case.scene.image, 2, axis=0), 2, axis=1)
    proposer, scorer = TrueMasks(case.scene), CountingOracle()
    config = plugin_config(max_image_side=max(case.scene.image.shape[:2]))
    result = Locator.from_parts(config, proposer=proposer, scorer=scorer).locate(big, case.command)
    assert result.found and result.image_size == (big.shape[1], big.shape[0])
    want = np.repeat(np.repeat(case.scene.masks[case.answer[0]], 2, axis=0), 2, axis=1)
    assert np.array_equal(result.best.mask, want)


def test_scores_outside_0_to_1_are_refused():
    case = PLAIN[0]

    def overconfident(image, proposals, phrases):
        return np.full((len(proposals), len(phrases)), 1.5)

    locator = Locator.from_parts(
        plugin_config(), proposer=TrueMasks(case.scene), scorer=overconfident
    )
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        locator.locate(case.scene.image, case.command)

    def wrong_shape(image, proposals, phrases):
        return np.zeros(len(proposals))

    locator = Locator.from_parts(
        plugin_config(), proposer=TrueMasks(case.scene), scorer=wrong_shape
    )
    with pytest.raises(ValueError, match="shape"):
        locator.locate(case.scene.image, case.command)


def test_missing_parts_need_models_and_fast_mode_needs_the_defaults():
    case = PLAIN[0]
    with pytest.raises(ValueError, match="need models"):
        Locator.from_parts(plugin_config(), proposer=TrueMasks(case.scene))
    with pytest.raises(ValueError, match="fast"):
        Locator.from_parts(
            plugin_config(mode="fast"), proposer=TrueMasks(case.scene), scorer=CountingOracle()
        )
