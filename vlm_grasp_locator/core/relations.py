"""Resolve a parsed referring command over proposed regions: which region is meant.

CLIP scores a noun phrase on an isolated crop well but cannot tell "left of" from
"right of" (ReCLIP, Subramanian et al. 2022), so the crop scorer only supplies a
(regions x phrases) matrix of calibrated scores for the phrases of the command
(``phrases_to_score``); this module does the spatial reasoning over the regions'
geometry:

* each region starts with its target-phrase score;
* an excluded phrase multiplies it by (1 - the region's score for that phrase);
* a relation multiplies it by a soft predicate in [0, 1] against the anchor region:
  the anchors are weighted by their own phrase score (never the candidate itself), and
  a relation whose anchor no region matches is ignored, saying so in the reason;
* an ordinal or superlative sorts the candidates (regions scoring at least
  ``candidate_ratio`` of the best) along its axis and keeps the rank asked for.

Geometry is the image's: x to the right, y down. Depth, where given (median metres
per region), decides "closest to me", "nearest", "farthest", "in front of" and
"behind"; without it the image stands in for it: for a camera looking down and
forward at a table, the lower a region's bottom edge in the image, the nearer it is.
Pure: numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vlm_grasp_locator.core.referring import (
    Ordinal,
    OrderKey,
    ReferringCommand,
    Relation,
    RelationClause,
    Target,
)

_EPS = 1e-9


@dataclass(frozen=True)
class Regions:
    """Geometry of N proposed regions of one image.

    ``boxes_xyxy``: (N, 4) pixels, x2/y2 exclusive. ``areas``: (N,) mask pixels.
    ``centroids_xy``: (N, 2) mask centroids. ``depths_m``: (N,) median depth in metres,
    NaN where unknown, or None. ``image_size``: (width, height).
    """

    boxes_xyxy: np.ndarray
    areas: np.ndarray
    centroids_xy: np.ndarray
    image_size: Tuple[int, int]
    depths_m: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        areas = np.asarray(self.areas, dtype=np.float64).reshape(-1)
        centroids = np.asarray(self.centroids_xy, dtype=np.float64).reshape(-1, 2)
        if len(areas) != n or len(centroids) != n:
            raise ValueError(f"{n} boxes but {len(areas)} areas and {len(centroids)} centroids")
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(areas))
                and np.all(np.isfinite(centroids))):
            raise ValueError("region boxes, areas and centroids must be finite")
        width, height = (int(v) for v in self.image_size)
        if width < 1 or height < 1:
            raise ValueError(f"image size {self.image_size} must be positive (width, height)")
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "areas", areas)
        object.__setattr__(self, "centroids_xy", centroids)
        object.__setattr__(self, "image_size", (width, height))
        if self.depths_m is not None:
            depths = np.asarray(self.depths_m, dtype=np.float64).reshape(-1)
            if len(depths) != n:
                raise ValueError(f"{n} regions but {len(depths)} depths")
            depths = np.where(np.isfinite(depths) & (depths > 0), depths, np.nan)
            object.__setattr__(self, "depths_m", depths)

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    @classmethod
    def from_masks(cls, masks: np.ndarray,
                   depths_m: Optional[Sequence[float]] = None) -> "Regions":
        """Regions of (N, H, W) boolean masks; an empty mask gets a zero box at (0, 0)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        n, height, width = masks.shape
        boxes = np.zeros((n, 4))
        centroids = np.zeros((n, 2))
        areas = masks.reshape(n, -1).sum(axis=1).astype(np.float64)
        for i in range(n):
            ys, xs = np.nonzero(masks[i])
            if len(xs):
                boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                centroids[i] = (xs.mean() + 0.5, ys.mean() + 0.5)
        depths = None if depths_m is None else np.asarray(depths_m, dtype=np.float64)
        return cls(boxes, areas, centroids, (width, height), depths)

    @classmethod
    def from_boxes(cls, boxes_xyxy: np.ndarray, image_size: Tuple[int, int],
                   areas: Optional[Sequence[float]] = None,
                   depths_m: Optional[Sequence[float]] = None) -> "Regions":
        """Regions of boxes alone: box centres, and box areas unless ``areas`` is given."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        centroids = (boxes[:, :2] + boxes[:, 2:]) / 2
        box_areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
            boxes[:, 3] - boxes[:, 1], 0, None)
        depths = None if depths_m is None else np.asarray(depths_m, dtype=np.float64)
        return cls(boxes, box_areas if areas is None else np.asarray(areas), centroids,
                   image_size, depths)

    def has_depth(self, index: Union[np.ndarray, Sequence[int]]) -> bool:
        """Whether every region of ``index`` has a depth."""
        if self.depths_m is None:
            return False
        return bool(np.all(np.isfinite(self.depths_m[np.asarray(index, dtype=int)])))


@dataclass(frozen=True)
class PhraseScores:
    """Calibrated scores in [0, 1]: ``matrix[i, p]`` for region i and ``phrases[p]``."""

    phrases: Tuple[str, ...]
    matrix: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        phrases = tuple(self.phrases)
        if matrix.ndim != 2 or matrix.shape[1] != len(phrases):
            raise ValueError(
                f"scores must be (regions, {len(phrases)} phrases), got shape {matrix.shape}")
        if len(set(phrases)) != len(phrases):
            raise ValueError(f"phrases must be distinct: {phrases}")
        matrix = np.clip(np.nan_to_num(matrix, nan=0.0), 0.0, 1.0)
        object.__setattr__(self, "phrases", phrases)
        object.__setattr__(self, "matrix", matrix)

    def column(self, phrase: str) -> np.ndarray:
        try:
            return self.matrix[:, self.phrases.index(phrase)]
        except ValueError:
            raise ValueError(
                f"no scores for phrase '{phrase}' (scored: {', '.join(self.phrases)})") from None


@dataclass(frozen=True)
class ResolverSettings:
    """Knobs of the resolver; the defaults suit calibrated CLIP scores."""

    candidate_ratio: float = 0.5  # ordinals count regions scoring >= this x the best ...
    min_candidate_score: float = 0.2  # ... and at least this
    anchor_min_score: float = 0.3  # a relation's anchor must score this, else it is ignored
    duplicate_overlap: float = 0.8  # an ordinal counts a region inside a better one once
    ordinal_decay: float = 0.3  # the factor per place a candidate is away from the rank
    max_anchors: int = 8  # BETWEEN tries pairs of the best-scoring anchors only


@dataclass(frozen=True)
class RankedRegion:
    """A region, its combined score in [0, 1], and what decided it."""

    index: int
    score: float
    reason: str


@dataclass(frozen=True)
class TargetResolution:
    target: Target
    ranked: Tuple[RankedRegion, ...]

    @property
    def best(self) -> Optional[RankedRegion]:
        return self.ranked[0] if self.ranked else None


def phrases_to_score(
    command: Union[ReferringCommand, Target, Sequence[Target]],
) -> Tuple[str, ...]:
    """Each phrase the scorer must score for ``command``, once, in order of first use."""
    if isinstance(command, ReferringCommand):
        targets: Sequence[Target] = command.targets
    elif isinstance(command, Target):
        targets = (command,)
    else:
        targets = tuple(command)
    phrases: Dict[str, None] = {}
    for target in targets:
        phrases[target.phrase] = None
        for clause in target.relations:
            for anchor in clause.anchors:
                phrases[anchor] = None
        for excluded in target.exclusions:
            phrases[excluded] = None
    return tuple(phrases)


# --- geometry -------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.clip(x, -60.0, 60.0)))


def _overlap(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pairwise length of [lo_i, hi_i] within [lo_j, hi_j] (0 when apart)."""
    return np.clip(np.minimum(hi[:, None], hi[None, :]) - np.maximum(lo[:, None], lo[None, :]),
                   0.0, None)


def _gap(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pairwise gap between intervals [lo_i, hi_i] and [lo_j, hi_j] (0 when they overlap)."""
    return np.maximum(0.0, np.maximum(lo[:, None] - hi[None, :], lo[None, :] - hi[:, None]))


@dataclass(frozen=True)
class _Geometry:
    """Pairwise quantities, ``[i, j]`` = candidate i against anchor j."""

    regions: Regions
    cx: np.ndarray = field(init=False)
    cy: np.ndarray = field(init=False)
    w: np.ndarray = field(init=False)
    h: np.ndarray = field(init=False)
    size: np.ndarray = field(init=False)  # sqrt(area): a region's linear size
    diagonal: float = field(init=False)

    def __post_init__(self) -> None:
        r = self.regions
        b = r.boxes_xyxy
        object.__setattr__(self, "cx", r.centroids_xy[:, 0])
        object.__setattr__(self, "cy", r.centroids_xy[:, 1])
        object.__setattr__(self, "w", np.clip(b[:, 2] - b[:, 0], 1.0, None))
        object.__setattr__(self, "h", np.clip(b[:, 3] - b[:, 1], 1.0, None))
        object.__setattr__(self, "size", np.sqrt(np.clip(r.areas, 1.0, None)))
        object.__setattr__(self, "diagonal", float(np.hypot(*r.image_size)))

    def gaps(self) -> Tuple[np.ndarray, np.ndarray]:
        """Horizontal and vertical gaps between boxes (0 where they overlap)."""
        b = self.regions.boxes_xyxy
        return _gap(b[:, 0], b[:, 2]), _gap(b[:, 1], b[:, 3])

    def side(self, horizontal: bool, sign: float) -> np.ndarray:
        """Candidate i lies on one side of anchor j: left (horizontal, +1), right (-1),
        above (vertical, +1), below (-1); softly, and a little better when close and
        roughly level (people say "left of" for objects about side by side)."""
        if horizontal:
            delta = self.cx[None, :] - self.cx[:, None]
            scale = 0.25 * (self.w[:, None] + self.w[None, :]) / 2 + 1.0
            across = self.gaps()[1] / (self.h[:, None] + self.h[None, :])
        else:
            delta = self.cy[None, :] - self.cy[:, None]
            scale = 0.25 * (self.h[:, None] + self.h[None, :]) / 2 + 1.0
            across = self.gaps()[0] / (self.w[:, None] + self.w[None, :])
        gx, gy = self.gaps()
        distance = np.hypot(gx, gy) / (0.25 * self.diagonal)
        proximity = 0.7 + 0.3 * np.exp(-distance)
        return _sigmoid(sign * delta / scale) * np.exp(-0.5 * across) * proximity

    def near(self) -> np.ndarray:
        gx, gy = self.gaps()
        scale = np.maximum((self.size[:, None] + self.size[None, :]) / 2, 0.05 * self.diagonal)
        return np.exp(-np.hypot(gx, gy) / scale)

    def containment(self) -> np.ndarray:
        """Share of candidate i's box inside anchor j's box."""
        b = self.regions.boxes_xyxy
        inside = _overlap(b[:, 0], b[:, 2]) * _overlap(b[:, 1], b[:, 3])
        return inside / (self.w * self.h)[:, None]

    def smaller(self) -> np.ndarray:
        """1 where candidate i is smaller than anchor j, 0.25 where not."""
        areas = self.regions.areas
        return np.where(areas[:, None] <= areas[None, :], 1.0, 0.25)

    def on(self) -> np.ndarray:
        """Inside the anchor's outline (seen from above) or resting on its top edge."""
        b = self.regions.boxes_xyxy
        resting = (_overlap(b[:, 0], b[:, 2]) / self.w[:, None]) * np.exp(
            -np.abs(b[:, None, 3] - b[None, :, 1]) / (0.25 * self.h[:, None] + 1.0))
        return np.maximum(self.containment(), resting) * self.smaller()

    def inside(self) -> np.ndarray:
        return self.containment() * self.smaller()

    def depth_order(self, sign: float) -> np.ndarray:
        """Candidate i nearer the camera than anchor j (sign +1) or farther (-1).

        Depth where both have it, else the image fallback: a lower bottom edge is nearer.
        """
        gx = self.gaps()[0] / (self.w[:, None] + self.w[None, :])
        level = np.exp(-gx)  # "behind the plate" means roughly in line with it
        b = self.regions.boxes_xyxy
        scale = 0.25 * (self.h[:, None] + self.h[None, :]) / 2 + 1.0
        image = _sigmoid(sign * (b[:, None, 3] - b[None, :, 3]) / scale)
        depths = self.regions.depths_m
        if depths is None:
            return image * level
        both = np.isfinite(depths[:, None]) & np.isfinite(depths[None, :])
        known = np.nan_to_num(depths)
        by_depth = _sigmoid(sign * (known[None, :] - known[:, None]) / 0.03)
        return np.where(both, by_depth, image) * level

    def distance(self) -> np.ndarray:
        """Centroid distance in pixels (image plane: depth has no common scale with it)."""
        return np.hypot(self.cx[:, None] - self.cx[None, :], self.cy[:, None] - self.cy[None, :])

    def between(self, j: int, k: int) -> np.ndarray:
        """Each region lies on the segment between regions j and k (their centroids)."""
        c = self.regions.centroids_xy
        u = c[k] - c[j]
        length2 = float(u @ u) + _EPS
        t = ((c - c[j]) @ u) / length2
        cross = (c[:, 0] - c[j, 0]) * u[1] - (c[:, 1] - c[j, 1]) * u[0]
        perpendicular = np.abs(cross) / np.sqrt(length2)
        scale = np.maximum(self.size, 0.15 * np.sqrt(length2))
        within = _sigmoid((t - 0.05) / 0.04) * _sigmoid((0.95 - t) / 0.04)
        return within * np.exp(-((perpendicular / scale) ** 2))


def _pairwise(geometry: _Geometry, relation: Relation) -> np.ndarray:
    if relation is Relation.LEFT_OF:
        return geometry.side(True, 1.0)
    if relation is Relation.RIGHT_OF:
        return geometry.side(True, -1.0)
    if relation is Relation.ABOVE:
        return geometry.side(False, 1.0)
    if relation is Relation.BELOW:
        return geometry.side(False, -1.0)
    if relation is Relation.NEAR:
        return geometry.near()
    if relation is Relation.ON:
        return geometry.on()
    if relation is Relation.IN:
        return geometry.inside()
    if relation is Relation.IN_FRONT_OF:
        return geometry.depth_order(1.0)
    if relation is Relation.BEHIND:
        return geometry.depth_order(-1.0)
    if relation is Relation.CLOSEST_TO:
        return np.exp(-geometry.distance() / (0.15 * geometry.diagonal))
    if relation is Relation.FARTHEST_FROM:
        return np.clip(geometry.distance() / geometry.diagonal, 0.0, 1.0)
    raise ValueError(f"{relation} has no pairwise predicate")


# --- resolving ----------------------------------------------------------------------


@dataclass
class _Factor:
    """One multiplicative factor per region and the words that explain it."""

    values: np.ndarray
    notes: List[str]


def _candidates(score: np.ndarray, settings: ResolverSettings,
                allowed: np.ndarray) -> np.ndarray:
    """Indices of the regions that count as the target (for ordinals and relative relations)."""
    if not np.any(allowed):
        return np.zeros(0, dtype=int)
    best = float(score[allowed].max())
    threshold = max(settings.min_candidate_score, settings.candidate_ratio * best)
    chosen = np.nonzero(allowed & (score >= threshold - _EPS))[0]
    if len(chosen) == 0:
        chosen = np.nonzero(allowed & (score >= best - _EPS))[0]
    return chosen


def _exclusion(scores: PhraseScores, phrase: str) -> _Factor:
    excluded = scores.column(phrase)
    notes = [f"not {phrase} ({v:.2f})" for v in excluded]
    return _Factor(1.0 - excluded, notes)


def _relation(geometry: _Geometry, clause: RelationClause, scores: PhraseScores,
              base: np.ndarray, settings: ResolverSettings, allowed: np.ndarray) -> _Factor:
    n = len(base)
    anchors = [scores.column(a) for a in clause.anchors]
    best_anchor = [float(a.max()) if n else 0.0 for a in anchors]
    if min(best_anchor, default=0.0) < settings.anchor_min_score:
        missing = ", ".join(f"{p} (best {s:.2f})" for p, s in zip(clause.anchors, best_anchor)
                            if s < settings.anchor_min_score)
        note = f"{clause.describe()} ignored: no region looks like {missing}"
        return _Factor(np.ones(n), [note] * n)
    if clause.relation is Relation.BETWEEN:
        return _between(geometry, clause, anchors, settings)
    weight = anchors[0] / best_anchor[0]
    predicate = _pairwise(geometry, clause.relation)
    weighted = predicate * weight[None, :]
    np.fill_diagonal(weighted, -1.0)  # a region is never its own anchor
    anchor_of = np.argmax(weighted, axis=1) if n > 1 else np.zeros(n, dtype=int)
    values = np.clip(weighted[np.arange(n), anchor_of], 0.0, 1.0) if n > 1 else np.zeros(n)
    if clause.relation in (Relation.CLOSEST_TO, Relation.FARTHEST_FROM):
        # Superlative relations are relative: the best of the candidates gets 1.
        candidates = _candidates(base, settings, allowed)
        top = float(values[candidates].max()) if len(candidates) else 0.0
        if top > _EPS:
            values = np.clip(values / top, 0.0, 1.0)
    name = clause.anchors[0]
    notes = [f"{clause.relation.value} {name} ({name} {anchors[0][j]:.2f} at #{j}): {v:.2f}"
             for v, j in zip(values, anchor_of)]
    return _Factor(values, notes)


def _between(geometry: _Geometry, clause: RelationClause, anchors: List[np.ndarray],
             settings: ResolverSettings) -> _Factor:
    n = len(anchors[0])
    first = anchors[0] / max(float(anchors[0].max()), _EPS)
    second = anchors[1] / max(float(anchors[1].max()), _EPS)
    top_first = np.argsort(-first, kind="stable")[: settings.max_anchors]
    top_second = np.argsort(-second, kind="stable")[: settings.max_anchors]
    values = np.zeros(n)
    pair_of = [(-1, -1)] * n
    for j in top_first:
        for k in top_second:
            if j == k:
                continue
            weighted = geometry.between(int(j), int(k)) * first[j] * second[k]
            weighted[[j, k]] = 0.0
            better = weighted > values
            values = np.where(better, weighted, values)
            for i in np.nonzero(better)[0]:
                pair_of[i] = (int(j), int(k))
    a, b = clause.anchors
    notes = [
        f"between {a} and {b} (#{j}, #{k}): {v:.2f}" if j >= 0 else f"between {a} and {b}: 0.00"
        for v, (j, k) in zip(values, pair_of)
    ]
    return _Factor(np.clip(values, 0.0, 1.0), notes)


def _sort_key(regions: Regions, index: np.ndarray, key: OrderKey) -> Tuple[np.ndarray, str]:
    """Values to sort candidates by (ascending = first) and what they are."""
    cx, cy = regions.centroids_xy[index, 0], regions.centroids_xy[index, 1]
    bottom = regions.boxes_xyxy[index, 3]
    if key is OrderKey.LEFT:
        return cx, "x"
    if key is OrderKey.RIGHT:
        return -cx, "x"
    if key is OrderKey.TOP:
        return cy, "y"
    if key is OrderKey.BOTTOM:
        return -cy, "y"
    if key is OrderKey.MIDDLE:
        return np.abs(cx - np.median(cx)), "x"
    if key is OrderKey.LARGEST:
        return -regions.areas[index], "area"
    if key is OrderKey.SMALLEST:
        return regions.areas[index], "area"
    depth = regions.has_depth(index)
    if depth:
        assert regions.depths_m is not None
        values = regions.depths_m[index]
    else:
        values = -bottom  # image fallback: a lower bottom edge is nearer the camera
    if key is OrderKey.NEAREST:
        return values, "depth" if depth else "image height"
    return -values, "depth" if depth else "image height"


def _deduplicate(regions: Regions, index: np.ndarray, score: np.ndarray,
                 overlap: float) -> np.ndarray:
    """Drop candidates mostly inside a better-scoring one (a part of the same object)."""
    geometry = _Geometry(regions)
    inside = geometry.containment()
    kept: List[int] = []
    for i in sorted(index.tolist(), key=lambda r: -score[r]):
        if all(inside[i, j] < overlap and inside[j, i] < overlap for j in kept):
            kept.append(i)
    return np.asarray(sorted(kept), dtype=int)


def _ordinal(regions: Regions, ordinal: Ordinal, score: np.ndarray,
             settings: ResolverSettings, allowed: np.ndarray, phrase: str) -> _Factor:
    n = len(score)
    candidates = _candidates(score, settings, allowed)
    candidates = _deduplicate(regions, candidates, score, settings.duplicate_overlap)
    values = np.zeros(n)
    count = len(candidates)
    description = ordinal.describe()
    notes = [f"not among the {phrase} candidates for {description}"] * n
    if count == 0:
        return _Factor(values, notes)
    order_values, what = _sort_key(regions, candidates, ordinal.key)
    order = candidates[np.lexsort((candidates, order_values))]
    position = ordinal.rank - 1 if ordinal.rank > 0 else count + ordinal.rank
    plural = f"{count} {phrase}" + ("" if count == 1 else " candidates")
    if not 0 <= position < count:
        for place, i in enumerate(order):
            values[i] = settings.ordinal_decay
            notes[i] = f"no {description} among {plural} (by {what}); this is #{place + 1}"
    else:
        for place, i in enumerate(order):
            values[i] = settings.ordinal_decay ** abs(place - position)
            notes[i] = (f"{description} of {plural} (by {what})" if place == position
                        else f"#{place + 1} of {plural} by {what}, not the {description}")
    others = np.setdiff1d(np.arange(n), candidates)
    values[others] = settings.ordinal_decay ** (count + 1)
    return _Factor(values, notes)


def resolve_target(target: Target, regions: Regions, scores: PhraseScores,
                   settings: ResolverSettings = ResolverSettings(),
                   taken: Sequence[int] = ()) -> TargetResolution:
    """Rank the regions for ``target``, best first.

    ``scores`` must hold every phrase of ``phrases_to_score(target)``; ``taken`` regions
    (chosen for earlier targets of the command) rank last with score 0.
    """
    n = len(regions)
    if scores.matrix.shape[0] != n:
        raise ValueError(f"{n} regions but scores for {scores.matrix.shape[0]}")
    if n == 0:
        return TargetResolution(target, ())
    allowed = np.ones(n, dtype=bool)
    allowed[[i for i in taken if 0 <= i < n]] = False
    phrase_score = scores.column(target.phrase)
    factors: List[_Factor] = [_exclusion(scores, p) for p in target.exclusions]
    base = phrase_score.copy()
    for factor in factors:
        base = base * factor.values
    geometry = _Geometry(regions)
    for clause in target.relations:
        factor = _relation(geometry, clause, scores, base, settings, allowed)
        factors.append(factor)
    combined = phrase_score * (np.prod([f.values for f in factors], axis=0) if factors else 1.0)
    if target.ordinal is not None:
        factor = _ordinal(regions, target.ordinal, combined, settings, allowed, target.phrase)
        factors.append(factor)
        combined = combined * factor.values
    combined = np.where(allowed, np.clip(combined, 0.0, 1.0), 0.0)
    order = np.lexsort((np.arange(n), -phrase_score, -combined))
    ranked = []
    for i in order:
        parts = [f.notes[i] for f in factors]
        if not allowed[i]:
            parts.append("already chosen for an earlier target")
        reason = f"{target.phrase} {phrase_score[i]:.2f}"
        if parts:
            reason += f": {'; '.join(parts)}"
        ranked.append(RankedRegion(int(i), float(combined[i]), reason))
    return TargetResolution(target, tuple(ranked))


def resolve_command(
    command: ReferringCommand, regions: Regions, scores: PhraseScores,
    settings: ResolverSettings = ResolverSettings(),
) -> Tuple[TargetResolution, ...]:
    """Resolve each target in order; a region chosen for one target is not chosen again."""
    taken: List[int] = []
    resolutions = []
    for target in command.targets:
        resolution = resolve_target(target, regions, scores, settings, taken)
        if resolution.best is not None and resolution.best.score > 0:
            taken.append(resolution.best.index)
        resolutions.append(resolution)
    return tuple(resolutions)
