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

from conftest import longest_quiet

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
        if cycle % 7 == 3:  # what the dry path must clean: NaN, Inf, out of range
            x.flat[rng.integers(0, x.size, 3)] = [np.nan, -np.inf, 100.0]
        gains = rng.choice([0.0, 0.25, 1.0, 1.7], py.io.dry_gain.size).astype(np.float32)  # muted, faded, ...
        # the engine may have written more output meanwhile
        k = int(rng.integers(0, RING))
        m = rng.standard_normal(py.io.outring.shape[0]).astype(np.float32)
        for s in (py, c):
            s.io.counters[OUT_READY] = ready
            s.io.dry_gain[:] = gains
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
    c.io.inring[0] = np.arange(RING, dtype=np.float32) / RING  # distinct values in range
    c.io.counters[IN_POS] = RING + 200  # the ring has wrapped; the dry offset wraps back
    c.io.counters[OUT_READY] = RING + 200 + 100  # 100 frames of this cycle delivered
    c.io.outring[:] = -1.0
    for b in c.inputs():
        b[:256] = 0.7
    lib.qc_rt_process(256, ctypes.addressof(c.rt))
    main, voice, background = c.outputs(256)
    assert (main[:100] == -1).all() and (voice[:100] == -1).all() and (background[:100] == -1).all()
    # frames 100..255 of the cycle at absolute frame t read the input at t - L (after the declick's 64)
    want = (((np.arange(RING + 300, RING + 456) - L) % RING) / RING).astype(np.float32)
    np.testing.assert_array_equal(main[164:], want[64:])
    np.testing.assert_array_equal(voice[164:], want[64:])
    assert (background[164:] == 0).all()
    assert c.io.counters[DEADLINE_MISSES] == 1 and c.io.counters[MISSED_FRAMES] == 156
    # the input went in at its absolute position
    assert (c.io.inring[0, 200:456] == np.float32(0.7)).all()


@pytest.mark.parametrize("side", ["c", "python"])
def test_the_dry_fallback_is_cleaned_gained_and_declicked(side):
    """What the dry fallback plays in a missed deadline is what the engine
    would have let through: NaN/Inf silenced, the rest clipped to +-64,
    times the output's gain (0 while muted: until session 25 a muted
    microphone went on air, at full level, at every missed deadline), and
    each switch between processed and dry output has its step removed over
    64 frames (it was a cut: a click the size of what the suppressor was
    removing)."""
    lib = rt_lib()
    L = 1000
    py, c = _pair(["a"], [False], L)
    s = c if side == "c" else py

    def cycle(frames=256):
        if side == "c":
            assert lib.qc_rt_process(frames, ctypes.addressof(c.rt)) == 0
        else:
            py.io._process(frames)
        return s.outputs(frames)[0].copy()

    # processed output 0.3 for 2 cycles, then the engine stalls: the dry input is -0.2
    s.io.outring[:] = 0.3
    s.io.inring[0] = -0.2
    for b in s.inputs():
        b[:] = -0.2
    s.io.counters[OUT_READY] = 512
    y = np.concatenate([cycle(), cycle(), cycle(), cycle()])
    assert (y[:512] == np.float32(0.3)).all() and (y[512 + 64:] == np.float32(-0.2)).all()
    assert np.abs(np.diff(y)).max() <= 0.5 / 64 + 1e-6  # a 64-frame ramp, not a step of 0.5
    # back to processed mid-cycle: declicked too
    s.io.counters[OUT_READY] = 1024 + 100
    y = cycle()
    assert (y[:100] == np.float32(0.3))[64:].all() and (y[100 + 64:] == np.float32(-0.2)).all()
    assert np.abs(np.diff(y)).max() <= 0.5 / 64 + 1e-6
    # muted (the engine publishes gain 0): nothing of the input, NaN or not
    s.io.outring[:] = 0.0
    s.io.counters[OUT_READY] = s.io.counters[IN_POS] + 256
    cycle()
    s.io.dry_gain[0] = 0.0
    s.io.inring[0] = 0.5
    s.io.inring[0, ::97] = np.nan
    assert (cycle() == 0).all() and (cycle() == 0).all()
    # faded to 0.1: the dry input at 0.1, bad samples silenced, 100 clipped to 64
    s.io.dry_gain[0] = 0.1
    s.io.inring[0] = 0.5
    for b in s.inputs():  # what this cycle's input writes is played dry 1000 frames later
        b[:] = 0.5
    s.io.inring[0, ::97] = np.inf
    s.io.inring[0, 5::97] = 100.0
    y = np.concatenate([cycle() for _ in range(8)])[64:]
    assert np.isfinite(y).all()
    assert set(np.unique(y)) <= {np.float32(0.0), np.float32(0.5) * np.float32(0.1), np.float32(64.0) * np.float32(0.1)}


def test_a_muted_channel_stays_silent_when_the_engine_stalls():
    """The real engine publishes its channels' gains to the callback: a
    muted channel and one at -20 dB, an engine that stops for 12 cycles
    (the dry fallback plays), and a stall past its backlog (it skips ahead,
    filling the gap dry, then crossfades to the processed signal)."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    lib = rt_lib()
    eng = Engine([ChannelConfig(name="m", mute=True), ChannelConfig(name="q", output_gain_db=-20.0)], 48_000,
                 model="dsp", max_backlog_ms=100.0)
    P = 256
    _, c = _pair(["m", "q"], [False, False], eng.latency_for_period(P))
    c.io.period = P
    eng.attach(c.io)
    t = np.arange(700 * P) / 48_000
    x = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out, dry = [], 0
    for k in range(700):
        for b in c.inputs():
            b[:P] = x[k * P:(k + 1) * P]
        before = int(c.io.counters[MISSED_FRAMES])
        assert lib.qc_rt_process(P, ctypes.addressof(c.rt)) == 0
        dry += int(c.io.counters[MISSED_FRAMES]) - before
        out.append(c.outputs(P).copy())
        if not (300 <= k < 312 or 450 <= k < 480):  # two stalls: 64 ms, and 160 ms (> the 100 ms backlog)
            eng.step()
    y = np.concatenate(out, axis=1)
    assert dry > 12 * P and eng.stats.stalls == 1
    assert (y[0] == 0).all()
    q = y[1, 50_000:]
    # -20 dB, processed or dry (where a switch's offset decays, at most the two added)
    assert 0.5 * 0.1 * 0.9 < np.abs(q).max() < 2 * 0.5 * 0.1 * 1.1
    step = np.abs(np.diff(q)).max()
    assert step < 3 * np.abs(np.diff(x)).max() * 0.1  # no step at any switch (the sine's own: 0.1 x 0.0144)


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


def test_a_backlog_longer_than_the_input_ring_is_cut_to_what_it_holds(caplog):
    """``max_backlog_ms`` allows 5 s, but the input ring holds about 2.7 s
    at 48 kHz: an engine that far behind would read input the callback had
    already overwritten with newer audio. It is cut to what the ring holds,
    with a warning."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    eng = Engine([ChannelConfig(name="a")], 48_000, model="dsp", max_backlog_ms=5000.0)
    _, c = _pair(["a"], [False], eng.latency_for_period(256))
    c.io.period = 256
    with caplog.at_level("WARNING", logger="quietcast.engine"):
        eng.attach(c.io)
    assert eng.max_backlog + 2 * 256 + 2 * eng.hop < RING
    assert "more than the input ring holds" in caplog.text
    eng2 = Engine([ChannelConfig(name="a")], 48_000, model="dsp", max_backlog_ms=500.0)
    eng2.attach(c.io)
    assert eng2.max_backlog == 24_000


def test_a_mute_made_while_the_engine_is_stalled_reaches_the_dry_fallback():
    """A mute (ctl, MIDI, the fade at shutdown) made while the engine is
    stalled, the very case the dry fallback plays, silences it at once
    (the gain it played was only updated after each processed hop: the
    raw microphone stayed on air until the engine came back)."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    lib = rt_lib()
    eng = Engine([ChannelConfig(name="m")], 48_000, model="dsp")
    P = 256
    _, c = _pair(["m"], [False], eng.latency_for_period(P))
    c.io.period = P
    eng.attach(c.io)
    out = []
    for k in range(200):
        for b in c.inputs():
            b[:P] = 0.5
        assert lib.qc_rt_process(P, ctypes.addressof(c.rt)) == 0
        out.append(c.outputs(P)[0].copy())
        if k < 100:
            eng.step()
        elif k == 120:  # stalled since cycle 100: muted now
            eng.set_params("m", mute=True)
    y = np.concatenate(out)
    assert np.abs(y[110 * P:120 * P]).min() > 0.4  # the dry input, before the mute
    assert np.abs(np.diff(y[120 * P:122 * P])).max() <= 0.5 / 64 + 1e-6  # the mute fades over 64 frames
    assert (y[121 * P + 64:] == 0).all()  # silent once the mute's declick ends


@pytest.mark.parametrize("side", ["c", "python"])
@pytest.mark.parametrize("period,switch", [(256, 250), (32, 0), (16, 8)])
def test_a_declick_longer_than_what_is_left_of_the_cycle_goes_on_in_the_next(side, period, switch):
    """A switch in the last frames of a cycle, or with a period shorter
    than the 64-frame declick, goes on fading in the next cycles (it was
    cut at the cycle's end: steps of 0.45 and 0.25 were left)."""
    lib = rt_lib()
    py, c = _pair(["a"], [False], 1000)
    s = c if side == "c" else py
    s.io.outring[:] = 0.0  # the processed output: 0; the dry input: 0.5
    s.io.inring[0] = 0.5
    for b in s.inputs():
        b[:] = 0.5
    out = []
    for k in range(40):
        pos = int(s.io.counters[IN_POS])
        s.io.counters[OUT_READY] = pos + period if k < 10 else (pos + switch if k == 10 else pos)
        if side == "c":
            assert lib.qc_rt_process(period, ctypes.addressof(c.rt)) == 0
        else:
            py.io._process(period)
        out.append(s.outputs(period)[0].copy())
    y = np.concatenate(out)
    assert (y[:10 * period] == 0).all() and y[-1] == np.float32(0.5)
    assert np.abs(np.diff(y)).max() <= 0.5 / 64 + 1e-6


def _assert_continuous(y: np.ndarray, x: np.ndarray) -> None:
    """``y``, the tone ``x`` through the engine, has no dropout (no quiet
    run beyond a zero crossing) and no click (its second difference within
    1.5x the tone's own)."""
    assert longest_quiet(y) <= 2
    assert np.abs(np.diff(y, 2)).max() <= 1.5 * np.abs(np.diff(x, 2)).max()


def _run_period_change(P1, P2, late_cycles=0, cycles=(120, 120), stall_before=0):
    """The engine (``dsp``, strength 0: its output is its input delayed by
    the declared latency) and the C callback in lockstep, ``cycles[0]``
    cycles of ``P1`` frames, then the period change as libjack makes it
    (the buffer-size callback between two cycles: ``Engine.change_period``),
    then ``cycles[1]`` of ``P2``. ``late_cycles``: the engine runs no hop in
    that many cycles before the change (it is behind the callback);
    ``stall_before``: it runs none in that many cycles ending 2 cycles
    before the change (past ``max_backlog``: it skips ahead, then runs).
    Returns (input, output, L1, L2, the engine, the counters)."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    lib = rt_lib()
    eng = Engine([ChannelConfig(name="a", strength=0.0)], 48_000, model="dsp")
    L1 = eng.latency_for_period(P1)
    _, c = _pair(["a"], [False], L1)
    c.io.period = P1
    eng.attach(c.io)
    n = cycles[0] * P1 + cycles[1] * P2
    t = np.arange(n) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3130 * t)).astype(np.float32)
    out, pos, L2 = [], 0, None
    for k in range(cycles[0] + cycles[1]):
        P = P1 if k < cycles[0] else P2
        if k == cycles[0]:
            L2 = eng.change_period(P2)
        c.inputs()[0][:P] = x[pos:pos + P]
        assert lib.qc_rt_process(P, ctypes.addressof(c.rt)) == 0
        out.append(c.outputs(P)[0].copy())
        pos += P
        stalled = cycles[0] - 2 - stall_before <= k < cycles[0] - 2
        if not (cycles[0] - late_cycles <= k < cycles[0] or stalled):
            eng.step()
    return x, np.concatenate(out), L1, L2, eng, c.io.counters


@pytest.mark.parametrize("P1,P2", [(256, 1024), (1024, 128), (64, 2048), (2048, 64), (256, 128)])
def test_a_period_change_moves_the_latency_in_place_crossfaded(P1, P2):
    """A JACK period change (``jack_bufsize``, a PipeWire quantum) moves the
    engine's buffering in the buffer-size callback, before the first
    cycle of the new size: the output is the input delayed by the old
    latency up to the change and by the new one from one hop (480
    frames) after it, a crossfade between, with no missed deadline (the
    period that grew had its output ready from its first cycle), nothing
    silent and no click (the second difference within the tone's own).
    ``io.latency`` (the dry fallback's too) follows."""
    x, y, L1, L2, eng, cnt = _run_period_change(P1, P2)
    assert L2 == eng.latency_for_period(P2) == eng.io.latency and L1 == eng.latency_for_period(P1)
    assert int(cnt[DEADLINE_MISSES]) == 0
    at = 120 * P1  # the first frame of the new period
    np.testing.assert_allclose(y[L1:at], x[:at - L1], atol=1e-6)
    np.testing.assert_allclose(y[at + 480:], x[at + 480 - L2:y.size - L2], atol=1e-6)
    seg = y[L1:]
    assert np.abs(seg).max() > 0.3
    _assert_continuous(seg, x)


@pytest.mark.parametrize("late", [2, 6, 60])
@pytest.mark.parametrize("P1,P2", [(1024, 256), (256, 1024), (2048, 128)])
def test_a_period_change_while_the_engine_is_behind_fades_from_the_dry_path(P1, P2, late):
    """The engine behind the callback when the period changes (it ran no
    hop for ``late`` cycles: the callback plays the dry input; 60 cycles
    is past ``max_backlog``, a stall): the crossfade starts from what the
    callback plays, the new latency holds for the dry path at once and for
    the processed output when the engine catches up, and nothing clicks
    (the callback's declick read its last dry frame at the new latency and
    found a step there that was not: a click of 0.34 with a 1024 -> 256
    change)."""
    x, y, L1, L2, eng, cnt = _run_period_change(P1, P2, late_cycles=late)
    assert int(cnt[DEADLINE_MISSES]) > 0  # (the dry path did play)
    np.testing.assert_allclose(y[-4800:], x[y.size - 4800 - L2:y.size - L2], atol=1e-6)
    _assert_continuous(y[L1:], x)


@pytest.mark.parametrize("P1,P2", [(256, 2048), (2048, 256)])
def test_a_period_change_right_after_the_engine_skipped_ahead_is_continuous(P1, P2):
    """The engine stalled past ``max_backlog`` (it skips ahead: a dry fill,
    then a pre-roll of the hops before the new position) and the period
    changes two cycles later: the output at the new mapping is read from
    the engine's output history where the fill and the pre-roll put it,
    not from what was there before the stall."""
    x, y, L1, L2, eng, cnt = _run_period_change(P1, P2, stall_before=24_000 // P1 + 12)
    assert eng.stats.stalls == 1
    np.testing.assert_allclose(y[-4800:], x[y.size - 4800 - L2:y.size - L2], atol=1e-6)
    _assert_continuous(y[L1:], x)


def test_a_period_whose_latency_the_rings_cannot_hold_is_left_to_a_reopen():
    """A period so long that its latency would not fit the rings is not
    moved in place (None: the daemon re-opens its client, which refuses
    it with a message)."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    eng = Engine([ChannelConfig(name="a")], 48_000, model="dsp")
    _, c = _pair(["a"], [False], eng.latency_for_period(256))
    c.io.period = 256
    eng.attach(c.io)
    B = eng.B
    for P in (RING // 2, 16384):  # (the rings; the engine's output history, Engine.UHISTORY)
        assert eng.change_period(P) is None and eng.B == B and c.io.latency == eng.latency_for_period(256)
    assert eng.change_period(8192) == eng.latency_for_period(8192) == c.io.latency  # (PipeWire's largest)
    assert eng.change_period(512) == eng.latency_for_period(512) == c.io.latency


@pytest.mark.parametrize("seed", [5, 10])
def test_many_period_changes_in_a_row_keep_the_output_continuous(seed):
    """30 period changes at random (64 to 2048 frames, a few cycles apart,
    the engine now and then a few cycles behind; with seed 10 one comes
    while the last one's crossfade is still being written): the output
    stays the delayed input, continuous (no quiet run, no click), and
    after the last change it is exactly the last period's latency late."""
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    lib = rt_lib()
    rng = np.random.default_rng(seed)
    eng = Engine([ChannelConfig(name="a", strength=0.0), ChannelConfig(name="b", strength=0.0, stems=True)],
                 48_000, model="dsp")
    P = 256
    _, c = _pair(["a", "b"], [False, True], eng.latency_for_period(P))
    c.io.period = P
    eng.attach(c.io)
    n = 48_000 * 12
    t = np.arange(n) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3130 * t)).astype(np.float32)
    out, pos, changes, late = [], 0, 0, 0
    while pos + 2048 <= n - 48_000:
        if pos > 24_000 and changes < 30 and rng.random() < 0.15:
            P = int(rng.choice([64, 128, 256, 512, 1024, 2048]))
            assert eng.change_period(P) == eng.latency_for_period(P) == c.io.latency
            changes += 1
            late = int(rng.choice([0, 0, 0, 1, 3]))
        for b in c.inputs():
            b[:P] = x[pos:pos + P]
        assert lib.qc_rt_process(P, ctypes.addressof(c.rt)) == 0
        out.append(c.outputs(P)[:, :P].copy())
        pos += P
        if late:
            late -= 1
        else:
            eng.step()
    y = np.concatenate(out, axis=1)
    L = c.io.latency
    assert changes == 30
    for row in (0, 1):  # a's and b's main outputs (b's stems, rows 2 and 3, are moved with them)
        np.testing.assert_allclose(y[row, -4800:], x[y.shape[1] - 4800 - L:y.shape[1] - L], atol=1e-6)
        _assert_continuous(y[row, 5000:], x)
    assert np.isfinite(y).all()
