from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from vlm_grasp_locator.frame_pairing import FramePairer, stamp_to_seconds


def test_stamp_to_seconds():
    assert stamp_to_seconds(SimpleNamespace(sec=12, nanosec=500_000_000)) == 12.5
    assert stamp_to_seconds(3) == 3.0
    with pytest.raises(ValueError, match="sec and nanosec"):
        stamp_to_seconds(SimpleNamespace(secs=1))


def test_closest_within_max_dt():
    pairer = FramePairer(max_dt=0.05)
    for t in (10.00, 10.10, 10.20, 10.30):
        pairer.add_depth(t, f"depth@{t:.2f}")
    frame = pairer.match(10.12)
    assert frame is not None and frame.payload == "depth@10.10" and frame.stamp == 10.10
    assert pairer.match(10.29).payload == "depth@10.30"


def test_tie_prefers_the_later_frame():
    pairer = FramePairer(max_dt=0.05)
    pairer.add_depth(1.0, "a")
    pairer.add_depth(1.5, "b")
    pairer.add_depth(2.0, "c")
    pairer.max_dt = 0.5
    assert pairer.match(1.25).payload == "b"


def test_none_when_all_too_old_or_too_new_or_empty():
    pairer = FramePairer(max_dt=0.25)
    assert pairer.match(1.0) is None
    pairer.add_depth(10.0, "d")
    assert pairer.match(9.7) is None
    assert pairer.match(10.3) is None
    assert pairer.match(10.25).payload == "d"  # max_dt is inclusive (exact in binary)


def test_buffer_is_bounded():
    pairer = FramePairer(max_dt=0.05, capacity=3)
    for i in range(10):
        pairer.add_depth(float(i), i)
    assert len(pairer) == 3
    assert pairer.match(0.0) is None
    assert pairer.match(7.0).payload == 7


def test_camera_info_and_clear():
    pairer = FramePairer()
    assert pairer.camera_info is None
    info = SimpleNamespace(width=640)
    pairer.set_camera_info(info)
    assert pairer.camera_info is info
    pairer.add_depth(1.0, "x")
    pairer.clear()
    assert pairer.camera_info is None and len(pairer) == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        FramePairer(max_dt=-1.0)
    with pytest.raises(ValueError):
        FramePairer(capacity=0)
    with pytest.raises(ValueError):
        FramePairer().add_depth(float("nan"), None)


def test_concurrent_adds_and_matches():
    pairer = FramePairer(max_dt=1.0, capacity=10)
    errors = []

    def producer():
        for i in range(2000):
            pairer.add_depth(i * 0.01, i)

    def consumer():
        try:
            for i in range(2000):
                pairer.match(i * 0.01)
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(pairer) == 10
