"""JACK I/O: the client, its ports, the rings, and the real-time callback.

Real-time rules for :meth:`JackIO._process` (the JACK process callback), in
the spirit of JACK-Client's own ``set_process_callback`` docstring:

- it copies port buffers into preallocated rings and out of them, and bumps
  preallocated counters. Nothing else: no torch, no numpy computation, no
  locks, no logging or printing, no sleeping, no allocation of buffers, no
  waiting on the engine. (Python itself still creates a few small transient
  objects per call - ints, the cffi pointers JACK hands back; there is no
  way around that in Python, and no audio-sized allocation happens.)
- port buffers are fetched every cycle (``jack_port_get_buffer``), never
  cached.
- when the engine has not delivered a cycle's output in time (a missed
  deadline), the callback copies the *dry* input delayed by the same
  declared latency instead, so the output stays continuous: never
  silence, never a half-written buffer. ``deadline_misses`` counts those
  cycles.

The rings are single-producer/single-consumer over absolute frame
positions: the callback writes input frame ``t`` at ``t & MASK`` and then
publishes ``in_pos``; the engine writes output frame ``t`` at ``t & MASK``
and then publishes ``out_ready``. Each side only reads what the other has
published, and the engine never falls more than ``max_backlog`` behind, so
nothing is overwritten before it is read.

Latency is reported to JACK on the ports (a latency callback through
libjack via ctypes, since JACK-Client does not wrap it), so a DAW or a
recorder can compensate: output ports carry capture latency = upstream +
``latency``; input ports carry playback latency = downstream + ``latency``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import threading
import time
from typing import Callable

from .buffers import (  # noqa: F401  (re-exported: the engine and tests use jackio.X)
    CYCLES, DEADLINE_MISSES, IN_POS, LATE_START, MASK, MISSED_FRAMES, OUT_READY, RING, TIMING_SLOTS, XRUNS,
    allocate,
)

CAPTURE, PLAYBACK = 0, 1


class _Range(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


_LATENCY_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)
_libjack = None


def libjack():
    """ctypes handle on libjack for what JACK-Client does not wrap."""
    global _libjack
    if _libjack is None:
        lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
        lib.jack_set_latency_callback.argtypes = [ctypes.c_void_p, _LATENCY_CB, ctypes.c_void_p]
        lib.jack_set_latency_callback.restype = ctypes.c_int
        lib.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Range)]
        lib.jack_port_get_latency_range.restype = None
        lib.jack_port_set_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Range)]
        lib.jack_port_set_latency_range.restype = None
        lib.jack_recompute_total_latencies.argtypes = [ctypes.c_void_p]
        lib.jack_recompute_total_latencies.restype = ctypes.c_int
        lib.jack_port_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.jack_port_by_name.restype = ctypes.c_void_p
        _libjack = lib
    return _libjack


def _addr(cdata) -> int:
    import jack

    return int(jack._ffi.cast("uintptr_t", cdata))


def port_latency(client, port_name: str, mode: int) -> tuple[int, int]:
    """(min, max) latency range of any port, as JACK reports it."""
    lib = libjack()
    p = lib.jack_port_by_name(_addr(client._ptr), port_name.encode())
    if not p:
        raise KeyError(port_name)
    r = _Range()
    lib.jack_port_get_latency_range(p, mode, ctypes.byref(r))
    return r.min, r.max


class JackIO:
    """A JACK client with one input and ``1 + 2*stems`` outputs per channel.

    Args:
        client_name: JACK client name.
        server: JACK server name ("" = default / $JACK_DEFAULT_SERVER).
        channels: channel names; ports are ``NAME_in``, ``NAME_out``
            (+ ``NAME_voice``, ``NAME_background`` where ``stems``).
        stems: per channel, whether stem ports exist.
        latency: callable giving the declared latency in frames for a
            period size (called when the client opens).

    The engine talks to this object only through :attr:`inring`,
    :attr:`outring`, :attr:`dryidx` and :attr:`counters`.
    """

    def __init__(self, client_name: str, server: str, channels: list[str], stems: list[bool],
                 latency: Callable[[int], int]):
        self.client_name = client_name
        self.server = server or None
        self.channels = list(channels)
        self.stems = list(stems)
        self._latency_for = latency
        n = len(channels)
        # output ports: main for every channel, then voice/background where stems
        self.out_names: list[str] = [f"{c}_out" for c in channels]
        self.out_channel: list[int] = list(range(n))  # which input channel each output falls back to
        self.out_kind: list[str] = ["main"] * n
        for i, (c, s) in enumerate(zip(channels, stems)):
            if s:
                self.out_names += [f"{c}_voice", f"{c}_background"]
                self.out_channel += [i, i]
                self.out_kind += ["voice", "background"]
        b = allocate(n, len(self.out_names))
        self.inring, self.outring, self.silence = b.inring, b.outring, b.silence
        self.counters, self.timings = b.counters, b.timings  # callback durations in ns
        self.client = None
        self.latency = 0
        self.period = 0
        self.sample_rate = 0
        self.shutdown_event = threading.Event()
        self.ports_changed = threading.Event()
        self.period_changed = threading.Event()
        self._cb_refs: list = []

    # ------------------------------------------------------------------
    # open / close

    def open(self) -> None:
        """Connect to the server, register ports and callbacks, activate.
        Raises jack.JackOpenError (or JackError) when the server is absent."""
        import jack

        self.shutdown_event.clear()
        self.period_changed.clear()
        client = jack.Client(self.client_name, servername=self.server, no_start_server=True)
        try:
            self.sample_rate = client.samplerate
            self.period = client.blocksize
            self.latency = int(self._latency_for(self.period))
            if self.latency + 2 * self.period + 4096 > RING // 2:
                raise ValueError(f"latency {self.latency} frames is too large for the ring of {RING}")
            self._in_ports = [client.inports.register(f"{c}_in") for c in self.channels]
            self._out_ports = [client.outports.register(n) for n in self.out_names]
            self._prepare_rt(client)
            client.set_process_callback(self._process)
            client.set_xrun_callback(self._on_xrun)
            client.set_shutdown_callback(self._on_shutdown)
            client.set_port_registration_callback(self._on_port_registration, only_available=False)
            client.set_blocksize_callback(self._on_blocksize)
            self._set_latency_callback(client)
            self.counters[:] = 0
            client.activate()
        except Exception:
            try:
                client.close()
            except Exception:
                pass
            raise
        self.client = client
        self.ports_changed.set()

    def close(self) -> None:
        c, self.client = self.client, None
        if c is None:
            return
        try:
            c.deactivate()
        except Exception:
            pass
        try:
            c.close()
        except Exception:
            pass

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.shutdown_event.is_set()

    # ------------------------------------------------------------------
    # the real-time callback and what it uses

    def _prepare_rt(self, client) -> None:
        import jack

        ffi, lib = jack._ffi, jack._lib
        self._memmove = ffi.memmove
        self._get_buffer = lib.jack_port_get_buffer
        self._in_ptrs = [p._ptr for p in self._in_ports]
        self._out_ptrs = [p._ptr for p in self._out_ports]
        fp = lambda a: ffi.cast("char *", a.ctypes.data)  # noqa: E731
        self._in_base = [fp(self.inring[i]) for i in range(len(self.channels))]
        self._out_base = [fp(self.outring[j]) for j in range(len(self.out_names))]
        # where each output reads from when the engine is late: main and
        # voice -> that channel's dry input; background -> silence
        self._dry_silent = [k == "background" for k in self.out_kind]
        self._dry_base = [
            fp(self.silence) if silent else self._in_base[self.out_channel[j]]
            for j, silent in enumerate(self._dry_silent)
        ]
        self._ccast = ffi.cast
        self._perf = time.perf_counter_ns

    def _copy_in(self, dst_base, src, off, frames):
        # ring write with wrap-around (4 bytes a frame)
        first = min(frames, RING - off)
        self._memmove(dst_base + 4 * off, src, 4 * first)
        if first < frames:
            self._memmove(dst_base, src + 4 * first, 4 * (frames - first))

    def _copy_out(self, dst, src_base, off, frames, dst_off=0):
        first = min(frames, RING - off)
        self._memmove(dst + 4 * dst_off, src_base + 4 * off, 4 * first)
        if first < frames:
            self._memmove(dst + 4 * (dst_off + first), src_base, 4 * (frames - first))

    def _process(self, frames):
        t0 = self._perf()
        cnt = self.counters
        cast, get = self._ccast, self._get_buffer
        pos = int(cnt[IN_POS])
        off = pos & MASK
        for base, ptr in zip(self._in_base, self._in_ptrs):
            self._copy_in(base, cast("char *", get(ptr, frames)), off, frames)
        cnt[IN_POS] = pos + frames
        ready = int(cnt[OUT_READY])
        good = ready - pos  # frames of this cycle the engine has delivered
        if good >= frames:
            for base, ptr in zip(self._out_base, self._out_ptrs):
                self._copy_out(cast("char *", get(ptr, frames)), base, off, frames)
        else:
            good = good if good > 0 else 0
            dry_off = (pos + good - self.latency) & MASK
            for base, dry, silent, ptr in zip(self._out_base, self._dry_base, self._dry_silent, self._out_ptrs):
                dst = cast("char *", get(ptr, frames))
                if good:
                    self._copy_out(dst, base, off, good)
                self._copy_out(dst, dry, 0 if silent else dry_off, frames - good, good)
            if ready:
                cnt[DEADLINE_MISSES] += 1
                cnt[MISSED_FRAMES] += frames - good
            else:
                cnt[LATE_START] += 1
        c = int(cnt[CYCLES])
        cnt[CYCLES] = c + 1
        self.timings[c & (TIMING_SLOTS - 1)] = self._perf() - t0

    def _on_xrun(self, delayed_usecs):
        self.counters[XRUNS] += 1

    def _on_shutdown(self, status, reason):
        self.shutdown_event.set()

    def _on_blocksize(self, frames):
        if self.period and frames != self.period:
            self.period_changed.set()

    def _on_port_registration(self, port, register):
        self.ports_changed.set()

    # ------------------------------------------------------------------
    # latency reporting

    def _set_latency_callback(self, client) -> None:
        lib = libjack()
        in_ptrs = [_addr(p._ptr) for p in self._in_ports]
        out_ptrs = [_addr(p._ptr) for p in self._out_ports]
        outs_of = [[j for j, c in enumerate(self.out_channel) if c == i] for i in range(len(self.channels))]

        def on_latency(mode, _arg):
            try:
                lat = self.latency
                r = _Range()
                if mode == CAPTURE:
                    for j, c in enumerate(self.out_channel):
                        lib.jack_port_get_latency_range(in_ptrs[c], CAPTURE, ctypes.byref(r))
                        r.min += lat
                        r.max += lat
                        lib.jack_port_set_latency_range(out_ptrs[j], CAPTURE, ctypes.byref(r))
                else:
                    for i, outs in enumerate(outs_of):
                        lo, hi = 0, 0
                        for j in outs:
                            lib.jack_port_get_latency_range(out_ptrs[j], PLAYBACK, ctypes.byref(r))
                            lo, hi = max(lo, r.min), max(hi, r.max)
                        r.min, r.max = lo + lat, hi + lat
                        lib.jack_port_set_latency_range(in_ptrs[i], PLAYBACK, ctypes.byref(r))
            except Exception:  # never let an exception cross into libjack
                pass

        cb = _LATENCY_CB(on_latency)
        self._cb_refs = [cb]
        lib.jack_set_latency_callback(_addr(client._ptr), cb, None)

    # ------------------------------------------------------------------
    # connections (called from the supervisor thread, never a callback)

    def apply_rules(self, rules_in: list[list[str]], rules_out: list[list[str]]) -> int:
        """Connect every existing port matching a channel's patterns.
        Returns the number of new connections made."""
        import jack

        c = self.client
        if c is None:
            return 0
        made = 0
        outs = [p.name for p in c.get_ports(is_audio=True, is_output=True)]
        ins = [p.name for p in c.get_ports(is_audio=True, is_input=True)]
        me = self.client_name + ":"
        for i, pats in enumerate(rules_in):
            mine = f"{me}{self.channels[i]}_in"
            for src in outs:
                if src.startswith(me) or not any(fnmatch.fnmatchcase(src, p) for p in pats):
                    continue
                made += self._connect(c, src, mine, jack)
        for i, pats in enumerate(rules_out):
            for j, ch in enumerate(self.out_channel):
                if ch != i or self.out_kind[j] != "main":
                    continue
                mine = f"{me}{self.out_names[j]}"
                for dst in ins:
                    if dst.startswith(me) or not any(fnmatch.fnmatchcase(dst, p) for p in pats):
                        continue
                    made += self._connect(c, mine, dst, jack)
        return made

    @staticmethod
    def _connect(client, src, dst, jack) -> int:
        try:
            if dst in [p.name for p in client.get_all_connections(src)]:
                return 0
            client.connect(src, dst)
            return 1
        except jack.JackError:
            return 0
