"""``vlm-grasp-locator``: locate objects in image files, fetch the models, export them to ONNX."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


if TYPE_CHECKING:
    from vlm_grasp_locator.pipeline.locator import LocatorConfig


def _read_image(path: str):
    """RGB uint8 array of an image file, or ValueError saying why not."""
    import cv2

    if not Path(path).is_file():
        raise ValueError(f"no such image file: {path}")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read {path} as an image")
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image  # grayscale, 8 or 16 bit: the locator converts it


def _load_config(args: argparse.Namespace) -> "LocatorConfig":
    from vlm_grasp_locator.tools.config_file import locator_config

    return locator_config(args)


def cmd_locate(args: argparse.Namespace) -> int:
    from vlm_grasp_locator.backends.factory import build_locator
    from vlm_grasp_locator.models.checkpoints import CheckpointError
    from vlm_grasp_locator.runtime.process import configure_process

    try:
        image = _read_image(args.image)
        config = _load_config(args)
        config.validate()
        # The process policy is the entry point's: torch threads, the decoder's workers
        # (one per core) and capped malloc arenas, before the models load.
        configure_process(num_threads=config.num_threads)
        locator = build_locator(config)
        result = locator.locate(image, args.command)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.overlay:
        import cv2

        from vlm_grasp_locator.core.image_input import to_rgb_uint8
        from vlm_grasp_locator.core.overlay import draw_overlay

        overlay = draw_overlay(to_rgb_uint8(image), result, random_weights=locator.random_weights)
        Path(args.overlay).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(args.overlay, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
            print(f"error: could not write {args.overlay}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(json.dumps(result.to_json_dict()))
    else:
        _print_summary(result, locator.random_weights)
    return EXIT_OK


def _print_summary(result, random_weights: bool) -> None:
    if random_weights:
        print("RANDOM WEIGHTS: the result below is meaningless (pipeline smoke run).")
    w, h = result.image_size
    print(f"command: {result.command!r} -> target: {result.target!r} ({w}x{h} image)")
    if not result.found:
        print(f"not found: {result.reason}")
    for rank, d in enumerate(result.detections, 1):
        box = ", ".join(f"{v:.0f}" for v in d.box_xyxy)
        print(f"  {rank}. {d.label}  score {d.score:.3f}  box [{box}]  area {d.mask_area}")
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    print(f"timings: {stages}")


def cmd_download_models(args: argparse.Namespace) -> int:
    from vlm_grasp_locator.models.checkpoints import (
        CheckpointError,
        Pin,
        cache_dir,
        download,
        sha256_of,
        verify_file,
    )
    from vlm_grasp_locator.models.registry import clip_remote_file, mobile_sam_remote_file

    target_dir = Path(args.dir) if args.dir else cache_dir()
    failed = False
    # (published file, the config key that pins a digest for it)
    wanted = (
        (mobile_sam_remote_file(), "mobile_sam_checkpoint_sha256"),
        (clip_remote_file(args.clip_model), "clip_checkpoint_sha256"),
    )
    for remote, pin_key in wanted:
        destination = target_dir / remote.file
        pin = Pin.published(remote)
        try:
            if destination.is_file() and not args.force:
                state = "present"
                digest = (
                    verify_file(destination, pin, "cached").sha256
                    if pin
                    else sha256_of(destination)
                )
            else:
                state, digest = "downloaded", download(remote, destination).sha256
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        if pin is not None and pin.sha256 is not None:
            print(f"{destination}: {state}, SHA-256 {digest} (the published digest)")
        else:
            print(
                f"{destination}: {state}, SHA-256 {digest} (no digest is published for "
                f"{remote.file}; to have it checked at every load, set {pin_key}: {digest})"
            )
    return EXIT_FAILED if failed else EXIT_OK


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from vlm_grasp_locator.models.checkpoints import CheckpointError
    from vlm_grasp_locator.backends.onnx_export import export_onnx, resolve_onnx_dir

    try:
        config = _load_config(args)
        if args.clip_model:
            config.clip_model = args.clip_model
        if args.seed is not None:
            config.seed = args.seed
        config.validate()
        out = resolve_onnx_dir(args.out or config.onnx_dir)
        print(f"exporting to {out} (takes a minute or two) ...", file=sys.stderr)
        manifest = export_onnx(
            out,
            clip_model=config.clip_model,
            device=args.device or "cpu",
            mobile_sam_checkpoint=config.mobile_sam_checkpoint,
            clip_checkpoint=config.clip_checkpoint,
            mobile_sam_checkpoint_sha256=config.mobile_sam_checkpoint_sha256,
            clip_checkpoint_sha256=config.clip_checkpoint_sha256,
            allow_random_weights=config.allow_random_weights,
            seed=config.seed,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as e:
        print(f"error: {e}; the exporter needs `pip install onnx onnxscript`", file=sys.stderr)
        return EXIT_FAILED
    except (CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    weights = (
        f"RANDOM WEIGHTS, seed {manifest['seed']}: meaningless results"
        if manifest["random_weights"]
        else "checkpoint weights"
    )
    print(
        f"exported {len(manifest['graphs'])} graphs of MobileSAM and {manifest['clip_model']} "
        f"to {out} ({weights}; opset {manifest['opset']})"
    )
    print(f"use them with: backend: onnxruntime, onnx_dir: {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from vlm_grasp_locator.models.registry import DEFAULT_CLIP_MODEL, available_clip_models

    parser = argparse.ArgumentParser(prog="vlm-grasp-locator", description=__doc__)
    sub = parser.add_subparsers(dest="command_name", required=True)

    locate = sub.add_parser("locate", help="find the object a command names in an image file")
    locate.add_argument("image", help="image file (PNG, JPEG, ...)")
    locate.add_argument("command", help='e.g. "take the scissors"')
    locate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    locate.add_argument(
        "--overlay", metavar="OUT.png", help="write the image with the answer drawn on it"
    )
    locate.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="override the config's device"
    )
    locate.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="override the config's precision (bf16: CPUs with AMX or AVX512-BF16 only)",
    )
    locate.add_argument(
        "--random-weights",
        action="store_true",
        help="where a checkpoint is missing, run with random weights (meaningless results)",
    )
    locate.add_argument("--config", metavar="FILE", help="YAML file of LocatorConfig fields")
    locate.set_defaults(func=cmd_locate)

    download = sub.add_parser(
        "download-models", help="fetch the MobileSAM and TinyCLIP checkpoints"
    )
    download.add_argument(
        "--clip-model", default=DEFAULT_CLIP_MODEL, choices=available_clip_models()
    )
    download.add_argument("--dir", help="target folder (default: the cache folder)")
    download.add_argument("--force", action="store_true", help="download even when present")
    download.set_defaults(func=cmd_download_models)

    export = sub.add_parser(
        "export-onnx", help="export MobileSAM and TinyCLIP to ONNX for backend onnxruntime"
    )
    export.add_argument(
        "--out",
        metavar="DIR",
        help="target folder (default: the config's onnx_dir, else <cache>/onnx)",
    )
    export.add_argument(
        "--clip-model",
        help=f"TinyCLIP configuration (default: the config's, else {DEFAULT_CLIP_MODEL})",
    )
    export.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the models are built for export (default cpu)",
    )
    export.add_argument(
        "--random-weights",
        action="store_true",
        help="where a checkpoint is missing, export random weights (meaningless results)",
    )
    export.add_argument(
        "--seed", type=int, help="seed of the random weights (default: the config's, 0)"
    )
    export.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of LocatorConfig fields (checkpoint paths, clip_model, seed, onnx_dir)",
    )
    export.set_defaults(func=cmd_export_onnx)

    from vlm_grasp_locator.tools.evaluation import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
