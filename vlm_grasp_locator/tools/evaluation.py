"""``vlm-grasp-locator eval``: accuracy of the locator on labelled referring commands.

Inputs: RefCOCO / RefCOCO+ / RefCOCOg in their published layout (``--refcoco DIR
--images DIR --split val``; see ``vlm_grasp_locator.tools.refcoco``), or a JSONL file
(``--jsonl FILE``) of one object a line::

    {"image": "coffee.jpg", "command": "take the spoon", "box_xyxy": [317, 66, 425, 326]}

``image`` is relative to the JSONL file's folder; ``box_xyxy`` is in pixels, x1/y1
exclusive, or null when the right answer is "not found". Optional keys: ``id``, ``note``.

A sample with a box is right when the locator found something and its best box
overlaps the labelled one with IoU >= 0.5 (the standard referring-expression metric);
a sample with null is right when the locator answered found=false. For a command
naming several targets, the box is the first target's. The report gives accuracy,
accuracy per kind of command (``core.referring``: plain, each relation, ordinal,
exclusion, several targets; a command with a relation and an ordinal counts in both),
precision and recall of "not found", and the wall-clock latency of ``locate`` (p50,
p95; the first call, which warms the models up, is reported apart).

Numbers from random weights (``--random-weights``) measure nothing but the harness.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol,
                    Sequence, TextIO, Tuple)

import numpy as np

from vlm_grasp_locator.tools.refcoco import SPLIT_BYS, SPLITS, RefcocoError, load_refcoco

if TYPE_CHECKING:
    from vlm_grasp_locator.pipeline.locator import LocateResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

IOU_THRESHOLD = 0.5
MAX_JSONL_BYTES = 64 * 1024 * 1024
JSONL_KEYS = frozenset({"image", "command", "box_xyxy", "id", "note"})

TRUTH_COLOUR: Tuple[int, int, int] = (255, 0, 255)  # magenta: draw_overlay uses green/orange
HEADER_BACKGROUND: Tuple[int, int, int] = (32, 32, 32)

Box = Tuple[float, float, float, float]


class EvalInputError(ValueError):
    """A sample file, image or option the evaluation cannot use."""


class LocatorLike(Protocol):
    """What the evaluation needs of a locator; ``pipeline.locator.Locator`` is one."""

    def locate(self, image_rgb: np.ndarray, command: str) -> "LocateResult":
        ...


# --- samples -----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSample:
    """One labelled command: ``box_xyxy`` None means the right answer is "not found"."""

    image_path: Path
    command: str
    box_xyxy: Optional[Box]
    source: str  # where it came from, for messages: "commands.jsonl:3", "refs(unc).p ref 7"


def _parse_box(value: Any, where: str) -> Optional[Box]:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise EvalInputError(f"{where}: box_xyxy must be [x0, y0, x1, y1] (numbers) or null, "
                             f"got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise EvalInputError(f"{where}: box_xyxy has a value that is not finite")
    if x1 <= x0 or y1 <= y0:
        raise EvalInputError(f"{where}: box_xyxy {list(value)} is empty (needs x1 > x0, y1 > y0)")
    return (x0, y0, x1, y1)


def parse_jsonl_line(line: str, base_dir: Path, where: str) -> EvalSample:
    """One sample from one JSONL line; EvalInputError naming ``where`` if it is bad."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{where}: not JSON: {e.msg} (column {e.colno})") from e
    if not isinstance(record, dict):
        raise EvalInputError(f"{where}: expected an object, got {type(record).__name__}")
    unknown = sorted(set(record) - JSONL_KEYS)
    if unknown:
        raise EvalInputError(f"{where}: unknown keys {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(JSONL_KEYS))})")
    for key in ("image", "command", "box_xyxy"):
        if key not in record:
            raise EvalInputError(f"{where}: missing {key!r}")
    image, command = record["image"], record["command"]
    if not isinstance(image, str) or not image.strip():
        raise EvalInputError(f"{where}: 'image' must be a non-empty path string")
    if not isinstance(command, str) or not command.strip():
        raise EvalInputError(f"{where}: 'command' must be a non-empty string")
    box = _parse_box(record["box_xyxy"], where)
    path = Path(image)
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise EvalInputError(f"{where}: no such image file: {path}")
    return EvalSample(path, command.strip(), box, where)


def load_jsonl(path: Path) -> List[EvalSample]:
    """The samples of a JSONL file, in order; blank lines are skipped."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSONL_BYTES:
            raise EvalInputError(f"{path}: over the limit of {MAX_JSONL_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"cannot read {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text: {e}") from e
    samples = [parse_jsonl_line(line, path.parent, f"{path}:{number}")
               for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not samples:
        raise EvalInputError(f"{path}: no samples")
    return samples


def refcoco_samples(annotations: Path, images: Path, split: str, *,
                    split_by: Optional[str] = None, field_name: str = "sent") -> List[EvalSample]:
    """Every sentence of ``split`` as a sample (``tools.refcoco.load_refcoco``)."""
    refs = load_refcoco(annotations, images, split, split_by=split_by, field=field_name)
    if not refs:
        raise EvalInputError(f"split {split} of {annotations} has no refs")
    return [EvalSample(r.image_path, r.text, r.box_xyxy,
                       f"ref {r.ref_id} sentence {r.sent_id} ({r.image_path.name})")
            for r in refs]


# --- scoring -----------------------------------------------------------------------


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes (x1/y1 exclusive)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


KIND_PLAIN = "plain"
KIND_ORDINAL = "ordinal"
KIND_EXCLUSION = "exclusion"
KIND_SEVERAL = "several targets"
KIND_NO_TARGET = "no target"


def command_kinds(command: str) -> Tuple[str, ...]:
    """The kinds of ``command`` by ``core.referring.parse_referring``.

    One of "plain", "several targets", "no target"; else any of "relation: <relation>"
    (one per relation), "ordinal", "exclusion".
    """
    from vlm_grasp_locator.core.referring import parse_referring

    parsed = parse_referring(command)
    if not parsed.targets:
        return (KIND_NO_TARGET,)
    if len(parsed.targets) > 1:
        return (KIND_SEVERAL,)
    target = parsed.targets[0]
    if target.is_plain:
        return (KIND_PLAIN,)
    kinds = [f"relation: {clause.relation.value}" for clause in target.relations]
    if target.ordinal is not None:
        kinds.append(KIND_ORDINAL)
    if target.exclusions:
        kinds.append(KIND_EXCLUSION)
    return tuple(dict.fromkeys(kinds))


class Outcome(Enum):
    HIT = "hit"  # found, IoU >= threshold
    WRONG_BOX = "wrong box"  # found, IoU below threshold
    MISSED = "missed"  # a box was labelled, the locator said not found
    RIGHT_NOT_FOUND = "right not found"  # labelled null, the locator said not found
    FALSE_FOUND = "false found"  # labelled null, the locator found something

    @property
    def correct(self) -> bool:
        return self in (Outcome.HIT, Outcome.RIGHT_NOT_FOUND)


@dataclass(frozen=True)
class SampleResult:
    index: int
    source: str
    image: str
    command: str
    kinds: Tuple[str, ...]
    expected_box: Optional[Box]
    found: bool
    predicted_box: Optional[Box]
    score: Optional[float]
    iou: Optional[float]  # None when either box is missing
    outcome: Outcome
    latency_ms: float
    reason: str = ""

    @property
    def correct(self) -> bool:
        return self.outcome.correct

    def to_json_dict(self) -> Dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "image": self.image,
            "command": self.command,
            "kinds": list(self.kinds),
            "expected_box": list(self.expected_box) if self.expected_box else None,
            "found": self.found,
            "predicted_box": list(self.predicted_box) if self.predicted_box else None,
            "score": self.score,
            "iou": self.iou,
            "outcome": self.outcome.value,
            "correct": self.correct,
            "latency_ms": self.latency_ms,
            "reason": self.reason,
        }


def score_result(index: int, sample: EvalSample, result: "LocateResult", latency_ms: float,
                 iou_threshold: float = IOU_THRESHOLD) -> SampleResult:
    """Compare one ``LocateResult`` with its label."""
    best = result.detections[0] if result.found and result.detections else None
    predicted = tuple(float(v) for v in best.box_xyxy) if best is not None else None
    iou = box_iou(predicted, sample.box_xyxy) if predicted and sample.box_xyxy else None
    if sample.box_xyxy is None:
        outcome = Outcome.FALSE_FOUND if result.found else Outcome.RIGHT_NOT_FOUND
    elif not result.found:
        outcome = Outcome.MISSED
    else:
        outcome = Outcome.HIT if iou is not None and iou >= iou_threshold else Outcome.WRONG_BOX
    return SampleResult(
        index=index, source=sample.source, image=str(sample.image_path),
        command=sample.command, kinds=command_kinds(sample.command),
        expected_box=sample.box_xyxy, found=bool(result.found), predicted_box=predicted,
        score=float(best.score) if best is not None else None, iou=iou, outcome=outcome,
        latency_ms=float(latency_ms), reason=str(result.reason or ""),
    )


# --- report ------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class Count:
    """``correct`` of ``total``; ``rate`` None when ``total`` is 0."""

    correct: int
    total: int

    @property
    def rate(self) -> Optional[float]:
        return _ratio(self.correct, self.total)

    def to_json_dict(self) -> Dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "rate": self.rate}


@dataclass
class EvalReport:
    results: List[SampleResult]
    iou_threshold: float = IOU_THRESHOLD
    random_weights: bool = False
    overlays_dir: Optional[str] = None
    fresh_frames: bool = False  # the locator's frame cache was cleared before every call

    # --- the numbers, all derived from ``results`` ---
    @property
    def accuracy(self) -> Count:
        """Right answers of all samples (boxes at IoU >= threshold, and right "not found")."""
        return Count(sum(r.correct for r in self.results), len(self.results))

    @property
    def box_accuracy(self) -> Count:
        """Accuracy@IoU over the samples with a labelled box (the RefCOCO metric)."""
        boxed = [r for r in self.results if r.expected_box is not None]
        return Count(sum(r.correct for r in boxed), len(boxed))

    @property
    def not_found_precision(self) -> Count:
        """Of the answers "not found", how many were labelled null."""
        said = [r for r in self.results if not r.found]
        return Count(sum(r.expected_box is None for r in said), len(said))

    @property
    def not_found_recall(self) -> Count:
        """Of the samples labelled null, how many the locator answered "not found"."""
        null = [r for r in self.results if r.expected_box is None]
        return Count(sum(not r.found for r in null), len(null))

    @property
    def per_kind(self) -> Dict[str, Count]:
        """Accuracy per command kind, kinds sorted by name ("plain" first)."""
        groups: Dict[str, List[SampleResult]] = {}
        for r in self.results:
            for kind in r.kinds:
                groups.setdefault(kind, []).append(r)
        order = sorted(groups, key=lambda k: (k != KIND_PLAIN, k))
        return {k: Count(sum(r.correct for r in groups[k]), len(groups[k])) for k in order}

    @property
    def outcomes(self) -> Dict[str, int]:
        return {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}

    def latency_ms(self) -> Dict[str, Optional[float]]:
        """p50, p95 and mean of ``locate``'s wall-clock time, the first call left out when
        there are others (it builds lazy state: warm-up); ``first`` is that call's."""
        times = [r.latency_ms for r in self.results]
        if not times:
            return {"p50": None, "p95": None, "mean": None, "first": None}
        values = np.array(times[1:] if len(times) > 1 else times, dtype=np.float64)
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                "mean": float(values.mean()), "first": float(times[0])}

    def to_json_dict(self) -> Dict[str, Any]:
        return {
            "random_weights": self.random_weights,
            "iou_threshold": self.iou_threshold,
            "samples": len(self.results),
            "accuracy": self.accuracy.to_json_dict(),
            "box_accuracy": self.box_accuracy.to_json_dict(),
            "not_found": {"precision": self.not_found_precision.to_json_dict(),
                          "recall": self.not_found_recall.to_json_dict()},
            "per_kind": {k: c.to_json_dict() for k, c in self.per_kind.items()},
            "outcomes": self.outcomes,
            "latency_ms": self.latency_ms(),
            "fresh_frames": self.fresh_frames,
            "overlays_dir": self.overlays_dir,
            "results": [r.to_json_dict() for r in self.results],
        }

    def format_table(self) -> str:
        """The report for people, as lines of text."""

        def cell(count: Count) -> str:
            rate = "n/a" if count.rate is None else f"{count.rate:.3f}"
            return f"{rate} ({count.correct}/{count.total})"

        lines: List[str] = []
        if self.random_weights:
            lines.append("RANDOM WEIGHTS: every number below is meaningless (harness smoke run).")
        boxed = self.box_accuracy.total
        lines.append(f"samples: {len(self.results)} ({boxed} with a box, "
                     f"{len(self.results) - boxed} whose right answer is 'not found')")
        lines.append(f"accuracy (IoU >= {self.iou_threshold:.2f}, right 'not found'): "
                     f"{cell(self.accuracy)}")
        lines.append(f"accuracy on boxed samples (acc@{self.iou_threshold:.2f}): "
                     f"{cell(self.box_accuracy)}")
        lines.append(f"not found: precision {cell(self.not_found_precision)}, "
                     f"recall {cell(self.not_found_recall)}")
        latency = self.latency_ms()
        if latency["p50"] is not None:
            lines.append(f"latency of locate: p50 {latency['p50']:.0f} ms, p95 "
                         f"{latency['p95']:.0f} ms, mean {latency['mean']:.0f} ms; first call "
                         f"(warm-up, left out) {latency['first']:.0f} ms")
            if not self.fresh_frames:
                lines.append("  (later commands on the same image reuse the locator's frame "
                             "cache; --no-frame-cache times every one in full)")
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in self.outcomes.items()))
        kinds = self.per_kind
        if kinds:
            width = max(len("kind"), *(len(k) for k in kinds))
            lines.append("")
            lines.append(f"{'kind':<{width}}  {'n':>6}  {'correct':>7}  {'accuracy':>8}")
            for kind, count in kinds.items():
                rate = "n/a" if count.rate is None else f"{count.rate:.3f}"
                lines.append(f"{kind:<{width}}  {count.total:>6}  {count.correct:>7}  "
                             f"{rate:>8}")
        if self.overlays_dir:
            lines.append("")
            lines.append(f"overlays of the {len(self.results) - self.accuracy.correct} "
                         f"failure(s): {self.overlays_dir}")
        return "\n".join(lines)


# --- running -----------------------------------------------------------------------


class ProgressBar:
    """``[#####.....] 12/40 eta 31 s`` on a stream, redrawn in place on a terminal.

    On anything else (a log file, a pipe) it writes a line at every tenth of the way.
    """

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self._interactive = bool(getattr(stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def update(self, done: int) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - done) if done else 0.0
        filled = int(round(fraction * self.width))
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                f"eta {eta:.0f} s")
        if self._interactive:
            self.stream.write("\r" + text + ("\n" if done >= self.total else ""))
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth or done >= self.total:
            self._last_tenth = tenth
            self.stream.write(text + "\n")
            self.stream.flush()


def read_image_rgb(path: Path) -> np.ndarray:
    """HxWx3 RGB uint8 of an image file (grey images as three equal channels)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvalInputError(f"cannot read {path} as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "command"


def draw_failure(image_rgb: np.ndarray, result: "LocateResult", scored: SampleResult, *,
                 random_weights: bool = False) -> np.ndarray:
    """``core.overlay.draw_overlay``'s picture, the labelled box in magenta, and a header
    strip with the command, the outcome and the IoU."""
    import cv2

    from vlm_grasp_locator.core.overlay import draw_overlay

    out = draw_overlay(image_rgb, result, random_weights=random_weights)
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font = max(0.4, max(h, w) / 1200)
    if scored.expected_box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in scored.expected_box)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), TRUTH_COLOUR,
                      thickness)
        cv2.putText(out, "truth", (x0 + 2, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    TRUTH_COLOUR, thickness, cv2.LINE_AA)
    iou = "" if scored.iou is None else f", IoU {scored.iou:.2f}"
    truth = "" if scored.expected_box is not None else ", truth: not found"
    lines = [scored.command[:100], f"{scored.outcome.value}{iou}{truth}"]
    (_, th), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font, thickness)
    step = th + baseline + 4
    header = np.empty((step * len(lines) + 4, w, 3), dtype=np.uint8)
    header[:] = HEADER_BACKGROUND
    for i, line in enumerate(lines):
        cv2.putText(header, line, (4, step * (i + 1) - baseline), cv2.FONT_HERSHEY_SIMPLEX,
                    font, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.vstack([header, out])


def _write_png(path: Path, image_rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def run_evaluation(locator_like: LocatorLike, samples: Iterable[EvalSample], *,
                   overlays_dir: Optional[Path] = None, progress: bool = True,
                   iou_threshold: float = IOU_THRESHOLD, limit: Optional[int] = None,
                   stream: Optional[TextIO] = None, fresh_frames: bool = False,
                   read_image: Callable[[Path], np.ndarray] = read_image_rgb) -> EvalReport:
    """Run ``locator_like.locate`` on every sample (the first ``limit``) and score it.

    Consecutive samples of one image decode it once (RefCOCO lists every sentence of a
    ref in a row, so the locator's frame cache helps too). With ``overlays_dir``, each
    failure is drawn to ``<index>_<command>.png`` there. The progress bar goes to
    ``stream`` (stderr by default). With ``fresh_frames``, a locator that has
    ``clear_cache()`` gets it called before every sample (outside the timed part), so
    every latency includes the image's mask proposals.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise EvalInputError(f"the IoU threshold must be in (0, 1], got {iou_threshold}")
    if limit is not None and limit < 1:
        raise EvalInputError(f"limit must be >= 1, got {limit}")
    chosen = list(samples)[:limit] if limit is not None else list(samples)
    if not chosen:
        raise EvalInputError("no samples to evaluate")
    random_weights = bool(getattr(locator_like, "random_weights", False))
    out_dir = Path(overlays_dir) if overlays_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(len(chosen), stream or sys.stderr) if progress else None
    results: List[SampleResult] = []
    cached: Tuple[Optional[Path], Optional[np.ndarray]] = (None, None)
    for index, sample in enumerate(chosen):
        if cached[0] != sample.image_path:
            try:
                cached = (sample.image_path, read_image(sample.image_path))
            except EvalInputError as e:
                raise EvalInputError(f"{sample.source}: {e}") from e
        image = cached[1]
        assert image is not None
        if fresh_frames and callable(getattr(locator_like, "clear_cache", None)):
            locator_like.clear_cache()
        started = time.perf_counter()
        result = locator_like.locate(image, sample.command)
        latency_ms = (time.perf_counter() - started) * 1000.0
        scored = score_result(index, sample, result, latency_ms, iou_threshold)
        results.append(scored)
        if out_dir is not None and not scored.correct:
            picture = draw_failure(image, result, scored, random_weights=random_weights)
            _write_png(out_dir / f"{index:05d}_{_slug(sample.command)}.png", picture)
        if bar is not None:
            bar.update(index + 1)
    return EvalReport(results, iou_threshold=iou_threshold, random_weights=random_weights,
                      overlays_dir=str(out_dir) if out_dir is not None else None,
                      fresh_frames=fresh_frames)


# --- command line ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``eval`` options on ``parser``; its ``func`` default is ``cmd_eval``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", metavar="FILE",
                        help='one {"image", "command", "box_xyxy"} object a line')
    source.add_argument("--refcoco", metavar="DIR",
                        help="RefCOCO/RefCOCO+/RefCOCOg folder: refs(<splitBy>).p and "
                             "instances.json")
    parser.add_argument("--images", metavar="DIR",
                        help="with --refcoco: COCO train2014 images (COCO_train2014_*.jpg)")
    parser.add_argument("--split", default="val", choices=SPLITS,
                        help="with --refcoco: the split (default val)")
    parser.add_argument("--split-by", choices=SPLIT_BYS,
                        help="with --refcoco: which refs(<splitBy>).p (default: the only one)")
    parser.add_argument("--sentence-field", choices=("sent", "raw"), default="sent",
                        help="with --refcoco: the sentence text used as the command")
    parser.add_argument("--limit", type=_positive_int, metavar="N",
                        help="evaluate the first N samples only")
    parser.add_argument("--iou", type=float, default=IOU_THRESHOLD,
                        help=f"IoU a box needs to count as right (default {IOU_THRESHOLD})")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object on stdout")
    parser.add_argument("--overlays", metavar="DIR",
                        help="write a picture of every failure there")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--no-frame-cache", action="store_true",
                        help="clear the locator's frame cache before every command, so each "
                             "latency includes the mask proposals")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"],
                        help="override the config's device")
    parser.add_argument("--random-weights", action="store_true",
                        help="where a checkpoint is missing, run with random weights "
                             "(meaningless numbers; tests the harness only)")
    parser.add_argument("--config", metavar="FILE", help="YAML file of LocatorConfig fields")
    parser.set_defaults(func=cmd_eval)
    return parser


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``add_subparsers()`` object of ``vlm-grasp-locator``."""
    parser = subparsers.add_parser(
        "eval", help="accuracy on RefCOCO or a JSONL file of labelled commands",
        description=(__doc__ or "").split("\n\n")[0])
    return add_eval_arguments(parser)


def _locator_config(args: argparse.Namespace) -> Any:
    from vlm_grasp_locator.tools.config_file import locator_config

    return locator_config(args)


def _samples(args: argparse.Namespace) -> List[EvalSample]:
    if args.jsonl:
        return load_jsonl(Path(args.jsonl))
    if not args.images:
        raise EvalInputError("--refcoco needs --images DIR (the COCO train2014 images)")
    return refcoco_samples(Path(args.refcoco), Path(args.images), args.split,
                           split_by=args.split_by, field_name=args.sentence_field)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``eval``; 0 when the evaluation ran (whatever the accuracy), 2 on bad input."""
    from vlm_grasp_locator.backends.factory import build_locator
    from vlm_grasp_locator.models.checkpoints import CheckpointError
    from vlm_grasp_locator.runtime.process import configure_process

    try:
        samples = _samples(args)
        if args.limit is not None:
            samples = samples[: args.limit]
        config = _locator_config(args)
        configure_process(num_threads=config.num_threads)
        locator = build_locator(config)
        report = run_evaluation(locator, samples,
                                overlays_dir=Path(args.overlays) if args.overlays else None,
                                progress=not args.no_progress, iou_threshold=args.iou,
                                fresh_frames=args.no_frame_cache)
    except (EvalInputError, RefcocoError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.to_json_dict()))
    else:
        print(report.format_table())
    return EXIT_OK


def main_eval(argv: Optional[List[str]] = None) -> int:
    """``python -m vlm_grasp_locator.tools.evaluation ...``: ``eval`` on its own."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(prog="vlm-grasp-locator eval",
                                     description=(__doc__ or "").split("\n\n")[0])
    args = add_eval_arguments(parser).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main_eval())
