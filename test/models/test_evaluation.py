"""The accuracy harness: safe reading of the RefCOCO refs pickle, the RefCOCO and JSONL
sample readers, the metrics (on a locator whose answers are fixed by the test), one run
of the real locator with random weights, and the shipped hand-labelled set."""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from vlm_grasp_locator.tools import evaluation as ev
from vlm_grasp_locator.tools.refcoco import (
    RefcocoError,
    UnsafePickleError,
    find_refs_file,
    load_plain_pickle,
    load_refcoco,
    split_matches,
)

REPO = Path(__file__).resolve().parents[2]
EVAL_DIR = REPO / "vlm_grasp_locator" / "data" / "eval"
SHIPPED = EVAL_DIR / "commands.jsonl"


# --- the refs pickle ---------------------------------------------------------------


def _sentence(sent_id: int, text: str) -> dict:
    return {"raw": text.capitalize(), "sent": text, "tokens": text.split(), "sent_id": sent_id}


def published_refs() -> List[dict]:
    """Refs in the published layout: the keys lichengunc/refer's REFER reads."""
    return [
        {"ref_id": 0, "ann_id": 100, "image_id": 1, "split": "val", "category_id": 47,
         "file_name": "COCO_train2014_000000000001_100.jpg", "sent_ids": [0, 1],
         "sentences": [_sentence(0, "cup on the left"), _sentence(1, "left cup")]},
        {"ref_id": 1, "ann_id": 101, "image_id": 1, "split": "testA", "category_id": 1,
         "file_name": "COCO_train2014_000000000001_101.jpg", "sent_ids": [2],
         "sentences": [_sentence(2, "man in red")]},
        {"ref_id": 2, "ann_id": 102, "image_id": 2, "split": "testB", "category_id": 47,
         "file_name": "COCO_train2014_000000000002_102.jpg", "sent_ids": [3],
         "sentences": [_sentence(3, "right cup")]},
        {"ref_id": 3, "ann_id": 103, "image_id": 2, "split": "train", "category_id": 47,
         "file_name": "COCO_train2014_000000000002_103.jpg", "sent_ids": [4],
         "sentences": [_sentence(4, "cup in the middle")]},
    ]


def instances() -> dict:
    return {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64,
                    "height": 48},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 64,
                    "height": 48}],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 47, "bbox": [2.5, 3.0, 10.0, 20.0]},
            {"id": 101, "image_id": 1, "category_id": 1, "bbox": [30, 5, 20, 40]},
            {"id": 102, "image_id": 2, "category_id": 47, "bbox": [40, 10, 15, 15]},
            {"id": 103, "image_id": 2, "category_id": 47, "bbox": [20, 10, 15, 15]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 47, "name": "cup"}],
    }


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_unpickler_reads_the_published_refs_layout(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(published_refs(), protocol=protocol))
    assert load_plain_pickle(path) == published_refs()


def test_python2_byte_strings_come_out_as_str(tmp_path: Path) -> None:
    # [{'split': 'val', 'ref_id': 7}] as Python 2 writes it: str as SHORT_BINSTRING
    data = (b"\x80\x02]q\x00}q\x01(U\x05splitq\x02U\x03valq\x03U\x06ref_idq\x04K\x07ua.")
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    assert load_plain_pickle(path) == [{"split": "val", "ref_id": 7}]


class _Marker:
    """A plain class instance: pickled as a global plus a state dict."""

    def __init__(self) -> None:
        self.value = 1


class _Shell:
    """Pickles to os.system(<command>): the classic pickle exploit."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_plain_unpickler_refuses_an_os_system_reduce_without_running_it(tmp_path: Path) -> None:
    ran = tmp_path / "it-ran"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0}, _Shell(f"touch {ran}")], protocol=2))
    with pytest.raises(UnsafePickleError) as caught:
        load_plain_pickle(path)
    message = str(caught.value)
    assert str(path) in message and "system" in message and "refused global" in message
    assert not ran.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_plain_unpickler_refuses_a_class_instance(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Marker()], protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"refused global .*_Marker"):
        load_plain_pickle(path)


def test_plain_unpickler_refuses_builtins_too(tmp_path: Path) -> None:
    # eval, getattr, ... are globals like any other: none is let through
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02c__builtin__\neval\nq\x00X\x03\x00\x00\x001+1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafePickleError, match=r"refused global (__builtin__|builtins)\.eval"):
        load_plain_pickle(path)


def test_plain_unpickler_caps_the_size_and_names_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(published_refs(), protocol=2))
    with pytest.raises(RefcocoError, match="over the limit"):
        load_plain_pickle(path, max_bytes=100)
    path.write_bytes(b"this is no pickle")
    with pytest.raises(RefcocoError, match="not a readable refs pickle"):
        load_plain_pickle(path)
    with pytest.raises(RefcocoError, match="cannot read"):
        load_plain_pickle(tmp_path / "missing.p")


# --- RefCOCO folders ---------------------------------------------------------------


@pytest.fixture()
def refcoco_dirs(tmp_path: Path) -> Tuple[Path, Path]:
    annotations, images = tmp_path / "refcoco", tmp_path / "train2014"
    annotations.mkdir()
    images.mkdir()
    (annotations / "refs(unc).p").write_bytes(pickle.dumps(published_refs(), protocol=2))
    (annotations / "instances.json").write_text(json.dumps(instances()))
    for image_id in (1, 2):
        cv2.imwrite(str(images / f"COCO_train2014_{image_id:012d}.jpg"),
                    np.full((48, 64, 3), 128, np.uint8))
    return annotations, images


def test_refcoco_samples_convert_boxes_and_filter_splits(refcoco_dirs) -> None:
    annotations, images = refcoco_dirs
    val = load_refcoco(annotations, images, "val")
    assert [(r.ref_id, r.sent_id, r.text) for r in val] == [(0, 0, "cup on the left"),
                                                            (0, 1, "left cup")]
    assert val[0].box_xyxy == (2.5, 3.0, 12.5, 23.0)  # [x, y, w, h] -> x0, y0, x1, y1
    assert val[0].image_path == images / "COCO_train2014_000000000001.jpg"
    assert val[0].category == "cup"
    assert [r.ref_id for r in load_refcoco(annotations, images, "testA")] == [1]
    assert [r.ref_id for r in load_refcoco(annotations, images, "testB")] == [2]
    assert [r.ref_id for r in load_refcoco(annotations, images, "test")] == [1, 2]
    assert [r.text for r in load_refcoco(annotations, images, "val", field="raw")][0] == \
        "Cup on the left"
    samples = ev.refcoco_samples(annotations, images, "testB")
    assert samples[0].command == "right cup" and samples[0].box_xyxy == (40.0, 10.0, 55.0, 25.0)


def test_refcoco_split_semantics_are_the_published_ones() -> None:
    assert split_matches("testA", "testAB") and split_matches("testB", "testAB")
    assert not split_matches("testA", "train") and not split_matches("val", "testA")
    assert split_matches("test", "test") and split_matches("test", "testB")
    with pytest.raises(RefcocoError, match="split must be one of"):
        split_matches("dev", "val")


def test_refcoco_image_names_fall_back_to_the_coco_pattern(refcoco_dirs) -> None:
    annotations, images = refcoco_dirs
    data = instances()
    del data["images"]
    (annotations / "instances.json").write_text(json.dumps(data))
    refs = load_refcoco(annotations, images, "testB")
    assert refs[0].image_path.name == "COCO_train2014_000000000002.jpg"


def test_refcoco_errors_are_clear(refcoco_dirs, tmp_path: Path) -> None:
    annotations, images = refcoco_dirs
    (annotations / "refs(google).p").write_bytes(pickle.dumps([], protocol=2))
    with pytest.raises(RefcocoError, match=r"refs\(google\)\.p, refs\(unc\)\.p; choose one"):
        find_refs_file(annotations)
    assert find_refs_file(annotations, "unc").name == "refs(unc).p"
    with pytest.raises(RefcocoError, match="no refs"):
        find_refs_file(tmp_path)
    (images / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(RefcocoError, match="1 image file.*missing"):
        load_refcoco(annotations, images, "testB", split_by="unc")
    refs = published_refs()
    refs[0]["ann_id"] = 999
    (annotations / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(RefcocoError, match="annotation 999 is not in instances.json"):
        load_refcoco(annotations, images, "val", split_by="unc")
    del refs[0]["sentences"]
    refs[0]["ann_id"] = 100
    (annotations / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(RefcocoError, match="entry 0: not in the published refs layout"):
        load_refcoco(annotations, images, "val", split_by="unc")


# --- JSONL -------------------------------------------------------------------------


def _write_jsonl(folder: Path, lines: Sequence[str]) -> Path:
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 30, 3), np.uint8))
    path = folder / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_reads_boxes_nulls_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, [
        '{"image": "a.png", "command": "take the cup", "box_xyxy": [1, 2, 10, 12]}',
        "",
        '{"image": "a.png", "command": " take the fork ", "box_xyxy": null, "id": "x"}',
    ])
    samples = ev.load_jsonl(path)
    assert [s.command for s in samples] == ["take the cup", "take the fork"]
    assert samples[0].box_xyxy == (1.0, 2.0, 10.0, 12.0) and samples[1].box_xyxy is None
    assert samples[0].image_path == tmp_path / "a.png"
    assert samples[1].source == f"{path}:3"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected an object"),
    ('{"image": "a.png", "command": "x"}', "missing 'box_xyxy'"),
    ('{"image": "a.png", "command": "", "box_xyxy": null}', "'command' must be"),
    ('{"image": "a.png", "command": "x", "box_xyxy": [1, 2, 3]}', "box_xyxy must be"),
    ('{"image": "a.png", "command": "x", "box_xyxy": [5, 2, 3, 9]}', "is empty"),
    ('{"image": "a.png", "command": "x", "box_xyxy": [1, 2, true, 9]}', "box_xyxy must be"),
    ('{"image": "a.png", "command": "x", "box": [1, 2, 3, 9]}', "unknown keys box"),
    ('{"image": "b.png", "command": "x", "box_xyxy": null}', "no such image file"),
])
def test_jsonl_bad_lines_name_their_line_number(tmp_path: Path, line: str, message: str) -> None:
    good = '{"image": "a.png", "command": "take the cup", "box_xyxy": null}'
    path = _write_jsonl(tmp_path, [good, good, line])
    with pytest.raises(ev.EvalInputError, match=re.escape(f"{path}:3: ") + ".*" + message):
        ev.load_jsonl(path)


def test_jsonl_without_samples_is_an_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, ["", "  "])
    with pytest.raises(ev.EvalInputError, match="no samples"):
        ev.load_jsonl(path)


# --- metrics on a locator whose answers the test fixes ------------------------------


def _result(command: str, box: Optional[Sequence[float]], size: Tuple[int, int] = (30, 20)):
    from vlm_grasp_locator.pipeline.locator import Detection, LocateResult

    detections = []
    if box is not None:
        mask = np.zeros((size[1], size[0]), dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[y0:y1, x0:x1] = True
        detections.append(Detection(label="thing", score=0.9,
                                    box_xyxy=tuple(float(v) for v in box), mask=mask,
                                    mask_area=int(mask.sum()), similarity=0.3))
    return LocateResult(command=command, target="thing", found=box is not None,
                        reason="" if box is not None else "no region scored high enough",
                        image_size=size, detections=detections, timings_ms={"total": 1.0})


class AnswerTable:
    """A locator whose answer to each command is fixed: a box, or None for not found."""

    random_weights = False

    def __init__(self, answers: Dict[str, Optional[Sequence[float]]]) -> None:
        self.answers = answers
        self.calls: List[Tuple[Tuple[int, ...], str]] = []

    def locate(self, image_rgb: np.ndarray, command: str):
        self.calls.append((image_rgb.shape, command))
        return _result(command, self.answers[command])


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), np.full((20, 30, 3), 90, np.uint8))
    return path


def _sample(image: Path, command: str, box: Optional[Sequence[float]]) -> ev.EvalSample:
    return ev.EvalSample(image, command, tuple(float(v) for v in box) if box else None, command)


def test_box_iou() -> None:
    assert ev.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert ev.box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5
    assert ev.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert ev.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # x1 exclusive: they touch


def test_iou_threshold_is_inclusive_at_one_half(image_file: Path) -> None:
    truth = (0, 0, 10, 10)
    locator = AnswerTable({"take the a": (0, 0, 10, 5), "take the b": (0, 0, 10, 4.9),
                           "take the c": (20, 10, 30, 20)})
    samples = [_sample(image_file, c, truth) for c in ("take the a", "take the b", "take the c")]
    report = ev.run_evaluation(locator, samples, progress=False)
    assert [r.outcome for r in report.results] == [ev.Outcome.HIT, ev.Outcome.WRONG_BOX,
                                                   ev.Outcome.WRONG_BOX]
    assert [r.iou for r in report.results] == pytest.approx([0.5, 0.49, 0.0])
    assert report.accuracy.correct == 1 and report.accuracy.total == 3
    stricter = ev.run_evaluation(locator, samples, progress=False, iou_threshold=0.6)
    assert stricter.accuracy.correct == 0


def test_not_found_precision_and_recall(image_file: Path) -> None:
    box = (0, 0, 10, 10)
    locator = AnswerTable({
        "take the cup": box,  # hit
        "take the fork": None,  # missed: a box was labelled
        "take the knife": None,  # right not found
        "take the plate": None,  # right not found
        "take the bowl": box,  # false found: labelled null
    })
    samples = [_sample(image_file, "take the cup", box), _sample(image_file, "take the fork", box),
               _sample(image_file, "take the knife", None),
               _sample(image_file, "take the plate", None),
               _sample(image_file, "take the bowl", None)]
    report = ev.run_evaluation(locator, samples, progress=False)
    assert [r.outcome.value for r in report.results] == [
        "hit", "missed", "right not found", "right not found", "false found"]
    precision, recall = report.not_found_precision, report.not_found_recall
    assert (precision.correct, precision.total) == (2, 3)  # 3 "not found" answers, 2 right
    assert (recall.correct, recall.total) == (2, 3)  # 3 labelled null, 2 answered so
    assert (report.accuracy.correct, report.accuracy.total) == (3, 5)
    assert (report.box_accuracy.correct, report.box_accuracy.total) == (1, 2)
    assert report.outcomes == {"hit": 1, "wrong box": 0, "missed": 1, "right not found": 2,
                               "false found": 1}


def test_rates_without_a_denominator_are_none(image_file: Path) -> None:
    report = ev.run_evaluation(AnswerTable({"take the cup": (0, 0, 10, 10)}),
                               [_sample(image_file, "take the cup", (0, 0, 10, 10))],
                               progress=False)
    assert report.not_found_precision.rate is None and report.not_found_recall.rate is None
    assert "precision n/a (0/0)" in report.format_table()


def test_per_kind_grouping(image_file: Path) -> None:
    right, wrong = (0, 0, 10, 10), (20, 10, 30, 20)
    commands = {
        "take the cup": right,
        "take the fork": wrong,
        "the cup left of the plate": right,
        "the second cup from the left": wrong,
        "take the cup but not the spoon": right,
        "take the spoon, then the cup": wrong,
        "the leftmost cup next to the plate": right,
    }
    samples = [_sample(image_file, c, right) for c in commands]
    report = ev.run_evaluation(AnswerTable(commands), samples, progress=False)
    kinds = {k: (c.correct, c.total) for k, c in report.per_kind.items()}
    assert kinds == {
        "plain": (1, 2),
        "exclusion": (1, 1),
        "ordinal": (1, 2),  # the second cup (wrong), the leftmost cup next to... (right)
        "relation: left of": (1, 1),
        "relation: next to": (1, 1),
        "several targets": (0, 1),
    }
    assert list(report.per_kind)[0] == "plain"
    table = report.format_table()
    assert re.search(r"relation: left of\s+1\s+1\s+1\.000", table)
    assert re.search(r"several targets\s+1\s+0\s+0\.000", table)


def test_report_json_latency_and_image_decoding(image_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.zeros((20, 30), np.uint8))  # grey: read as three channels
    locator = AnswerTable({"take the cup": (0, 0, 10, 10), "take the fork": None})
    reads: List[Path] = []

    def read(path: Path) -> np.ndarray:
        reads.append(path)
        return ev.read_image_rgb(path)

    samples = [_sample(image_file, "take the cup", (0, 0, 10, 10)),
               _sample(image_file, "take the fork", None),
               _sample(other, "take the cup", (0, 0, 10, 10))]
    report = ev.run_evaluation(locator, samples, progress=False, read_image=read)
    assert reads == [image_file, other]  # one decode per run of the same image
    assert [shape for shape, _ in locator.calls] == [(20, 30, 3)] * 3
    data = json.loads(json.dumps(report.to_json_dict()))
    assert data["samples"] == 3 and data["accuracy"] == {"correct": 3, "total": 3, "rate": 1.0}
    assert data["per_kind"] == {"plain": {"correct": 3, "total": 3, "rate": 1.0}}
    assert set(data["latency_ms"]) == {"p50", "p95", "mean", "first"}
    assert 0 <= data["latency_ms"]["p50"] <= data["latency_ms"]["p95"]
    assert data["results"][1]["outcome"] == "right not found"
    assert data["results"][0]["predicted_box"] == [0.0, 0.0, 10.0, 10.0]


def test_latency_leaves_the_warm_up_call_out(image_file: Path) -> None:
    locator = AnswerTable({"take the cup": None})
    scored = [ev.score_result(i, _sample(image_file, "take the cup", None),
                              locator.locate(np.zeros((20, 30, 3), np.uint8), "take the cup"),
                              latency)
              for i, latency in enumerate([5000.0, *range(10, 110, 10)])]
    latency = ev.EvalReport(scored).latency_ms()
    assert latency["first"] == 5000.0
    assert latency["p50"] == pytest.approx(55.0)  # of 10, 20, ..., 100
    assert latency["p95"] == pytest.approx(95.5)
    assert latency["mean"] == pytest.approx(55.0)
    single = ev.EvalReport(scored[:1]).latency_ms()
    assert single["p50"] == single["first"] == 5000.0


class CachingAnswerTable(AnswerTable):
    def __init__(self, answers: Dict[str, Optional[Sequence[float]]]) -> None:
        super().__init__(answers)
        self.cleared = 0

    def clear_cache(self) -> None:
        self.cleared += 1


def test_fresh_frames_clears_the_locator_cache_before_every_call(image_file: Path) -> None:
    samples = [_sample(image_file, "take the cup", None)] * 3
    locator = CachingAnswerTable({"take the cup": None})
    assert not ev.run_evaluation(locator, samples, progress=False).fresh_frames
    assert locator.cleared == 0
    report = ev.run_evaluation(locator, samples, progress=False, fresh_frames=True)
    assert locator.cleared == 3 and report.fresh_frames
    assert "frame cache" not in report.format_table()
    ev.run_evaluation(AnswerTable({"take the cup": None}), samples, progress=False,
                      fresh_frames=True)  # no clear_cache: nothing to call


def test_limit_and_bad_options(image_file: Path) -> None:
    locator = AnswerTable({"take the cup": None})
    samples = [_sample(image_file, "take the cup", None)] * 5
    assert len(ev.run_evaluation(locator, samples, progress=False, limit=2).results) == 2
    with pytest.raises(ev.EvalInputError, match="limit"):
        ev.run_evaluation(locator, samples, progress=False, limit=0)
    with pytest.raises(ev.EvalInputError, match="IoU threshold"):
        ev.run_evaluation(locator, samples, progress=False, iou_threshold=0.0)
    with pytest.raises(ev.EvalInputError, match="no samples"):
        ev.run_evaluation(locator, [], progress=False)


def test_unreadable_image_names_the_sample(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    sample = ev.EvalSample(bad, "take the cup", None, "set.jsonl:4")
    with pytest.raises(ev.EvalInputError, match=r"set.jsonl:4: cannot read .*bad.png"):
        ev.run_evaluation(AnswerTable({}), [sample], progress=False)


def test_overlays_are_written_for_failures_only(image_file: Path, tmp_path: Path) -> None:
    locator = AnswerTable({"take the cup": (0, 0, 10, 10), "take the fork": (20, 10, 30, 20),
                           "take the knife": (0, 0, 5, 5)})
    samples = [_sample(image_file, "take the cup", (0, 0, 10, 10)),
               _sample(image_file, "take the fork", (0, 0, 10, 10)),
               _sample(image_file, "take the knife", None)]
    out = tmp_path / "overlays"
    report = ev.run_evaluation(locator, samples, overlays_dir=out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00001_take-the-fork.png", "00002_take-the-knife.png"]
    picture = cv2.imread(str(out / names[0]))
    assert picture.shape[1] == 30 and picture.shape[0] > 20  # the header strip on top
    # the labelled box is drawn in magenta (BGR 255, 0, 255) below the header
    header = picture.shape[0] - 20
    assert (picture[header:, :, :] == (255, 0, 255)).all(axis=2).any()
    assert report.overlays_dir == str(out)
    assert "overlays of the 2 failure(s)" in report.format_table()


def test_progress_bar_writes_to_its_stream(image_file: Path) -> None:
    stream = io.StringIO()
    ev.run_evaluation(AnswerTable({"take the cup": None}),
                      [_sample(image_file, "take the cup", None)] * 3, stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("[" + "#" * 30 + "] 3/3")


# --- the command line --------------------------------------------------------------


def test_add_eval_parser_registers_the_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="vlm-grasp-locator")
    sub = parser.add_subparsers(dest="command_name", required=True)
    ev.add_eval_parser(sub)
    args = parser.parse_args(["eval", "--refcoco", "d", "--images", "i", "--split", "testA",
                              "--limit", "3", "--json"])
    assert args.func is ev.cmd_eval
    assert (args.refcoco, args.images, args.split, args.limit, args.json) == \
        ("d", "i", "testA", 3, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--jsonl", "f", "--refcoco", "d"])
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--jsonl", "f", "--limit", "0"])


def test_cli_bad_input_exits_2_before_building_models(tmp_path: Path, capsys) -> None:
    assert ev.main_eval(["--refcoco", str(tmp_path)]) == ev.EXIT_BAD_INPUT
    assert "--refcoco needs --images" in capsys.readouterr().err
    assert ev.main_eval(["--refcoco", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "no refs(<splitBy>).p" in capsys.readouterr().err
    assert ev.main_eval(["--jsonl", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_real_locator_runs_end_to_end_on_the_shipped_set(tmp_path: Path, capsys) -> None:
    """The harness around the real pipeline (random weights): no accuracy is claimed."""
    config = tmp_path / "tiny.yaml"
    config.write_text("points_per_side: 4\npred_iou_thresh: 0.0\nstability_score_thresh: 0.0\n"
                      "min_mask_region_area: 0\nscore_threshold: 0.0\nnum_threads: 2\n"
                      "clip_model: TinyCLIP-ViT-8M-16-Text-3M\n")
    overlays = tmp_path / "failures"
    code = ev.main_eval(["--jsonl", str(SHIPPED), "--limit", "3", "--config", str(config),
                         "--device", "cpu", "--random-weights", "--json", "--overlays",
                         str(overlays), "--no-progress"])
    captured = capsys.readouterr()
    assert code == ev.EXIT_OK, captured.err
    report = json.loads(captured.out)
    assert report["random_weights"] is True and report["samples"] == 3
    assert [r["command"] for r in report["results"]] == [
        "pick up the coffee cup", "take the spoon", "grab the saucer"]
    failures = sum(not r["correct"] for r in report["results"])
    assert len(list(overlays.glob("*.png"))) == failures
    assert report["latency_ms"]["p50"] > 0


# --- the shipped set ---------------------------------------------------------------


def _licence_rows() -> Dict[str, str]:
    rows = {}
    for line in (EVAL_DIR / "LICENSES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("File", "") and not cells[0].startswith("-"):
            rows[cells[0]] = cells[2]
    return rows


def test_shipped_set_boxes_lie_inside_their_images() -> None:
    samples = ev.load_jsonl(SHIPPED)
    assert len(samples) >= 20
    assert sum(s.box_xyxy is None for s in samples) >= 3
    kinds = [k for s in samples for k in ev.command_kinds(s.command)]
    assert sum(k.startswith("relation: ") for k in kinds) >= 3
    for s in samples:
        if s.box_xyxy is None:
            continue
        h, w = ev.read_image_rgb(s.image_path).shape[:2]
        x0, y0, x1, y1 = s.box_xyxy
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (s.source, s.box_xyxy, (w, h))


def test_shipped_images_are_licensed_and_small() -> None:
    rows = _licence_rows()
    used = {s.image_path.name for s in ev.load_jsonl(SHIPPED)}
    files = {p.name for p in EVAL_DIR.iterdir() if p.suffix.lower() in (".jpg", ".png")}
    assert used <= files
    assert files <= set(rows), f"no licence entry for {sorted(files - set(rows))}"
    for name in files:
        assert re.search(r"\bCC0\b|[Pp]ublic domain", rows[name]), (name, rows[name])
    total = sum(p.stat().st_size for p in EVAL_DIR.iterdir())
    assert total < 1.5 * 1024 * 1024
