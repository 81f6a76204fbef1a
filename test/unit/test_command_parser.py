"""Tests for the command parser: the required table, more phrasing, and properties."""
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_grasp_locator.core.command_parser import (
    MAX_COMMAND_CHARS,
    ParsedCommand,
    is_stop_command,
    parse_command,
)


@pytest.mark.parametrize(
    ("command", "target"),
    [
        # The required table.
        ("take the scissors", "scissors"),
        ("pick the pen", "pen"),
        ("Please pick up the red pen.", "red pen"),
        ("grab a screwdriver", "screwdriver"),
        ("can you hand me the blue mug?", "blue mug"),
        ("scissors", "scissors"),
        # Attributes are kept.
        ("the small wooden spoon", "small wooden spoon"),
        ("take the big shiny metal spoon", "big shiny metal spoon"),
        # Politeness, before and after.
        ("Could you please bring me the cup, thanks!", "cup"),
        ("kindly lift the heavy black box for me", "heavy black box"),
        ("I want you to fetch my keys", "keys"),
        ("would you mind picking up the green cup", "green cup"),
        ("take the apple please", "apple"),
        ("thank you, take the apple", "apple"),
        ("Hey robot, take the cup", "cup"),
        # Verbs and verb phrases.
        ("where's the stapler?", "stapler"),
        ("Where\u2019s the stapler?", "stapler"),
        ("where is my phone", "phone"),
        ("go get the tape measure", "tape measure"),
        ("show me the remote control", "remote control"),
        ("point to the banana", "banana"),
        ("reach for the t-shirt", "t-shirt"),
        ("locate that bottle", "bottle"),
        ("select this box", "box"),
        ("hold your cup", "cup"),
        ("find some tape", "tape"),
        ("give me one marker", "marker"),
        ("pick the pen up", "pen"),
        ("I want the orange", "orange"),
        # Determiners, quantities and "pair of".
        ("grab an egg", "egg"),
        ("take a pair of scissors", "scissors"),
        ("take two apples", "apples"),
        # Lists: the first object.
        ("pick the pen and the cup", "pen"),
        ("pick the pen, the cup and the box", "pen"),
        ("give the salt or pepper", "salt"),
        # Trailing locations.
        ("take the cup on the table", "cup"),
        ("take the cup from the table", "cup"),
        ("go get the tape measure over there", "tape measure"),
        ("point at the apple to the right of the bowl", "apple"),
        # Sentences: the one with a command verb wins.
        ("I dropped something. Take the cup.", "cup"),
        # Unicode, case and spacing.
        ("TAKE   THE    SCISSORS", "scissors"),
        ("\uff34\uff21\uff2b\uff25\u3000\uff34\uff28\uff25\u3000\uff30\uff25\uff2e", "pen"),
        ("take the Stra\u00dfe sign", "strasse sign"),
        ("take the caf\u0065\u0301 mug", "caf\u00e9 mug"),
        ("take the 2.5 mm screw", "2.5 mm screw"),
        ("\ttake\nthe\r\ncup  ", "cup"),
    ],
)
def test_targets(command: str, target: str) -> None:
    parsed = parse_command(command)
    assert parsed == ParsedCommand(command, target, "")


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("", "the command is empty"),
        ("   ", "the command is empty"),
        ("\n\t", "the command is empty"),
        ("take the", "no object named in 'take the'"),
        ("please", "no object named in 'please'"),
        ("take it", "no object named in 'take it'"),
        ("the one on the left", "no object named in 'the one on the left'"),
        ("?!", "no words in '?!'"),
        ("stop", "'stop' is a stop command, not an object"),
    ],
)
def test_no_target(command: str, reason: str) -> None:
    parsed = parse_command(command)
    assert parsed.command == command
    assert parsed.target is None
    assert parsed.reason == reason


def test_reason_quotes_long_commands_briefly() -> None:
    parsed = parse_command("take the " + "the " * 100)
    assert parsed.target is None
    assert len(parsed.reason) < 100


def test_very_long_input_is_capped() -> None:
    parsed = parse_command("take the " + "very " * 10_000 + "big pen")
    assert parsed.target is not None
    assert len(parsed.target) <= MAX_COMMAND_CHARS
    assert parsed.target.split()[0] == "very"


def test_one_huge_word_gives_no_target_not_a_crash() -> None:
    parsed = parse_command("x" * 100_000)
    assert parsed.target is None
    assert "first 200 characters" in parsed.reason


@pytest.mark.parametrize("bad", [None, 3, b"take the pen", ["take", "the", "pen"]])
def test_non_str_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_command(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        is_stop_command(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "command",
    ["stop", "Stop!", "stop it.", "cancel", "", "   ", "please stop now", "Never mind",
     "forget it", "that's all", "I'm done", "ok robot, halt", "STOP TRACKING"],
)
def test_stop_commands(command: str) -> None:
    assert is_stop_command(command)


@pytest.mark.parametrize(
    "command",
    ["take the scissors", "stop the pen", "never", "mind the cup", "scissors", "thank you",
     "the end table"],
)
def test_not_stop_commands(command: str) -> None:
    assert not is_stop_command(command)


def _words(text: str) -> set:
    return set(re.findall(r"\w+", text))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_never_raises_and_target_is_from_command(text: str) -> None:
    parsed = parse_command(text)
    assert parsed.command == text
    if parsed.target is None:
        assert parsed.reason
        return
    assert parsed.reason == ""
    assert parsed.target and parsed.target == parsed.target.strip()
    normalised = unicodedata.normalize("NFKC", text).casefold()
    for word in parsed.target.split(" "):
        assert word and word in normalised
        assert _words(word) <= _words(normalised)


_VOCAB = ["take", "the", "a", "pick", "up", "please", "red", "pen", "cup", "and", "on",
          "table", "me", "hand", "could", "you", "stop", "it", ",", ".", "?", "where's",
          "\u00c9clair", "t-shirt", "for", "one", "of", "pair"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_VOCAB), max_size=12), st.sampled_from([" ", "  ", "\t"]))
def test_wordy_commands_keep_words_of_the_command(words: list, sep: str) -> None:
    text = sep.join(words)
    parsed = parse_command(text)
    if parsed.target is not None:
        command_words = set(unicodedata.normalize("NFKC", text).casefold().split())
        command_words |= {w.strip(",.?") for w in command_words}
        assert set(parsed.target.split()) <= command_words
