#!/usr/bin/env python3
"""MobileSAM's decoder on torch and on ONNX Runtime, same random weights, same prompts.

    vlm-grasp-locator export-onnx --random-weights --seed 0 --out DIR     # ~1.5 min
    python bench/decoder_backends.py --onnx-dir DIR [--prompts 64] [--reps 3]

Each row decodes ``--prompts`` point prompts in batches of ``PROMPT_BATCH`` (the
transformer for every prompt, then the upscaled logits of two masks per prompt, as the
``MaskProposer`` asks for them), either one batch after another in this thread (torch
splits each operation over its threads, ONNX Runtime over its intra-op threads), or
side by side on ``CpuWorkers`` (one core per batch; the ONNX decoder then uses its
one-thread sessions). Best of ``--reps`` wall and process CPU times; the machine is
printed first (``machine.py``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/benchmark.py

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "bench", ROOT):  # the sources ahead of a colcon install
    if sys.path[:1] != [str(path)]:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import describe, label, machine_json, probe  # noqa: E402
from vlm_grasp_locator.models.interfaces import MaskDecoder, Segmenter  # noqa: E402
from vlm_grasp_locator.pipeline.mask_proposals import PROMPT_BATCH  # noqa: E402
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers, map_inline_or_on  # noqa: E402

CLIP = "TinyCLIP-ViT-61M-32-Text-29M"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_all(
    segmenter: Segmenter, sparse: Sequence[torch.Tensor], workers: Optional[CpuWorkers]
) -> List[torch.Tensor]:
    """Every batch's transformer, then two masks per prompt (masks 1 and 3)."""
    decoder: MaskDecoder = segmenter.decoder

    def batch(embeddings: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            tokens = decoder.run_transformer(embeddings)
            prompts = torch.arange(len(embeddings)).repeat_interleave(2)
            masks = torch.tensor([1, 3]).repeat(len(embeddings))
            return decoder.masks_for(tokens, prompts, masks)

    return map_inline_or_on(workers, batch, sparse)


def timed(fn: Callable[[], object], reps: int) -> Dict[str, float]:
    fn()  # warm-up: sessions' arenas, torch's kernels
    wall, cpu = [], []
    for _ in range(reps):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        fn()
        wall.append((time.perf_counter() - started) * 1e3)
        cpu.append((cpu_seconds() - cpu_started) * 1e3)
    return {"wall_ms": min(wall), "cpu_ms": min(cpu)}


def prepare(segmenter: Segmenter, image: np.ndarray, points: np.ndarray) -> List[torch.Tensor]:
    """Sets the decoder's image; returns the batches' sparse embeddings."""
    with torch.inference_mode():
        encoded = segmenter.encode(image)
        coords = torch.as_tensor(
            segmenter.to_input_coords(points, encoded.original_size), dtype=torch.float32
        )
        _, dense = segmenter.embed_points(coords[:1])
        segmenter.decoder.set_image(encoded.features, segmenter.dense_pe(), dense)
        return [
            segmenter.embed_points(coords[i : i + PROMPT_BATCH])[0]
            for i in range(0, len(coords), PROMPT_BATCH)
        ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", required=True, help="export-onnx --random-weights --seed 0")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch/ORT threads; 0 = default")
    args = parser.parse_args(argv)

    from vlm_grasp_locator.backends.onnx_runtime import load_onnx_models
    from vlm_grasp_locator.models.adapters import torch_parts
    from vlm_grasp_locator.models.registry import load_models

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = probe()
    print(describe(machine))
    kwargs = dict(device="cpu", clip_model=CLIP, allow_random_weights=True, seed=0)
    backends = {
        "torch": torch_parts(load_models(**kwargs)).segmenter,
        "onnxruntime": load_onnx_models(**kwargs, onnx_dir=args.onnx_dir).segmenter,
    }
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    points = rng.uniform((0, 0), (640, 480), (args.prompts, 2))
    workers = CpuWorkers(max(2, torch.get_num_threads()))
    rows: Dict[str, Dict[str, float]] = {}
    logits = {}
    for name, segmenter in backends.items():
        sparse = prepare(segmenter, image, points)
        for how, pool in (("one after another", None), ("side by side", workers)):
            key = f"{name}, batches {how}"
            rows[key] = timed(lambda: decode_all(segmenter, sparse, pool), args.reps)
            print(
                f"{key:<42} {rows[key]['wall_ms']:8.0f} ms wall {rows[key]['cpu_ms']:8.0f} ms CPU",
                flush=True,
            )
        logits[name] = torch.cat(decode_all(segmenter, sparse, workers))
    scale = float(logits["torch"].abs().max())
    difference = float((logits["onnxruntime"] - logits["torch"]).abs().max()) / scale
    print(
        f"{args.prompts} prompts, batches of {PROMPT_BATCH}, {2 * args.prompts} masks; "
        f"ORT vs torch logits: max difference {difference:.1e} of their scale; "
        f"machine: {label(machine)}"
    )
    workers.close()
    print(json.dumps({"machine": machine_json(machine), "rows": rows, "difference": difference}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
