"""End-to-end demo: start the node, stream a sample image, send a command, save the overlay.

    python -m vlm_grasp_locator.tools.demo [--command "take the cup"] [--image PATH]
        [--overlay out/demo_overlay.png] [--device cpu] [--random-weights]

The node runs as a subprocess on a private ROS domain (localhost discovery only), so the
demo neither sees nor disturbs other ROS graphs on the machine (see ``node_client``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from vlm_grasp_locator.tools.node_client import (
    SAMPLE_IMAGE,
    LocatorClient,
    NodeProcess,
    bbox_xyxy,
    image_msg_array,
    load_rgb,
    reserve_domain_id,
)

# Thresholds that let masks through random models (a smoke run, not a result).
RANDOM_WEIGHT_PARAMS: Dict[str, Any] = {
    "allow_random_weights": True,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "score_threshold": 0.0,
}


def checkpoints_present(clip_model: str) -> bool:
    from vlm_grasp_locator.models.registry import default_checkpoint_paths

    return all(p.is_file() for p in default_checkpoint_paths(clip_model))


def try_download() -> bool:
    """Run the package CLI's ``download-models`` if it exists; True when it succeeded."""
    if importlib.util.find_spec("vlm_grasp_locator.tools.cli") is None:
        print("demo: no download CLI in this package", flush=True)
        return False
    print("demo: checkpoints missing; trying `vlm-grasp-locator download-models` ...", flush=True)
    try:
        done = subprocess.run([sys.executable, "-m", "vlm_grasp_locator.tools.cli",
                               "download-models"],
                              timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def run_demo(args: argparse.Namespace) -> int:
    from vlm_grasp_locator.ros.params import SPECS_BY_NAME

    clip_model = SPECS_BY_NAME["clip_model"].default
    params: Dict[str, Any] = {"publish_overlay": True}
    if args.device:
        params["device"] = args.device
    random_weights = args.random_weights
    if not random_weights and not checkpoints_present(clip_model):
        if not (try_download() and checkpoints_present(clip_model)):
            random_weights = True
    if random_weights:
        print("demo: no checkpoints: running with RANDOM WEIGHTS, a pipeline smoke run; "
              "results are meaningless", flush=True)
        params.update(RANDOM_WEIGHT_PARAMS)

    rgb = load_rgb(Path(args.image))
    domain_id, lock = reserve_domain_id()
    print(f"demo: starting grasp_locator (ROS_DOMAIN_ID={domain_id}, localhost only)", flush=True)
    node = NodeProcess(params, domain_id)
    client: Optional[LocatorClient] = None
    try:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        client = LocatorClient(domain_id, name="grasp_locator_demo")
        if not client.wait_ready(args.timeout, node.alive):
            print(f"demo: the node did not come up (exit code {node.returncode})", file=sys.stderr)
            return 1
        # A camera stream at ~5 Hz; the command goes out after the first frame.
        period = 0.2
        client.node.create_timer(period, lambda: client.publish_image(rgb, wait_ack_s=0))
        client.spin_until(lambda: False, 2 * period)
        print(f"demo: command {args.command!r}", flush=True)
        client.send_command(args.command)
        answer = client.wait_answer(args.command, args.timeout, alive=node.alive)
        if answer is None:
            print("demo: no answer on grasp_target "
                  f"({'node exited' if not node.alive() else 'timed out'})", file=sys.stderr)
            return 1
        client.wait_outputs(answer.header, ["detections", "overlay"], 5.0)
        report(client, answer, args.overlay)
        return 0
    finally:
        if client is not None:
            client.close()
        code = node.stop()
        print(f"demo: node stopped (exit code {code})", flush=True)
        lock.close()


def report(client: LocatorClient, answer: Any, overlay_path: str) -> None:
    """Print the detections and write the overlay PNG."""
    import cv2

    if answer.found:
        print(f"demo: found {answer.target!r}")
    else:
        print(f"demo: {answer.target or '(no target)'!r} not found: {answer.reason}")
    for array in client.outputs_for("detections", answer.header)[:1]:
        for det in array.detections:
            hyp = det.results[0].hypothesis
            box = ", ".join(f"{v:.0f}" for v in bbox_xyxy(det))
            print(f"  #{det.id} {hyp.class_id!r} score {hyp.score:.3f} box [{box}]")
    overlays = client.outputs_for("overlay", answer.header)
    if overlays:
        out = Path(overlay_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(image_msg_array(overlays[0]), cv2.COLOR_RGB2BGR))
        print(f"demo: overlay written to {out}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_grasp_locator.tools.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--command", default="take the cup",
                        help="what to say (default: %(default)s)")
    parser.add_argument("--image", default=str(SAMPLE_IMAGE),
                        help="image to stream (default: the bundled coffee.png)")
    parser.add_argument("--overlay", default="out/demo_overlay.png",
                        help="where to write the overlay PNG (default: %(default)s)")
    parser.add_argument("--device", default="",
                        help="auto, cpu, cuda or cuda:N (default: the node's, auto)")
    parser.add_argument("--random-weights", action="store_true",
                        help="skip the checkpoints: a pipeline smoke run with meaningless results")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for start-up and for the answer")
    args = parser.parse_args(argv)
    try:
        return run_demo(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
