"""Tests for the relation resolver: hand-built scenes with known answers, properties,
and the parser + resolver on generated synthetic scenes scored from their pixels."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthetic_scenes import COLOURS, CommandKind, OracleScorer, SceneObject, generate, render
from vlm_grasp_locator.core.referring import (
    Ordinal,
    OrderKey,
    ReferringCommand,
    Relation,
    RelationClause,
    Target,
    parse_referring,
)
from vlm_grasp_locator.core.relations import (
    PhraseScores,
    Regions,
    ResolverSettings,
    TargetResolution,
    phrases_to_score,
    resolve_command,
    resolve_target,
)

_GENERIC = {"object", "one", "thing"}

# (label, box xyxy, depth in metres or None) in a 400x300 image.
Thing = Tuple[str, Tuple[float, float, float, float], Optional[float]]


def regions_of(things: Sequence[Thing], size: Tuple[int, int] = (400, 300)) -> Regions:
    depths = [d for _, _, d in things]
    return Regions.from_boxes(
        np.array([b for _, b, _ in things], dtype=float), size,
        depths_m=(None if all(d is None for d in depths)
                  else [np.nan if d is None else d for d in depths]),
    )


def label_scores(things: Sequence[Thing], phrases: Sequence[str], seed: int = 0) -> PhraseScores:
    """Known semantics: 0.9-1.0 where the label has every word of the phrase, else 0-0.05."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(things), len(phrases)))
    for i, (label, _, _) in enumerate(things):
        words = set(label.split())
        for p, phrase in enumerate(phrases):
            wanted = set(phrase.split()) - _GENERIC
            matrix[i, p] = rng.uniform(0.9, 1.0) if wanted <= words else rng.uniform(0.0, 0.05)
    return PhraseScores(tuple(phrases), matrix)


def answer(command: str, things: Sequence[Thing], settings: ResolverSettings = ResolverSettings()
           ) -> Tuple[TargetResolution, ...]:
    parsed = parse_referring(command)
    phrases = phrases_to_score(parsed)
    return resolve_command(parsed, regions_of(things), label_scores(things, phrases), settings)


def best(command: str, things: Sequence[Thing]) -> List[int]:
    return [r.best.index for r in answer(command, things) if r.best is not None]


# A row of cups either side of a plate, a bowl on the right.
ROW: List[Thing] = [
    ("red cup", (20, 120, 60, 160), None),     # 0
    ("blue cup", (100, 125, 140, 165), None),  # 1
    ("plate", (170, 110, 250, 180), None),     # 2
    ("green cup", (280, 120, 320, 160), None),  # 3
    ("bowl", (340, 115, 390, 170), None),      # 4
]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("take the cup left of the plate", 1),  # the nearer of the two on the left
        ("take the cup to the right of the plate", 3),
        ("the cup next to the bowl", 3),
        ("the cup closest to the bowl", 3),
        ("the cup farthest from the bowl", 0),
        ("the cup between the plate and the bowl", 3),
        ("the leftmost cup", 0),
        ("the rightmost cup", 3),
        ("the second cup from the left", 1),
        ("the third cup from the left", 3),
        ("the second cup from the right", 1),
        ("the last cup from the left", 3),
        ("the cup in the middle", 1),
        ("the cup left of the plate, not the red one", 1),
        ("the cup that isn't blue", 0),
        ("the leftmost cup, not the red one", 1),
        ("the blue one, not the red one", 1),
    ],
)
def test_row_scene(command: str, expected: int) -> None:
    assert best(command, ROW) == [expected]


def test_above_below_and_inside() -> None:
    things: List[Thing] = [
        ("book", (100, 20, 160, 60), None),   # 0: above the shelf
        ("shelf", (80, 100, 320, 120), None),  # 1
        ("book", (200, 160, 260, 200), None),  # 2: below the shelf
        ("tray", (20, 200, 140, 290), None),   # 3
        ("apple", (50, 230, 80, 260), None),   # 4: on the tray
        ("apple", (300, 240, 330, 270), None),  # 5
    ]
    assert best("the book above the shelf", things) == [0]
    assert best("the book below the shelf", things) == [2]
    assert best("the book under the shelf", things) == [2]
    assert best("the apple on the tray", things) == [4]
    assert best("the apple in the tray", things) == [4]
    assert best("the apple right of the tray", things) == [5]


def test_left_of_prefers_side_by_side_over_far_away() -> None:
    things: List[Thing] = [
        ("cup", (20, 10, 50, 40), None),     # 0: left, but far up
        ("cup", (130, 140, 160, 170), None),  # 1: left and level
        ("plate", (200, 130, 280, 180), None),
    ]
    assert best("the cup left of the plate", things) == [1]


def test_ordinal_counts_a_part_of_an_object_once() -> None:
    things: List[Thing] = [
        ("bottle", (20, 100, 60, 200), None),   # 0
        ("bottle", (25, 105, 55, 140), None),   # 1: a part of bottle 0 (its label only)
        ("bottle", (120, 100, 160, 200), None),  # 2
        ("bottle", (220, 100, 260, 200), None),  # 3
    ]
    parsed = parse_referring("the second bottle from the left")
    scores = label_scores(things, phrases_to_score(parsed))
    matrix = scores.matrix.copy()
    matrix[1, 0] = 0.8  # the part scores lower than the whole
    result = resolve_command(parsed, regions_of(things), PhraseScores(scores.phrases, matrix))
    assert result[0].best is not None and result[0].best.index == 2
    assert "of 3 bottle candidates" in result[0].best.reason


SIZES: List[Thing] = [
    ("box", (10, 10, 50, 50), None),     # 0: 1600
    ("box", (100, 10, 200, 110), None),  # 1: 10000
    ("box", (250, 10, 310, 70), None),   # 2: 3600
    ("ball", (10, 200, 200, 290), None),  # 3: the largest thing, not a box
]


@pytest.mark.parametrize(
    ("command", "expected"),
    [("the biggest box", 1), ("the largest box", 1), ("the smallest box", 0),
     ("the second biggest box", 2), ("the biggest one", 3)],
)
def test_superlatives_by_size(command: str, expected: int) -> None:
    assert best(command, SIZES) == [expected]


# Depth says the opposite of the image: mug 0 is low in the image but far away.
DEPTH: List[Thing] = [
    ("mug", (40, 220, 80, 260), 1.40),  # 0
    ("mug", (160, 60, 200, 100), 0.55),  # 1
    ("mug", (280, 140, 320, 180), 0.90),  # 2
    ("laptop", (140, 120, 260, 200), 1.00),  # 3
]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("the mug closest to me", 1),
        ("the nearest mug", 1),
        ("the farthest mug", 0),
        ("the mug furthest from me", 0),
        ("the second nearest mug", 2),
        ("the mug in front of the laptop", 1),
        ("the mug behind the laptop", 0),
    ],
)
def test_depth_decides_distance_from_the_camera(command: str, expected: int) -> None:
    assert best(command, DEPTH) == [expected]


@pytest.mark.parametrize(
    ("command", "expected"),
    [("the mug closest to me", 0), ("the farthest mug", 1), ("the mug in front of the laptop", 0)],
)
def test_without_depth_lower_in_the_image_is_nearer(command: str, expected: int) -> None:
    flat = [(label, box, None) for label, box, _ in DEPTH]
    assert best(command, flat) == [expected]
    reason = answer(command, flat)[0].best
    assert reason is not None


def test_depth_reason_names_depth_or_the_fallback() -> None:
    with_depth = answer("the nearest mug", DEPTH)[0].best
    without = answer("the nearest mug", [(lbl, box, None) for lbl, box, _ in DEPTH])[0].best
    assert with_depth is not None and "by depth" in with_depth.reason
    assert without is not None and "by image height" in without.reason


def test_several_targets_in_order_and_distinct() -> None:
    things: List[Thing] = [
        ("cup", (20, 20, 60, 60), None),
        ("pen", (100, 20, 180, 30), None),
        ("cup", (220, 20, 260, 60), None),
        ("box", (300, 100, 380, 180), None),
    ]
    assert best("pick up the pen and then the box", things) == [1, 3]
    assert best("first the box, then the pen", things) == [3, 1]
    assert best("take the box, the pen and the cup", things)[:2] == [3, 1]
    first, second = best("take a cup and another cup", things)
    assert {first, second} == {0, 2}
    assert best("take the leftmost cup and then the cup right of the pen", things) == [0, 2]


def test_reason_names_what_decided() -> None:
    resolution = answer("take the cup left of the plate", ROW)[0]
    top = resolution.best
    assert top is not None
    assert top.reason.startswith("cup ")
    assert "left of plate (plate 0.9" in top.reason and "at #2" in top.reason
    ordinal = answer("the second cup from the left", ROW)[0].best
    assert ordinal is not None and "2nd from the left of 3 cup candidates (by x)" in ordinal.reason
    excluded = answer("the cup, not the red one", ROW)[0].ranked
    red = next(r for r in excluded if r.index == 0)
    assert "not red object (0.9" in red.reason


def test_missing_anchor_is_ignored_and_said() -> None:
    resolution = answer("the cup left of the toaster", ROW)[0]
    assert resolution.best is not None
    assert "ignored: no region looks like toaster" in resolution.best.reason
    # Without the relation, the cups rank by their phrase score alone.
    assert resolution.best.index in (0, 1, 3)


def test_ordinal_beyond_the_candidates_says_so() -> None:
    resolution = answer("the fifth cup from the left", ROW)[0]
    assert resolution.best is not None
    assert resolution.best.score < 0.5
    assert "no 5th from the left among 3 cup candidates" in resolution.best.reason


def test_phrases_to_score_each_once_in_order() -> None:
    parsed = parse_referring("the red cup left of the plate, not the blue one, then the plate")
    assert phrases_to_score(parsed) == ("red cup", "plate", "blue object")
    target = Target("cup", relations=(RelationClause(Relation.BETWEEN, ("plate", "bowl")),))
    assert phrases_to_score(target) == ("cup", "plate", "bowl")
    assert phrases_to_score([target, Target("bowl")]) == ("cup", "plate", "bowl")


def test_taken_regions_rank_last() -> None:
    parsed = parse_referring("the cup")
    scores = label_scores(ROW, phrases_to_score(parsed))
    resolution = resolve_target(parsed.targets[0], regions_of(ROW), scores, taken=[0, 1])
    assert resolution.best is not None and resolution.best.index == 3
    assert [r.score for r in resolution.ranked if r.index in (0, 1)] == [0.0, 0.0]
    assert all("already chosen" in r.reason for r in resolution.ranked if r.index in (0, 1))


def test_regions_from_masks() -> None:
    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:20, 0:10] = True
    regions = Regions.from_masks(masks, depths_m=[0.5, float("nan")])
    np.testing.assert_array_equal(regions.boxes_xyxy, [[3, 2, 9, 6], [0, 10, 10, 20]])
    np.testing.assert_array_equal(regions.areas, [24, 100])
    np.testing.assert_allclose(regions.centroids_xy, [[6, 4], [5, 15]])
    assert regions.image_size == (30, 20)
    assert regions.has_depth([0]) and not regions.has_depth([0, 1])


def test_bad_inputs_raise_value_error() -> None:
    regions = regions_of(ROW)
    with pytest.raises(ValueError):
        PhraseScores(("cup",), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        PhraseScores(("cup", "cup"), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="no scores for phrase 'plate'"):
        resolve_target(Target("cup", relations=(RelationClause(Relation.LEFT_OF, ("plate",)),)),
                       regions, PhraseScores(("cup",), np.ones((5, 1))))
    with pytest.raises(ValueError):
        resolve_target(Target("cup"), regions, PhraseScores(("cup",), np.ones((4, 1))))
    with pytest.raises(ValueError):
        Regions.from_boxes(np.zeros((2, 4)), (10, 10), depths_m=[1.0])
    with pytest.raises(ValueError):
        Regions.from_masks(np.zeros((4, 4), dtype=bool))


def test_scores_are_clipped_and_nan_is_zero() -> None:
    scores = PhraseScores(("cup",), np.array([[1.5], [np.nan], [-0.2]]))
    np.testing.assert_array_equal(scores.column("cup"), [1.0, 0.0, 0.0])


def test_no_regions_no_answer() -> None:
    empty = Regions.from_boxes(np.zeros((0, 4)), (10, 10))
    resolution = resolve_target(Target("cup"), empty, PhraseScores(("cup",), np.zeros((0, 1))))
    assert resolution.ranked == () and resolution.best is None


_RELATIONS = list(Relation)
_KEYS = list(OrderKey)


@st.composite
def scenes_and_targets(draw: st.DrawFn) -> Tuple[Regions, PhraseScores, Target]:
    n = draw(st.integers(1, 7))
    coords = st.floats(0, 200, allow_nan=False)
    boxes = []
    for _ in range(n):
        x, y = draw(coords), draw(coords)
        boxes.append((x, y, x + draw(st.floats(0, 80)), y + draw(st.floats(0, 80))))
    depth = st.one_of(st.floats(0.1, 3.0), st.just(float("nan")))
    depths = draw(st.one_of(st.none(), st.lists(depth, min_size=n, max_size=n)))
    regions = Regions.from_boxes(np.array(boxes), (300, 300), depths_m=depths)
    relations = tuple(
        RelationClause(r, ("a", "b")[: r.anchor_count])
        for r in draw(st.lists(st.sampled_from(_RELATIONS), max_size=2))
    )
    ordinal = draw(st.one_of(st.none(), st.builds(Ordinal, st.sampled_from(_KEYS),
                                                  st.integers(-3, 4).filter(bool))))
    exclusions = ("c",) if draw(st.booleans()) else ()
    target = Target("t", relations=relations, ordinal=ordinal, exclusions=exclusions)
    needed = phrases_to_score(target)
    phrases = needed + tuple(p for p in ("a", "b") if p not in needed)
    row = st.lists(st.floats(0, 1), min_size=len(phrases), max_size=len(phrases))
    matrix = np.array(draw(st.lists(row, min_size=n, max_size=n)))
    return regions, PhraseScores(phrases, matrix), target


@settings(max_examples=150, deadline=None)
@given(scenes_and_targets())
def test_ranking_is_a_sorted_permutation_in_unit_interval(
    case: Tuple[Regions, PhraseScores, Target],
) -> None:
    regions, scores, target = case
    resolution = resolve_target(target, regions, scores)
    indices = [r.index for r in resolution.ranked]
    assert sorted(indices) == list(range(len(regions)))
    values = [r.score for r in resolution.ranked]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values, reverse=True)
    assert all(r.reason.startswith("t ") for r in resolution.ranked)


# --- generated scenes ---------------------------------------------------------------


def test_oracle_reads_pixels_not_labels() -> None:
    rng = np.random.default_rng(0)
    scene = render([SceneObject("red", "square", 14, (60.0, 60.0)),
                    SceneObject("blue", "circle", 14, (200.0, 120.0))], rng)
    oracle = OracleScorer()
    scores = oracle.score(scene.image, scene.masks, ["red square", "blue circle", "circle"])
    assert scores[0, 0] > 0.9 and scores[1, 1] > 0.9 and scores[1, 2] > 0.9
    assert scores[0, 1] < 0.05 and scores[0, 2] < 0.05
    repainted = scene.image.copy()
    repainted[scene.masks[0]] = COLOURS["blue"]  # the "red" square is blue in the pixels now
    again = oracle.score(repainted, scene.masks, ["red square", "blue square"])
    assert again[0, 0] < 0.05 and again[0, 1] > 0.9


COMMANDS = 330


@pytest.fixture(scope="module")
def generated() -> list:
    return generate(COMMANDS, seed=7)


def _run(commands: list, resolver: bool) -> Dict[CommandKind, Tuple[int, int]]:
    oracle = OracleScorer()
    right: Counter = Counter()
    total: Counter = Counter()
    for case in commands:
        parsed = parse_referring(case.command)
        phrases = phrases_to_score(parsed)
        scores = PhraseScores(phrases, oracle.score(case.scene.image, case.scene.masks, phrases))
        if resolver:
            regions = Regions.from_masks(case.scene.masks, case.scene.depths_m)
            found = tuple(r.best.index for r in resolve_command(parsed, regions, scores)
                          if r.best is not None)
        else:  # the noun phrase alone, as today's locator does
            found = tuple(int(np.argmax(scores.column(t.phrase))) for t in parsed.targets)
        total[case.kind] += 1
        right[case.kind] += found == case.answer
    return {kind: (right[kind], total[kind]) for kind in total}


def test_generated_commands_are_resolved(generated: list) -> None:
    by_kind = _run(generated, resolver=True)
    right = sum(r for r, _ in by_kind.values())
    total = sum(t for _, t in by_kind.values())
    assert total >= 300 and set(by_kind) == set(CommandKind)
    assert right / total >= 0.95, by_kind
    assert all(r / t >= 0.8 for r, t in by_kind.values()), by_kind


def test_generated_commands_need_the_resolver(generated: list) -> None:
    """The noun phrase alone cannot answer the relational and ordinal commands: the set
    is not solvable by CLIP-style scoring alone."""
    by_kind = _run(generated, resolver=False)
    spatial = [k for k in CommandKind if k not in (CommandKind.PLAIN, CommandKind.MULTI,
                                                   CommandKind.EXCLUSION)]
    right = sum(by_kind[k][0] for k in spatial)
    total = sum(by_kind[k][1] for k in spatial)
    assert right / total < 0.7, by_kind


def test_generated_answers_fit_their_commands(generated: list) -> None:
    for case in generated:
        assert len(case.answer) == len(parse_referring(case.command).targets), case.command
        assert len(set(case.answer)) == len(case.answer)
        assert all(0 <= i < len(case.scene.objects) for i in case.answer)
        assert case.scene.masks.shape[0] == len(case.scene.objects)


def test_generation_is_deterministic() -> None:
    first = generate(12, seed=3)
    second = generate(12, seed=3)
    assert [c.command for c in first] == [c.command for c in second]
    assert all(np.array_equal(a.scene.image, b.scene.image) for a, b in zip(first, second))


def test_anchor_threshold_is_a_setting() -> None:
    strict = ResolverSettings(anchor_min_score=1.0)
    resolution = answer("take the cup left of the plate", ROW, strict)[0]
    assert resolution.best is not None and "ignored" in resolution.best.reason


def test_parse_result_round_trip_types() -> None:
    parsed = parse_referring("the cup left of the plate")
    assert isinstance(parsed, ReferringCommand)
    assert parsed.targets[0].relations[0].relation is Relation.LEFT_OF
