"""Referring expressions in commands: several targets, relations, ordinals, exclusions.

"pick up the second bottle from the left, then the mug next to the keyboard" becomes
two ``Target``s, each with the noun phrase TinyCLIP scores ("bottle", "mug") and what
CLIP cannot judge on an isolated crop (ReCLIP, Subramanian et al. 2022): spatial
relations to anchor phrases, an ordinal or superlative, and excluded phrases. The
geometry is resolved by ``vlm_grasp_locator.core.relations``.

The noun phrases are cleaned by ``command_parser.parse_command`` itself, so a plain
command ("please take the red pen") gives exactly the phrase it gives today. The parser
never raises for a str; whatever it did not understand is listed in
``ReferringCommand.unparsed``. Pure: standard library and ``command_parser`` only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from vlm_grasp_locator.core.command_parser import (
    MAX_COMMAND_CHARS,
    is_stop_command,
    normalise,
    parse_command,
)


class Relation(Enum):
    """A spatial relation of a target to one anchor (two for BETWEEN)."""

    LEFT_OF = "left of"
    RIGHT_OF = "right of"
    ABOVE = "above"
    BELOW = "below"
    NEAR = "next to"
    ON = "on"
    IN = "in"
    IN_FRONT_OF = "in front of"
    BEHIND = "behind"
    CLOSEST_TO = "closest to"
    FARTHEST_FROM = "farthest from"
    BETWEEN = "between"

    @property
    def anchor_count(self) -> int:
        return 2 if self is Relation.BETWEEN else 1


class OrderKey(Enum):
    """What an ordinal or superlative counts along."""

    LEFT = "from the left"
    RIGHT = "from the right"
    TOP = "from the top"
    BOTTOM = "from the bottom"
    MIDDLE = "from the middle"
    LARGEST = "largest"
    SMALLEST = "smallest"
    NEAREST = "nearest"  # to the camera (the speaker stands by the robot)
    FARTHEST = "farthest"


_EXTREME_WORDS: Dict[OrderKey, str] = {
    OrderKey.LEFT: "leftmost",
    OrderKey.RIGHT: "rightmost",
    OrderKey.TOP: "topmost",
    OrderKey.BOTTOM: "bottommost",
    OrderKey.MIDDLE: "middle",
    OrderKey.LARGEST: "largest",
    OrderKey.SMALLEST: "smallest",
    OrderKey.NEAREST: "nearest",
    OrderKey.FARTHEST: "farthest",
}


def _ordinal_word(rank: int) -> str:
    if rank < 0:
        return "last" if rank == -1 else f"{_ordinal_word(-rank)} to last"
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


@dataclass(frozen=True)
class Ordinal:
    """The ``rank``-th candidate along ``key``: 1 is the first, -1 the last.

    "leftmost" is (LEFT, 1), "third from the right" (RIGHT, 3), "second biggest"
    (LARGEST, 2), "closest to me" (NEAREST, 1).
    """

    key: OrderKey
    rank: int = 1

    def describe(self) -> str:
        if self.rank == 1:
            return _EXTREME_WORDS[self.key]
        return f"{_ordinal_word(self.rank)} {self.key.value}"


@dataclass(frozen=True)
class RelationClause:
    """``relation`` to the region(s) best matching ``anchors`` (two phrases for BETWEEN)."""

    relation: Relation
    anchors: Tuple[str, ...]

    def describe(self) -> str:
        return f"{self.relation.value} {' and '.join(self.anchors)}"


@dataclass(frozen=True)
class Target:
    """One object to find.

    ``phrase`` is what the crop scorer sees: the command's own words, cleaned as
    ``parse_command`` cleans them, less ordinal words; a pronoun head ("the red one")
    becomes "object" ("red object"). ``text`` is the part of the command it came from.
    """

    phrase: str
    text: str = ""
    relations: Tuple[RelationClause, ...] = ()
    ordinal: Optional[Ordinal] = None
    exclusions: Tuple[str, ...] = ()

    @property
    def is_plain(self) -> bool:
        """True when the phrase alone decides (no relation, ordinal or exclusion)."""
        return not self.relations and self.ordinal is None and not self.exclusions


@dataclass(frozen=True)
class ReferringCommand:
    """A parsed command: targets in the order they are to be taken.

    ``unparsed`` lists the parts that were read but not understood (they did not change
    the targets); ``reason`` says why there is no target when ``targets`` is empty.
    """

    command: str
    targets: Tuple[Target, ...]
    unparsed: Tuple[str, ...] = ()
    reason: str = ""


# --- words -------------------------------------------------------------------------

# The same tokens as command_parser reads: words with inner apostrophes, hyphens or
# dots, the list separators, and sentence ends.
_TOKEN_RE = re.compile(r"\w+(?:['\u2019\-.]\w+)*|[,&/]|[.!?;\u3002]+")
_SEPARATORS: FrozenSet[str] = frozenset({",", "&", "/"})
_SENTENCE_ENDS = ".!?;\u3002"
_PROBE = "xyzzyq"  # a word that is no command verb; see _has_command_verb

Words = Tuple[str, ...]


def _key(token: str) -> str:
    return token.replace("\u2019", "'")


class _CueKind(Enum):
    RELATION = "relation"
    POSITION = "position"  # "on the left": an extreme along an axis
    AXIS = "axis"  # "from the left": the direction an ordinal counts in
    EXCLUDE = "exclude"
    FILLER = "filler"


@dataclass(frozen=True)
class _Cue:
    kind: _CueKind
    relation: Optional[Relation] = None
    order: Optional[OrderKey] = None


def _build_cues() -> Dict[Words, _Cue]:
    cues: Dict[Words, _Cue] = {}

    def add(kind: _CueKind, texts: Sequence[str], relation: Optional[Relation] = None,
            order: Optional[OrderKey] = None) -> None:
        for text in texts:
            cues[tuple(text.split())] = _Cue(kind, relation, order)

    rel, pos, axis = _CueKind.RELATION, _CueKind.POSITION, _CueKind.AXIS
    sides = ("", " side", "-hand side", " hand side")
    for word, relation, order in (("left", Relation.LEFT_OF, OrderKey.LEFT),
                                  ("right", Relation.RIGHT_OF, OrderKey.RIGHT)):
        for pre in ("", "to the ", "on the ", "at the ", "just ", "just to the "):
            add(rel, [f"{pre}{word}{side} of" for side in sides], relation)
        add(rel, [f"{word} from", f"to the {word} from"], relation)
        places = ("on the ", "to the ", "at the ", "on the far ", "to the far ", "at the far ",
                  "far ")
        add(pos, [f"{pre}{word}{side}" for pre in places for side in sides], order=order)
        add(pos, [f"furthest to the {word}", f"farthest to the {word}", f"most to the {word}",
                  f"furthest {word}", f"farthest {word}"], order=order)
        add(axis, [f"from the {word}", f"from {word}", f"counting from the {word}",
                   f"starting from the {word}", f"from the {word} side",
                   f"from the {word}-hand side"], order=order)
    add(axis, ["from left to right"], order=OrderKey.LEFT)
    add(axis, ["from right to left"], order=OrderKey.RIGHT)
    add(axis, ["from the top", "from top", "counting from the top", "from the top down"],
        order=OrderKey.TOP)
    add(axis, ["from the bottom", "from bottom", "counting from the bottom"],
        order=OrderKey.BOTTOM)
    add(axis, ["from the front", "counting from the front"], order=OrderKey.NEAREST)
    add(axis, ["from the back", "counting from the back"], order=OrderKey.FARTHEST)
    add(pos, ["at the top", "on top", "on the top", "at the very top", "up top", "highest up"],
        order=OrderKey.TOP)
    add(pos, ["at the bottom", "on the bottom", "at the very bottom", "lowest down"],
        order=OrderKey.BOTTOM)
    add(pos, ["in the middle", "in the center", "in the centre", "in the very middle",
              "at the center", "at the centre", "in the middle of the row"],
        order=OrderKey.MIDDLE)
    add(pos, ["in front", "in the front", "at the front"], order=OrderKey.NEAREST)
    add(pos, ["in the back", "at the back", "in the rear", "at the rear", "at the far end"],
        order=OrderKey.FARTHEST)
    add(rel, ["above", "over", "higher than", "up from"], Relation.ABOVE)
    add(rel, ["below", "under", "underneath", "beneath", "lower than", "down from"],
        Relation.BELOW)
    add(rel, ["next to", "near", "near to", "nearby", "beside", "by", "close to", "close by",
              "adjacent to", "alongside", "by the side of", "touching"], Relation.NEAR)
    add(rel, ["on", "on top of", "on the top of", "onto", "upon", "atop", "resting on", "off",
              "off of", "from"], Relation.ON)
    add(rel, ["in", "inside", "inside of", "within", "into", "out of", "in the middle of"],
        Relation.IN)
    add(rel, ["in front of", "before"], Relation.IN_FRONT_OF)
    add(rel, ["behind", "in back of", "at the back of", "back of"], Relation.BEHIND)
    add(rel, ["closest to", "nearest to", "closest", "nearest", "nearer to", "closer to"],
        Relation.CLOSEST_TO)
    add(rel, ["farthest from", "furthest from", "farthest away from", "furthest away from",
              "farthest", "furthest", "far from", "far away from", "away from",
              "most distant from"], Relation.FARTHEST_FROM)
    add(rel, ["between", "in between", "in the middle between"], Relation.BETWEEN)
    add(_CueKind.EXCLUDE, [
        "not", "but not", "and not", "except", "except for", "excluding", "other than",
        "rather than", "instead of", "apart from", "isn't", "aren't", "is not", "are not",
        "that isn't", "which isn't", "that is not", "which is not", "that's not",
        "that aren't", "that are not", "not the one", "but not the one", "never",
    ])
    add(_CueKind.FILLER, [
        "that", "which", "who", "is", "are", "'s", "that's", "which's", "it's", "located",
        "sitting", "lying", "standing", "placed", "positioned", "there", "here", "over there",
        "over here", "right there", "right here", "right", "just", "directly", "immediately",
        "please", "thanks", "thank you", "for me", "for us", "now", "right now", "one",
        "the one", "again", "too", "as well", "up", "ok", "okay", "if you can",
        "if possible", "quickly", "exactly", "also", "and", "but", "the", "a", "an", "seen",
        "over", "away",
    ])
    # "over" alone is ABOVE; as the last word ("hand it over") FILLER is chosen in
    # _match_cue. Re-add ABOVE so the table keeps the relation.
    cues[("over",)] = _Cue(rel, Relation.ABOVE)
    return cues


@lru_cache(maxsize=1)
def _cues() -> Tuple[Dict[Words, _Cue], int]:
    """The cue table and its longest cue, built on first use (no work at import time)."""
    table = _build_cues()
    return table, max(len(words) for words in table)


def _match_cue(keys: Sequence[str], i: int, end: int) -> Optional[Tuple[int, _Cue]]:
    """The longest cue starting at ``keys[i]`` (within ``end``), with its length."""
    table, longest = _cues()
    for length in range(min(longest, end - i), 0, -1):
        cue = table.get(tuple(keys[i:i + length]))
        if cue is not None:
            if keys[i] == "over" and length == 1 and i + 1 >= end:
                return 1, _Cue(_CueKind.FILLER)
            return length, cue
    return None


_ORDINAL_NUMBERS: Dict[str, int] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
    "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3,
    "4th": 4, "5th": 5, "6th": 6, "7th": 7, "8th": 8, "9th": 9, "10th": 10, "last": -1,
    "second-to-last": -2, "second-last": -2, "penultimate": -2, "third-to-last": -3,
}
# Superlatives and position adjectives in the noun phrase: "the leftmost cup".
_HEAD_ORDER: Dict[str, OrderKey] = {
    "leftmost": OrderKey.LEFT, "left-most": OrderKey.LEFT, "left": OrderKey.LEFT,
    "rightmost": OrderKey.RIGHT, "right-most": OrderKey.RIGHT, "right": OrderKey.RIGHT,
    "topmost": OrderKey.TOP, "top-most": OrderKey.TOP, "uppermost": OrderKey.TOP,
    "highest": OrderKey.TOP, "top": OrderKey.TOP, "upper": OrderKey.TOP,
    "bottommost": OrderKey.BOTTOM, "bottom-most": OrderKey.BOTTOM, "lowest": OrderKey.BOTTOM,
    "bottom": OrderKey.BOTTOM, "lower": OrderKey.BOTTOM,
    "middle": OrderKey.MIDDLE, "center": OrderKey.MIDDLE, "centre": OrderKey.MIDDLE,
    "central": OrderKey.MIDDLE, "middlemost": OrderKey.MIDDLE,
    "biggest": OrderKey.LARGEST, "largest": OrderKey.LARGEST, "bigger": OrderKey.LARGEST,
    "larger": OrderKey.LARGEST,
    "smallest": OrderKey.SMALLEST, "tiniest": OrderKey.SMALLEST, "littlest": OrderKey.SMALLEST,
    "smaller": OrderKey.SMALLEST,
    "nearest": OrderKey.NEAREST, "closest": OrderKey.NEAREST, "nearer": OrderKey.NEAREST,
    "closer": OrderKey.NEAREST, "frontmost": OrderKey.NEAREST, "front": OrderKey.NEAREST,
    "farthest": OrderKey.FARTHEST, "furthest": OrderKey.FARTHEST,
    "farther": OrderKey.FARTHEST, "further": OrderKey.FARTHEST,
    "backmost": OrderKey.FARTHEST, "rearmost": OrderKey.FARTHEST, "back": OrderKey.FARTHEST,
}
_PROXIMITY_WORDS: FrozenSet[str] = frozenset({
    "nearest", "closest", "nearer", "closer", "farthest", "furthest", "farther", "further",
})
_COPULAS: FrozenSet[str] = frozenset({"is", "are", "was", "were", "that's", "which's"})
_WHICHEVER: FrozenSet[str] = frozenset({"whichever", "whatever", "any"})
_COMPOUNDS: FrozenSet[Words] = frozenset({("first", "aid"), ("top", "hat"), ("back", "scratcher")})
_PRONOUN_HEADS: FrozenSet[str] = frozenset({"one", "ones", "thing", "things"})
_PRONOUNS: FrozenSet[str] = _PRONOUN_HEADS | frozenset({"it", "them", "something"})
_SPEAKER: FrozenSet[Words] = frozenset({
    ("me",), ("us",), ("you",), ("yourself",), ("myself",), ("robot",), ("the", "robot"),
    ("camera",), ("the", "camera"), ("the", "viewer"), ("the", "speaker"),
})
_DETERMINERS: FrozenSet[str] = frozenset({
    "the", "a", "an", "that", "this", "my", "your", "our", "its", "their", "his", "her",
})
# Attribute words: "not red" means "not a red <head>", and "black and white" is one phrase.
_ADJECTIVES: FrozenSet[str] = frozenset({
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "grey",
    "gray", "brown", "silver", "gold", "golden", "dark", "light", "transparent", "clear",
    "big", "small", "large", "tiny", "little", "tall", "short", "long", "wooden", "metal",
    "plastic", "glass", "paper", "empty", "full", "open", "closed", "broken", "new", "old",
    "dirty", "clean", "striped", "round", "square",
})
# Said between objects of a list: split there ("the pen and then the cup").
_SEQUENCE_SPLITS: FrozenSet[Words] = frozenset(
    tuple(t.split()) for t in (
        "and", "then", "and then", "after that", "and after that", "afterwards",
        "and afterwards", "followed by", "plus", "as well as", "and also", "and finally",
        "finally", "next", "and next", "and lastly", "lastly", "along with",
    )
)
_ALTERNATIVE_SPLITS: FrozenSet[Words] = frozenset({("or",), ("or", "else")})
# Dropped from the start of a clause: "first the pen, then the cup".
_LEADING_MARKERS: Tuple[Words, ...] = tuple(sorted(
    (tuple(t.split()) for t in (
        "first", "firstly", "first of all", "to start", "to begin with", "start with",
        "then", "and", "and then", "next", "after that", "afterwards", "finally", "lastly",
        "also", "plus", "after", "followed by", "then also",
    )), key=len, reverse=True))
# A later clause starting with one of these is another action, not another object.
_OTHER_VERBS: FrozenSet[str] = frozenset({
    "put", "place", "set", "drop", "move", "throw", "toss", "leave", "open", "close", "push",
    "pour", "turn", "wipe", "clean", "use", "stack", "return", "release", "let", "wait",
    "stop", "go", "come", "shake", "rotate", "flip", "insert", "wash", "fill", "empty",
})
# Words that say nothing about an object: a clause of only these is dropped quietly.
_FILLER_WORDS: FrozenSet[str] = frozenset({
    "hey", "hi", "hello", "ok", "okay", "robot", "so", "now", "and", "then", "also", "next",
    "alright", "right", "well", "um", "uh", "please", "kindly", "just", "quickly", "thanks",
    "thank", "you", "for", "me", "us", "if", "can", "possible", "again", "too", "as", "great",
    "good", "cool", "perfect", "nice", "yes", "yeah", "sure", "there", "here", "buddy",
    "friend", "dear", "sir", "mate", "like", "erm", "hmm", "oh",
})


# --- sentences and clauses ----------------------------------------------------------


def _sentences(text: str) -> List[Words]:
    """Tokens of normalised ``text`` by sentence, reading up to MAX_COMMAND_CHARS."""
    sentences: List[List[str]] = [[]]
    for match in _TOKEN_RE.finditer(text):
        if match.end() > MAX_COMMAND_CHARS:
            break
        token = match.group()
        if token[0] in _SENTENCE_ENDS:
            sentences.append([])
        else:
            sentences[-1].append(token)
    return [tuple(s) for s in sentences if s]


def _has_command_verb(sentence: str) -> bool:
    """Whether ``parse_command`` sees a command verb before the object of ``sentence``.

    ``parse_command`` prefers a sentence with a verb over an earlier one without, so a
    verb-less probe sentence in front is returned only when ``sentence`` has none. This
    keeps the verb list in one place (command_parser).
    """
    return parse_command(f"{_PROBE}. {sentence}").target not in (None, _PROBE)


class _Join(Enum):
    """How a clause is attached to the one before it."""

    START = "start"
    COMMA = "comma"
    SEQUENCE = "sequence"
    ALTERNATIVE = "alternative"


def _match_words(keys: Sequence[str], i: int, phrases: Sequence[Words]) -> int:
    for phrase in phrases:
        if tuple(keys[i:i + len(phrase)]) == phrase:
            return len(phrase)
    return 0


def _continues(keys: Sequence[str], j: int) -> bool:
    """Whether the words at ``j`` refine the current object rather than start another."""
    while j < len(keys) and (keys[j] in _SEPARATORS or keys[j] in ("and", "but", "also")):
        j += 1
    if j >= len(keys):
        return False
    if keys[j] in ("that", "which", "who"):
        return True
    cue = _match_cue(keys, j, len(keys))
    return cue is not None and cue[1].kind not in (_CueKind.FILLER,)


_SPLITS_BY_LENGTH: Tuple[Tuple[Words, _Join], ...] = tuple(sorted(
    [(w, _Join.SEQUENCE) for w in _SEQUENCE_SPLITS]
    + [(w, _Join.ALTERNATIVE) for w in _ALTERNATIVE_SPLITS]
    + [((s,), _Join.COMMA) for s in sorted(_SEPARATORS)],
    key=lambda item: len(item[0]), reverse=True,
))


def _split_clauses(keys: Sequence[str]) -> List[Tuple[int, int, _Join]]:
    """(start, end, join) of each object clause of a sentence."""
    clauses: List[Tuple[int, int, _Join]] = []
    start, join, i, in_between = 0, _Join.START, 0, False
    n = len(keys)
    while i < n:
        k = keys[i]
        if k == "between":
            in_between = True
            i += 1
            continue
        if in_between and (k == "and" or k in _SEPARATORS):
            in_between = False
            i += 1
            continue
        found = next(((w, j) for w, j in _SPLITS_BY_LENGTH
                      if tuple(keys[i:i + len(w)]) == w), None)
        if found is None or i == start:
            i += 1
            continue
        words, kind = found
        after = i + len(words)
        if words == ("next",) and after < n and keys[after] == "to":
            i += 1
            continue
        if _continues(keys, after):
            i = after
            continue
        if words == ("and",) and keys[i - 1] in _ADJECTIVES and after < n \
                and keys[after] in _ADJECTIVES:
            i = after
            continue
        clauses.append((start, i, join))
        start, join, i = after, kind, after
    clauses.append((start, n, join))
    return [(a, b, j) for a, b, j in clauses if a < b]


# --- one target ---------------------------------------------------------------------


@dataclass
class _Builder:
    """A target under construction (mutable; frozen into ``Target`` at the end)."""

    phrase: List[str]
    text: str
    relations: List[RelationClause] = field(default_factory=list)
    ordinal: Optional[Ordinal] = None
    rank: Optional[int] = None  # an ordinal number still waiting for its direction
    proximity: Optional[OrderKey] = None  # "closest"/"farthest" in the noun phrase
    exclusions: List[str] = field(default_factory=list)
    unparsed: List[str] = field(default_factory=list)
    previous: Optional[str] = None  # the phrase "it" refers to: the target before

    @property
    def has_cues(self) -> bool:
        return bool(self.relations or self.ordinal or self.rank or self.exclusions)

    def set_order(self, key: OrderKey, rank: int, words: str) -> None:
        if self.ordinal is not None:
            self.unparsed.append(words)
        else:
            self.ordinal = Ordinal(key, rank)

    def head_noun(self) -> str:
        return self.phrase[-1] if self.phrase else "object"

    def build(self) -> Target:
        if self.rank is not None and self.ordinal is None:
            self.ordinal = Ordinal(OrderKey.LEFT, self.rank)  # "the second cup": reading order
        return Target(
            phrase=" ".join(self.phrase) if self.phrase else "object",
            text=self.text,
            relations=tuple(self.relations),
            ordinal=self.ordinal,
            exclusions=tuple(dict.fromkeys(self.exclusions)),
        )


def _pronoun_to_object(words: List[str]) -> List[str]:
    """"red one" -> "red object": CLIP scores "object" far better than "one"."""
    if words and _key(words[-1]) in _PRONOUN_HEADS:
        words = words[:-1] + ["object"]
    return words


def _head(words: Sequence[str], builder: _Builder) -> None:
    """Take ordinal and superlative words out of the noun phrase into ``builder``."""
    keys = [_key(w) for w in words]
    kept: List[str] = []
    for i, (word, key) in enumerate(zip(words, keys)):
        pair = tuple(keys[i:i + 2])
        if pair in _COMPOUNDS or (i > 0 and tuple(keys[i - 1:i + 1]) in _COMPOUNDS):
            kept.append(word)
        elif key in _ORDINAL_NUMBERS and builder.rank is None and builder.ordinal is None:
            builder.rank = _ORDINAL_NUMBERS[key]
        elif key in _HEAD_ORDER and not (key in ("left", "right") and i + 1 < len(keys)
                                         and keys[i + 1] in ("of", "from")):
            order = _HEAD_ORDER[key]
            if key in _PROXIMITY_WORDS:
                builder.proximity = order
            if builder.ordinal is not None:
                builder.unparsed.append(word)
            else:
                builder.ordinal = Ordinal(order, builder.rank or 1)
                builder.rank = None
        elif key in ("far", "very", "most") and i + 1 < len(keys) and keys[i + 1] in _HEAD_ORDER:
            continue
        elif key in _WHICHEVER and i == 0 and len(keys) > 1:
            continue
        else:
            kept.append(word)
    builder.phrase = _pronoun_to_object(kept)


def _anchor_end(keys: Sequence[str], j: int, end: int, stop_at_and: bool) -> int:
    """Where the anchor phrase starting at ``j`` ends."""
    k = j
    while k < end:
        key = keys[k]
        if key in _SEPARATORS or (stop_at_and and key in ("and", "&")):
            break
        if k > j and key in ("that", "which", "who", "but"):
            break
        if k > j and key == "and" and _continues(keys, k + 1):
            break
        cue = _match_cue(keys, k, end)
        if k > j and cue is not None and cue[1].kind is not _CueKind.FILLER:
            break
        k += 1
    return k


class _Anchor(Enum):
    SPEAKER = "speaker"


_TRAILING_FILLER: Tuple[Words, ...] = tuple(sorted(
    (tuple(t.split()) for t in (
        "please", "now", "right now", "thanks", "thank you", "for me", "for us", "quickly",
        "again", "too", "as well", "if you can", "if possible", "ok", "okay", "there", "here",
        "over there", "over here",
    )), key=len, reverse=True))


_BACK_REFERENCES: FrozenSet[Words] = frozenset({
    ("it",), ("that",), ("this",), ("them",), ("that", "one"), ("this", "one"),
})


def _anchor_phrase(words: Sequence[str], previous: Optional[str] = None
                   ) -> Union[str, _Anchor, None]:
    """The cleaned anchor phrase, ``_Anchor.SPEAKER`` for "me"/"the robot", or None.

    "it" ("the mug next to it") is ``previous``, the phrase of the target before.
    """
    keys = tuple(_key(w) for w in words)
    while keys:  # "closest to me please"
        end = next((len(p) for p in _TRAILING_FILLER
                    if len(p) < len(keys) and keys[len(keys) - len(p):] == p), 0)
        if not end:
            break
        keys, words = keys[:-end], words[:-end]
    if keys in _SPEAKER:
        return _Anchor.SPEAKER
    if keys in _BACK_REFERENCES:
        return previous
    if not keys:
        return None
    parsed = parse_command(" ".join(words))
    if parsed.target is None:
        bare = [w for w in keys if w not in _DETERMINERS]
        if bare and bare[-1] in _PRONOUN_HEADS:
            return " ".join(_pronoun_to_object(bare))
        return None
    return " ".join(_pronoun_to_object(parsed.target.split(" ")))


def _tail(tokens: Sequence[str], start: int, end: int, builder: _Builder) -> None:
    """Read relations, positions, axes and exclusions after the noun phrase."""
    keys = [_key(t) for t in tokens]
    unknown: List[str] = []

    def flush() -> None:
        if unknown:
            builder.unparsed.append(" ".join(unknown))
            unknown.clear()

    i = start
    first = True
    while i < end:
        if keys[i] in _SEPARATORS:
            flush()
            i += 1
            continue
        if first and builder.proximity is not None and keys[i] in ("to", "from"):
            # "the closest cup to the plate": the superlative becomes a relation.
            first = False
            relation = (Relation.CLOSEST_TO if builder.proximity is OrderKey.NEAREST
                        else Relation.FARTHEST_FROM)
            stop = _anchor_end(keys, i + 1, end, False)
            anchor = _anchor_phrase(tokens[i + 1:stop], builder.previous)
            if isinstance(anchor, str):
                builder.relations.append(RelationClause(relation, (anchor,)))
                builder.ordinal = None
            elif anchor is None:
                builder.unparsed.append(" ".join(tokens[i:stop]))
            i = stop
            continue
        first = False
        match = _match_cue(keys, i, end)
        if match is None:
            unknown.append(tokens[i])
            i += 1
            continue
        length, cue = match
        cue_words = " ".join(tokens[i:i + length])
        j = i + length
        if cue.kind is _CueKind.FILLER:
            if unknown:  # keep "with the red handle" in one piece
                unknown.extend(tokens[i:j])
            i = j
            continue
        flush()
        if cue.kind is _CueKind.POSITION:
            assert cue.order is not None
            if builder.rank is not None and builder.ordinal is None:
                # "the second cup on the left" counts from the left; "the last cup on
                # the right" is the rightmost.
                builder.ordinal = Ordinal(cue.order, 1 if builder.rank == -1 else builder.rank)
                builder.rank = None
            else:
                builder.set_order(cue.order, 1, cue_words)
            i = j
        elif cue.kind is _CueKind.AXIS:
            assert cue.order is not None
            if builder.ordinal is None:  # "the second cup from the right"
                builder.ordinal = Ordinal(cue.order, builder.rank or 1)
                builder.rank = None
            else:
                builder.unparsed.append(cue_words)
            i = j
        elif cue.kind is _CueKind.EXCLUDE:
            stop = _anchor_end(keys, j, end, False)
            words = list(tokens[j:stop])
            bare = [w for w in words if _key(w) not in _DETERMINERS]
            if len(bare) == 1 and _key(bare[0]) in _ADJECTIVES and len(bare) == len(words):
                builder.exclusions.append(f"{bare[0]} {builder.head_noun()}")  # "not red"
            else:
                anchor = _anchor_phrase(words, builder.previous)
                if isinstance(anchor, str):
                    builder.exclusions.append(anchor)
                else:
                    builder.unparsed.append(" ".join(tokens[i:stop]))
            i = max(stop, j)
        else:
            assert cue.relation is not None
            i = _relation(tokens, keys, i, j, end, cue.relation, builder)
    flush()


def _relation(tokens: Sequence[str], keys: Sequence[str], i: int, j: int, end: int,
              relation: Relation, builder: _Builder) -> int:
    """Read the anchor(s) of ``relation`` (its cue is tokens[i:j]); return where it ends."""
    if relation is Relation.BETWEEN:
        mid = _anchor_end(keys, j, end, True)
        second = mid + 1 if mid < end else mid
        stop = _anchor_end(keys, second, end, False)
        first_anchor = _anchor_phrase(tokens[j:mid], builder.previous)
        second_anchor = _anchor_phrase(tokens[second:stop], builder.previous)
        if isinstance(first_anchor, str) and isinstance(second_anchor, str):
            builder.relations.append(RelationClause(relation, (first_anchor, second_anchor)))
        else:
            builder.unparsed.append(" ".join(tokens[i:stop]))
        return max(stop, j)
    stop = _anchor_end(keys, j, end, False)
    anchor = _anchor_phrase(tokens[j:stop], builder.previous)
    if anchor is _Anchor.SPEAKER or (anchor is None and stop == j):
        # "closest to me", "the nearest", "in front of you": measured from the camera.
        speaker_order = {
            Relation.CLOSEST_TO: OrderKey.NEAREST, Relation.NEAR: OrderKey.NEAREST,
            Relation.IN_FRONT_OF: OrderKey.NEAREST, Relation.FARTHEST_FROM: OrderKey.FARTHEST,
        }.get(relation)
        if speaker_order is not None and (anchor is _Anchor.SPEAKER
                                          or relation is not Relation.NEAR):
            builder.set_order(speaker_order, 1, " ".join(tokens[i:stop]))
        elif not (anchor is None and relation is Relation.NEAR):  # "nearby" says nothing
            builder.unparsed.append(" ".join(tokens[i:stop]))
    elif isinstance(anchor, str):
        builder.relations.append(RelationClause(relation, (anchor,)))
    else:
        builder.unparsed.append(" ".join(tokens[i:stop]))
    return max(stop, j)


def _locate(keys: Sequence[str], words: Sequence[str], start: int) -> int:
    """Index of the first occurrence of ``words`` in ``keys`` at or after ``start``."""
    n = len(words)
    for i in range(start, len(keys) - n + 1):
        if tuple(keys[i:i + n]) == tuple(words):
            return i
    return -1


def _first_cue_in(keys: Sequence[str], start: int, end: int) -> int:
    """First index after ``start`` where a relation/position/exclusion cue begins."""
    for i in range(start + 1, end):
        if keys[i - 1] in _ORDINAL_NUMBERS:  # "the second nearest mug"
            continue
        if keys[i] in _PROXIMITY_WORDS or keys[i] in _COPULAS:
            return i
        cue = _match_cue(keys, i, end)
        if cue is not None and cue[1].kind is not _CueKind.FILLER \
                and keys[i] not in _ORDINAL_NUMBERS:
            return i
    return end


def _clause_target(tokens: Words, previous: Optional[str]) -> Tuple[Optional[Target], List[str]]:
    """The target of one clause (None if it names none) and what was not understood."""
    keys = [_key(t) for t in tokens]
    text = " ".join(t for t in tokens if t not in _SEPARATORS)
    parsed = parse_command(" ".join(tokens))
    builder = _Builder([], text, previous=previous)
    if parsed.target is not None:
        words = [_key(w) for w in parsed.target.split(" ")]
        start = _locate(keys, words, 0)
        if start < 0:  # cannot happen for tokens parse_command reads; be safe anyway
            builder.phrase = _pronoun_to_object(parsed.target.split(" "))
            return builder.build(), []
        end = start + len(words)
        cut = _first_cue_in(keys, start, end)
        _head(tokens[start:cut], builder)
        if not builder.phrase and builder.ordinal is None and builder.rank is None:
            builder.phrase = _pronoun_to_object(list(tokens[start:cut]))
        tail_start = cut
        # "black and white mug": one phrase that parse_command cut at "and".
        while tail_start + 1 < len(keys) and keys[tail_start] == "and" and cut == end \
                and keys[tail_start - 1] in _ADJECTIVES and keys[tail_start + 1] in _ADJECTIVES:
            rest = parse_command(" ".join(tokens[tail_start + 1:]))
            more = rest.target.split(" ") if rest.target else []
            found = _locate(keys, [_key(w) for w in more], tail_start + 1) if more else -1
            if found != tail_start + 1:
                break
            builder.phrase = _pronoun_to_object(builder.phrase + ["and"] + more)
            tail_start = cut = end = tail_start + 1 + len(more)
        _tail(tokens, tail_start, len(tokens), builder)
        return builder.build(), builder.unparsed
    # No noun: "the one on the left", "the ones closest to me".
    pronoun = next((i for i, k in enumerate(keys) if k in _PRONOUN_HEADS), -1)
    if pronoun < 0:
        return None, []
    _tail(tokens, pronoun + 1, len(tokens), builder)
    if not builder.has_cues:
        return None, []
    return builder.build(), builder.unparsed


def _is_filler(keys: Sequence[str]) -> bool:
    return all(k in _FILLER_WORDS or k in _SEPARATORS for k in keys)


@dataclass
class _SentenceParse:
    targets: List[Target]
    unparsed: List[str]
    sequenced: bool  # starts with "then", "and", "next"...


def _parse_sentence(tokens: Words, previous: Optional[str]) -> _SentenceParse:
    keys = [_key(t) for t in tokens]
    targets: List[Target] = []
    unparsed: List[str] = []
    sequenced = _match_words(keys, 0, _LEADING_MARKERS) > 0
    for number, (start, end, join) in enumerate(_split_clauses(keys)):
        skip = _match_words(keys, start, _LEADING_MARKERS)
        if skip and join is not _Join.ALTERNATIVE:
            join = _Join.SEQUENCE if join is not _Join.START else join
        clause = tokens[start + skip:end]
        clause_keys = keys[start + skip:end]
        text = " ".join(tokens[start:end])
        if not clause or _is_filler(clause_keys):
            continue
        if join is _Join.ALTERNATIVE:
            unparsed.append(f"or {text}")  # alternatives are not chosen between
            continue
        if number > 0 and clause_keys[0] in _OTHER_VERBS:
            unparsed.append(text)
            continue
        before = targets[-1].phrase if targets else previous
        target, not_understood = _clause_target(clause, before)
        if target is None:
            unparsed.append(text)
            continue
        unparsed.extend(not_understood)
        apposition = (join is _Join.COMMA and targets and target.phrase == "object"
                      and not target.is_plain)
        if apposition:
            # "the cup, the one on the left": refines the cup, is no second object.
            previous = targets[-1]
            ordinal = previous.ordinal if previous.ordinal is not None else target.ordinal
            targets[-1] = Target(
                previous.phrase, f"{previous.text}, {target.text}",
                previous.relations + target.relations, ordinal,
                tuple(dict.fromkeys(previous.exclusions + target.exclusions)),
            )
            if previous.ordinal is not None and target.ordinal is not None:
                unparsed.append(target.ordinal.describe())
        else:
            targets.append(target)
    return _SentenceParse(targets, unparsed, sequenced)


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return f"'{text}'"


def parse_referring(text: str) -> ReferringCommand:
    """Parse ``text`` into targets in order; never raises for a str.

    Sentences are chosen as ``parse_command`` chooses: the first one with a command
    verb and an object (else the first with an object); later sentences add targets
    when they have a verb too or start with "then"/"and"/"next"...
    """
    if not isinstance(text, str):
        raise TypeError(f"command must be a str, got {type(text).__name__}")
    base = parse_command(text)
    if not text.strip() or is_stop_command(text):
        return ReferringCommand(text, (), (), base.reason)
    sentences = _sentences(normalise(text))
    if not sentences:
        return ReferringCommand(text, (), (), base.reason)
    parses: List[_SentenceParse] = []
    for tokens in sentences:
        previous = next((p.targets[-1].phrase for p in reversed(parses) if p.targets), None)
        parses.append(_parse_sentence(tokens, previous))
    with_targets = [i for i, p in enumerate(parses) if p.targets]
    verbs = {i: _has_command_verb(" ".join(sentences[i])) for i in with_targets}
    primary = next((i for i in with_targets if verbs[i]), with_targets[0] if with_targets else -1)
    unparsed: List[str] = []
    if primary < 0:
        for tokens, parse in zip(sentences, parses):
            unparsed.extend(parse.unparsed)
        reason = base.reason or f"no object named in {_quote(text)}"
        return ReferringCommand(text, (), tuple(unparsed), reason)
    targets: List[Target] = []
    for i, (tokens, parse) in enumerate(zip(sentences, parses)):
        used = i == primary or (i > primary and parse.targets and (verbs[i] or parse.sequenced))
        if used:
            targets.extend(parse.targets)
            unparsed.extend(parse.unparsed)
        elif not _is_filler([_key(t) for t in tokens]):
            unparsed.append(" ".join(tokens))
    return ReferringCommand(text, tuple(targets), tuple(unparsed), "")
