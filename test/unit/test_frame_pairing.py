"""Unit tests of the colour/depth/camera_info pairing (no ROS)."""
from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

import pytest

from vlm_grasp_locator.core.frame_pairing import (
    FramePairer,
    PairingsByFrame,
    SETTLE_HORIZON_S,
    stamp_to_seconds,
)

PERIOD = 1.0 / 30.0


@dataclass
class Info:
    """A camera_info stand-in: the pairer only stores it."""

    width: int
    tag: str = ""


def _stamp(i: int, base: float = 100.0) -> float:
    return base + i * PERIOD


def _camera_frame(pairer: FramePairer, i: int, base: float = 100.0, order: str = "cdi",
                  info: Optional[Info] = None):
    """One 30 Hz RGB-D frame: colour (c), depth (d), camera_info (i) in ``order``."""
    stamp = _stamp(i, base)
    pairing = None
    for kind in order:
        if kind == "c":
            pairing = pairer.open(stamp)
        elif kind == "d":
            pairer.add_depth(stamp, f"depth{i}@{base:g}")
        else:
            pairer.add_camera_info(stamp, info or Info(640, f"info{i}@{base:g}"))
    return pairing


def test_stamp_to_seconds():
    assert stamp_to_seconds(SimpleNamespace(sec=12, nanosec=500_000_000)) == 12.5
    assert stamp_to_seconds(3) == 3.0
    with pytest.raises(ValueError, match="sec and nanosec"):
        stamp_to_seconds(SimpleNamespace(secs=1))


def test_depth_before_colour_pairs_the_closest_within_max_dt():
    pairer = FramePairer(max_dt=0.05)
    for t in (10.00, 10.10, 10.20, 10.30):
        pairer.add_depth(t, f"depth@{t:.2f}")
    match = pairer.resolve(pairer.open(10.12))
    assert match.depth is not None and match.depth.payload == "depth@10.10"
    assert match.settled  # 10.20 and 10.30 came after 10.12: nothing closer can follow
    assert pairer.resolve(pairer.open(10.29)).depth.payload == "depth@10.30"
    assert pairer.resolve(pairer.open(10.37)).depth is None  # 0.07 s from the closest


def test_tie_prefers_the_later_depth_frame():
    pairer = FramePairer(max_dt=0.5)
    for t, name in ((1.0, "a"), (1.5, "b"), (2.0, "c")):
        pairer.add_depth(t, name)
    assert pairer.resolve(pairer.open(1.25)).depth.payload == "b"
    late = FramePairer(max_dt=0.5)  # the same tie when the later one arrives after colour
    late.add_depth(1.0, "a")
    pairing = late.open(1.25)
    late.add_depth(1.5, "b")
    assert late.resolve(pairing).depth.payload == "b"


def test_depth_arriving_after_colour_is_paired_when_it_arrives():
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(_stamp(0), "depth0")
    pairing = pairer.open(_stamp(1))
    early = pairer.resolve(pairing)
    # depth0 is 33 ms off: the best so far, not settled (a closer one may come).
    assert early.depth.payload == "depth0" and not early.settled
    pairer.add_depth(_stamp(1), "depth1")
    match = pairer.resolve(pairing)
    assert match.depth.payload == "depth1" and match.settled
    assert pairer.open_pairings == 0  # settled pairings stop listening


def test_resolve_waits_briefly_for_depth_that_comes_shortly_after():
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(_stamp(0), "depth0")
    pairer.add_camera_info(_stamp(0), Info(640))
    pairing = pairer.open(_stamp(1))
    sender = threading.Timer(0.1, lambda: (pairer.add_depth(_stamp(1), "depth1"),
                                           pairer.add_camera_info(_stamp(1), Info(320))))
    started = time.monotonic()
    sender.start()
    try:
        match = pairer.resolve(pairing, wait_until=started + 5.0)
    finally:
        sender.join()
    assert match.depth.payload == "depth1"
    assert match.camera_info == Info(320) and match.info_by_stamp  # waited for its info too
    assert time.monotonic() - started < 4.0  # woken by the arrival, not the deadline


def test_resolve_gives_up_at_the_deadline_and_never_waits_without_a_depth_stream():
    no_stream = FramePairer(max_dt=0.05)
    started = time.monotonic()
    assert no_stream.resolve(no_stream.open(5.0), wait_until=started + 5.0).depth is None
    assert time.monotonic() - started < 1.0
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(4.9, "old")
    started = time.monotonic()
    match = pairer.resolve(pairer.open(5.0), wait_until=started + 0.2)
    assert match.depth is None and not match.settled
    assert 0.15 <= time.monotonic() - started < 2.0


@pytest.mark.parametrize("order", ["cdi", "dci", "idc", "dic"])
def test_30hz_bursts_keep_a_query_frame_paired(order: str):
    """300 frames (10 s at 30 Hz) after the query frame: a 10-frame buffer is long gone,
    the query frame still has its own depth frame and camera_info."""
    pairer = FramePairer(max_dt=0.05, capacity=10)
    pairings = [_camera_frame(pairer, i, order=order) for i in range(5)]
    query = pairings[3]  # the frame a command took
    for i in range(5, 305):
        _camera_frame(pairer, i, order=order)
    assert len(pairer) == 10
    match = pairer.resolve(query)
    assert match.depth.stamp == _stamp(3) and match.depth.payload == "depth3@100"
    assert match.camera_info.tag == "info3@100" and match.info_by_stamp
    assert match.settled


def test_changing_camera_info_is_paired_per_frame():
    """A resolution change at frame 2: frames 0-1 keep 640, frames 2-3 get 320, whether
    the camera_info comes before or after its depth frame."""
    pairer = FramePairer(max_dt=0.05)
    sizes = [640, 640, 320, 320]
    orders = ["cdi", "cid", "dci", "icd"]
    pairings = [_camera_frame(pairer, i, order=orders[i], info=Info(sizes[i], f"info{i}"))
                for i in range(4)]
    _camera_frame(pairer, 4, info=Info(1280, "info4"))
    for i, pairing in enumerate(pairings):
        match = pairer.resolve(pairing)
        assert (match.camera_info.width, match.camera_info.tag) == (sizes[i], f"info{i}")
        assert match.info_by_stamp


def test_unstamped_camera_info_is_the_one_in_force_when_the_depth_arrived():
    """A camera_info published once, or with a zero stamp, still pairs: the one received
    last before the depth frame; a later change does not rewrite earlier frames."""
    pairer = FramePairer(max_dt=0.05)
    assert pairer.resolve(pairer.open(9.0)).camera_info is None  # none received yet
    pairer.add_camera_info(0.0, Info(640))
    first = _camera_frame(pairer, 0, order="cd")
    pairer.add_camera_info(0.0, Info(320))
    second = _camera_frame(pairer, 1, order="cd")
    a, b = pairer.resolve(first), pairer.resolve(second)
    assert (a.camera_info.width, a.info_by_stamp) == (640, False)
    assert (b.camera_info.width, b.info_by_stamp) == (320, False)


def test_no_depth_within_max_dt_is_settled_by_a_much_later_frame():
    """Depth 1 s ahead (clocks apart): no pair, and no reason to wait."""
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(11.0, "ahead")
    match = pairer.resolve(pairer.open(10.0), wait_until=time.monotonic() + 5.0)
    assert match.depth is None and match.settled


@pytest.mark.parametrize("first", ["color", "depth", "info"])
def test_backwards_stamps_clear_the_old_timeline_and_pairing_goes_on(first: str):
    """A bag replayed with --loop: the same stamps again, new data. Whichever stream jumps
    back first, a colour frame of the second pass gets the second pass's depth and
    camera_info, and pairing keeps working afterwards."""
    pairer = FramePairer(max_dt=0.05)
    for i in range(60):
        _camera_frame(pairer, i, base=100.0)
    held = pairer.open(_stamp(60, 100.0))  # taken by a query; its depth never came
    # The second pass starts at 100.0 again; one stream jumps first, stragglers of the
    # first pass may still arrive on the others.
    order = {"color": "cdi", "depth": "dci", "info": "idc"}[first]
    pairings = []
    for i in range(3):
        stamp = _stamp(i, 100.0)
        for kind in order:
            if kind == "c":
                pairings.append(pairer.open(stamp))
            elif kind == "d":
                pairer.add_depth(stamp, f"second{i}")
            else:
                pairer.add_camera_info(stamp, Info(320, f"second{i}"))
            if i == 0 and kind == order[0]:  # a first-pass straggler on another stream
                pairer.add_depth(_stamp(61, 100.0), "straggler")
    assert pairer.jumps >= 1
    for i, pairing in enumerate(pairings):
        match = pairer.resolve(pairing)
        assert match.depth.payload == f"second{i}", (i, match)
        assert match.camera_info.tag == f"second{i}" and match.info_by_stamp
    # Closed at the jump with the best of its own pass (33 ms off), never a second-pass one.
    assert pairer.resolve(held).depth.payload == "depth59@100"
    for i in range(3, 40):  # pairing goes on in the new timeline
        pairing = _camera_frame(pairer, i, base=100.0)
    assert pairer.resolve(pairing).depth.payload == "depth39@100"


def test_a_frame_of_the_abandoned_timeline_keeps_its_own_depth():
    pairer = FramePairer(max_dt=0.05)
    old = [_camera_frame(pairer, i, base=200.0) for i in range(5)]
    _camera_frame(pairer, 0, base=150.0)  # jump back 50 s
    assert pairer.jumps == 1
    assert pairer.resolve(old[2]).depth.payload == "depth2@200"


def test_a_small_backwards_step_is_not_a_jump():
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(10.0, "a")
    pairer.add_depth(9.97, "b")  # within max_dt: jitter, not a time jump
    assert pairer.jumps == 0 and len(pairer) == 2


def test_straggler_far_in_the_future_does_not_settle_a_pairing():
    """Colour jumped back from 16 s to 10 s; a depth frame of the old pass (16.03 s) comes
    late: it neither pairs nor settles, and the new pass's depth still pairs."""
    pairer = FramePairer(max_dt=0.05)
    pairer.open(16.0)
    pairer.add_depth(16.0, "old")
    pairing = pairer.open(10.0)
    pairer.add_depth(10.0 + SETTLE_HORIZON_S + 5.03, "straggler")
    match = pairer.resolve(pairing)
    assert match.depth is None and not match.settled
    pairer.add_depth(10.0, "own")  # the depth stream jumps back too
    assert pairer.resolve(pairing).depth.payload == "own"
    assert pairer.jumps == 1


def test_pair_buffered_is_a_lookup_not_an_arrival():
    """For a frame not paired on arrival: only what is buffered now, an old stamp is no
    time jump, and nothing arriving later changes it (the old, lossy behaviour)."""
    pairer = FramePairer(max_dt=0.05, capacity=10)
    for i in range(40):
        _camera_frame(pairer, i)
    assert pairer.resolve(pairer.pair_buffered(_stamp(35))).depth.payload == "depth35@100"
    late = pairer.pair_buffered(_stamp(5))  # overwritten long ago
    assert pairer.jumps == 0 and pairer.open_pairings == 0
    assert pairer.resolve(late, wait_until=time.monotonic() + 5.0).depth is None


def test_memory_is_bounded():
    pairer = FramePairer(max_dt=0.05, capacity=4, open_capacity=6)
    for i in range(1000):  # colour only: nothing settles, the open list stays bounded
        pairer.open(_stamp(i))
    assert pairer.open_pairings == 6
    for i in range(1000, 2000):
        _camera_frame(pairer, i)
    assert len(pairer) == 4 and pairer.open_pairings <= 6


def test_pairings_live_exactly_as_long_as_their_frames():
    @dataclass
    class Frame:  # like the node's: an eq dataclass, so not hashable
        seq: int

    pairer = FramePairer()
    table = PairingsByFrame()
    frames: List[Frame] = []
    for i in range(50):
        frame = Frame(i)
        table.attach(frame, pairer.open(float(i)))
        frames.append(frame)
    kept = frames[7]
    pairing = table.get(kept)
    assert pairing is not None and pairing.color_stamp == 7.0
    del frames, frame
    gc.collect()
    assert len(table) == 1 and table.get(kept) is pairing
    del kept
    gc.collect()
    assert len(table) == 0


def test_clear_forgets_everything():
    pairer = FramePairer()
    _camera_frame(pairer, 0)
    pairing = pairer.open(_stamp(10))
    pairer.clear()
    assert len(pairer) == 0 and pairer.open_pairings == 0
    pairer.add_depth(_stamp(10), "after clear")
    assert pairer.resolve(pairing).depth is None  # closed by the clear
    assert pairer.resolve(pairer.open(_stamp(10))).camera_info is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        FramePairer(max_dt=-1.0)
    with pytest.raises(ValueError):
        FramePairer(max_dt=float("inf"))
    with pytest.raises(ValueError):
        FramePairer(capacity=0)
    with pytest.raises(ValueError):
        FramePairer(open_capacity=0)
    with pytest.raises(ValueError):
        FramePairer().add_depth(float("nan"), None)
    with pytest.raises(ValueError):
        FramePairer().open(float("inf"))
    with pytest.raises(ValueError):
        FramePairer().add_camera_info(float("nan"), None)


def test_concurrent_streams_and_queries():
    pairer = FramePairer(max_dt=0.05, capacity=10)
    errors: List[BaseException] = []
    results = []
    n = 1500

    def stream(kind: str) -> None:
        try:
            for i in range(n):
                if kind == "d":
                    pairer.add_depth(_stamp(i), f"depth{i}@100")
                elif kind == "i":
                    pairer.add_camera_info(_stamp(i), Info(640, f"info{i}@100"))
                else:
                    pairing = pairer.open(_stamp(i))
                    if i % 100 == 50:
                        results.append((i, pairing))
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(k,)) for k in "cdi"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(pairer) == 10 and pairer.jumps == 0
    for i, pairing in results:
        match = pairer.resolve(pairing)
        # Colour may run ahead of depth by more than the open list holds: then the
        # pairing stopped listening before its depth came, and has none; never a wrong one.
        if match.depth is not None:
            assert match.depth.payload == f"depth{i}@100"
            if match.info_by_stamp:  # else: its camera_info ran > capacity frames ahead
                assert match.camera_info.tag == f"info{i}@100"
