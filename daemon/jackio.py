"""JACK I/O: the client, its ports, the rings, and the real-time callback.

The JACK process callback is C (``daemon/rtcallback.c``, ``qc_rt_process``),
so the real-time thread never takes the GIL: a busy engine thread (torch
releases and retakes the GIL dozens of times per hop) or control thread
cannot make it wait. The compiled file is an optional extension built when
quietcast is installed and loaded with ctypes (:func:`rt_library`); it is
registered with libjack's ``jack_set_process_callback`` and gets one
struct (:class:`_RT`, allocated once per client, owned by :class:`JackIO`)
with every address it needs. Where it cannot be loaded (no C compiler at
install time, a build from another version of the file) or
``QUIETCAST_RT_CALLBACK=python`` is set, :meth:`JackIO._process` does the
same in Python, through JACK-Client; :attr:`JackIO.callback_kind` says
which one runs and why (also in ``status``), and it is logged once.

Real-time rules for the callback, in the spirit of JACK-Client's own
``set_process_callback`` docstring:

- it copies port buffers into preallocated rings and out of them, and bumps
  preallocated counters. Nothing else: no Python, no locks, no logging or
  printing, no sleeping, no allocation, no system call but
  ``clock_gettime`` (the vDSO) for its own duration, no waiting on the
  engine - except while JACK freewheels (a DAW's export or bounce: not
  real time), when it waits for the engine's output (at most 2 s a
  cycle) so an export is processed, not dry. (The Python fallback must
  take the GIL every cycle and creates small transient objects per call -
  ints, the cffi pointers JACK hands back, a numpy view of each output
  buffer - and, in a cycle that plays the dry path, a few temporary
  arrays of that cycle's size: one more reason it is only the fallback.)
- port buffers are fetched every cycle (``jack_port_get_buffer``), never
  cached.
- when the engine has not delivered a cycle's output in time (a missed
  deadline), the callback copies the *dry* input delayed by the same
  declared latency instead, so the output stays continuous: never
  silence, never a half-written buffer. ``deadline_misses`` counts those
  cycles. The dry copy gets what the engine would give it: NaN/Inf
  silenced and the rest clipped to +-64 (as ``engine.sanitize``), times
  the output's gain (``dry_gain``, written by the engine after each hop:
  0 while the channel is muted, so a muted microphone stays off air). At
  every switch between the processed and the dry signal, and at a new
  gain on the dry path, the step is removed over 64 frames (a declick,
  carried into the next cycle when the cycle ends first).
- the C and Python callbacks are the same algorithm, line for line; a
  test runs both on the same cycles and compares every output sample and
  counter (tests/daemon/test_rtcallback.py).

The rings are single-producer/single-consumer over absolute frame
positions: the callback writes input frame ``t`` at ``t & MASK`` and then
publishes ``in_pos`` (a release store in C); the engine writes output frame
``t`` at ``t & MASK`` and then publishes ``out_ready`` (read with an acquire
load). Each side only reads what the other has published, and the engine
never falls more than ``max_backlog`` behind, so nothing is overwritten
before it is read. The callback's duration (ns) goes to
``timings[cycle & (TIMING_SLOTS - 1)]``. ``latency`` lives in the struct
too; it is written only outside the real-time thread (an aligned int64
store, see :attr:`JackIO.latency`).

Latency is reported to JACK on the ports (a latency callback through
libjack via ctypes, since JACK-Client does not wrap it), so a DAW or a
recorder can compensate: output ports carry capture latency = upstream +
``latency``; input ports carry playback latency = downstream + ``latency``.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import fnmatch
import functools
import logging
import os
import pathlib
import re
import threading
import time
from typing import Callable

import numpy as np

from .buffers import (  # noqa: F401  (re-exported: the engine and tests use jackio.X)
    CYCLES, DEADLINE_MISSES, IN_POS, LATE_START, MASK, MISSED_FRAMES, OUT_READY, RING, TIMING_SLOTS, XRUNS,
    allocate,
)

CAPTURE, PLAYBACK = 0, 1
RT_ENV = "QUIETCAST_RT_CALLBACK"  # "python" forces the Python callback (tests, debugging); default "auto"

log = logging.getLogger("quietcast.jack")


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
        lib.jack_set_process_callback.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.jack_set_process_callback.restype = ctypes.c_int
        for setter, _ in _MESSAGE_SETTERS:  # void (*)(void (*func)(const char *)); NULL: libjack's default
            getattr(lib, setter).argtypes = [ctypes.c_void_p]
            getattr(lib, setter).restype = None
        _libjack = lib
    return _libjack


@functools.cache
def libjack_version() -> str:
    """The JACK implementation the daemon talks through, as its libjack
    says: ``1.9.21`` for JACK2, ``3.0.0.0 (using PipeWire 0.3.65)`` under
    PipeWire's JACK layer; "" where it cannot tell. Asked once: the
    library loaded stays for the process (``status`` reports it)."""
    try:
        fn = libjack().jack_get_version_string
        fn.restype = ctypes.c_char_p
        fn.argtypes = []
        return (fn() or b"").decode("utf-8", "replace")
    except (OSError, AttributeError):
        return ""


_MESSAGE_SETTERS = (("jack_set_error_function", "jack_error_callback"),
                    ("jack_set_info_function", "jack_info_callback"))


class libjack_quiet:
    """``with libjack_quiet():`` libjack's error and info messages are
    dropped inside (a server that is not there is five lines on stderr at
    every attempt: ~110 lines every 6 s in the daemon's log while jackd is
    down). The message function is ``qc_jack_silent`` of the compiled
    library (daemon/rtcallback.c), plain C: libjack may call it on any of
    its threads, the real-time one of an active client included, with no
    Python and no GIL involved. A Python callback must never be used there
    (one made a daemon hang at its stop). Without the compiled library
    (no C compiler at install time, an older build) nothing changes and
    ``active`` is False. On leaving, the functions from before are put
    back (libjack's defaults where it does not export its variables)."""

    def __init__(self) -> None:
        self.active = False
        self._before: list = []

    @staticmethod
    def silent_function():
        """The address of qc_jack_silent, or None."""
        lib, _ = rt_library()
        try:
            return ctypes.cast(lib.qc_jack_silent, ctypes.c_void_p).value if lib is not None else None
        except AttributeError:  # a library built before it existed
            return None

    def __enter__(self) -> "libjack_quiet":
        fn = self.silent_function()
        if fn is None:
            return self
        jl = libjack()
        for setter, variable in _MESSAGE_SETTERS:
            try:
                before = ctypes.c_void_p.in_dll(jl, variable).value  # JACK2 exports it; another libjack may not
            except ValueError:
                before = None  # NULL: libjack's default again
            getattr(jl, setter)(fn)
            self._before.append((setter, before))
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        jl = libjack()
        for setter, before in self._before:
            getattr(jl, setter)(before)
        self._before.clear()
        self.active = False


class _RT(ctypes.Structure):
    """``struct qc_rt`` of daemon/rtcallback.c: what the C callback reads."""

    _fields_ = [
        ("abi", ctypes.c_int64),
        ("get_buffer", ctypes.c_void_p),  # libjack's jack_port_get_buffer
        ("counters", ctypes.c_void_p),  # int64 [N_COUNTERS]
        ("timings", ctypes.c_void_p),  # int64 [TIMING_SLOTS]
        ("latency", ctypes.c_int64),  # written outside the RT thread only
        ("ring", ctypes.c_int64),
        ("timing_slots", ctypes.c_int64),
        ("n_in", ctypes.c_int64),
        ("n_out", ctypes.c_int64),
        ("in_ports", ctypes.c_void_p),  # void* [n_in]
        ("in_base", ctypes.c_void_p),  # float* [n_in]
        ("out_ports", ctypes.c_void_p),  # void* [n_out]
        ("out_base", ctypes.c_void_p),  # float* [n_out]
        ("dry_base", ctypes.c_void_p),  # float* [n_out]
        ("dry_silent", ctypes.c_void_p),  # int32 [n_out]
        ("dry_gain", ctypes.c_void_p),  # float [n_out] (engine writes)
        ("ramp_d", ctypes.c_void_p),  # float [n_out] (RT only: the declick)
        ("ramp_k", ctypes.c_void_p),  # int64 [n_out] (RT only)
        ("last_gain", ctypes.c_void_p),  # float [n_out] (RT only)
        ("last_dry", ctypes.c_void_p),  # int32 [n_out] (RT only)
        ("freewheel", ctypes.c_int64),  # (non-RT writer)
    ]


RT_ABI = 4  # QC_RT_ABI in rtcallback.c
_rt_lib: tuple | None = None
_logged_kind: str | None = None


def rt_library() -> tuple[ctypes.CDLL | None, str]:
    """The compiled callback: ``(library, path)``, or ``(None, why not)``.

    It is the extension module ``quietcast.daemon._rtcallback`` that
    setuptools builds from daemon/rtcallback.c at install time (optional:
    an install without a C compiler has none). It has no ``PyInit``: it is
    found with importlib, never imported, and loaded with ctypes. Its
    layout (ABI, struct size, counter slots) must match this module's."""
    global _rt_lib
    if _rt_lib is None:
        _rt_lib = _load_rt()
    return _rt_lib


def _declare_rt(lib: ctypes.CDLL) -> None:
    lib.qc_rt_process.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
    lib.qc_rt_process.restype = ctypes.c_int


def _load_rt() -> tuple[ctypes.CDLL | None, str]:
    from quietcast.models.native import load_extension

    return load_extension(f"{__package__}._rtcallback", pathlib.Path(__file__).with_name("rtcallback.c"),
                          "qc_rt_layout", (RT_ABI, ctypes.sizeof(_RT), CYCLES, IN_POS, OUT_READY, DEADLINE_MISSES,
                                           MISSED_FRAMES, LATE_START), _declare_rt)


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


def ports_of(client_name: str) -> str:
    """The ``get_ports`` pattern of exactly this client's ports (JACK
    searches it as a regular expression: the bare name would also match
    another client whose name ends with it)."""
    return "^" + re.escape(client_name) + ":"


#: frames over which the offset at a processed/dry switch decays (QC_DECLICK in rtcallback.c)
DECLICK = 64
_DECLICK_RAMP = np.float32(1.0) - np.arange(1, DECLICK + 1, dtype=np.float32) / np.float32(DECLICK)


def _dry_values(v, gain):
    """The dry fallback's values (dry_value in rtcallback.c): NaN/Inf
    silenced, the rest clipped to +-64, times the output's gain (float32)."""
    v = np.asarray(v, np.float32)
    return np.where(np.isfinite(v), np.clip(v, np.float32(-64.0), np.float32(64.0)), np.float32(0.0)) * gain


def _ramp(a, b, e, d, k):
    """ramp in rtcallback.c: over a[b:e], a ramp of offset ``d`` that has
    played ``k`` frames adds d * (1 - (k + 1) / DECLICK) to its next frame,
    down to 0 after DECLICK frames."""
    n = min(e - b, DECLICK - k)
    if n > 0:
        a[b:b + n] += np.float32(d) * _DECLICK_RAMP[k:k + n]


def _ramp_left(d, k):
    """ramp_left in rtcallback.c: what the ramp still adds after k frames."""
    return np.float32(d) * (np.float32(1.0) - np.float32(k) / np.float32(DECLICK)) if k < DECLICK else np.float32(0.0)


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
    :attr:`outring`, :attr:`dryidx` and :attr:`counters`; the daemon sets
    :attr:`on_period` to the engine's ``change_period``, which the
    buffer-size callback calls with a new period (then
    :attr:`period_changed` is set for the supervisor).
    :attr:`callback_kind` is ``"c"`` or ``"python (REASON)"`` once open.
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
        self.dry_gain = b.dry_gain
        n_out = max(len(self.out_names), 1)  # the declick's state per output (the callback's only)
        self._ramp_d = np.zeros(n_out, np.float32)
        self._ramp_k = np.full(n_out, DECLICK, np.int64)
        self._last_gain = np.ones(n_out, np.float32)
        self._last_dry = np.zeros(n_out, np.int32)
        self.client = None
        self._rt: _RT | None = None  # what the C callback reads (allocated at open)
        self._rt_keep: list = []  # the arrays it points to
        self.callback_kind = ""
        self.latency = 0
        self.period = 0
        self.sample_rate = 0
        self.shutdown_event = threading.Event()
        self.ports_changed = threading.Event()
        self.connections_changed = threading.Event()  # a connection made or taken down anywhere
        #: names of ports unregistered since the supervisor last looked (a client that closed, or
        #: closed and came back between two looks: its connections were not taken down by hand)
        self.gone_ports: collections.deque = collections.deque(maxlen=4096)
        #: (source, destination) pairs the connection rules asked for (made, or found made)
        self.rule_pairs: set[tuple[str, str]] = set()
        self.period_changed = threading.Event()
        #: the server's sample rate changed under the client (PipeWire's ``clock.force-rate``; a JACK2
        #: server cannot): the engine must be built again at the new rate (the supervisor re-opens)
        self.rate_changed = threading.Event()
        self.rate_seen = 0  # the rate the sample-rate callback last told
        self.blocksize_seen = 0  # the period the buffer-size callback last told (0: none yet)
        #: called with the new period in the buffer-size callback (see _on_blocksize), or None
        self.on_period: Callable[[int], object] | None = None
        self._cb_refs: list = []

    @property
    def latency(self) -> int:
        """Declared latency in frames. Set only outside the real-time
        thread; the C callback reads its copy in the struct (kept in step
        here: an aligned int64 store)."""
        return self._latency

    @latency.setter
    def latency(self, frames: int) -> None:
        self._latency = int(frames)
        if self._rt is not None:
            self._rt.latency = self._latency

    # ------------------------------------------------------------------
    # open / close

    def open(self) -> None:
        """Connect to the server, register ports and callbacks, activate.
        Raises jack.JackOpenError (or JackError) when the server is absent."""
        import jack

        self.shutdown_event.clear()
        self.period_changed.clear()
        self.rate_changed.clear()
        self.blocksize_seen = 0
        rt_library()  # loaded (once) before the ports exist: not while others may already see them
        # the exact name: JACK would rename a second "qc" to "qc-01", whose ports the connection rules
        # (and every patch) do not name, while it reported ready
        client = jack.Client(self.client_name, servername=self.server, no_start_server=True, use_exact_name=True)
        try:
            self.sample_rate = client.samplerate
            self.period = client.blocksize
            self.latency = int(self._latency_for(self.period))
            if self.latency + 2 * self.period + 4096 > RING // 2:
                raise ValueError(f"latency {self.latency} frames is too large for the ring of {RING}")
            self._in_ports = [client.inports.register(f"{c}_in") for c in self.channels]
            self._out_ports = [client.outports.register(n) for n in self.out_names]
            self._prepare_rt(client)
            self._set_process_callback(client)
            client.set_xrun_callback(self._on_xrun)
            client.set_shutdown_callback(self._on_shutdown)
            client.set_port_registration_callback(self._on_port_registration, only_available=False)
            client.set_port_connect_callback(self._on_port_connect, only_available=False)
            client.set_blocksize_callback(self._on_blocksize)
            client.set_samplerate_callback(self._on_samplerate)
            client.set_freewheel_callback(self._on_freewheel)
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

    #: seconds :meth:`close` waits for the server to answer (a few ms when it runs)
    CLOSE_TIMEOUT_S = 1.5

    def close(self, timeout: float | None = None) -> bool:
        """Deactivate and close the client; True when done. Both ask the
        server and wait for its answer, which a frozen jackd (SIGSTOP, a
        hung driver) never gives: libjack waits until it runs again or
        dies. So a helper thread makes the calls and this waits at most
        ``timeout`` s (:attr:`CLOSE_TIMEOUT_S`); past that the client is
        left to the helper (it finishes if the server ever answers), a
        warning says why, and False is returned: a daemon asked to stop
        exits anyway, instead of waiting for systemd's SIGKILL."""
        c, self.client = self.client, None
        if c is None:
            return True

        def finish() -> None:
            try:
                c.deactivate()
            except Exception:
                pass
            try:
                c.close()
            except Exception:
                pass
            # no callback can run now: drop the closures that refer back to this object, so
            # that it (and its rings) goes when its last reference does, without waiting for a
            # cycle collection (which never comes to a frozen object: service.settle_heap)
            self._cb_refs = []
            self._latency_for = lambda period: 0
            self.on_period = None  # (the engine's bound method: it refers back to this object)

        limit = self.CLOSE_TIMEOUT_S if timeout is None else timeout
        th = threading.Thread(target=finish, name="quietcast-jack-close", daemon=True)
        th.start()
        th.join(limit)
        if th.is_alive():
            log.warning("the JACK server did not answer the client's deactivate/close within %g s (is jackd "
                        "frozen, e.g. stopped with SIGSTOP?); going on without it", limit)
            return False
        return True

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
        # the same, as arrays (the declick reads single frames; the silence ring is 0 at any offset)
        self._dry_rings = [self.silence if silent else self.inring[self.out_channel[j]]
                           for j, silent in enumerate(self._dry_silent)]
        self._ccast = ffi.cast
        self._ffi_buffer = ffi.buffer
        self._perf = time.perf_counter_ns

    def _set_process_callback(self, client) -> None:
        """Register the C callback, or else the Python one; say which."""
        global _logged_kind
        why = where = ""
        want = os.environ.get(RT_ENV, "").strip().lower()
        if want not in ("", "auto", "c", "python"):
            log.warning("%s=%s is not one of auto, c, python: using auto", RT_ENV, want)
        if want == "python":
            why = f"{RT_ENV}=python"
        else:
            lib, where = rt_library()
            if lib is None:
                why = where
            else:
                try:
                    jl = libjack()
                    self._rt_struct(ctypes.cast(jl.jack_port_get_buffer, ctypes.c_void_p).value)
                    fn = ctypes.cast(lib.qc_rt_process, ctypes.c_void_p).value
                    rc = jl.jack_set_process_callback(_addr(client._ptr), fn, ctypes.addressof(self._rt))
                    if rc:
                        raise OSError(f"jack_set_process_callback returned {rc}")
                    # everything the callback touches lives as long as the client: a jack.Client
                    # closes itself in __del__, before its attributes go
                    client._quietcast_rt = (self._rt, self._rt_keep, self.inring, self.outring, self.silence,
                                            self.counters, self.timings, self.dry_gain, self._ramp_d, self._ramp_k,
                                            self._last_gain, self._last_dry)
                except Exception as e:
                    self._rt, self._rt_keep = None, []
                    why = f"registering the C callback failed: {e}"
        if why:
            client.set_process_callback(self._process)
            self.callback_kind = f"python ({why})"
        else:
            self.callback_kind = "c"
        if self.callback_kind != _logged_kind:  # once per process (and on a change), not every reconnect
            _logged_kind = self.callback_kind
            if why and not why.startswith(RT_ENV):
                log.warning("JACK process callback: Python, %s; it takes the GIL every cycle, so a busy engine "
                            "can cause xruns", why)
            else:
                log.info("JACK process callback: %s", f"Python ({why})" if why else f"C ({where}), no GIL")

    def _rt_struct(self, get_buffer: int) -> _RT:
        """The struct the C callback reads (kept as ``self._rt``), filled
        from what :meth:`_prepare_rt` prepared (``get_buffer``: the address
        of ``jack_port_get_buffer``, or of a stand-in in tests)."""
        n_in, n_out = len(self._in_ports), len(self._out_ports)
        ptrs = lambda a: (ctypes.c_void_p * max(len(a), 1))(*a)  # noqa: E731
        in_ports = ptrs([_addr(p._ptr) for p in self._in_ports])
        out_ports = ptrs([_addr(p._ptr) for p in self._out_ports])
        ins = [self.inring[i].ctypes.data for i in range(n_in)]
        in_base = ptrs(ins)
        out_base = ptrs([self.outring[j].ctypes.data for j in range(n_out)])
        # as in _prepare_rt: main and voice fall back to their channel's dry input, background to silence
        dry_base = ptrs([self.silence.ctypes.data if silent else ins[self.out_channel[j]]
                         for j, silent in enumerate(self._dry_silent)])
        dry_silent = (ctypes.c_int32 * max(n_out, 1))(*[int(x) for x in self._dry_silent])
        for a in (self.inring, self.outring, self.silence, self.counters, self.timings):
            if not (a.flags.c_contiguous and a.flags.aligned):
                raise ValueError("the rings and counters must be C-contiguous and aligned")
        rt = _RT(abi=RT_ABI, get_buffer=get_buffer, counters=self.counters.ctypes.data,
                 timings=self.timings.ctypes.data, latency=self.latency, ring=RING, timing_slots=TIMING_SLOTS,
                 n_in=n_in, n_out=n_out, in_ports=ctypes.addressof(in_ports), in_base=ctypes.addressof(in_base),
                 out_ports=ctypes.addressof(out_ports), out_base=ctypes.addressof(out_base),
                 dry_base=ctypes.addressof(dry_base), dry_silent=ctypes.addressof(dry_silent),
                 dry_gain=self.dry_gain.ctypes.data, ramp_d=self._ramp_d.ctypes.data,
                 ramp_k=self._ramp_k.ctypes.data, last_gain=self._last_gain.ctypes.data,
                 last_dry=self._last_dry.ctypes.data)
        self._rt_keep = [in_ports, out_ports, in_base, out_base, dry_base, dry_silent]
        self._rt = rt  # from now on, setting latency updates it
        return rt

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
        # the Python fallback; qc_rt_process in rtcallback.c is the same, line for line
        t0 = self._perf()
        cnt = self.counters
        cast, get = self._ccast, self._get_buffer
        pos = int(cnt[IN_POS])
        off = pos & MASK
        for base, ptr in zip(self._in_base, self._in_ptrs):
            self._copy_in(base, cast("char *", get(ptr, frames)), off, frames)
        cnt[IN_POS] = pos + frames
        ready = int(cnt[OUT_READY])
        if self.freewheel:  # not real time (an export): wait for the engine, at most ~2 s
            end = t0 + 2_000_000_000
            while ready - pos < frames and self._perf() < end:
                time.sleep(0.00005)
                ready = int(cnt[OUT_READY])
        good = ready - pos  # frames of this cycle the engine has delivered
        g = min(max(good, 0), frames)  # of them, this cycle plays g
        latency = self.latency
        dry_off = (pos + g - latency) & MASK  # output frame t plays input frame t - latency
        f32 = np.float32
        for j, (base, dry, silent, ptr) in enumerate(zip(self._out_base, self._dry_base, self._dry_silent,
                                                          self._out_ptrs)):
            dst = cast("char *", get(ptr, frames))
            if not frames:
                continue
            gain = f32(self.dry_gain[j])
            if g:
                self._copy_out(dst, base, off, g)
            a = self._view(dst, frames)
            if g < frames:
                self._copy_out(dst, dry, 0 if silent else dry_off, frames - g, g)
                a[g:] = _dry_values(a[g:], gain)
            # the declick, as in qc_rt_process
            x = self._dry_rings[j]
            d, k = f32(self._ramp_d[j]), int(self._ramp_k[j])
            was = (_dry_values(x[(pos - 1 - latency) & MASK], f32(self._last_gain[j])) if self._last_dry[j]
                   else self.outring[j, (pos - 1) & MASK])
            now = self.outring[j, (pos - 1) & MASK] if g else _dry_values(x[(pos - 1 - latency) & MASK], gain)
            step0 = f32(was) - f32(now)
            if step0 != 0:
                d, k = _ramp_left(d, k) + step0, 0
            if 0 < g < frames:
                _ramp(a, 0, g, d, k)
                k += g
                step = f32(self.outring[j, (pos + g - 1) & MASK]) - f32(
                    _dry_values(x[(pos + g - 1 - latency) & MASK], gain))
                if step != 0:
                    d, k = _ramp_left(d, k) + step, 0
                _ramp(a, g, frames, d, k)
                k += frames - g
            else:
                _ramp(a, 0, frames, d, k)
                k += frames
            self._ramp_d[j], self._ramp_k[j] = d, min(k, DECLICK)
            self._last_dry[j], self._last_gain[j] = int(g < frames), gain
        if g < frames:
            if ready:
                cnt[DEADLINE_MISSES] += 1
                cnt[MISSED_FRAMES] += frames - g
            else:
                cnt[LATE_START] += 1
        c = int(cnt[CYCLES])
        self.timings[c & (TIMING_SLOTS - 1)] = self._perf() - t0
        cnt[CYCLES] = c + 1  # after its timing: a reader of CYCLES finds every timing written


    def _view(self, dst, frames):
        return np.frombuffer(self._ffi_buffer(dst, 4 * frames), np.float32)

    def _on_xrun(self, delayed_usecs):
        self.counters[XRUNS] += 1

    def _on_shutdown(self, status, reason):
        self.shutdown_event.set()

    def _on_blocksize(self, frames):
        # libjack's notification thread, while no process callback runs (JACK2 stops its driver around
        # a change; PipeWire's JACK layer runs none while this callback is pending): on_period may move
        # what the callback reads (Engine.change_period), then the supervisor follows
        seen, self.blocksize_seen = self.blocksize_seen or self.period, frames
        if self.period and frames != seen:
            hook = self.on_period
            if hook is not None:
                try:
                    hook(frames)
                except Exception:  # (never into libjack; the supervisor sees the period unfollowed)
                    pass
            self.period_changed.set()

    def _on_samplerate(self, rate):
        self.rate_seen = rate
        if self.sample_rate and rate != self.sample_rate:
            self.rate_changed.set()

    #: JACK is freewheeling (a DAW's export): the callback waits for the engine
    freewheel = False

    def _on_freewheel(self, starting):
        self.freewheel = bool(starting)
        if self._rt is not None:
            self._rt.freewheel = int(bool(starting))

    def _on_port_registration(self, port, register):
        if not register and port is not None:
            self.gone_ports.append(port.name)
        self.ports_changed.set()

    def _on_port_connect(self, a, b, connect):
        self.connections_changed.set()

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

    def connections(self, strict: bool = False) -> list[tuple[str, str]] | None:
        """Every connection of this client's ports, as ``(source, destination)``
        port names (also those made by hand, e.g. in a patchbay), so a
        reopen can restore them. Never raises: ``[]`` when the server does
        not answer (``None`` with ``strict``: no answer is not "none")."""
        c = self.client
        if c is None:
            return None if strict else []
        out = []
        try:
            for p in c.get_ports(ports_of(self.client_name)):
                for q in c.get_all_connections(p):
                    out.append((p.name, q.name) if p.is_output else (q.name, p.name))
        except Exception:  # the server is going or gone: nothing to keep
            return None if strict else []
        return out

    def port_names(self) -> set[str] | None:
        """The names of every port on the server, or None when it does not
        answer (a port that went away while listed: listed again)."""
        import jack

        c = self.client
        if c is None:
            return None
        for _ in range(3):
            try:
                return {p.name for p in c.get_ports()}
            except jack.JackError:
                continue
            except Exception:
                return None
        return None

    def restore(self, pairs: list[tuple[str, str]]) -> int:
        """Connect ``pairs`` again where both ports exist; the number made."""
        import jack

        c = self.client
        if c is None:
            return 0
        return sum(self._connect(c, a, b, jack) for a, b in pairs)

    def apply_rules(self, rules_in: list[list[str]], rules_out: list[list[str]]) -> int:
        """Connect every existing port matching a channel's patterns.
        Returns the number of new connections made."""
        import jack

        c = self.client
        if c is None:
            return 0
        made = 0
        outs = self._port_names(c, jack, is_output=True)
        ins = self._port_names(c, jack, is_input=True)
        if outs is None or ins is None:  # ports kept going away while listed: try again on the next pass
            self.ports_changed.set()
            return 0
        me = self.client_name + ":"
        for i, pats in enumerate(rules_in):
            mine = f"{me}{self.channels[i]}_in"
            for src in outs:
                if src.startswith(me) or not any(fnmatch.fnmatchcase(src, p) for p in pats):
                    continue
                self.rule_pairs.add((src, mine))
                made += self._connect(c, src, mine, jack)
        for i, pats in enumerate(rules_out):
            for j, ch in enumerate(self.out_channel):
                if ch != i or self.out_kind[j] != "main":
                    continue
                mine = f"{me}{self.out_names[j]}"
                for dst in ins:
                    if dst.startswith(me) or not any(fnmatch.fnmatchcase(dst, p) for p in pats):
                        continue
                    self.rule_pairs.add((mine, dst))
                    made += self._connect(c, mine, dst, jack)
        return made

    @staticmethod
    def _port_names(client, jack, tries: int = 3, **kind) -> list[str] | None:
        """The names of the audio ports of ``kind`` (is_input/is_output), or
        None. JACK-Client looks each listed name up again, and a port that
        went away in between (a player closing) raises JackError: list
        again, up to ``tries`` times."""
        for _ in range(tries):
            try:
                return [p.name for p in client.get_ports(is_audio=True, **kind)]
            except jack.JackError:
                continue
        return None

    @staticmethod
    def _connect(client, src, dst, jack) -> int:
        try:
            if dst in [p.name for p in client.get_all_connections(src)]:
                return 0
            client.connect(src, dst)
            return 1
        except jack.JackError:
            return 0
