"""Synthetic table scenes with commands whose answers are known by construction.

Coloured squares, circles and triangles lie apart on a grey table; each command is
made from a template and the scene is laid out so that exactly one object (or one
ordered list of objects) fits it with a clear margin: "the square left of the blue
circle" has one square clearly left of the only blue circle and every other square
clearly right of it. ``OracleScorer`` plays the crop scorer: it reads colour (mean
pixel colour in the mask) and shape (how much of its box the mask fills) from the
pixels, never from the labels, and scores phrases made of colour and shape words.

A test helper, not part of the runtime package.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 205, 40),
}
SHAPES: Tuple[str, ...] = ("square", "circle", "triangle")
HALF_SIZES: Tuple[int, ...] = (9, 14, 21)
TABLE_RGB = (170, 165, 155)
SIZE_HW = (240, 320)

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    half_size: int
    centre: Tuple[float, float]  # (x, y) pixels
    depth_m: Optional[float] = None

    @property
    def box(self) -> Box:
        x, y = self.centre
        h = self.half_size
        return (x - h, y - h, x + h + 1, y + h + 1)

    def with_(self, **changes: object) -> "SceneObject":
        values = dict(self.__dict__)
        values.update(changes)
        return SceneObject(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Description:
    """What a command calls an object: colour, shape or both."""

    colour: Optional[str]
    shape: Optional[str]

    def words(self) -> str:
        if self.colour and self.shape:
            return f"{self.colour} {self.shape}"
        return self.shape if self.shape else f"{self.colour} one"

    def matches(self, obj: SceneObject) -> bool:
        return (self.colour is None or obj.colour == self.colour) and (
            self.shape is None or obj.shape == self.shape)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    objects: Tuple[SceneObject, ...]
    masks: np.ndarray  # (N, H, W) bool, one per object, in ``objects`` order

    @property
    def depths_m(self) -> Optional[np.ndarray]:
        if all(o.depth_m is None for o in self.objects):
            return None
        return np.array([np.nan if o.depth_m is None else o.depth_m for o in self.objects])


class CommandKind(Enum):
    PLAIN = "plain"
    LEFT_OF = "left of"
    RIGHT_OF = "right of"
    ABOVE = "above"
    BELOW = "below"
    NEAR = "next to"
    BETWEEN = "between"
    CLOSEST_TO = "closest to"
    BEHIND = "behind (depth)"
    IN_FRONT_OF = "in front of (depth)"
    ORDINAL = "ordinal"
    EXTREME = "leftmost/topmost"
    SIZE = "biggest/smallest"
    DEPTH = "closest to me (depth)"
    EXCLUSION = "exclusion"
    MULTI = "several targets"


@dataclass(frozen=True)
class SceneCommand:
    kind: CommandKind
    scene: Scene
    command: str
    answer: Tuple[int, ...]  # object indices, one per target in order


def mask_of(obj: SceneObject, size_hw: Tuple[int, int] = SIZE_HW) -> np.ndarray:
    height, width = size_hw
    cx, cy = obj.centre
    h = obj.half_size
    x1, y1 = max(int(math.floor(cx - h)), 0), max(int(math.floor(cy - h)), 0)
    x2, y2 = min(int(math.ceil(cx + h)) + 1, width), min(int(math.ceil(cy + h)) + 1, height)
    ys, xs = np.mgrid[y1:y2, x1:x2]
    dx, dy = xs - cx, ys - cy
    if obj.shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif obj.shape == "circle":
        inside = dx * dx + dy * dy <= h * h
    elif obj.shape == "triangle":  # upright, apex at the top
        inside = (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    else:
        raise ValueError(f"unknown shape {obj.shape}")
    mask = np.zeros(size_hw, dtype=bool)
    mask[y1:y2, x1:x2] = inside
    return mask


def render(objects: Sequence[SceneObject], rng: np.random.Generator,
           size_hw: Tuple[int, int] = SIZE_HW) -> Scene:
    image = np.empty((*size_hw, 3), dtype=np.int16)
    image[:] = TABLE_RGB
    masks = np.zeros((len(objects), *size_hw), dtype=bool)
    for i, obj in enumerate(objects):
        masks[i] = mask_of(obj, size_hw)
    for obj, mask in zip(objects, masks):
        image[mask] = COLOURS[obj.colour]
    image += rng.integers(-12, 13, image.shape, dtype=np.int16)
    return Scene(image.clip(0, 255).astype(np.uint8), tuple(objects), masks)


# --- the oracle scorer ------------------------------------------------------------

# Share of its bounding box each shape's mask fills, measured on rasterised shapes.
FILL_RATIO: Dict[str, float] = {"square": 1.0, "circle": 0.72, "triangle": 0.50}
_GENERIC = frozenset({"object", "objects", "one", "thing", "shape", "item"})


class OracleScorer:
    """Scores colour/shape phrases from pixels: mean colour and box fill of each mask."""

    def __init__(self, colour_sigma: float = 45.0, fill_sigma: float = 0.07) -> None:
        self.colour_sigma = colour_sigma
        self.fill_sigma = fill_sigma

    def features(self, image: np.ndarray, masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mean RGB (N, 3) and box fill ratio (N,) of each mask."""
        colours = np.zeros((len(masks), 3))
        fills = np.zeros(len(masks))
        for i, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            colours[i] = image[mask].reshape(-1, 3).mean(axis=0)
            fills[i] = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        return colours, fills

    def phrase_scores(self, colours: np.ndarray, fills: np.ndarray, phrase: str) -> np.ndarray:
        score = np.ones(len(colours))
        for word in phrase.split():
            if word in COLOURS:
                distance2 = ((colours - np.array(COLOURS[word])) ** 2).sum(axis=1)
                score *= np.exp(-distance2 / (2 * self.colour_sigma ** 2))
            elif word in FILL_RATIO:
                score *= np.exp(-((fills - FILL_RATIO[word]) ** 2) / (2 * self.fill_sigma ** 2))
            elif word not in _GENERIC:
                return np.zeros(len(colours))  # a word it cannot see: no region matches
        return score

    def score(self, image: np.ndarray, masks: np.ndarray, phrases: Sequence[str]) -> np.ndarray:
        colours, fills = self.features(image, masks)
        if not phrases:
            return np.zeros((len(masks), 0))
        return np.stack([self.phrase_scores(colours, fills, p) for p in phrases], axis=1)


# --- layout ---------------------------------------------------------------------------

_MARGIN = 8  # pixels between objects


class TrueMasks:
    """A ``Proposer`` (``pipeline.parts``): the scene's object masks plus the table around
    them, counting its calls."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.calls = 0

    def __call__(self, image: np.ndarray):
        from vlm_grasp_locator.pipeline.proposals import Proposals

        self.calls += 1
        assert image.shape[:2] == self.scene.masks.shape[1:]
        table = ~self.scene.masks.any(axis=0)
        return Proposals.from_masks(np.concatenate([self.scene.masks, table[None]]))


class CountingOracle:
    """A ``RegionScorer`` on ``OracleScorer`` (colour and shape read from the pixels),
    recording the phrases it was asked."""

    def __init__(self) -> None:
        self.oracle = OracleScorer()
        self.phrases: List[str] = []

    def __call__(self, image: np.ndarray, proposals, phrases: Sequence[str]) -> np.ndarray:
        self.phrases.extend(phrases)
        return self.oracle.score(image, proposals.masks, phrases)


def _overlaps(box: Box, others: Sequence[SceneObject]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < o.box[2] + _MARGIN and o.box[0] < x2 + _MARGIN and
               y1 < o.box[3] + _MARGIN and o.box[1] < y2 + _MARGIN for o in others)


class _NoRoom(Exception):
    """A layout could not be completed; the generator starts the scene again."""


def _place(rng: np.random.Generator, colour: str, shape: str, placed: Sequence[SceneObject],
           ok: Callable[[SceneObject], bool] = lambda o: True, half_size: Optional[int] = None,
           tries: int = 300) -> SceneObject:
    height, width = SIZE_HW
    for _ in range(tries):
        h = half_size if half_size is not None else int(rng.choice(HALF_SIZES))
        centre = (float(rng.integers(h + 2, width - h - 2)),
                  float(rng.integers(h + 2, height - h - 2)))
        obj = SceneObject(colour, shape, h, centre, round(float(rng.uniform(0.5, 1.5)), 3))
        if not _overlaps(obj.box, placed) and ok(obj):
            return obj
    raise _NoRoom


def _random_attributes(rng: np.random.Generator) -> Tuple[str, str]:
    return str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))


def _description(rng: np.random.Generator, obj: SceneObject) -> Description:
    kind = str(rng.choice(["both", "shape", "colour"]))
    if kind == "both":
        return Description(obj.colour, obj.shape)
    if kind == "shape":
        return Description(None, obj.shape)
    return Description(obj.colour, None)


def _fill(rng: np.random.Generator, placed: List[SceneObject], avoid: Sequence[Description],
          count: int, ok: Callable[[SceneObject], bool] = lambda o: True) -> None:
    """Add ``count`` objects that match none of ``avoid`` (quietly fewer if no room)."""
    for _ in range(count):
        for _ in range(20):
            colour, shape = _random_attributes(rng)
            probe = SceneObject(colour, shape, 9, (0.0, 0.0))
            if not any(d.matches(probe) for d in avoid):
                break
        else:
            return
        try:
            placed.append(_place(rng, colour, shape, placed, ok))
        except _NoRoom:
            return


def _distinct_target_and_anchor(rng: np.random.Generator, anchors: int = 1
                                ) -> Tuple[Description, List[Tuple[str, str]], List[Description]]:
    """A target description (matching 2+ objects later) and unique anchor attributes."""
    colour, shape = _random_attributes(rng)
    target = _description(rng, SceneObject(colour, shape, 9, (0, 0)))
    anchor_attrs: List[Tuple[str, str]] = []
    anchor_descs: List[Description] = []
    while len(anchor_attrs) < anchors:
        a_colour, a_shape = _random_attributes(rng)
        desc = Description(a_colour, a_shape)
        probe = SceneObject(a_colour, a_shape, 9, (0, 0))
        if target.matches(probe) or (a_colour, a_shape) in anchor_attrs:
            continue
        anchor_attrs.append((a_colour, a_shape))
        anchor_descs.append(desc)
    return target, anchor_attrs, anchor_descs


def _like(rng: np.random.Generator, target: Description) -> Tuple[str, str]:
    """Colour and shape of an object the target description fits."""
    colour = target.colour or str(rng.choice(list(COLOURS)))
    shape = target.shape or str(rng.choice(SHAPES))
    return colour, shape


_VERBS = ("take", "pick up", "grab", "hand me", "get me", "fetch", "give me", "bring me")
_PREFIXES = ("", "", "please ", "could you ", "hey robot, ", "can you please ", "now ")
_SUFFIXES = ("", "", " please", " for me", ", thanks")


def _say(rng: np.random.Generator, noun_phrase: str) -> str:
    """The noun phrase in a command, with a verb and maybe politeness."""
    return (f"{rng.choice(_PREFIXES)}{rng.choice(_VERBS)} {noun_phrase}"
            f"{rng.choice(_SUFFIXES)}")


def _say_one(rng: np.random.Generator, templates: Sequence[str]) -> str:
    return _say(rng, str(rng.choice(list(templates))))


def _cx(o: SceneObject) -> float:
    return o.centre[0]


def _cy(o: SceneObject) -> float:
    return o.centre[1]


def _gap(a: SceneObject, b: SceneObject) -> float:
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    return math.hypot(max(0.0, max(ax1 - bx2, bx1 - ax2)), max(0.0, max(ay1 - by2, by1 - ay2)))


def _distance(a: SceneObject, b: SceneObject) -> float:
    return math.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1])


# Strict sides, with margins: the answer is clearly on the side, distractors clearly not.
Test = Callable[[SceneObject, SceneObject], bool]


def _side_tests(kind: CommandKind) -> Tuple[Test, Test, str]:
    def level_x(a: SceneObject, b: SceneObject) -> bool:
        return abs(_cy(a) - _cy(b)) < 0.7 * (a.half_size + b.half_size) + 10

    def level_y(a: SceneObject, b: SceneObject) -> bool:
        return abs(_cx(a) - _cx(b)) < 0.7 * (a.half_size + b.half_size) + 10

    if kind is CommandKind.LEFT_OF:
        return (lambda a, b: a.box[2] + 6 < b.box[0] and level_x(a, b),
                lambda a, b: _cx(a) > b.box[2] + 4, "left of")
    if kind is CommandKind.RIGHT_OF:
        return (lambda a, b: a.box[0] > b.box[2] + 6 and level_x(a, b),
                lambda a, b: _cx(a) < b.box[0] - 4, "right of")
    if kind is CommandKind.ABOVE:
        return (lambda a, b: a.box[3] + 6 < b.box[1] and level_y(a, b),
                lambda a, b: _cy(a) > b.box[3] + 4, "above")
    return (lambda a, b: a.box[1] > b.box[3] + 6 and level_y(a, b),
            lambda a, b: _cy(a) < b.box[1] - 4, "below")


_SIDE_WORDING = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right side of"),
    "above": ("above",),
    "below": ("below", "under", "beneath"),
}


def _with_answer(kind: CommandKind, rng: np.random.Generator, objects: List[SceneObject],
                 answer_objects: Sequence[SceneObject], command: str) -> SceneCommand:
    order = rng.permutation(len(objects))
    shuffled = [objects[i] for i in order]
    answer = tuple(shuffled.index(o) for o in answer_objects)
    return SceneCommand(kind, render(shuffled, rng), command, answer)


def _relational(kind: CommandKind, rng: np.random.Generator) -> SceneCommand:
    target, anchor_attrs, anchor_descs = _distinct_target_and_anchor(rng)
    anchor = _place(rng, *anchor_attrs[0], [])
    placed = [anchor]
    distractors = int(rng.integers(1, 3))
    if kind in (CommandKind.LEFT_OF, CommandKind.RIGHT_OF, CommandKind.ABOVE, CommandKind.BELOW):
        yes, no, relation = _side_tests(kind)
        answer = _place(rng, *_like(rng, target), placed, lambda o: yes(o, anchor))
        placed.append(answer)
        for _ in range(distractors):
            placed.append(_place(rng, *_like(rng, target), placed, lambda o: no(o, anchor)))
        wording = str(rng.choice(_SIDE_WORDING[relation]))
    elif kind is CommandKind.NEAR:
        answer = _place(rng, *_like(rng, target), placed, lambda o: _gap(o, anchor) <= 12)
        placed.append(answer)
        for _ in range(distractors):
            placed.append(_place(rng, *_like(rng, target), placed,
                                 lambda o: _gap(o, anchor) >= 80))
        wording = str(rng.choice(["next to", "near", "beside", "by"]))
    else:  # CLOSEST_TO
        answer = _place(rng, *_like(rng, target), placed, lambda o: _distance(o, anchor) <= 90)
        placed.append(answer)
        limit = 1.8 * _distance(answer, anchor)
        for _ in range(distractors):
            placed.append(_place(rng, *_like(rng, target), placed,
                                 lambda o: _distance(o, anchor) >= limit))
        wording = str(rng.choice(["closest to", "nearest to", "nearest"]))
    _fill(rng, placed, [target, *anchor_descs], int(rng.integers(0, 4)))
    phrase = f"the {target.words()} {wording} the {anchor_descs[0].words()}"
    return _with_answer(kind, rng, placed, [answer], _say(rng, phrase))


def _between(rng: np.random.Generator) -> SceneCommand:
    target, anchor_attrs, anchor_descs = _distinct_target_and_anchor(rng, anchors=2)
    height, width = SIZE_HW
    first = _place(rng, *anchor_attrs[0], [])
    second = _place(rng, *anchor_attrs[1], [first], lambda o: _distance(o, first) >= 130)
    h = int(rng.choice(HALF_SIZES[:2]))
    t = float(rng.uniform(0.4, 0.6))
    centre = (first.centre[0] + t * (second.centre[0] - first.centre[0]),
              first.centre[1] + t * (second.centre[1] - first.centre[1]))
    answer = SceneObject(*_like(rng, target), h, centre, 1.0)
    if _overlaps(answer.box, [first, second]):
        raise _NoRoom
    placed = [first, second, answer]
    c1, c2 = np.array(first.centre), np.array(second.centre)
    u = c2 - c1

    def off_segment(o: SceneObject) -> bool:
        p = np.array(o.centre) - c1
        along = float(p @ u) / float(u @ u)
        across = abs(p[0] * u[1] - p[1] * u[0]) / float(np.linalg.norm(u))
        return across > 60 or along < -0.3 or along > 1.3

    for _ in range(int(rng.integers(1, 3))):
        placed.append(_place(rng, *_like(rng, target), placed, off_segment))
    _fill(rng, placed, [target, *anchor_descs], int(rng.integers(0, 3)), off_segment)
    phrase = (f"the {target.words()} {rng.choice(['between', 'in between'])} the "
              f"{anchor_descs[0].words()} and the {anchor_descs[1].words()}")
    return _with_answer(CommandKind.BETWEEN, rng, placed, [answer], _say(rng, phrase))


def _depth_relation(kind: CommandKind, rng: np.random.Generator) -> SceneCommand:
    """Behind / in front of, decided by depth: the image order often says the opposite."""
    target, anchor_attrs, anchor_descs = _distinct_target_and_anchor(rng)
    anchor = _place(rng, *anchor_attrs[0], [])
    d = float(anchor.depth_m or 1.0)
    behind = kind is CommandKind.BEHIND

    def in_line(o: SceneObject) -> bool:
        return abs(_cx(o) - _cx(anchor)) < 25 + o.half_size

    answer = _place(rng, *_like(rng, target), [anchor], in_line)
    answer = answer.with_(depth_m=d + (0.3 if behind else -0.3))
    other = _place(rng, *_like(rng, target), [anchor, answer], in_line)
    other = other.with_(depth_m=d + (-0.3 if behind else 0.3))
    placed = [anchor, answer, other]
    _fill(rng, placed, [target, *anchor_descs], int(rng.integers(0, 4)))
    wording = "behind" if behind else "in front of"
    phrase = f"the {target.words()} {wording} the {anchor_descs[0].words()}"
    return _with_answer(kind, rng, placed, [answer], _say(rng, phrase))


def _group(rng: np.random.Generator, count: int,
           separated: Callable[[SceneObject, List[SceneObject]], bool],
           ) -> Tuple[Description, List[SceneObject]]:
    colour, shape = _random_attributes(rng)
    target = _description(rng, SceneObject(colour, shape, 9, (0, 0)))
    group: List[SceneObject] = []
    for _ in range(count):
        group.append(_place(rng, *_like(rng, target), group, lambda o: separated(o, group)))
    return target, group


def _ordinal(rng: np.random.Generator, extreme: bool) -> SceneCommand:
    axis = str(rng.choice(["left", "right", "top", "bottom"], p=[0.35, 0.35, 0.15, 0.15]))
    horizontal = axis in ("left", "right")
    coord = _cx if horizontal else _cy

    def separated(o: SceneObject, group: List[SceneObject]) -> bool:
        return all(abs(coord(o) - coord(g)) >= 24 for g in group)

    count = int(rng.integers(2, 4)) if extreme else int(rng.integers(3, 5))
    target, group = _group(rng, count, separated)
    ordered = sorted(group, key=coord, reverse=axis in ("right", "bottom"))
    placed = list(group)
    _fill(rng, placed, [target], int(rng.integers(0, 4)))
    words = target.words()
    if extreme:
        answer = ordered[0]
        templates = {
            "left": [f"the leftmost {words}", f"the {words} on the left",
                     f"the {words} on the far left"],
            "right": [f"the rightmost {words}", f"the {words} on the right",
                      f"the {words} furthest to the right"],
            "top": [f"the topmost {words}", f"the {words} at the top", f"the highest {words}"],
            "bottom": [f"the lowest {words}", f"the {words} at the bottom",
                       f"the bottommost {words}"],
        }[axis]
        return _with_answer(CommandKind.EXTREME, rng, placed, [answer], _say_one(rng, templates))
    rank = int(rng.integers(1, count + 1))
    answer = ordered[rank - 1]
    nth = ["first", "second", "third", "fourth"][rank - 1]
    templates = [f"the {nth} {words} from the {axis}", f"the {words} {nth} from the {axis}"]
    if rank == count and rng.random() < 0.3:
        templates = [f"the last {words} from the {axis}"]
    return _with_answer(CommandKind.ORDINAL, rng, placed, [answer], _say_one(rng, templates))


def _size(rng: np.random.Generator) -> SceneCommand:
    colour, shape = _random_attributes(rng)
    target = _description(rng, SceneObject(colour, shape, 9, (0, 0)))
    count = int(rng.integers(2, 4))
    sizes = sorted(rng.choice(HALF_SIZES, size=count, replace=False).tolist())
    group: List[SceneObject] = []
    for h in sizes:
        group.append(_place(rng, *_like(rng, target), group, half_size=int(h)))
    largest = bool(rng.random() < 0.5)
    answer = group[-1] if largest else group[0]
    placed = list(group)
    _fill(rng, placed, [target], int(rng.integers(0, 4)))
    words = target.words()
    if largest:
        templates = [f"the biggest {words}", f"the largest {words}"]
    else:
        templates = [f"the smallest {words}", f"the tiniest {words}"]
    return _with_answer(CommandKind.SIZE, rng, placed, [answer], _say_one(rng, templates))


def _depth(rng: np.random.Generator) -> SceneCommand:
    colour, shape = _random_attributes(rng)
    target = _description(rng, SceneObject(colour, shape, 9, (0, 0)))
    count = int(rng.integers(2, 4))
    group: List[SceneObject] = []
    depths = 0.5 + 0.25 * rng.permutation(5)[:count]
    for d in depths:
        group.append(_place(rng, *_like(rng, target), group).with_(depth_m=float(d)))
    nearest = bool(rng.random() < 0.6)
    by_depth = sorted(group, key=lambda o: o.depth_m or 0.0)
    answer = by_depth[0] if nearest else by_depth[-1]
    placed = list(group)
    _fill(rng, placed, [target], int(rng.integers(0, 4)))
    words = target.words()
    if nearest:
        templates = [f"the {words} closest to me", f"the nearest {words}",
                     f"the {words} nearest to you", f"the closest {words}"]
    else:
        templates = [f"the farthest {words}", f"the {words} furthest from me",
                     f"the {words} farthest away from you"]
    return _with_answer(CommandKind.DEPTH, rng, placed, [answer], _say_one(rng, templates))


def _exclusion(rng: np.random.Generator) -> SceneCommand:
    shape = str(rng.choice(SHAPES))
    keep, drop = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
    answer = _place(rng, keep, shape, [])
    other = _place(rng, drop, shape, [answer])
    placed = [answer, other]
    if rng.random() < 0.5:
        _fill(rng, placed, [Description(None, shape)], int(rng.integers(0, 4)))
        templates = [f"the {shape}, not the {drop} one", f"the {shape} that isn't {drop}",
                     f"the {shape} but not the {drop} one", f"the {shape} except the {drop} one"]
    else:
        colours = [Description(keep, None), Description(drop, None)]
        _fill(rng, placed, colours, int(rng.integers(0, 4)))
        templates = [f"the {keep} one, not the {drop} one",
                     f"the {keep} one and not the {drop} one"]
    return _with_answer(CommandKind.EXCLUSION, rng, placed, [answer], _say_one(rng, templates))


def _unique_objects(rng: np.random.Generator, count: int, placed: List[SceneObject],
                    ) -> List[Tuple[SceneObject, Description]]:
    attributes = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = [attributes[i] for i in rng.choice(len(attributes), size=count, replace=False)]
    result = []
    for colour, shape in chosen:
        obj = _place(rng, colour, shape, placed)
        placed.append(obj)
        result.append((obj, Description(colour, shape)))
    return result


def _plain_or_multi(rng: np.random.Generator, multi: bool) -> SceneCommand:
    placed: List[SceneObject] = []
    count = int(rng.integers(2, 4)) if multi else 1
    named = _unique_objects(rng, count, placed)
    # Distractors share colour or shape with a named object but never both.
    _fill(rng, placed, [d for _, d in named], int(rng.integers(1, 5)))
    # A description by one attribute only when it is unique in the scene.
    phrases = []
    for obj, desc in named:
        shorter = (Description(None, obj.shape), Description(obj.colour, None))
        options = [desc] + [d for d in shorter if sum(d.matches(o) for o in placed) == 1]
        phrases.append(options[int(rng.integers(len(options)))].words())
    if not multi:
        command = _say(rng, f"the {phrases[0]}")
        return _with_answer(CommandKind.PLAIN, rng, placed, [named[0][0]], command)
    the = [f"the {p}" for p in phrases]
    if count == 2:
        command = _say_one(rng, [f"{the[0]} and then {the[1]}", f"{the[0]} and {the[1]}",
                                 f"{the[0]}, then {the[1]}"])
        if rng.random() < 0.25:
            command = f"first {the[0]}, then {the[1]}"
    else:
        command = _say(rng, f"{the[0]}, {the[1]} and {the[2]}")
    return _with_answer(CommandKind.MULTI, rng, placed, [o for o, _ in named], command)


def _one(kind: CommandKind, rng: np.random.Generator) -> SceneCommand:
    if kind is CommandKind.PLAIN:
        return _plain_or_multi(rng, False)
    if kind is CommandKind.MULTI:
        return _plain_or_multi(rng, True)
    if kind is CommandKind.BETWEEN:
        return _between(rng)
    if kind in (CommandKind.BEHIND, CommandKind.IN_FRONT_OF):
        return _depth_relation(kind, rng)
    if kind is CommandKind.ORDINAL:
        return _ordinal(rng, extreme=False)
    if kind is CommandKind.EXTREME:
        return _ordinal(rng, extreme=True)
    if kind is CommandKind.SIZE:
        return _size(rng)
    if kind is CommandKind.DEPTH:
        return _depth(rng)
    if kind is CommandKind.EXCLUSION:
        return _exclusion(rng)
    return _relational(kind, rng)


def generate(count: int, seed: int = 0,
             kinds: Sequence[CommandKind] = tuple(CommandKind)) -> List[SceneCommand]:
    """``count`` scene commands, cycling through ``kinds``; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    commands: List[SceneCommand] = []
    while len(commands) < count:
        kind = kinds[len(commands) % len(kinds)]
        for _ in range(100):
            try:
                commands.append(_one(kind, rng))
                break
            except _NoRoom:
                continue
        else:
            raise RuntimeError(f"could not lay out a scene for {kind}")
    return commands


# ---------------------------------------------------------------- moving scenes (tracking)
DISTRACTORS = (
    SceneObject("blue", "circle", 14, (250.0, 180.0)),
    SceneObject("green", "triangle", 14, (260.0, 50.0)),
)


def frame(target: Optional[SceneObject], seed: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A rendered frame with the distractors and ``target`` (unless it is entirely off
    the image); its true mask."""
    if target is not None and target.box[0] >= SIZE_HW[1]:
        target = None
    objects = list(DISTRACTORS) + ([target] if target is not None else [])
    scene = render(objects, np.random.default_rng(seed))
    return scene.image, scene.masks[-1] if target is not None else None


def moving(start: Tuple[float, float], step: Tuple[float, float], n: int) -> List[SceneObject]:
    """The red square at ``start`` moving by ``step`` a frame, for ``n`` frames."""
    return [
        SceneObject("red", "square", 14, (start[0] + i * step[0], start[1] + i * step[1]))
        for i in range(n)
    ]


def true_box(mask: np.ndarray) -> Tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
