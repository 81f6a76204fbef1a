"""Tests for the referring-expression parser: a table of phrasings, equivalence with
command_parser on plain commands, and properties over arbitrary text."""
from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_grasp_locator.core.command_parser import parse_command
from vlm_grasp_locator.core.referring import (
    Ordinal,
    OrderKey,
    ReferringCommand,
    Relation,
    RelationClause,
    Target,
    parse_referring,
)

L, R = Relation.LEFT_OF, Relation.RIGHT_OF


def _command_parser_tests() -> ModuleType:
    """command_parser's own test module, beside this one."""
    path = Path(__file__).resolve().parent / "test_command_parser.py"
    spec = importlib.util.spec_from_file_location("_command_parser_phrasings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PARSER_TESTS = _command_parser_tests()


def T(phrase: str, *relations: Tuple[Relation, str],
      ordinal: Optional[Tuple[OrderKey, int]] = None, exclusions: Sequence[str] = ()) -> Target:
    """An expected target; a relation is (Relation, "anchor") or (BETWEEN, "a|b")."""
    return Target(
        phrase,
        relations=tuple(RelationClause(r, tuple(a.split("|"))) for r, a in relations),
        ordinal=None if ordinal is None else Ordinal(*ordinal),
        exclusions=tuple(exclusions),
    )


def structure(parsed: ReferringCommand) -> Tuple[Target, ...]:
    """The targets less their ``text`` (which the table does not spell out)."""
    return tuple(Target(t.phrase, "", t.relations, t.ordinal, t.exclusions)
                 for t in parsed.targets)


TABLE = [
    # Plain commands: today's phrase.
    ("take the scissors", [T("scissors")]),
    ("Please pick up the red pen.", [T("red pen")]),
    ("can you hand me the blue mug?", [T("blue mug")]),
    # Spatial relations to an anchor.
    ("the cup left of the plate", [T("cup", (L, "plate"))]),
    ("take the cup to the left of the plate", [T("cup", (L, "plate"))]),
    ("grab the cup on the left side of the plate", [T("cup", (L, "plate"))]),
    ("the bottle right of the laptop", [T("bottle", (R, "laptop"))]),
    ("point at the apple to the right of the bowl", [T("apple", (R, "bowl"))]),
    ("take the book above the shelf", [T("book", (Relation.ABOVE, "shelf"))]),
    ("the spoon below the bowl", [T("spoon", (Relation.BELOW, "bowl"))]),
    ("grab the mug under the lamp", [T("mug", (Relation.BELOW, "lamp"))]),
    ("the pen next to the keyboard", [T("pen", (Relation.NEAR, "keyboard"))]),
    ("the pen near the keyboard", [T("pen", (Relation.NEAR, "keyboard"))]),
    ("hand me the phone beside the laptop", [T("phone", (Relation.NEAR, "laptop"))]),
    ("the stapler by the monitor", [T("stapler", (Relation.NEAR, "monitor"))]),
    ("the cup right next to the plate", [T("cup", (Relation.NEAR, "plate"))]),
    ("take the apple on the plate", [T("apple", (Relation.ON, "plate"))]),
    ("the apple on top of the box", [T("apple", (Relation.ON, "box"))]),
    ("take the cup on the table", [T("cup", (Relation.ON, "table"))]),
    ("the cup that is on the table", [T("cup", (Relation.ON, "table"))]),
    ("get the keys in the bowl", [T("keys", (Relation.IN, "bowl"))]),
    ("the pen inside the drawer", [T("pen", (Relation.IN, "drawer"))]),
    ("the cup in front of the laptop", [T("cup", (Relation.IN_FRONT_OF, "laptop"))]),
    ("the bottle behind the box", [T("bottle", (Relation.BEHIND, "box"))]),
    ("the mug closest to the sink", [T("mug", (Relation.CLOSEST_TO, "sink"))]),
    ("the closest cup to the plate", [T("cup", (Relation.CLOSEST_TO, "plate"))]),
    ("the cup nearest the plate", [T("cup", (Relation.CLOSEST_TO, "plate"))]),
    ("the cup farthest from the plate", [T("cup", (Relation.FARTHEST_FROM, "plate"))]),
    ("the cup between the plate and the bowl", [T("cup", (Relation.BETWEEN, "plate|bowl"))]),
    ("the cup in between the bowl and the red plate",
     [T("cup", (Relation.BETWEEN, "bowl|red plate"))]),
    ("the banana to the right of the bowl and left of the cup",
     [T("banana", (R, "bowl"), (L, "cup"))]),
    ("the red cup left of the blue one", [T("red cup", (L, "blue object"))]),
    # Ordinals along an axis.
    ("the second bottle from the left", [T("bottle", ordinal=(OrderKey.LEFT, 2))]),
    ("the third cup from the right", [T("cup", ordinal=(OrderKey.RIGHT, 3))]),
    ("the bottle second from the left", [T("bottle", ordinal=(OrderKey.LEFT, 2))]),
    ("please take the second mug from the right for me", [T("mug", ordinal=(OrderKey.RIGHT, 2))]),
    ("the 2nd cup from the left", [T("cup", ordinal=(OrderKey.LEFT, 2))]),
    ("the second book from the top", [T("book", ordinal=(OrderKey.TOP, 2))]),
    ("the third from the right", [T("object", ordinal=(OrderKey.RIGHT, 3))]),
    ("the second one from the left", [T("object", ordinal=(OrderKey.LEFT, 2))]),
    ("the second cup on the left", [T("cup", ordinal=(OrderKey.LEFT, 2))]),
    ("the last cup on the right", [T("cup", ordinal=(OrderKey.RIGHT, 1))]),
    ("the last bottle from the left", [T("bottle", ordinal=(OrderKey.LEFT, -1))]),
    ("the second bottle", [T("bottle", ordinal=(OrderKey.LEFT, 2))]),
    # Superlatives: extremes along an axis, by size, by distance from the camera.
    ("the leftmost cup", [T("cup", ordinal=(OrderKey.LEFT, 1))]),
    ("the rightmost bottle", [T("bottle", ordinal=(OrderKey.RIGHT, 1))]),
    ("the topmost book", [T("book", ordinal=(OrderKey.TOP, 1))]),
    ("the lowest drawer", [T("drawer", ordinal=(OrderKey.BOTTOM, 1))]),
    ("the cup on the left", [T("cup", ordinal=(OrderKey.LEFT, 1))]),
    ("the cup on the far right", [T("cup", ordinal=(OrderKey.RIGHT, 1))]),
    ("the one on the left", [T("object", ordinal=(OrderKey.LEFT, 1))]),
    ("the left one", [T("object", ordinal=(OrderKey.LEFT, 1))]),
    ("the cup in the middle", [T("cup", ordinal=(OrderKey.MIDDLE, 1))]),
    ("the middle cup", [T("cup", ordinal=(OrderKey.MIDDLE, 1))]),
    ("the bottle at the top", [T("bottle", ordinal=(OrderKey.TOP, 1))]),
    ("the biggest box", [T("box", ordinal=(OrderKey.LARGEST, 1))]),
    ("grab the largest apple", [T("apple", ordinal=(OrderKey.LARGEST, 1))]),
    ("the smallest screwdriver", [T("screwdriver", ordinal=(OrderKey.SMALLEST, 1))]),
    ("the second biggest box", [T("box", ordinal=(OrderKey.LARGEST, 2))]),
    ("the smallest red block", [T("red block", ordinal=(OrderKey.SMALLEST, 1))]),
    ("the mug closest to me", [T("mug", ordinal=(OrderKey.NEAREST, 1))]),
    ("the cup closest to you", [T("cup", ordinal=(OrderKey.NEAREST, 1))]),
    ("bring me the mug in front of me", [T("mug", ordinal=(OrderKey.NEAREST, 1))]),
    ("the apple near me", [T("apple", ordinal=(OrderKey.NEAREST, 1))]),
    ("the nearest cup", [T("cup", ordinal=(OrderKey.NEAREST, 1))]),
    ("the one closest to me", [T("object", ordinal=(OrderKey.NEAREST, 1))]),
    ("grab whichever cup is closest to me", [T("cup", ordinal=(OrderKey.NEAREST, 1))]),
    ("the farthest bottle", [T("bottle", ordinal=(OrderKey.FARTHEST, 1))]),
    ("the cup furthest from me", [T("cup", ordinal=(OrderKey.FARTHEST, 1))]),
    ("the cup at the back", [T("cup", ordinal=(OrderKey.FARTHEST, 1))]),
    ("the front cup", [T("cup", ordinal=(OrderKey.NEAREST, 1))]),
    # Exclusions.
    ("the red one, not the blue one", [T("red object", exclusions=["blue object"])]),
    ("the red one but not the blue one", [T("red object", exclusions=["blue object"])]),
    ("I want the red one not the blue one", [T("red object", exclusions=["blue object"])]),
    ("the cup, not the blue one", [T("cup", exclusions=["blue object"])]),
    ("the cup that isn't red", [T("cup", exclusions=["red cup"])]),
    ("take any cup except the broken one", [T("cup", exclusions=["broken object"])]),
    ("the pen, not the pencil", [T("pen", exclusions=["pencil"])]),
    # Several targets, in order.
    ("the pen and the cup", [T("pen"), T("cup")]),
    ("pick up the pen and then the cup", [T("pen"), T("cup")]),
    ("first the pen, then the cup", [T("pen"), T("cup")]),
    ("take the pen, the cup and the box", [T("pen"), T("cup"), T("box")]),
    ("grab the pen followed by the red cup", [T("pen"), T("red cup")]),
    ("Can you pass me the salt? Then the pepper.", [T("salt"), T("pepper")]),
    ("take the pen. take the cup.", [T("pen"), T("cup")]),
    ("the red cup left of the plate and the blue pen",
     [T("red cup", (L, "plate")), T("blue pen")]),
    ("grab the bottle, then the mug next to it",
     [T("bottle"), T("mug", (Relation.NEAR, "bottle"))]),
    ("pick up the biggest box and then the cup on the left",
     [T("box", ordinal=(OrderKey.LARGEST, 1)), T("cup", ordinal=(OrderKey.LEFT, 1))]),
    ("grab the bottle, the second one from the left", [T("bottle", ordinal=(OrderKey.LEFT, 2))]),
    # Politeness and filler.
    ("hey robot, could you please hand me the small red cup on the left, thanks",
     [T("small red cup", ordinal=(OrderKey.LEFT, 1))]),
    ("um, so, like, take the cup", [T("cup")]),
    ("would you mind picking up the mug behind the laptop for me please",
     [T("mug", (Relation.BEHIND, "laptop"))]),
    ("Okay robot. Now grab the second bottle from the left, thank you!",
     [T("bottle", ordinal=(OrderKey.LEFT, 2))]),
    ("the black and white mug", [T("black and white mug")]),
    ("take the first aid kit", [T("first aid kit")]),
]


@pytest.mark.parametrize(("command", "expected"), TABLE, ids=[c for c, _ in TABLE])
def test_table(command: str, expected: Sequence[Target]) -> None:
    parsed = parse_referring(command)
    assert structure(parsed) == tuple(expected), parsed
    assert parsed.unparsed == ()
    assert parsed.reason == ""


def test_table_is_large() -> None:
    assert len(TABLE) >= 60


@pytest.mark.parametrize(
    ("command", "targets", "unparsed"),
    [
        ("give the salt or pepper", [T("salt")], ("or pepper",)),
        ("grab the pen then put it in the drawer", [T("pen")], ("put it in the drawer",)),
        ("the cup with the red handle", [T("cup")], ("with the red handle",)),
        ("the cup left of it", [T("cup")], ("left of it",)),
        ("I dropped something. Take the cup.", [T("cup")], ("i dropped something",)),
        ("the smallest cup on the left", [T("cup", ordinal=(OrderKey.SMALLEST, 1))],
         ("on the left",)),
    ],
)
def test_what_is_not_understood_is_listed(command: str, targets: Sequence[Target],
                                          unparsed: Tuple[str, ...]) -> None:
    parsed = parse_referring(command)
    assert structure(parsed) == tuple(targets)
    assert parsed.unparsed == unparsed


def _parametrized(test: object, name: str) -> list:
    """The parameter list of a test of test_command_parser (its own phrasings)."""
    marks = [m for m in getattr(test, "pytestmark") if m.name == "parametrize"]
    assert marks and name in marks[0].args[0]
    return list(marks[0].args[1])


@pytest.mark.parametrize(("command", "target"),
                         _parametrized(_PARSER_TESTS.test_targets, "command"))
def test_first_target_is_command_parsers_phrase(command: str, target: str) -> None:
    parsed = parse_referring(command)
    assert parsed.targets, parsed
    assert parsed.targets[0].phrase == target == parse_command(command).target


PLAIN = [
    command for command, _ in _parametrized(_PARSER_TESTS.test_targets, "command")
    if not re.search(r"\b(and|or|on|from|over|right|left)\b|,|[.!?]\s+\S", command, re.IGNORECASE)
]


@pytest.mark.parametrize("command", PLAIN)
def test_plain_command_is_one_plain_target(command: str) -> None:
    parsed = parse_referring(command)
    assert len(parsed.targets) == 1
    assert parsed.targets[0].is_plain
    assert parsed.targets[0].phrase == parse_command(command).target
    assert parsed.unparsed == ()


def test_plain_list_is_large_enough() -> None:
    assert len(PLAIN) >= 30


@pytest.mark.parametrize(
    ("command", "reason"),
    [(c, r) for c, r in _parametrized(_PARSER_TESTS.test_no_target, "command")
     if c != "the one on the left"],
)
def test_no_target_like_command_parser(command: str, reason: str) -> None:
    parsed = parse_referring(command)
    assert parsed.targets == ()
    assert parsed.reason == reason == parse_command(command).reason


def test_the_one_on_the_left_is_now_understood() -> None:
    # command_parser finds no noun here; the referring parser reads the position.
    assert structure(parse_referring("the one on the left")) == (
        T("object", ordinal=(OrderKey.LEFT, 1)),)


def test_target_text_is_its_part_of_the_command() -> None:
    parsed = parse_referring("pick up the pen and then the cup left of the plate")
    assert [t.text for t in parsed.targets] == ["pick up the pen", "the cup left of the plate"]


def test_ordinal_describe() -> None:
    assert Ordinal(OrderKey.LEFT, 2).describe() == "2nd from the left"
    assert Ordinal(OrderKey.RIGHT, 1).describe() == "rightmost"
    assert Ordinal(OrderKey.LARGEST, 3).describe() == "3rd largest"
    assert Ordinal(OrderKey.LEFT, -1).describe() == "last from the left"
    assert Ordinal(OrderKey.TOP, 11).describe() == "11th from the top"


@pytest.mark.parametrize("bad", [None, 3, b"take the pen"])
def test_non_str_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_referring(bad)  # type: ignore[arg-type]


def _words(text: str) -> set:
    return set(re.findall(r"\w+", text))


def _check(text: str) -> None:
    parsed = parse_referring(text)
    assert parsed.command == text
    assert bool(parsed.targets) != bool(parsed.reason)
    normalised = unicodedata.normalize("NFKC", text).casefold()
    words = _words(normalised) | {"object"}
    for target in parsed.targets:
        assert target.phrase and target.phrase == target.phrase.strip()
        assert _words(target.phrase) <= words
        for clause in target.relations:
            assert len(clause.anchors) == clause.relation.anchor_count
            assert all(a and _words(a) <= words for a in clause.anchors)
        assert all(e and _words(e) <= words for e in target.exclusions)
        if target.ordinal is not None:
            assert target.ordinal.rank != 0
    assert all(isinstance(u, str) and u for u in parsed.unparsed)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    _check(text)


_VOCAB = ["take", "the", "a", "pick", "up", "please", "red", "blue", "one", "cup", "pen",
          "and", "then", "first", "not", "but", "except", "left", "right", "of", "to", "on",
          "in", "front", "behind", "between", "next", "closest", "nearest", "farthest",
          "me", "it", "second", "third", "last", "from", "biggest", "smallest", "leftmost",
          "top", "bottom", "middle", ",", ".", "?", "or", "that", "isn't", "is", "me", "you",
          "with", "far", "most", "ones", "whichever", "put", "thanks", "stop", "black", "white"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_VOCAB), max_size=16))
def test_never_raises_on_relation_words(words: list) -> None:
    _check(" ".join(words))


def test_long_input_is_capped_not_slow() -> None:
    parsed = parse_referring("take the cup left of the " + "very " * 10_000 + "big plate")
    assert parsed.targets[0].phrase == "cup"
