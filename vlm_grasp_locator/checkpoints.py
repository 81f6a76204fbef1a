"""Where checkpoints live, how they are fetched, and how they are loaded safely.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: a model file
downloaded from the internet must never be able to run code on the robot.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

MOBILE_SAM_FILE = "mobile_sam.pt"
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

# Non-tensor entries that TinyCLIP model-zoo checkpoints carry beside the weights
# (the training arguments). Exactly these classes may be rebuilt while unpickling.
_ALLOWED_CHECKPOINT_GLOBALS = (argparse.Namespace,)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


@dataclass(frozen=True)
class RemoteFile:
    """A published model file: where it comes from and how to check it."""

    file: str
    url: str
    sha256: Optional[str] = None  # None where the publisher lists no digest
    size: Optional[int] = None


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


def load_state_dict(path: Path, what: str) -> Dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without executing pickled code.

    Accepts a plain state dict or one nested under ``state_dict``/``model``, with or
    without the ``module.`` prefix that DistributedDataParallel adds.
    """
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path, what))
    unreadable = (
        f"{what} checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt download?). "
        "Delete it and run `vlm-grasp-locator download-models` again."
    )
    # torch.save writes a zip archive (a bare pickle before PyTorch 1.6); anything else,
    # including a zip cut short, is refused before the unpickler sees it.
    with open(path, "rb") as f:
        legacy_pickle = f.read(1) == b"\x80"
    if not (zipfile.is_zipfile(path) or legacy_pickle):
        raise CheckpointError(unreadable)
    try:
        with torch.serialization.safe_globals(list(_ALLOWED_CHECKPOINT_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        offending = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        raise CheckpointError(
            f"{what} checkpoint {path} holds objects that are not allowed in a weights file "
            f"(refused, nothing was executed){': ' + offending[0] if offending else ''}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{unreadable} ({str(e).splitlines()[0]})") from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} checkpoint {path} does not contain a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Copy ``state`` into ``model``; refuse unless every key and shape matches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or mismatched:
        def head(items: list) -> str:
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {head(mismatched)}")
        raise CheckpointError(
            f"{what} checkpoint {path} does not match the architecture: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
) -> Path:
    """Fetch ``remote`` to ``destination`` via a temporary file, checked, then renamed.

    A partial or wrong download never takes the final name.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                progress(done, total, remote.file)
        sys.stderr.write("\n")
        if remote.size is not None and tmp.stat().st_size != remote.size:
            raise CheckpointError(
                f"{remote.url}: got {tmp.stat().st_size} bytes, expected {remote.size}"
            )
        if remote.sha256 is not None and sha256_of(tmp) != remote.sha256:
            raise CheckpointError(f"{remote.url}: SHA-256 does not match the published digest")
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointError(
            f"could not download {remote.url} to {destination}: {e}. "
            f"Without network, copy {remote.file} there by hand."
        ) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return destination

