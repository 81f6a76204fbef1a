"""What the CPU offers for the models' arithmetic, and the ``precision`` setting's policy.

``cpu_info()`` reads ``/proc/cpuinfo`` (Linux; x86 ``flags`` or ARM ``Features``) once
and names the instruction-set extensions that decide how fast the matrix work can be:
AVX2 / AVX-512 for fp32, AVX512-BF16 and AMX for bf16, NEON/ASIMD (and BF16) on ARM.

**precision** (``LocatorConfig.precision``): ``fp32`` (default) or ``bf16``. ``bf16``
runs MobileSAM's encoder and decoder and TinyCLIP's image tower under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (matrix products in bf16, fp32
accumulation); the text tower and the scores stay fp32. It is worth it only where the
CPU multiplies bf16 natively (AMX-BF16, AVX512-BF16, ARM BF16): elsewhere torch
emulates it, measured 5x (linear) to 24x (bmm) slower than fp32 on an AVX2 EPYC, so a
Locator refuses it there (``PrecisionError``) rather than answer ten times slower. Set
``VLM_GRASP_LOCATOR_ALLOW_EMULATED_BF16=1`` to run it anyway: for measuring bf16's
agreement with fp32 on such a machine (the tests, ``bench/benchmark.py --precision
bf16``), never for speed. On CUDA the setting does not apply: the GPU runs fp16 autocast
as before.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import FrozenSet, Optional, Tuple

import torch

CPUINFO = Path("/proc/cpuinfo")
EMULATED_BF16_ENV = "VLM_GRASP_LOCATOR_ALLOW_EMULATED_BF16"

# Extensions worth naming, as /proc/cpuinfo spells them -> how the reports print them.
X86_FEATURES: Tuple[Tuple[str, str], ...] = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512F"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512_fp16", "AVX512-FP16"),
    ("avx_vnni", "AVX-VNNI"),
    ("amx_tile", "AMX-TILE"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
    ("amx_fp16", "AMX-FP16"),
)
ARM_FEATURES: Tuple[Tuple[str, str], ...] = (
    ("asimd", "NEON/ASIMD"),
    ("asimdhp", "ASIMD-FP16"),
    ("asimddp", "ASIMD-DOTPROD"),
    ("sve", "SVE"),
    ("sve2", "SVE2"),
    ("bf16", "BF16"),
    ("i8mm", "I8MM"),
)
# Any of these: the CPU multiplies bf16 in hardware.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value


PRECISIONS = tuple(p.value for p in Precision)


class PrecisionError(ValueError):
    """The precision asked for cannot run well on this device."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as ``/proc/cpuinfo`` describes it (model, logical CPUs, feature flags)."""

    model: str
    logical_cpus: int
    flags: FrozenSet[str] = field(default_factory=frozenset)
    arch: str = ""

    @property
    def features(self) -> Tuple[str, ...]:
        """The extensions that matter here, by their usual names, in a fixed order."""
        table = ARM_FEATURES if self.is_arm else X86_FEATURES
        return tuple(label for flag, label in table if flag in self.flags)

    @property
    def is_arm(self) -> bool:
        return self.arch.startswith(("aarch64", "arm")) or (
            "asimd" in self.flags and "sse2" not in self.flags
        )

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & NATIVE_BF16_FLAGS)


def parse_cpuinfo(text: str, arch: str = "") -> CpuInfo:
    """A ``CpuInfo`` from the text of ``/proc/cpuinfo`` (x86 or ARM layout).

    The flags are those of the first processor listed (all are alike on the machines
    this runs on); the model is ``model name`` (x86), else ``Hardware``/``CPU part``.
    """
    model, flags, processors = "", "", 0
    part, implementer = "", ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and value.isdigit():
            processors += 1
        elif key == "model name" and not model:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = value
        elif key == "hardware" and not model:
            model = value
        elif key == "cpu part" and not part:
            part = value
        elif key == "cpu implementer" and not implementer:
            implementer = value
    if not model and (part or implementer):
        model = f"ARM implementer {implementer or '?'} part {part or '?'}"
    return CpuInfo(model or "unknown", processors, frozenset(flags.split()), arch)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once); flags are empty where ``/proc/cpuinfo`` is absent."""
    arch = platform.machine().lower()
    try:
        info = parse_cpuinfo(CPUINFO.read_text(), arch)
    except OSError:
        info = CpuInfo(platform.processor() or "unknown", 0, frozenset(), arch)
    if info.logical_cpus == 0:
        info = CpuInfo(info.model, os.cpu_count() or 0, info.flags, arch)
    return info


def emulated_bf16_allowed() -> bool:
    return os.environ.get(EMULATED_BF16_ENV, "").strip().lower() in ("1", "true", "yes")


def check_precision(precision: str, device: torch.device, info: Optional[CpuInfo] = None) -> None:
    """Raise ``PrecisionError`` when ``precision`` should not run on ``device``.

    ``bf16`` on a CPU without native bf16 (see the module docstring) is refused unless
    ``VLM_GRASP_LOCATOR_ALLOW_EMULATED_BF16`` is set; on CUDA nothing is refused.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != Precision.BF16 or device.type != "cpu" or emulated_bf16_allowed():
        return
    info = info if info is not None else cpu_info()
    if not info.native_bf16:
        found = ", ".join(info.features) or "none of note"
        raise PrecisionError(
            f"precision 'bf16' needs a CPU that multiplies bf16 natively (AMX-BF16, "
            f"AVX512-BF16 or ARM BF16); this one ({info.model}; {found}) would emulate it, "
            f"about 5-25x slower than fp32. Use precision 'fp32' (set {EMULATED_BF16_ENV}=1 "
            "only to measure bf16's agreement with fp32)"
        )
