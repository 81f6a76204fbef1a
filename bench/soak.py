#!/usr/bin/env python3
"""Soak run: the real node as a process, a 30 Hz camera and a command every 2 s, measured.

    python bench/soak.py [--minutes 5] [--seconds S] [--points-per-side 16] [--log-dir DIR]

The node (``python -m vlm_grasp_locator.ros.node``) runs on a private ROS domain with random
weights on the CPU, default settings except the thresholds that random weights would
never pass. This script streams 640x480 rgb8 frames (sensor-data QoS, stamped with the
send time, every frame's pixels a little different like a real sensor's), sends a command
every ``--command-interval`` s (new phrases and repeats, each made unique by a "#n"
sentence the parser ignores), switches ``continuous`` on for the middle fifth of the run
through the parameter service, and collects every ``grasp_target``. After the send
window it keeps streaming until every command is answered (or ``--drain-s`` runs out),
then stops the node with SIGINT.

It prints frames, commands and answers by kind, answer latency, the age of the frame each
answer used, the node's RSS and thread count, the errors it logged, PASS/FAIL per target,
and as the last line one JSON object. Exit status 0 when every target passed, else 1.
"""
from __future__ import annotations

import argparse
import array
import contextlib
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]

WIDTH, HEIGHT = 640, 480
# Random weights predict IoU ~0 and unstable masks: without these nothing reaches scoring.
LOWERED_THRESHOLDS: Dict[str, Any] = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "score_threshold": 0.0,
}
REPEATED_PHRASES = ("cup", "spoon", "saucer", "red cup", "white saucer")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey")
OBJECTS = ("mug", "pen", "bowl", "fork", "bottle", "box", "plate", "glass", "tape", "knife")
VERBS = ("take the", "grab the", "pick up the", "find the", "hand me the")
PUBLISH_ALLOWANCE_S = 0.25  # answer building, publishing and delivery after locate()
RSS_GROWTH_LIMIT_MB = 50.0
# "No growing queue": the last third's median answer latency may exceed the first
# third's by this factor plus one median inference (noise on a shared machine).
LATENCY_GROWTH_FACTOR = 1.25
_INFERENCE_MS_RE = re.compile(r"\((?:\d+ detections, )?(\d+) ms\)\s*$")


# ---------------------------------------------------------------------------- inputs
def command_stream(every_new: int = 3) -> Iterator[Tuple[str, str]]:
    """(command text, expected target): every ``every_new``-th phrase never seen before,
    the others repeats; "#n" keeps every text unique without changing the target."""
    fresh = (f"{c} {o}" for o, c in itertools.product(OBJECTS, COLOURS))
    for n in itertools.count(1):
        if n % every_new == 0:
            phrase = next(fresh, None) or REPEATED_PHRASES[n % len(REPEATED_PHRASES)]
        else:
            phrase = REPEATED_PHRASES[n % len(REPEATED_PHRASES)]
        yield f"{VERBS[n % len(VERBS)]} {phrase}. #{n}", phrase


def frame_bank(count: int = 8) -> List[Any]:
    """640x480 scenes: the bundled photo with a block that moves from frame to frame."""
    import cv2
    import numpy as np

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    base = cv2.resize(load_rgb(SAMPLE_IMAGE), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    bank = []
    for i in range(count):
        frame = base.copy()
        x = 40 + i * (WIDTH - 160) // max(count - 1, 1)
        frame[360:420, x:x + 80] = (200, 40, 40)
        frame = np.clip(frame.astype(np.int16) + (i % 3) - 1, 0, 255).astype(np.uint8)
        bank.append(frame)
    return bank


def unique_frame(bank: Sequence[Any], index: int) -> bytes:
    """Frame ``index``: a bank scene with the index written into its first pixels, so no
    two frames have the same content (a real sensor's noise does the same)."""
    frame = bank[index % len(bank)].copy()
    frame[0, :4].reshape(-1)[:8] = list(index.to_bytes(8, "little"))
    return frame.tobytes()


# ---------------------------------------------------------------------------- process side
@dataclass
class ProcSample:
    t: float  # monotonic
    rss_mb: float
    threads: int


class ProcSampler:
    """Samples VmRSS and Threads of a process from /proc/<pid>/status once a second."""

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: List[ProcSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc_sampler", daemon=True)

    def read(self) -> Optional[ProcSample]:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            rss_kb = float(fields["VmRSS"].split()[0])
            threads = int(fields["Threads"])
        except (KeyError, ValueError, IndexError):
            return None
        return ProcSample(time.monotonic(), rss_kb / 1024.0, threads)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            sample = self.read()
            if sample is not None:
                self.samples.append(sample)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def at(self, t: float) -> Optional[ProcSample]:
        """The first sample taken at or after ``t`` (else the last one)."""
        later = [s for s in self.samples if s.t >= t]
        return later[0] if later else (self.samples[-1] if self.samples else None)


# ---------------------------------------------------------------------------- ROS side
@dataclass
class Answer:
    command: str
    found: bool
    reason: str
    stamp_s: float  # header stamp of the answer = the source image's stamp
    received_wall: float
    received: float  # monotonic


@dataclass
class SentCommand:
    text: str
    target: str
    sent: float  # monotonic
    continuous: bool
    answer: Optional[Answer] = None


@dataclass
class Diagnostics:
    """The node's /diagnostics key-values over time (empty when it publishes none)."""

    history: List[Tuple[float, Dict[str, str]]] = field(default_factory=list)

    def latest(self) -> Dict[str, str]:
        return self.history[-1][1] if self.history else {}

    def numbers(self, key: str) -> List[Tuple[float, float]]:
        """(t, value) of the numeric key ``key`` (as node_diagnostics names it)."""
        out = []
        for t, values in self.history:
            try:
                out.append((t, float(values[key])))
            except (KeyError, ValueError):
                continue
        return out

    def last(self, key: str) -> Optional[int]:
        values = self.numbers(key)
        return int(values[-1][1]) if values else None


class SoakClient:
    """Camera, commander, answer collector and parameter client in one rclpy node."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                               qos_profile_sensor_data)
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from vlm_grasp_locator.ros.messages import MsgTypes

        types = MsgTypes.load()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"soak_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        # A camera driver's QoS: best effort, frames may be lost, never queued.
        self.image_pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.command_pub = self.node.create_publisher(
            String, "command", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        latched = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.answers: List[Answer] = []
        self.node.create_subscription(types.grasp_target, "grasp_target", self._on_answer, latched)
        self.diagnostics = Diagnostics()
        self._start = time.monotonic()
        try:
            from diagnostic_msgs.msg import DiagnosticArray

            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                          reliable)
        except ImportError:
            pass
        # A plain SetParameters client: rclpy.parameter_client is Iron+ (not in Humble).
        self._SetParameters = SetParameters
        self.params = self.node.create_client(SetParameters, "grasp_locator/set_parameters")
        self._image = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0,
                            step=WIDTH * 3)
        self._image.header.frame_id = "camera_color_optical_frame"
        self._String = String

    def _on_answer(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.answers.append(Answer(msg.command, bool(msg.found), msg.reason, stamp,
                                   time.time(), time.monotonic()))

    def _on_diagnostics(self, msg: Any) -> None:
        values: Dict[str, str] = {}
        for status in msg.status:
            if "grasp_locator" in status.name or "grasp_locator" in status.hardware_id:
                values.update({kv.key: kv.value for kv in status.values})
        if values:
            self.diagnostics.history.append((time.monotonic(), values))

    def spin_until(self, predicate: Any, timeout_s: float, alive: Any = None) -> bool:
        from vlm_grasp_locator.tools.node_client import spin_until

        return spin_until(self.executor, predicate, timeout_s, alive)

    def wait_ready(self, timeout_s: float, alive: Any) -> bool:
        return self.spin_until(
            lambda: self.image_pub.get_subscription_count() > 0
            and self.command_pub.get_subscription_count() > 0
            and self.node.count_publishers("grasp_target") > 0, timeout_s, alive)

    def publish_frame(self, pixels: bytes) -> None:
        self._image.header.stamp = self.node.get_clock().now().to_msg()  # the send time
        self._image.data = array.array("B", pixels)
        self.image_pub.publish(self._image)

    def send_command(self, text: str) -> None:
        self.command_pub.publish(self._String(data=text))

    def set_continuous(self, value: bool) -> Any:
        """Start a SetParameters call; returns its future (spun by the main loop)."""
        from rclpy.parameter import Parameter

        request = self._SetParameters.Request(
            parameters=[Parameter("continuous", value=value).to_parameter_msg()])
        return self.params.call_async(request)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# ---------------------------------------------------------------------------- the run
@dataclass
class RunRecord:
    """Everything measured during one soak run."""

    args: argparse.Namespace
    params: Dict[str, Any]
    log_path: Path
    commands: List[SentCommand] = field(default_factory=list)
    answers: List[Answer] = field(default_factory=list)
    frames_sent: int = 0
    frames_late: int = 0  # camera ticks skipped because the sender fell behind
    t0: float = 0.0
    send_end: float = 0.0
    drain_end: float = 0.0
    ready_s: float = 0.0
    continuous_window: Tuple[float, float] = (0.0, 0.0)
    param_results: List[Tuple[bool, str]] = field(default_factory=list)
    samples: List[ProcSample] = field(default_factory=list)
    rss_warmup: Optional[ProcSample] = None
    rss_end: Optional[ProcSample] = None
    warmup_at: float = 0.0  # monotonic
    warmup_at_s: float = 0.0
    alive_at_end: bool = False
    exit_code: Optional[int] = None
    exit_s: float = 0.0
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    load_start: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: Tuple[float, float, float] = (0.0, 0.0, 0.0)


def node_params(args: argparse.Namespace) -> Dict[str, Any]:
    params: Dict[str, Any] = {"allow_random_weights": True, "device": "cpu",
                              "points_per_side": args.points_per_side, **LOWERED_THRESHOLDS}
    if args.clip_model:
        params["clip_model"] = args.clip_model
    if args.num_threads:
        params["num_threads"] = args.num_threads
    return params


@contextlib.contextmanager
def environment(values: Dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block only (the caller may be a test process)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_soak(args: argparse.Namespace) -> RunRecord:
    from vlm_grasp_locator.core.command_parser import parse_command
    from vlm_grasp_locator.tools.node_client import NodeProcess, reserve_domain_id

    duration = args.seconds if args.seconds is not None else args.minutes * 60.0
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="soak_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    params = node_params(args)
    record = RunRecord(args, params, log_dir / "node.log")
    bank = frame_bank()
    commands = command_stream()

    # Random weights, whatever a developer has downloaded; passive OpenMP on shared cores.
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    if args.empty_cache:
        env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="soak_cache_")
    domain_id, lock = reserve_domain_id()
    record.load_start = os.getloadavg()
    log = open(record.log_path, "wb")
    started = time.monotonic()
    with environment(env):
        node = NodeProcess(params, domain_id, stdout=log, stderr=log)
    sampler = ProcSampler(node.proc.pid)
    client: Optional[SoakClient] = None
    print(f"soak: node pid {node.proc.pid} on ROS_DOMAIN_ID={domain_id}, log {record.log_path}",
          flush=True)
    try:
        with environment(env):
            client = SoakClient(domain_id)
        if not client.wait_ready(args.ready_timeout, node.alive):
            raise RuntimeError(
                f"node not ready (exit code {node.returncode}); see {record.log_path}")
        record.ready_s = time.monotonic() - started
        sampler.start()
        print(f"soak: node ready after {record.ready_s:.1f} s; streaming {WIDTH}x{HEIGHT} rgb8 at "
              f"{args.rate:g} Hz for {duration:g} s, a command every {args.command_interval:g} s",
              flush=True)

        t0 = record.t0 = time.monotonic()
        send_end = t0 + duration
        cont_on, cont_off = t0 + 0.4 * duration, t0 + 0.6 * duration
        record.continuous_window = (0.4 * duration, 0.6 * duration)
        continuous, pending_param = False, None
        frame_period, next_frame = 1.0 / args.rate, t0
        next_command = t0 + min(1.0, args.command_interval)  # a few frames first
        drain_deadline: Optional[float] = None
        progress_at = t0 + 30.0

        def unanswered() -> int:
            answered = {a.command for a in client.answers}
            return sum(c.text not in answered for c in record.commands)

        while True:
            now = time.monotonic()
            if now >= send_end and drain_deadline is None:
                drain_deadline = now + args.drain_s
                record.send_end = now
            if drain_deadline is not None and (not unanswered() or now >= drain_deadline
                                               or not node.alive()):
                break
            if not node.alive():
                break
            if now >= next_frame:
                client.publish_frame(unique_frame(bank, record.frames_sent))
                record.frames_sent += 1
                next_frame += frame_period
                if now - next_frame > frame_period:  # fell behind: skip ticks, don't burst
                    skipped = int((now - next_frame) / frame_period)
                    record.frames_late += skipped
                    next_frame += skipped * frame_period
            if drain_deadline is None and now >= next_command:
                text, target = next(commands)
                got = parse_command(text).target
                if got != target:  # the "#n" suffix must never change the target
                    raise RuntimeError(f"command {text!r} parses to {got!r}, not {target!r}")
                client.send_command(text)
                record.commands.append(SentCommand(text, target, now, continuous))
                next_command += args.command_interval
            want = cont_on <= now < cont_off and drain_deadline is None
            if pending_param is None and want != continuous:
                pending_param, continuous = client.set_continuous(want), want
            if pending_param is not None and pending_param.done():
                record.param_results += [(r.successful, r.reason)
                                         for r in pending_param.result().results]
                pending_param = None
            if now >= progress_at:
                progress_at += 30.0
                print(f"soak: t={now - t0:5.0f} s frames {record.frames_sent} commands "
                      f"{len(record.commands)} answers {len(client.answers)} "
                      f"unanswered {unanswered()}", flush=True)
            wait = min(next_frame, next_command if drain_deadline is None else next_frame)
            client.executor.spin_once(timeout_sec=max(0.0, wait - time.monotonic()))
        if continuous:  # the run ended inside the continuous window: leave it as found
            future = client.set_continuous(False)
            client.spin_until(future.done, 10.0)
        record.drain_end = time.monotonic()
        client.spin_until(lambda: False, 0.5)  # late answers and diagnostics
        record.rss_end = sampler.read()
        record.alive_at_end = node.alive()
    finally:
        sampler.stop()
        if client is not None:
            record.answers = list(client.answers)
            record.diagnostics = client.diagnostics
            client.close()
        stop_started = time.monotonic()
        record.exit_code = node.stop(timeout_s=15.0)
        record.exit_s = time.monotonic() - stop_started
        log.close()
        lock.close()
        record.load_end = os.getloadavg()
    record.samples = sampler.samples + ([record.rss_end] if record.rss_end else [])
    with open(log_dir / "proc_samples.csv", "w") as csv:
        csv.write("t_s,rss_mb,threads\n")
        csv.writelines(f"{p.t - record.t0:.1f},{p.rss_mb:.1f},{p.threads}\n"
                       for p in record.samples)
    match_answers(record)
    first_inferred = min((c.answer.received for c in record.commands
                          if c.answer and kind_of(c.answer) == "inferred"), default=record.t0)
    duration_run = (record.send_end or record.drain_end) - record.t0
    warmup_at = max(first_inferred, record.t0 + args.warmup_fraction * duration_run)
    record.warmup_at, record.warmup_at_s = warmup_at, warmup_at - record.t0
    record.rss_warmup = sampler.at(warmup_at)
    return record


def kind_of(answer: Answer) -> str:
    """What kind of answer: inferred (found or not, after an inference), dropped, stale..."""
    if answer.found:
        return "inferred"
    reason = answer.reason
    if reason.startswith("dropped"):
        return "dropped"
    if reason.startswith("inference failed"):
        return "failed"
    if "max_image_age" in reason or "no image received" in reason:
        return "no_fresh_frame"
    return "inferred"


def match_answers(record: RunRecord) -> None:
    """The first answer carrying a command's (unique) text is its answer."""
    first: Dict[str, Answer] = {}
    for a in record.answers:
        first.setdefault(a.command, a)
    for c in record.commands:
        c.answer = first.get(c.text)


# ---------------------------------------------------------------------------- report
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def rss_floors(record: RunRecord) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(RSS floor just after warm-up, floor at the end, least-squares MB/min after warm-up).

    RSS swings by hundreds of MB within each inference (activations come and go), so a
    single sample says little; the floor (minimum) over a window is the memory the node
    keeps between inferences. Window: 20% of the run, 10..60 s.
    """
    after = [p for p in record.samples if p.t >= record.warmup_at]
    if not after:
        return None, None, None
    window = max(10.0, min(60.0, 0.2 * (after[-1].t - record.t0)))
    first = [p.rss_mb for p in after if p.t <= record.warmup_at + window]
    last = [p.rss_mb for p in after if p.t >= after[-1].t - window]
    slope = None
    if len(after) >= 3:
        ts = [p.t for p in after]
        mean_t, mean_r = statistics.fmean(ts), statistics.fmean(p.rss_mb for p in after)
        var = sum((t - mean_t) ** 2 for t in ts)
        if var > 0:
            slope = 60.0 * sum((p.t - mean_t) * (p.rss_mb - mean_r) for p in after) / var
    return min(first), min(last), slope


def node_log_facts(path: Path) -> Tuple[List[str], List[float]]:
    """([ERROR] lines, inference seconds from the node's per-answer log lines)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    errors = [line for line in text.splitlines() if "[ERROR]" in line or "Traceback" in line]
    inference = [int(m.group(1)) / 1000.0 for line in text.splitlines()
                 if (m := _INFERENCE_MS_RE.search(line))]
    return errors, inference


def _r(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(value, digits)


def summarise(record: RunRecord) -> Dict[str, Any]:
    args = record.args
    errors, inference_s = node_log_facts(record.log_path)
    sent = record.commands
    answered = [c for c in sent if c.answer is not None]
    kinds: Dict[str, List[SentCommand]] = {}
    for c in answered:
        assert c.answer is not None
        kinds.setdefault(kind_of(c.answer), []).append(c)
    inferred = kinds.get("inferred", [])
    latency = [c.answer.received - c.sent for c in inferred if c.answer]
    any_latency = [c.answer.received - c.sent for c in answered if c.answer]
    ages = [c.answer.received_wall - c.answer.stamp_s for c in inferred if c.answer]
    command_texts = {c.text for c in sent}
    first_answers = {id(c.answer) for c in answered}
    # Continuous mode: further answers carrying a command's text, one per followed frame.
    tracking = [a for a in record.answers
                if a.command in command_texts and id(a) not in first_answers]
    tracking_ages = [a.received_wall - a.stamp_s for a in tracking]

    # Inference time: the node's own log; else the shortest gap between inferred answers.
    if not inference_s:
        times = sorted(c.answer.received for c in inferred if c.answer)
        gaps = [b - a for a, b in zip(times, times[1:])]
        inference_s = [max(gaps)] if gaps else []
    max_inference = max(inference_s) if inference_s else None
    max_image_age = 2.0  # the node's default; the soak does not change it
    # The logged inference time is locate() alone; building and publishing the answer
    # (overlay, mask image, detections) and DDS delivery come after it.
    age_bound = max_image_age + (max_inference or 0.0) + PUBLISH_ALLOWANCE_S
    max_age = max(ages + tracking_ages) if ages or tracking_ages else None

    send_window = (record.send_end or record.drain_end) - record.t0
    third = send_window / 3.0
    # Steady state only: while draining, no newer command pushes the queued ones out,
    # so the last few wait for the whole queue ahead of them.
    steady = [c for c in inferred if c.answer and c.answer.received < record.t0 + send_window]
    first_third = [c.answer.received - c.sent for c in steady if c.sent - record.t0 < third]
    last_third = [c.answer.received - c.sent for c in steady if c.sent - record.t0 >= 2 * third]
    p50_first, p50_last = percentile(first_third, 50), percentile(last_third, 50)
    median_inference = statistics.median(inference_s) if inference_s else 0.0
    diagnostics = record.diagnostics
    queue = diagnostics.numbers("queue length")
    queue_first = [v for t, v in queue if t - record.t0 < third]
    queue_last = [v for t, v in queue if t - record.t0 >= 2 * third]

    warm, end = record.rss_warmup, record.rss_end
    floor_warm, floor_end, slope = rss_floors(record)
    growth = (floor_end - floor_warm) if floor_warm is not None and floor_end is not None else None
    threads = [s.threads for s in record.samples]

    latency_ok = (p50_first is None or p50_last is None
                  or p50_last <= LATENCY_GROWTH_FACTOR * p50_first + median_inference)
    queue_ok = not queue_first or not queue_last or max(queue_last) <= max(queue_first)
    targets = {
        "all_answered": len(answered) == len(sent) and len(sent) > 0,
        "no_crash": record.alive_at_end and record.exit_code == 0,
        "rss_growth_ok": growth is not None and growth < RSS_GROWTH_LIMIT_MB,
        "frame_age_ok": max_age is not None and max_age <= age_bound,
        "no_growing_queue": latency_ok and queue_ok and bool(last_third),
    }
    reasons: Dict[str, int] = {}
    for c in answered:
        if c.answer and not c.answer.found:
            key = re.sub(r"[\d.]+", "N", c.answer.reason)[:80]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "duration_s": round(send_window, 1),
        "drain_s": round(record.drain_end - (record.send_end or record.drain_end), 1),
        "image": f"{WIDTH}x{HEIGHT} rgb8",
        "rate_hz": args.rate,
        "command_interval_s": args.command_interval,
        "node_params": record.params,
        "node_ready_s": round(record.ready_s, 1),
        "load_avg_start": [round(v, 2) for v in record.load_start],
        "load_avg_end": [round(v, 2) for v in record.load_end],
        "frames_sent": record.frames_sent,
        "frames_late": record.frames_late,
        "diagnostics_seen": bool(record.diagnostics.history),
        # The node's own counters (node_diagnostics): dropped = bad + replaced unused.
        "frames_received_by_node": diagnostics.last("frames received"),
        "frames_dropped_by_node": diagnostics.last("frames dropped"),
        "frames_replaced_unused_by_node": diagnostics.last("frames replaced unused"),
        "frames_bad_by_node": diagnostics.last("frames bad"),
        "node_diagnostics": diagnostics.latest(),
        "commands_sent": len(sent),
        "commands_answered": len(answered),
        "commands_unanswered": len(sent) - len(answered),
        "commands_inferred": len(inferred),
        "commands_found": sum(bool(c.answer and c.answer.found) for c in answered),
        "commands_dropped_queue_full": len(kinds.get("dropped", [])),
        "commands_no_fresh_frame": len(kinds.get("no_fresh_frame", [])),
        "commands_inference_failed": len(kinds.get("failed", [])),
        "commands_in_continuous": sum(c.continuous for c in sent),
        "not_found_reasons": reasons,
        "tracking_answers": len(tracking),
        "continuous_set_results": [ok for ok, _ in record.param_results],
        "p50_answer_s": _r(percentile(latency, 50)),
        "p95_answer_s": _r(percentile(latency, 95)),
        "max_answer_s": _r(max(latency) if latency else None),
        "p95_any_answer_s": _r(percentile(any_latency, 95)),
        "p50_answer_first_third_s": _r(p50_first),
        "p50_answer_last_third_s": _r(p50_last),
        "queue_len_max_first_third": max(queue_first) if queue_first else None,
        "queue_len_max_last_third": max(queue_last) if queue_last else None,
        "inference_s_p50": _r(median_inference if inference_s else None),
        "inference_s_max": _r(max_inference),
        "p50_frame_age_s": _r(percentile(ages, 50)),
        "max_frame_age_s": _r(max_age),
        "frame_age_bound_s": _r(age_bound),
        "warmup_at_s": round(record.warmup_at_s, 1),
        "rss_warmup_mb": _r(floor_warm, 1),
        "rss_end_mb": _r(floor_end, 1),
        "rss_at_warmup_mb": _r(warm.rss_mb if warm else None, 1),
        "rss_at_end_mb": _r(end.rss_mb if end else None, 1),
        "rss_slope_mb_per_min": _r(slope, 2),
        "rss_max_mb": _r(max(s.rss_mb for s in record.samples) if record.samples else None, 1),
        "rss_growth_mb": _r(growth, 1),
        "threads_warmup": warm.threads if warm else None,
        "threads_end": end.threads if end else None,
        "threads_max": max(threads) if threads else None,
        "errors": len(errors),
        "error_examples": errors[:3],
        "alive_at_end": record.alive_at_end,
        "exit_code": record.exit_code,
        "exit_s": round(record.exit_s, 2),
        "node_log": str(record.log_path),
        **{f"pass_{k}": v for k, v in targets.items()},
        "pass_all": all(targets.values()),
    }


def print_report(s: Dict[str, Any]) -> None:
    def line(label: str, value: Any) -> None:
        print(f"  {label:<34} {value}")

    print("\nsoak results " + "-" * 60)
    line("run", f"{s['duration_s']} s sending + {s['drain_s']} s draining; node params "
         f"{s['node_params']}")
    line("load average start / end", f"{s['load_avg_start']} / {s['load_avg_end']}")
    line("frames sent (late ticks skipped)", f"{s['frames_sent']} ({s['frames_late']})")
    if s["diagnostics_seen"]:
        line("frames node received / dropped", f"{s['frames_received_by_node']} / "
             f"{s['frames_dropped_by_node']} (from /diagnostics: "
             f"{s['frames_replaced_unused_by_node']} replaced unused, "
             f"{s['frames_bad_by_node']} bad)")
        line("queue length max first / last third", f"{s['queue_len_max_first_third']} / "
             f"{s['queue_len_max_last_third']}")
    else:
        line("frames node received / dropped", "not published by the node (no /diagnostics)")
    line("commands sent / answered", f"{s['commands_sent']} / {s['commands_answered']}")
    line("  after an inference (found)", f"{s['commands_inferred']} ({s['commands_found']})")
    line("  dropped: queue full (by design)", s["commands_dropped_queue_full"])
    line("  no fresh frame / inference failed",
         f"{s['commands_no_fresh_frame']} / {s['commands_inference_failed']}")
    for reason, n in s["not_found_reasons"].items():
        line(f"    {n} x", reason)
    line("continuous mode", f"{s['commands_in_continuous']} commands sent in it, "
         f"{s['tracking_answers']} tracking answers; "
         f"SetParameters ok {s['continuous_set_results']}")
    line("answer latency p50/p95/max (s)",
         f"{s['p50_answer_s']} / {s['p95_answer_s']} / {s['max_answer_s']} (inferred answers)")
    line("  p50 first / last third (s)",
         f"{s['p50_answer_first_third_s']} / {s['p50_answer_last_third_s']}")
    line("inference p50 / max (s)", f"{s['inference_s_p50']} / {s['inference_s_max']}")
    line("frame age p50 / max (bound) (s)",
         f"{s['p50_frame_age_s']} / {s['max_frame_age_s']} ({s['frame_age_bound_s']})")
    line("RSS warm-up / end / max (MB)",
         f"{s['rss_warmup_mb']} (from {s['warmup_at_s']} s) / {s['rss_end_mb']} / "
         f"{s['rss_max_mb']} (floors; samples {s['rss_at_warmup_mb']} / {s['rss_at_end_mb']})")
    line("RSS growth (limit) / trend", f"{s['rss_growth_mb']} MB ({RSS_GROWTH_LIMIT_MB:g}) / "
         f"{s['rss_slope_mb_per_min']} MB/min after warm-up")
    line("threads warm-up / end / max",
         f"{s['threads_warmup']} / {s['threads_end']} / {s['threads_max']}")
    line("errors logged", s["errors"])
    for example in s["error_examples"]:
        line("", example[:160])
    line("exit on SIGINT", f"code {s['exit_code']} after {s['exit_s']} s")
    for key in ("all_answered", "no_crash", "rss_growth_ok", "frame_age_ok", "no_growing_queue"):
        line(f"target {key}", "PASS" if s[f"pass_{key}"] else "FAIL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak", description="Soak the grasp_locator node: 30 Hz camera, a command "
        "every 2 s, random weights on the CPU; prints figures and a JSON summary.")
    parser.add_argument("--minutes", type=float, default=5.0, help="send window (default 5)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="send window in seconds (overrides --minutes)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate, Hz (default 30)")
    parser.add_argument("--command-interval", type=float, default=2.0,
                        help="seconds between commands (default 2)")
    parser.add_argument("--points-per-side", type=int, default=16,
                        help="node's MobileSAM grid (default 16, the node's default)")
    parser.add_argument("--clip-model", default="",
                        help="node's clip_model (default: the node's default)")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="node's num_threads (default 0: torch's default)")
    parser.add_argument("--drain-s", type=float, default=240.0,
                        help="after the send window, wait at most this long for the "
                        "remaining answers (default 240)")
    parser.add_argument("--warmup-fraction", type=float, default=0.2,
                        help="RSS 'after warm-up' is taken this far into the run, and not "
                        "before the first answer after an inference (default 0.2)")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for the node to load its models")
    parser.add_argument("--log-dir", default="", help="where to write node.log (default: a "
                        "new temporary folder)")
    parser.add_argument("--keep-cache", dest="empty_cache", action="store_false",
                        help="use the model cache (real checkpoints when present) instead of "
                        "an empty one (random weights)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        record = run_soak(args)
    except KeyboardInterrupt:
        return 130
    summary = summarise(record)
    print_report(summary)
    print(json.dumps(summary), flush=True)
    return 0 if summary["pass_all"] else 1


if __name__ == "__main__":
    sys.exit(main())
