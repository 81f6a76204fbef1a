"""bench/machine.py and runtime.cpu_features: the machine a figure came from."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from vlm_grasp_locator.runtime.cpu_features import (
    EMULATED_BF16_ENV,
    PrecisionError,
    check_precision,
    parse_cpuinfo,
)

ROOT = Path(__file__).resolve().parents[2]

# One processor's lines of /proc/cpuinfo each (the second processor of the Xeon too).
AMX_XEON = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq \
avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 \
amx_tile amx_int8 arch_capabilities

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX2_EPYC = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
ARM_NEON = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid \
asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
"""


@pytest.fixture()
def machine(monkeypatch):
    """bench/machine.py as a module (nothing runs at import)."""
    spec = importlib.util.spec_from_file_location(
        "machine_under_test", ROOT / "bench" / "machine.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_amx_xeon_flags() -> None:
    info = parse_cpuinfo(AMX_XEON, "x86_64")
    assert info.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert info.logical_cpus == 2
    assert info.features == (
        "AVX2", "FMA", "AVX-512F", "AVX512-VNNI", "AVX512-BF16", "AVX512-FP16", "AVX-VNNI",
        "AMX-TILE", "AMX-BF16", "AMX-INT8",
    )
    assert info.native_bf16 and not info.is_arm


def test_avx2_epyc_flags() -> None:
    info = parse_cpuinfo(AVX2_EPYC, "x86_64")
    assert info.model == "AMD EPYC 7B13" and info.logical_cpus == 1
    assert info.features == ("AVX2", "FMA")
    assert not info.native_bf16


def test_arm_neon_features() -> None:
    info = parse_cpuinfo(ARM_NEON, "aarch64")
    assert info.is_arm and info.logical_cpus == 2
    assert info.model == "ARM implementer 0x41 part 0xd0c"
    assert info.features == ("NEON/ASIMD", "ASIMD-FP16", "ASIMD-DOTPROD")
    assert not info.native_bf16  # no "bf16" in Features: emulated
    assert parse_cpuinfo(ARM_NEON.replace("asimddp", "asimddp bf16"), "aarch64").native_bf16


def test_bf16_is_refused_without_native_support(monkeypatch) -> None:
    monkeypatch.delenv(EMULATED_BF16_ENV, raising=False)
    cpu = torch.device("cpu")
    epyc, xeon = parse_cpuinfo(AVX2_EPYC, "x86_64"), parse_cpuinfo(AMX_XEON, "x86_64")
    with pytest.raises(PrecisionError, match="AMD EPYC 7B13; AVX2, FMA.*precision 'fp32'"):
        check_precision("bf16", cpu, epyc)
    check_precision("bf16", cpu, xeon)
    check_precision("fp32", cpu, epyc)
    check_precision("bf16", torch.device("cuda"), epyc)  # the GPU runs fp16 autocast
    with pytest.raises(PrecisionError, match="one of"):
        check_precision("fp16", cpu, xeon)
    monkeypatch.setenv(EMULATED_BF16_ENV, "1")
    check_precision("bf16", cpu, epyc)  # allowed, to measure agreement


def test_library_versions_from_torch_config(machine) -> None:
    config = (
        "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605\n"
        "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)\n"
        "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release\n"
    )
    assert machine.library_versions(config) == {"mkldnn": "v3.12.0", "blas": "MKL 2024.2"}
    arm = "  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release\n"
    assert machine.library_versions(arm) == {"mkldnn": "unknown", "blas": "open"}
    env = {"OMP_NUM_THREADS": "4", "PATH": "/bin", "MKL_DYNAMIC": "0"}
    assert machine.thread_env(env) == {"MKL_DYNAMIC": "0", "OMP_NUM_THREADS": "4"}


def test_matmul_probe_is_positive_and_quick(machine) -> None:
    rate = machine.matmul_gflops(n=64, reps=2)
    assert rate > 0


def test_probe_reports_this_machine(machine) -> None:
    xeon = parse_cpuinfo(AMX_XEON, "x86_64")
    # A Xeon's flags: the bf16 rate is measured too (emulated here if need be, tiny size).
    report = machine.probe(xeon, n=32, reps=1)
    assert set(report.matmul_gflops) == {"fp32", "bf16"}
    assert all(v > 0 for v in report.matmul_gflops.values())
    assert report.torch == torch.__version__ and report.torch_threads >= 1
    text = machine.describe(report)
    assert "Intel(R) Xeon(R) Platinum 8481C" in text and "AMX-BF16" in text
    assert "bf16 native" in text
    assert machine.label(report).startswith("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, AMX")
    json.dumps(machine.machine_json(report))  # the benchmark's summary holds it
    epyc = machine.probe(parse_cpuinfo(AVX2_EPYC, "x86_64"), n=32, reps=1)
    assert set(epyc.matmul_gflops) == {"fp32"} and ", AVX2, " in machine.label(epyc)
