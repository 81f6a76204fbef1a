"""The machine a figure came from: CPU, the extensions that matter, libraries, threads, rates.

    python bench/machine.py          # prints the report, then one JSON line

``bench/benchmark.py`` prints ``describe()`` at the start and stores ``machine_json()``
in its summary, so a speed-up always travels with the machine that measured it: the
same code is 5x faster than the reference on one Xeon and 6x on one EPYC, because the
reference and the package lean on different parts of the CPU.

The CPU comes from ``/proc/cpuinfo`` (``vlm_grasp_locator.runtime.cpu_features``); the
libraries from torch (``torch.__config__.show()``: MKL, oneDNN) and onnxruntime; the
threads from torch and the environment (OMP_*, MKL_*, OPENBLAS_*); the rates from a few
timed matrix products (fp32, and bf16 where the CPU multiplies bf16 natively).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
# The sources first, ahead of a colcon install of the package (which has no new modules
# until it is rebuilt).
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from vlm_grasp_locator.runtime.cpu_features import CpuInfo, cpu_info  # noqa: E402

THREAD_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "MALLOC_ARENA")
MATMUL_SIZE = 2048
MATMUL_REPS = 6


@dataclass
class Machine:
    """Everything ``describe`` prints; ``machine_json`` is its ``asdict``."""

    cpu_model: str
    arch: str
    logical_cpus: int
    features: List[str]
    native_bf16: bool
    torch: str
    torch_cpu_capability: str  # the kernels torch dispatches to: AVX2, AVX512, ...
    mkldnn: str  # oneDNN: "v3.12.0", "unavailable"
    blas: str  # "MKL 2024.2", "OpenBLAS", ...
    onnxruntime: str  # version, or "not installed"
    torch_threads: int
    torch_interop_threads: int
    thread_env: Dict[str, str] = field(default_factory=dict)
    matmul_gflops: Dict[str, float] = field(default_factory=dict)  # dtype -> median GFLOP/s


def library_versions(config: str) -> Dict[str, str]:
    """oneDNN and BLAS versions out of ``torch.__config__.show()``'s text."""
    onednn = re.search(r"(?:MKL-DNN|oneDNN)[^\n]*?(v\d+(?:\.\d+)*)", config)
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    if mkl:
        blas_name = f"MKL {mkl.group(1).split('-')[0]}"
    else:
        blas_name = blas.group(1) if blas else "unknown"
    return {"mkldnn": onednn.group(1) if onednn else "unknown", "blas": blas_name}


def onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "not installed"
    return str(onnxruntime.__version__)


def thread_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith(THREAD_ENV_PREFIXES)}


def matmul_gflops(
    n: int = MATMUL_SIZE, reps: int = MATMUL_REPS, dtype: torch.dtype = torch.float32
) -> float:
    """Median GFLOP/s of ``reps`` (n x n) @ (n x n) products in ``dtype`` (one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    with torch.inference_mode():
        a @ b
        rates = []
        for _ in range(max(1, reps)):
            started = time.perf_counter()
            a @ b
            rates.append(2 * n**3 / max(time.perf_counter() - started, 1e-9) / 1e9)
    return float(statistics.median(rates))


def probe(
    info: Optional[CpuInfo] = None, n: int = MATMUL_SIZE, reps: int = MATMUL_REPS
) -> Machine:
    """Describe this machine; times fp32 matmul (and bf16 where the CPU has it natively)."""
    info = info if info is not None else cpu_info()
    mkldnn_available = torch.backends.mkldnn.is_available()
    versions = library_versions(torch.__config__.show())
    rates = {"fp32": matmul_gflops(n, reps)}
    if info.native_bf16:
        rates["bf16"] = matmul_gflops(n, reps, torch.bfloat16)
    return Machine(
        cpu_model=info.model,
        arch=info.arch,
        logical_cpus=info.logical_cpus,
        features=list(info.features),
        native_bf16=info.native_bf16,
        torch=torch.__version__,
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        mkldnn=versions["mkldnn"] if mkldnn_available else "unavailable",
        blas=versions["blas"],
        onnxruntime=onnxruntime_version(),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        thread_env=thread_env(),
        matmul_gflops=rates,
    )


def describe(machine: Machine) -> str:
    """The report's lines: what a reader needs to compare figures across machines."""
    rates = ", ".join(f"{k} {v:.0f}" for k, v in machine.matmul_gflops.items())
    env = " ".join(f"{k}={v}" for k, v in machine.thread_env.items()) or "none set"
    bf16 = "native" if machine.native_bf16 else "emulated (no AMX-BF16/AVX512-BF16/ARM BF16)"
    return "\n".join(
        (
            f"machine: {machine.cpu_model} ({machine.arch}, {machine.logical_cpus} logical CPUs)",
            f"  extensions: {', '.join(machine.features) or 'none of note'}; bf16 {bf16}",
            f"  torch {machine.torch} (kernels {machine.torch_cpu_capability}, oneDNN "
            f"{machine.mkldnn}, {machine.blas}); onnxruntime {machine.onnxruntime}",
            f"  threads: torch {machine.torch_threads} intra-op, "
            f"{machine.torch_interop_threads} inter-op; env {env}",
            f"  {MATMUL_SIZE}x{MATMUL_SIZE} matmul GFLOP/s (median): {rates}",
        )
    )


def machine_json(machine: Machine) -> dict:
    return asdict(machine)


def label(machine: Machine) -> str:
    """A short name for a figure's machine: model, extension class, fp32 rate."""
    features = set(machine.features)
    if "AMX-BF16" in features:
        kind = "AMX"
    elif "AVX-512F" in features:
        kind = "AVX-512"
    elif "AVX2" in features:
        kind = "AVX2"
    elif "NEON/ASIMD" in features:
        kind = "NEON"
    else:
        kind = "baseline"
    return (
        f"{machine.cpu_model}, {kind}, {machine.logical_cpus} CPUs, "
        f"fp32 {machine.matmul_gflops.get('fp32', 0.0):.0f} GFLOP/s"
    )


def main() -> int:
    machine = probe()
    print(describe(machine))
    print(json.dumps(machine_json(machine)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
