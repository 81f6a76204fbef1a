"""Where checkpoints live, how they are fetched and checked, and how they are loaded safely.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: a model file
downloaded from the internet must never be able to run code on the robot.

Accepted layouts (``CheckpointLayout``), bare or nested under ``state_dict``/``model``:

* a plain state dict (MobileSAM's ``mobile_sam.pt``, open_clip's ``model.state_dict()``);
* the same with the ``module.`` prefix that DistributedDataParallel adds;
* a TinyCLIP model-zoo training checkpoint: ``{"args": Namespace, "epoch": ..., "optimizer":
  ..., "state_dict": ...}`` whose weights sit in TinyCLIP's ``CLIPBase`` wrappers,
  ``_image_encoder.module.visual.*``, ``_text_encoder.module.<text tower>`` and
  ``_logit_scale.module.logit_scale`` (``module.`` absent where it was saved without DDP).
  Below the wrappers the names are open_clip ``CLIP``'s.

Published files are pinned (``RemoteFile.size``/``sha256``): a download, and the default
file in the cache at every load, are refused when their size (checked first, cheap) or
SHA-256 differs. A checkpoint at a configured path is checked only against a digest the
user pinned for it.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import logging
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

LOG = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, not the pinned file, or does not fit the
    architecture."""


@dataclass(frozen=True)
class RemoteFile:
    """A published model file: where it comes from and what it must be (``None``: not
    published)."""

    file: str
    url: str
    sha256: Optional[str] = None
    size: Optional[int] = None


MOBILE_SAM = RemoteFile(
    file="mobile_sam.pt",
    url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    size=40_728_226,
)
MOBILE_SAM_FILE = MOBILE_SAM.file
MOBILE_SAM_URL = MOBILE_SAM.url

# Non-tensor entries that TinyCLIP model-zoo checkpoints carry beside the weights
# (the training arguments). Exactly these classes may be rebuilt while unpickling.
_ALLOWED_CHECKPOINT_GLOBALS = (argparse.Namespace,)

# Keys a checkpoint may nest its weights under, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."
# TinyCLIP's CLIPBase holds each part in one of these attributes, and its training wraps
# each part in DistributedDataParallel (or its FakeDDP), which adds ``module.``.
_TINYCLIP_WRAPPERS = ("_image_encoder.", "_text_encoder.", "_logit_scale.")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class CheckpointLayout(enum.Enum):
    """How the weights' names in a checkpoint relate to the model's own."""

    PLAIN = "plain state dict"
    DDP_PREFIXED = "state dict with DistributedDataParallel's 'module.' prefix"
    TINYCLIP_TRAINING = (
        "TinyCLIP training checkpoint (_image_encoder/_text_encoder/_logit_scale wrappers)"
    )


@dataclass(frozen=True)
class CheckpointContents:
    """The weights of a checkpoint under the model's names, and how they were stored."""

    state: Dict[str, torch.Tensor]
    layout: CheckpointLayout
    container: Optional[str]  # the entry the weights were nested under; None: bare state dict
    trained_as: Optional[str]  # ``args.model`` of a training checkpoint, where it names one


class PinSource(enum.Enum):
    PUBLISHED = "published"
    CONFIGURED = "configured"


@dataclass(frozen=True)
class Pin:
    """What a checkpoint file must be: its size and/or SHA-256 (lower-case hex)."""

    sha256: Optional[str]
    size: Optional[int]
    source: PinSource

    @classmethod
    def published(cls, remote: RemoteFile) -> Optional["Pin"]:
        if remote.sha256 is None and remote.size is None:
            return None
        return cls(remote.sha256, remote.size, PinSource.PUBLISHED)


@dataclass(frozen=True)
class FileDigest:
    path: Path
    size: int
    sha256: str


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vlm_grasp_locator`` (default ``~/.cache/vlm_grasp_locator``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlm_grasp_locator"


def resolve_checkpoint_path(configured: str, default_file: str) -> Path:
    """The configured path, or the default file in the cache when none is configured."""
    if configured:
        return Path(os.path.expanduser(configured))
    return cache_dir() / default_file


def missing_checkpoint_message(path: Path, what: str) -> str:
    return (
        f"{what} checkpoint not found: {path}. "
        "Run `vlm-grasp-locator download-models` to fetch it into "
        f"{cache_dir()}, set the checkpoint path in the config, "
        "or pass --random-weights for a pipeline smoke run (meaningless results)."
    )


# --------------------------------------------------------------------------- digests


def normalise_sha256(text: str, name: str = "sha256") -> str:
    """``text`` as 64 lower-case hex digits (an optional ``sha256:`` prefix is dropped)."""
    digest = text.strip().lower().removeprefix("sha256:")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"{name} must be a SHA-256 digest of 64 hex digits, got {text!r}")
    return digest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_pin(
    configured_path: str, configured_sha256: str, remote: RemoteFile
) -> Optional[Pin]:
    """The pin a checkpoint is held to.

    A digest the user configured always applies; otherwise the published pin applies to
    the default file in the cache only, never to a file at a configured path (a user's
    own fine-tuned checkpoint).
    """
    if configured_sha256:
        sha256 = normalise_sha256(configured_sha256, f"the configured digest of {remote.file}")
        # The published size still holds when the pin is the published file's own digest.
        size = remote.size if not configured_path and sha256 == remote.sha256 else None
        return Pin(sha256, size, PinSource.CONFIGURED)
    if configured_path:
        return None
    return Pin.published(remote)


def _refuse_size(subject: str, actual_size: int, pin: Pin, remedy: str) -> CheckpointError:
    expected = f"expected SHA-256 {pin.sha256}" if pin.sha256 else "no digest pinned"
    return CheckpointError(
        f"{subject} is not the {pin.source.value} file: {actual_size} bytes, expected "
        f"{pin.size} bytes ({expected}; actual SHA-256 not computed, the size already differs). "
        f"{remedy}"
    )


def _refuse_digest(subject: str, actual_sha256: str, pin: Pin, remedy: str) -> CheckpointError:
    return CheckpointError(
        f"{subject} is not the {pin.source.value} file: SHA-256 {actual_sha256}, expected "
        f"SHA-256 {pin.sha256}. {remedy}"
    )


def _remedy(pin: Pin) -> str:
    if pin.source is PinSource.PUBLISHED:
        return "Delete it and run `vlm-grasp-locator download-models --force`."
    return "Check the checkpoint path and the SHA-256 pinned for it in the config."


def verify_file(path: Path, pin: Pin, label: str) -> FileDigest:
    """Refuse ``path`` unless it matches ``pin``: size first (cheap), then SHA-256.

    ``label`` names the file in the message (e.g. ``"TinyCLIP ... checkpoint"``). Returns
    the file's size and digest.
    """
    size = path.stat().st_size
    if pin.size is not None and size != pin.size:
        raise _refuse_size(f"{label} {path}", size, pin, _remedy(pin))
    actual = sha256_of(path)
    if pin.sha256 is not None and actual != pin.sha256:
        raise _refuse_digest(f"{label} {path}", actual, pin, _remedy(pin))
    return FileDigest(path, size, actual)


def verify_checkpoint(
    path: Path, pin: Optional[Pin], what: str, *, report_unpinned: bool
) -> Optional[FileDigest]:
    """Check a checkpoint before loading it.

    With a pin, refuse a file that differs (``CheckpointError`` naming the file and both
    digests). Without one, ``report_unpinned`` (the default file of a model whose digest
    is not published) logs the file's digest so it can be pinned; otherwise nothing is
    read (a user's own checkpoint at a configured path).
    """
    if pin is not None:
        digest = verify_file(path, pin, f"{what} checkpoint")
        LOG.debug(
            "%s checkpoint %s: SHA-256 %s matches the %s digest",
            what,
            path,
            digest.sha256,
            pin.source.value,
        )
        return digest
    if report_unpinned:
        digest = FileDigest(path, path.stat().st_size, sha256_of(path))
        LOG.info(
            "%s checkpoint %s has SHA-256 %s; no digest is published for it, so it was not "
            "checked (pin it in the config to have it checked at every load)",
            what,
            path,
            digest.sha256,
        )
        return digest
    return None


# --------------------------------------------------------------------------- loading


def unwrap_keys(
    state: Mapping[str, torch.Tensor], where: str
) -> Tuple[Dict[str, torch.Tensor], CheckpointLayout]:
    """The weights under the model's own names, and the layout they were stored in.

    ``where`` names the checkpoint in the error raised when two stored names map to one.
    """
    layout = CheckpointLayout.PLAIN
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        state = {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
        layout = CheckpointLayout.DDP_PREFIXED
    if not any(k.startswith(_TINYCLIP_WRAPPERS) for k in state):
        return dict(state), layout
    out: Dict[str, torch.Tensor] = {}
    stored_as: Dict[str, str] = {}
    for key, value in state.items():
        name = key
        for wrapper in _TINYCLIP_WRAPPERS:
            if key.startswith(wrapper):
                name = key[len(wrapper) :].removeprefix(_DDP_PREFIX)
                break
        if name in out:
            raise CheckpointError(
                f"{where} stores {name!r} twice (as {stored_as[name]!r} and {key!r})"
            )
        out[name] = value
        stored_as[name] = key
    return out, CheckpointLayout.TINYCLIP_TRAINING


def _is_legacy_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_checkpoint(path: Path, what: str) -> CheckpointContents:
    """Load a checkpoint's weights without executing pickled code (layouts: module docstring).

    Everything beside the weights (training arguments, optimizer state) is memory-mapped
    and never copied: a training checkpoint is mostly optimizer state.
    """
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path, what))
    unreadable = (
        f"{what} checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt "
        "download?). "
        "Delete it and run `vlm-grasp-locator download-models` again."
    )
    # torch.save writes a zip archive (a bare pickle before PyTorch 1.6); anything else,
    # including a zip cut short, is refused before the unpickler sees it.
    is_zip = zipfile.is_zipfile(path)
    if not (is_zip or _is_legacy_pickle(path)):
        raise CheckpointError(unreadable)
    try:
        with torch.serialization.safe_globals(list(_ALLOWED_CHECKPOINT_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        offending = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        raise CheckpointError(
            f"{what} checkpoint {path} holds objects that are not allowed in a weights file "
            f"(refused, nothing was executed){': ' + offending[0] if offending else ''}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{unreadable} ({str(e).splitlines()[0]})") from e
    container: Optional[str] = None
    trained_as: Optional[str] = None
    if isinstance(obj, Mapping):
        args = obj.get("args")
        if isinstance(args, argparse.Namespace) and isinstance(getattr(args, "model", None), str):
            trained_as = args.model
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, container = obj[key], key
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        found = (
            f"entries: {', '.join(map(str, list(obj)[:6]))}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise CheckpointError(
            f"{what} checkpoint {path} does not contain a state dict of tensors ({found}); "
            f"expected one, bare or under {' or '.join(repr(k) for k in _CONTAINER_KEYS)}"
        )
    state, layout = unwrap_keys(obj, f"{what} checkpoint {path}")
    return CheckpointContents(state, layout, container, trained_as)


def load_state_dict(path: Path, what: str) -> Dict[str, torch.Tensor]:
    """``read_checkpoint(path, what).state``: the weights under the model's own names."""
    return read_checkpoint(path, what).state


def fit_problems(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> List[str]:
    """Why ``state`` cannot be loaded into a model whose state dict is ``expected``
    (empty: it can).

    Compares names and shapes only, so ``expected`` may live on the meta device.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )

    def head(items: List[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {head(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if any(k.startswith("l0_module.") for k in unexpected):
            problems.append(
                "l0_module.* are TinyCLIP's pruning masks: the file is an intermediate "
                "weight-inheritance checkpoint, not a final model"
            )
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {head(mismatched)}")
    return problems


def load_into(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    what: str,
    *,
    contents: Optional[CheckpointContents] = None,
) -> None:
    """Copy ``state`` into ``model``; refuse unless every key and shape matches.

    ``contents`` (what ``read_checkpoint`` returned) adds how the file was read to the message.
    """
    problems = fit_problems(model.state_dict(), state)
    if problems:
        read_as = ""
        if contents is not None:
            read_as = f" (read as a {contents.layout.value}"
            read_as += f" under {contents.container!r}" if contents.container else ""
            read_as += (
                f"; its training arguments name model {contents.trained_as!r}"
                if contents.trained_as
                else ""
            )
            read_as += ")"
        raise CheckpointError(
            f"{what} checkpoint {path} does not match the architecture{read_as}: "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint_into(model: torch.nn.Module, path: Path, what: str) -> CheckpointContents:
    """``read_checkpoint`` then ``load_into``; returns how the file was stored."""
    contents = read_checkpoint(path, what)
    load_into(model, contents.state, path, what, contents=contents)
    LOG.debug("%s checkpoint %s: %s", what, path, contents.layout.value)
    return contents


# --------------------------------------------------------------------------- download


def _print_progress(done: int, total: Optional[int], name: str) -> None:
    if total:
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(
            f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] "
            f"{done / 1e6:6.1f}/{total / 1e6:.1f} MB"
        )
    else:
        sys.stderr.write(f"\r{name}: {done / 1e6:6.1f} MB")
    sys.stderr.flush()


def download(
    remote: RemoteFile,
    destination: Path,
    *,
    progress: Callable[[int, Optional[int], str], None] = _print_progress,
    timeout_s: float = 30.0,
) -> FileDigest:
    """Fetch ``remote`` to ``destination`` via a temporary file, checked, then renamed.

    The file is refused (``CheckpointError`` naming it and both digests) when its size
    (checked first: also against the announced length, before anything is fetched) or
    its SHA-256 differs from the published pin. A partial or wrong download never takes
    the final name. Returns the size and SHA-256 of what was stored.
    """
    pin = Pin.published(remote)
    subject = f"{remote.file} downloaded from {remote.url}"
    remedy = f"Nothing was stored at {destination}; the file on the server may have changed."
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=destination.name + ".", suffix=".part", dir=destination.parent
    )
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            remote.url, timeout=timeout_s
        ) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if (
                pin is not None
                and pin.size is not None
                and total is not None
                and total != pin.size
            ):
                raise _refuse_size(
                    f"{remote.file} at {remote.url}",
                    total,
                    pin,
                    f"Nothing was downloaded to {destination}.",
                )
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                progress(done, total, remote.file)
        sys.stderr.write("\n")
        actual = FileDigest(destination, done, digest.hexdigest())
        if pin is not None and pin.size is not None and actual.size != pin.size:
            raise _refuse_size(subject, actual.size, pin, remedy)
        if pin is not None and pin.sha256 is not None and actual.sha256 != pin.sha256:
            raise _refuse_digest(subject, actual.sha256, pin, remedy)
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointError(
            f"could not download {remote.url} to {destination}: {e}. "
            f"Without network, copy {remote.file} there by hand."
        ) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return actual
