"""RefCOCO, RefCOCO+ and RefCOCOg annotations in their published layout, read safely.

A dataset folder holds ``refs(<splitBy>).p`` (``unc`` for RefCOCO and RefCOCO+,
``umd`` or ``google`` for RefCOCOg) and ``instances.json``; the images are COCO's
train2014 files, ``COCO_train2014_<12-digit image id>.jpg``.

The refs file is a Python pickle (written by Python 2) of a list of dicts: ``ref_id``,
``ann_id``, ``image_id``, ``split`` (train, val, testA, testB; RefCOCOg umd: test),
``sentences`` (dicts with ``raw``, ``sent``, ``tokens``, ``sent_id``), ``category_id``,
``file_name``, ``sent_ids``. A pickle can run any code while it loads, so it is read
with an unpickler that refuses every global (``find_class``) and persistent id: only
lists, dicts, tuples, sets, strings and numbers can come out of it, and the result is
checked to be just that. ``instances.json`` is COCO's: ``images``, ``annotations``
(``bbox`` as [x, y, width, height]) and ``categories``.
"""
from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# The published refs files are tens of megabytes, instances.json some hundreds.
MAX_REFS_BYTES = 256 * 1024 * 1024
MAX_INSTANCES_BYTES = 1024 * 1024 * 1024

SPLITS = ("train", "val", "testA", "testB", "testC", "test")
SPLIT_BYS = ("unc", "umd", "google", "berkeley")
COCO_IMAGE_PATTERN = "COCO_train2014_%012d.jpg"

_REFS_NAME_RE = re.compile(r"^refs\((\w+)\)\.p$")
_PLAIN_SCALARS = (str, bytes, int, float, bool, type(None))
_PLAIN_CONTAINERS = (list, tuple, dict, set, frozenset)

Box = Tuple[float, float, float, float]


class RefcocoError(ValueError):
    """An annotation folder, refs file or instances.json that cannot be used."""


class UnsafePickleError(RefcocoError):
    """A pickle that asks for more than plain containers, strings and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global and persistent id; nothing but the built-in opcodes runs."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # Python 2 byte strings become str; a stray non-UTF-8 byte is replaced, not fatal.
        super().__init__(file, encoding="utf-8", errors="replace")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self._source}: refused global {module}.{name}: this file may hold only lists, "
            "dicts, strings and numbers (the published refs layout); it was not loaded"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused a persistent id; it was not loaded")


def _read_capped(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, or RefcocoError when it is missing or over ``max_bytes``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RefcocoError(f"{path}: {size} bytes, over the limit of {max_bytes}")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise RefcocoError(f"cannot read {path}: {e}") from e
    if len(data) > max_bytes:
        raise RefcocoError(f"{path}: over the limit of {max_bytes} bytes")
    return data


def _check_plain(value: Any, source: str) -> None:
    """RefcocoError unless ``value`` is made of plain containers, strings and numbers only."""
    seen: set = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _PLAIN_SCALARS):
            continue
        if type(item) not in _PLAIN_CONTAINERS:
            raise UnsafePickleError(f"{source}: holds a {type(item).__name__}; only lists, "
                                    "dicts, strings and numbers are accepted")
        if id(item) in seen:  # shared containers are walked once
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            stack.extend(item)


def load_plain_pickle(path: Path, *, max_bytes: int = MAX_REFS_BYTES) -> Any:
    """The content of the pickle at ``path``, if it is plain data; never runs its code.

    UnsafePickleError names the file and the refused global; RefcocoError covers a file
    that is missing, too large or not a pickle.
    """
    path = Path(path)
    data = _read_capped(path, max_bytes)
    try:
        value = _PlainUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise RefcocoError(f"{path}: not a readable refs pickle: {e}") from e
    _check_plain(value, str(path))
    return value


@dataclass(frozen=True)
class RefExpression:
    """One sentence of one ref: the words, the image file and the referred object's box."""

    image_path: Path
    text: str
    box_xyxy: Box  # pixels, x1/y1 exclusive (COCO's x + width, y + height)
    ref_id: int
    sent_id: int
    image_id: int
    category: str
    split: str


def find_refs_file(folder: Path, split_by: Optional[str] = None) -> Path:
    """``folder/refs(<split_by>).p``; without ``split_by``, the only refs file there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RefcocoError(f"no such annotation folder: {folder}")
    if split_by:
        if split_by not in SPLIT_BYS:
            raise RefcocoError(f"split_by must be one of {', '.join(SPLIT_BYS)}, got {split_by!r}")
        path = folder / f"refs({split_by}).p"
        if not path.is_file():
            raise RefcocoError(f"no {path.name} in {folder}")
        return path
    found = sorted(p for p in folder.iterdir() if _REFS_NAME_RE.match(p.name))
    if not found:
        raise RefcocoError(f"no refs(<splitBy>).p file in {folder} (the published layout has "
                           "refs(unc).p, refs(umd).p or refs(google).p next to instances.json)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise RefcocoError(f"{folder} holds {names}; choose one with --split-by")
    return found[0]


def split_matches(wanted: str, ref_split: str) -> bool:
    """The published split semantics: testA also takes testAB; test takes every test*."""
    if wanted in ("train", "val"):
        return ref_split == wanted
    if wanted == "test":
        return "test" in ref_split
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
    raise RefcocoError(f"split must be one of {', '.join(SPLITS)}, got {wanted!r}")


def _index_instances(instances: Any, source: str
                     ) -> Tuple[Dict[int, Box], Dict[int, str], Dict[int, str]]:
    """(annotation id -> box, image id -> file name, category id -> name)."""
    if not isinstance(instances, dict) or not isinstance(instances.get("annotations"), list):
        raise RefcocoError(f"{source}: expected a COCO object with 'annotations', 'images', "
                           "'categories'")
    boxes: Dict[int, Box] = {}
    files: Dict[int, str] = {}
    names: Dict[int, str] = {}
    try:
        for ann in instances["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes[int(ann["id"])] = (x, y, x + w, y + h)
        for image in instances.get("images", []):
            if isinstance(image.get("file_name"), str):
                files[int(image["id"])] = image["file_name"]
        for category in instances.get("categories", []):
            names[int(category["id"])] = str(category.get("name", category["id"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RefcocoError(f"{source}: an entry lacks a field or has a bad value: {e!r}") from e
    return boxes, files, names


def _image_name(image_id: int, files: Dict[int, str]) -> str:
    name = files.get(image_id, COCO_IMAGE_PATTERN % image_id)
    if Path(name).name != name or name in ("", ".", ".."):
        raise RefcocoError(f"image {image_id}: file name {name!r} is not a plain file name")
    return name


def load_refcoco(annotations: Path, images: Path, split: str, *, split_by: Optional[str] = None,
                 field: str = "sent", check_images: bool = True,
                 max_refs_bytes: int = MAX_REFS_BYTES,
                 max_instances_bytes: int = MAX_INSTANCES_BYTES) -> List[RefExpression]:
    """Every sentence of every ref in ``split``, in the refs file's order.

    ``field`` is the sentence key used as the command: ``sent`` (lower-cased, tokenised;
    what the published evaluations use) or ``raw``. With ``check_images``, a missing
    image file is an error here, before any model is built.
    """
    if split not in SPLITS:
        raise RefcocoError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    annotations, images = Path(annotations), Path(images)
    refs_path = find_refs_file(annotations, split_by)
    instances_path = annotations / "instances.json"
    if not instances_path.is_file():
        raise RefcocoError(f"no instances.json in {annotations}")
    if not images.is_dir():
        raise RefcocoError(f"no such image folder: {images}")
    refs = load_plain_pickle(refs_path, max_bytes=max_refs_bytes)
    if not isinstance(refs, list):
        raise RefcocoError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    try:
        instances = json.loads(_read_capped(instances_path, max_instances_bytes))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RefcocoError(f"{instances_path}: not JSON: {e}") from e
    boxes, files, categories = _index_instances(instances, str(instances_path))

    out: List[RefExpression] = []
    for i, ref in enumerate(refs):
        where = f"{refs_path.name} entry {i}"
        try:
            ref_split = str(ref["split"])
            if not split_matches(split, ref_split):
                continue
            ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
            if ann_id not in boxes:
                raise RefcocoError(f"{where}: annotation {ann_id} is not in instances.json")
            image_path = images / _image_name(image_id, files)
            category_id = ref.get("category_id")
            category = categories.get(int(category_id), "") if category_id is not None else ""
            for sentence in ref["sentences"]:
                text = sentence.get(field) or sentence.get("raw") or sentence.get("sent")
                if not isinstance(text, str) or not text.strip():
                    raise RefcocoError(f"{where}: a sentence without text")
                out.append(RefExpression(image_path, text.strip(), boxes[ann_id],
                                         int(ref["ref_id"]), int(sentence.get("sent_id", -1)),
                                         image_id, category, ref_split))
        except RefcocoError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RefcocoError(f"{where}: not in the published refs layout: {e!r}") from e
    if check_images:
        missing = sorted({str(r.image_path) for r in out if not r.image_path.is_file()})
        if missing:
            raise RefcocoError(f"{len(missing)} image file(s) of split {split} missing in "
                               f"{images}, e.g. {missing[0]}")
    return out
