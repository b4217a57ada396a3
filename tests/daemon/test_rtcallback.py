"""The C process callback (daemon/rtcallback.c) is the Python one
(JackIO._process), cycle for cycle: both run on the same port buffers, ring
contents and engine progress (on time, partly late, wholly late, before the
engine's first output), across the ring's wrap-around and a dry offset that
wraps, and every output sample, ring frame and counter must be equal. No
JACK server: ``jack_port_get_buffer`` is replaced by a stand-in that hands
out test buffers. The live tests (test_live.py) run the C callback in a
real jackd."""

from __future__ import annotations

import ctypes
import os
from types import SimpleNamespace

import jack
import numpy as np
import pytest

from quietcast.daemon import jackio
from quietcast.daemon.buffers import (
    CYCLES, DEADLINE_MISSES, IN_POS, LATE_START, MISSED_FRAMES, OUT_READY, RING, TIMING_SLOTS,
)

_GET_BUFFER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)
MAX_FRAMES = 4096


def rt_lib():
    lib, why = jackio.rt_library()
    if lib is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the C callback: {why}")
        pytest.skip(why)
    return lib


class Side:
    """A JackIO that is never opened, with fake ports whose buffers live
    here (port "pointers" are made-up addresses, never dereferenced)."""

    def __init__(self, channels, stems, latency):
        io = jackio.JackIO("t", "", channels, stems, latency=lambda period: latency)
        io.latency = latency
        ptr = lambda a: SimpleNamespace(_ptr=jack._ffi.cast("jack_port_t *", a))  # noqa: E731
        io._in_ports = [ptr(0x1000 + 64 * i) for i in range(len(channels))]
        io._out_ports = [ptr(0x9000 + 64 * j) for j in range(len(io.out_names))]
        io._prepare_rt(None)
        self.io = io
        self.bufs = {jackio._addr(p._ptr): np.zeros(MAX_FRAMES, np.float32) for p in io._in_ports + io._out_ports}
        self.asked = []

    def buffer(self, port, frames):
        self.asked.append((port, frames))
        return self.bufs[port].ctypes.data

    def inputs(self):
        return [self.bufs[jackio._addr(p._ptr)] for p in self.io._in_ports]

    def outputs(self, frames):
        return np.stack([self.bufs[jackio._addr(p._ptr)][:frames] for p in self.io._out_ports])


def _pair(channels, stems, latency):
    py, c = Side(channels, stems, latency), Side(channels, stems, latency)
    py.io._get_buffer = lambda p, n: py.buffer(jackio._addr(p), n)
    c.fn = _GET_BUFFER(lambda p, n: c.buffer(p, n))  # kept alive with the side
    c.rt = c.io._rt_struct(ctypes.cast(c.fn, ctypes.c_void_p).value)
    return py, c


def _bits(a):
    return np.ascontiguousarray(a).view(np.int32)  # bit-exact, NaN-safe


@pytest.mark.parametrize("start,latency", [(0, 1664), (RING - 300, 1664), (RING - 5000, 7000), (3 * RING + 17, 555)])
def test_the_c_callback_does_exactly_what_the_python_one_does(start, latency):
    lib = rt_lib()
    rng = np.random.default_rng(start + latency)
    py, c = _pair(["a", "b", "c"], [False, True, False], latency)
    # what the rings hold so far (anything, as long as both sides see the same)
    inring = rng.standard_normal(py.io.inring.shape).astype(np.float32)
    outring = rng.standard_normal(py.io.outring.shape).astype(np.float32)
    for s in (py, c):
        s.io.counters[IN_POS] = start
        s.io.inring[:] = inring
        s.io.outring[:] = outring
    seen = set()
    for cycle in range(400):
        frames = int(rng.choice([16, 37, 64, 256, 1000, 1024, 4096]))
        pos = int(py.io.counters[IN_POS])
        kind = rng.choice(["on_time", "ahead", "partly", "late", "behind", "first"])
        ready = {"on_time": pos + frames, "ahead": pos + frames + int(rng.integers(1, 5000)),
                 "partly": pos + int(rng.integers(1, frames)) if frames > 1 else pos,
                 "late": pos, "behind": max(1, pos - int(rng.integers(1, 3000))), "first": 0}[kind]
        seen.add(kind)
        x = rng.standard_normal((3, frames)).astype(np.float32)
        # the engine may have written more output meanwhile
        k = int(rng.integers(0, RING))
        m = rng.standard_normal(py.io.outring.shape[0]).astype(np.float32)
        for s in (py, c):
            s.io.counters[OUT_READY] = ready
            s.io.outring[:, k] = m
            for i, b in enumerate(s.inputs()):
                b[:frames] = x[i]
            for j in range(len(s.io.out_names)):
                s.bufs[jackio._addr(s.io._out_ports[j]._ptr)][:] = np.nan  # stale port memory
            s.asked.clear()
        py.io._process(frames)
        assert lib.qc_rt_process(frames, ctypes.addressof(c.rt)) == 0
        where = f"cycle {cycle}: {kind}, frames {frames}, pos {pos}, ready {ready}"
        np.testing.assert_array_equal(_bits(c.outputs(frames)), _bits(py.outputs(frames)), err_msg=where)
        assert not np.isnan(c.outputs(frames)).any(), where  # every frame of every output written
        np.testing.assert_array_equal(c.io.counters, py.io.counters, err_msg=where)
        assert c.io.timings[cycle % TIMING_SLOTS] > 0, where
        assert sorted(c.asked) == sorted(py.asked), where  # every port fetched, every cycle
    np.testing.assert_array_equal(_bits(c.io.inring), _bits(py.io.inring))
    assert seen == {"on_time", "ahead", "partly", "late", "behind", "first"}
    cnt = c.io.counters
    assert cnt[CYCLES] == 400 and cnt[IN_POS] > start
    assert cnt[DEADLINE_MISSES] > 0 and cnt[MISSED_FRAMES] > 0 and cnt[LATE_START] > 0


def test_the_dry_fallback_is_the_input_delayed_by_the_latency_and_silence_for_background():
    lib = rt_lib()
    L = 1000
    py, c = _pair(["a"], [True], L)
    c.io.inring[0] = np.arange(RING, dtype=np.float32)
    c.io.counters[IN_POS] = RING + 200  # the ring has wrapped; the dry offset wraps back
    c.io.counters[OUT_READY] = RING + 200 + 100  # 100 frames of this cycle delivered
    c.io.outring[:] = -1.0
    for b in c.inputs():
        b[:256] = 7.0
    lib.qc_rt_process(256, ctypes.addressof(c.rt))
    main, voice, background = c.outputs(256)
    assert (main[:100] == -1).all() and (voice[:100] == -1).all() and (background[:100] == -1).all()
    # frames 100..255 of the cycle at absolute frame t read the input at t - L
    want = (np.arange(RING + 300, RING + 456) - L) % RING
    np.testing.assert_array_equal(main[100:], want.astype(np.float32))
    np.testing.assert_array_equal(voice[100:], want.astype(np.float32))
    assert (background[100:] == 0).all()
    assert c.io.counters[DEADLINE_MISSES] == 1 and c.io.counters[MISSED_FRAMES] == 156
    # the input went in at its absolute position
    assert (c.io.inring[0, 200:456] == 7.0).all()


def test_the_latency_written_outside_the_callback_reaches_it():
    rt_lib()
    _, c = _pair(["a"], [False], 1664)
    assert c.rt.latency == 1664
    c.io.latency = 2048
    assert c.rt.latency == 2048 and c.io.latency == 2048


def test_a_library_built_from_another_version_is_refused(monkeypatch):
    rt_lib()
    monkeypatch.setattr(jackio, "RT_ABI", jackio.RT_ABI + 1)
    lib, why = jackio._load_rt()
    assert lib is None and "another version of rtcallback.c" in why


class _VanishingPorts:
    """A JACK client stand-in whose port listing fails the first ``fail``
    times, as JACK-Client's does when a listed port goes away before it
    is looked up (``JackError: Port 'player:out_0' not available``)."""

    def __init__(self, fail: int):
        self.fail = fail
        self.connected: list[tuple[str, str]] = []

    def get_ports(self, is_audio=False, is_input=False, is_output=False):
        if self.fail > 0:
            self.fail -= 1
            raise jack.JackError("Port 'player:out_0' not available")
        names = ["player:out_0"] if is_output else ["rec:in_0"]
        return [SimpleNamespace(name=n) for n in names]

    def get_all_connections(self, port):
        return []

    def connect(self, src, dst):
        self.connected.append((src, dst))


@pytest.mark.parametrize("fail,made", [(2, 2), (9, 0)])
def test_connecting_by_rule_survives_a_port_that_goes_away_while_listed(fail, made):
    """A port that vanishes while the ports are listed: the listing is
    tried again; if it keeps failing, nothing is connected, nothing is
    raised, and ``ports_changed`` is set so the supervisor tries again."""
    io = jackio.JackIO("qc", "", ["a"], [False], lambda period: period)
    io.client = _VanishingPorts(fail)
    io.ports_changed.clear()
    assert io.apply_rules([["player:*"]], [["rec:*"]]) == made
    assert io.ports_changed.is_set() == (made == 0)
    if made:
        assert io.client.connected == [("player:out_0", "qc:a_in"), ("qc:a_out", "rec:in_0")]
