"""Turn a spoken-style command ("please pick up the red pen") into an object phrase.

The parser is deliberately shallow: it peels politeness, verbs, determiners and a
trailing location off the command and keeps everything else, because attributes
("red", "small wooden") are exactly what the CLIP scorer needs. The target is always
made of words of the command itself, so nothing is invented.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Sequence, Tuple

MAX_COMMAND_CHARS = 200  # only words wholly within this many (normalised) characters are read

# A word: letters/digits with inner apostrophes, hyphens or dots ("where's", "t-shirt",
# "2.5"); commas and ampersands separate the objects of a list; anything else in
# [.!?;] ends a sentence.
_TOKEN_RE = re.compile(r"\w+(?:['\u2019\-.]\w+)*|[,&/]|[.!?;\u3002]+")
_SEPARATORS = frozenset({",", "&", "/"})

Phrase = Tuple[str, ...]


def _phrases(*texts: str) -> Tuple[Phrase, ...]:
    """Split phrases into word tuples, longest first so "pick up" beats "pick"."""
    return tuple(sorted((tuple(t.split()) for t in texts), key=len, reverse=True))


# Said before anything else: "hey robot, ...", "ok so ...".
_INTERJECTIONS = _phrases(
    "hey", "hi", "hello", "ok", "okay", "robot", "hey robot", "so", "now", "and", "then",
    "also", "next", "alright", "right", "well", "um", "uh",
)
_POLITENESS = _phrases(
    "please", "kindly", "just", "quickly", "now",
    "could you", "can you", "would you", "will you", "could you please", "can you please",
    "would you please", "would you mind", "do you mind", "mind",
    "i want you to", "i'd like you to", "i would like you to", "i need you to",
    "try to", "go", "go and", "be so kind as to", "thanks", "thank you",
)
_VERBS = _phrases(
    "take", "pick", "pick up", "grab", "get", "fetch", "bring", "hand", "hand over", "give",
    "pass", "find", "locate", "show", "where is", "where's", "where are", "point to",
    "point at", "reach for", "reach", "lift", "lift up", "hold", "select", "grasp",
    "look for", "look at", "search for", "go get", "go fetch", "identify", "detect",
    "segment", "see", "do you see", "can you see", "i want", "i need", "i'd like",
    "i would like", "taking", "picking", "picking up", "grabbing", "getting", "fetching",
    "bringing", "handing", "giving", "passing", "finding", "locating", "showing",
    "pointing to", "pointing at", "reaching for", "lifting", "holding", "selecting",
    "grasping", "looking for", "searching for", "target", "focus on", "track",
)
_RECIPIENTS = _phrases("me", "us", "over", "up")
_DETERMINERS = _phrases(
    "the", "a", "an", "that", "this", "these", "those", "some", "my", "your", "his",
    "her", "our", "their", "its", "one", "any", "one of", "some of", "any of", "each of",
    "both of", "all of", "pair of", "a pair of", "couple of", "piece of", "two", "three",
    "four", "five", "both", "all", "each", "another",
)
# Cut the object phrase at these: "the pen and the cup" -> "pen".
_LIST_WORDS: FrozenSet[str] = frozenset({"and", "or", "plus", "then", "but"})
# Start of a trailing location or description: "the cup on the table" -> "cup".
_LOCATIVES: FrozenSet[str] = frozenset({
    "on", "from", "in", "at", "near", "next", "beside", "behind", "under", "underneath",
    "over", "inside", "by", "to", "into", "onto", "above", "below", "between", "with",
    "there", "here", "left", "right", "that's", "which", "that", "located", "lying",
    "sitting", "standing",
})
_TRAILING = _phrases(
    "please", "for me", "for us", "thanks", "thank you", "now", "right now", "quickly",
    "if you can", "if possible", "up", "again", "too", "as well", "ok", "okay",
)
# A phrase starting with one of these is a location, not an object: "the one on the left".
_PREPOSITIONS: FrozenSet[str] = frozenset({
    "on", "from", "in", "at", "near", "next", "beside", "behind", "under", "underneath",
    "inside", "by", "to", "into", "onto", "above", "below", "between", "with", "for", "of",
})
# Words that name no object on their own.
_PRONOUNS: FrozenSet[str] = frozenset({
    "it", "them", "something", "anything", "everything", "one", "ones", "thing", "stuff",
    "that", "this", "there", "here",
})
_STOP_CORE: FrozenSet[str] = frozenset({
    "stop", "cancel", "halt", "abort", "quit", "enough", "done", "exit", "end", "nevermind",
    "pause", "freeze",
})
_STOP_FILLER: FrozenSet[str] = frozenset({
    "it", "that", "this", "please", "now", "ok", "okay", "robot", "hey", "thanks", "thank",
    "you", "right", "all", "that's", "so", "just", "tracking", "following", "looking",
    "searching", "moving", "continuous", "mode", "i'm", "i", "am", "we're", "we", "are",
    "never", "mind", "forget", "everything", "the", "task", "search", "for", "be",
    "immediately", "already", "alright",
})


@dataclass(frozen=True)
class ParsedCommand:
    """A parsed command: ``target`` is the object phrase, or None with ``reason`` saying why."""

    command: str
    target: Optional[str]
    reason: str = ""


def normalise(text: str) -> str:
    """NFKC-normalise and casefold, the form every word comparison is made in."""
    return unicodedata.normalize("NFKC", text).casefold()


def _sentences(text: str) -> List[List[str]]:
    """Words and separators of normalised ``text``, by sentence, up to the length cap."""
    sentences: List[List[str]] = [[]]
    for match in _TOKEN_RE.finditer(text):
        if match.end() > MAX_COMMAND_CHARS:
            break
        token = match.group()
        if token[0] in ".!?;\u3002":
            sentences.append([])
        else:
            sentences[-1].append(token)
    return [s for s in sentences if s]


def _key(token: str) -> str:
    return token.replace("\u2019", "'")


def _strip_leading(
    words: List[str], groups: Sequence[Tuple[Phrase, ...]]
) -> Tuple[List[str], bool]:
    """Repeatedly drop a leading phrase from any of ``groups``; also report whether any went."""
    stripped = False
    keys = [_key(w) for w in words]
    start = 0
    while start < len(words):
        if words[start] in _SEPARATORS:
            start += 1
            continue
        for group in groups:
            phrase = next((p for p in group if tuple(keys[start:start + len(p)]) == p), None)
            if phrase is not None:
                start += len(phrase)
                stripped = True
                break
        else:
            break
    return words[start:], stripped


def _strip_trailing(words: List[str]) -> List[str]:
    keys = [_key(w) for w in words]
    end = len(words)
    while end > 0:
        if words[end - 1] in _SEPARATORS:
            end -= 1
            continue
        phrase = next(
            (p for p in _TRAILING if len(p) <= end and tuple(keys[end - len(p):end]) == p), None
        )
        if phrase is None:
            break
        end -= len(phrase)
    return words[:end]


def _first_item(words: List[str]) -> List[str]:
    """Keep the first object of a list: cut at the first separator or list word."""
    for i, word in enumerate(words):
        if i > 0 and (word in _SEPARATORS or word in _LIST_WORDS):
            return words[:i]
    return words


def _drop_locative(words: List[str]) -> List[str]:
    """Cut a trailing location ("on the table"), but never the whole phrase."""
    for i, word in enumerate(words):
        if i > 0 and _key(word) in _LOCATIVES:
            return words[:i]
    return words


def _object_phrase(words: List[str]) -> Tuple[List[str], bool]:
    """The object phrase of one sentence and whether a command verb introduced it."""
    words, _ = _strip_leading(words, (_INTERJECTIONS, _POLITENESS))
    words, had_verb = _strip_leading(words, (_POLITENESS, _VERBS, _RECIPIENTS))
    words, _ = _strip_leading(words, (_POLITENESS, _DETERMINERS))
    words = _first_item(_strip_trailing(words))
    words = _drop_locative(_strip_trailing(words))
    words = [w for w in words if w not in _SEPARATORS]
    if words and _key(words[0]) in _PREPOSITIONS:
        words = []
    if len(words) == 1 and _key(words[0]) in _PRONOUNS:
        words = []
    return words, had_verb


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return f"'{text}'"


def is_stop_command(text: str) -> bool:
    """True for commands that end continuous mode: "stop", "cancel", "stop it.", "" ..."""
    if not isinstance(text, str):
        raise TypeError(f"command must be a str, got {type(text).__name__}")
    words = [_key(w) for s in _sentences(normalise(text)) for w in s if w not in _SEPARATORS]
    if not words:
        return True
    if not all(w in _STOP_CORE or w in _STOP_FILLER for w in words):
        return False
    joined = f" {' '.join(words)} "
    return any(w in _STOP_CORE for w in words) or any(
        f" {phrase} " in joined for phrase in ("never mind", "forget it", "that's all")
    )


def parse_command(text: str) -> ParsedCommand:
    """Find the object phrase in ``text``; never raises for a str.

    Of several sentences, the first one with a command verb and an object wins
    ("I dropped it. Take the cup." -> "cup"), else the first with any object.
    """
    if not isinstance(text, str):
        raise TypeError(f"command must be a str, got {type(text).__name__}")
    if not text.strip():
        return ParsedCommand(text, None, "the command is empty")
    sentences = _sentences(normalise(text))
    if not sentences:
        if re.search(r"\w", text):  # only words longer than the cap
            reason = f"no word ends within the first {MAX_COMMAND_CHARS} characters of"
            return ParsedCommand(text, None, f"{reason} {_quote(text)}")
        return ParsedCommand(text, None, f"no words in {_quote(text)}")
    if is_stop_command(text):
        return ParsedCommand(text, None, f"{_quote(text)} is a stop command, not an object")
    fallback: Optional[List[str]] = None
    for sentence in sentences:
        words, had_verb = _object_phrase(sentence)
        if words and had_verb:
            return ParsedCommand(text, " ".join(words))
        if words and fallback is None:
            fallback = words
    if fallback is not None:
        return ParsedCommand(text, " ".join(fallback))
    return ParsedCommand(text, None, f"no object named in {_quote(text)}")
