"""JACK clients for the demo, tests and benchmarks: a player and a recorder,
each its own client so the graph has no loop (a loop would add a period of
delay).

Alignment does not trust JACK frame times (an xrun makes them jump while
no client processes the skipped cycle): the player notes how many frames
the recorder had recorded when it started playing (the player runs before
the recorder in every cycle), so input frame ``j`` is at recording index
``start_index + j + latency`` whatever happens to the clock.

That holds while both clients run every cycle. On a loaded machine JACK
can skip one client's cycle (an xrun): the recording then loses a period
and everything after it comes early. Both clients therefore note the
frame time of every cycle they ran, and :func:`take` plays again until a
take has no such hole (:meth:`Player.gaps`, :meth:`Recorder.gaps`)."""

from __future__ import annotations

import gc
import threading
import time

import jack
import numpy as np


class _CycleLog:
    """The frame time of every cycle a client ran since :meth:`_clear_cycles`
    (preallocated: the process callback only writes into it)."""

    def _init_cycles(self, n: int) -> None:
        self.cycles = np.zeros(n, np.int64)
        self.nc = 0

    def _clear_cycles(self) -> None:
        self.nc = 0

    def _note_cycle(self) -> None:
        if self.nc < self.cycles.size:
            self.cycles[self.nc] = self.client.last_frame_time
            self.nc += 1

    def frame_times(self) -> np.ndarray:
        """The frame time of every cycle noted (a copy)."""
        return self.cycles[:self.nc].copy()

    def gaps(self) -> int:
        """Cycles JACK skipped for this client among those noted."""
        return _gaps(self.frame_times(), self.client.blocksize)


def _gaps(ft: np.ndarray, period: int) -> int:
    return int(np.count_nonzero(np.diff(ft) != period))


class Player(_CycleLog):
    """Plays ``signals[i]`` on port ``out_i`` once :meth:`play` is called
    (noting the frame time of each cycle it plays)."""

    def __init__(self, server: str, channels: int = 1, name: str = "player", recorder: "Recorder | None" = None):
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.recorder = recorder
        self.start_index = None
        self.ports = [self.client.outports.register(f"out_{i}") for i in range(channels)]
        self.signals = np.zeros((channels, 0), np.float32)
        self.pos = -1
        self.start_frame = None
        self.done = threading.Event()
        self.xruns = 0  # JACK tells every client; a recording made across one is shifted
        self._init_cycles(1 << 16)
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._on_xrun)
        self.client.activate()

    def _on_xrun(self, delayed_usecs):
        self.xruns += 1

    def _process(self, frames):
        arrs = [p.get_array() for p in self.ports]
        if self.pos < 0:
            for a in arrs:
                a[:] = 0
            return
        if self.start_frame is None:
            self.start_frame = self.client.last_frame_time
            if self.recorder is not None:
                self.start_index = self.recorder.n
        self._note_cycle()
        i = self.pos
        n = self.signals.shape[1]
        for k, a in enumerate(arrs):
            chunk = self.signals[k, i:i + frames]
            a[:len(chunk)] = chunk
            a[len(chunk):] = 0
        self.pos = i + frames
        if self.pos >= n:
            self.done.set()

    def play(self, signals: np.ndarray, timeout: float = 60.0) -> int:
        """Play and wait until done; returns the recorder's index at the
        first played frame when a recorder is attached, else the start
        frame time."""
        self.signals = np.atleast_2d(signals).astype(np.float32)
        self.start_frame = None
        self.start_index = None
        self._clear_cycles()
        self.done.clear()
        self.pos = 0
        if not self.done.wait(timeout):
            raise TimeoutError("player did not finish")
        self.pos = -1
        return self.start_index if self.recorder is not None else self.start_frame

    def name(self, i: int = 0) -> str:
        return self.ports[i].name

    def close(self):
        self.client.deactivate()
        self.client.close()


class Recorder(_CycleLog):
    """Records ports ``in_i`` continuously into a ring, with frame times
    (noting the frame time of each cycle it records)."""

    def __init__(self, server: str, channels: int = 1, seconds: float = 30.0, name: str = "recorder"):
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.ports = [self.client.inports.register(f"in_{i}") for i in range(channels)]
        self.buf = np.zeros((channels, int(seconds * self.client.samplerate)), np.float32)
        self.n = 0
        self.first_frame = None
        self.recording = False
        self._init_cycles(self.buf.shape[1] // max(1, self.client.blocksize) + 1)
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames):
        if not self.recording:
            return
        if self.first_frame is None:
            self.first_frame = self.client.last_frame_time
        n = self.n
        if n + frames > self.buf.shape[1]:
            return
        for k, p in enumerate(self.ports):
            self.buf[k, n:n + frames] = p.get_array()
        self._note_cycle()
        self.n = n + frames

    def start(self):
        self.n = 0
        self._clear_cycles()
        self.first_frame = None
        self.recording = True

    def stop(self) -> np.ndarray:
        self.recording = False
        time.sleep(0.05)
        return self.buf[:, :self.n].copy()

    def name(self, i: int = 0) -> str:
        return self.ports[i].name

    def close(self):
        self.client.deactivate()
        self.client.close()


def take(player: Player, recorder: Recorder, signals: np.ndarray, tail_s: float, tries: int = 8,
         xruns=lambda: 0) -> tuple[np.ndarray, int, int]:
    """Play ``signals`` through the graph and record; returns ``(recording,
    start index, takes)`` with the recording's index ``start`` at the
    player's first frame. A take in which JACK skipped a cycle of either
    client (a hole in its frame times), in which the player's cycles are not
    all among the recorder's, in which the start index the player noted is
    not where the recorder's frame times put the player's first cycle, or
    during which ``xruns()`` (e.g. the daemon's own counter) or the player's
    xrun count moved, is played again, up to ``tries`` takes; when none is
    clean, :class:`UncleanTake` says so (a shifted take would otherwise be
    measured as if aligned). Python's cyclic garbage collector is off during
    a take: its pauses hold the GIL both clients' callbacks need.
    ``tail_s``: how long to keep recording after the last frame."""
    period = player.client.blocksize
    why = ""
    for k in range(1, tries + 1):
        gc.collect()
        was = gc.isenabled()
        gc.disable()
        try:
            x0, p0 = xruns(), player.xruns
            recorder.start()
            time.sleep(0.05)
            start = player.play(signals)
            time.sleep(tail_s)
            rec = recorder.stop()
            time.sleep(0.05)  # an xrun's notice comes on JACK's notification thread
        finally:
            if was:
                gc.enable()
        pf, rf = player.frame_times(), recorder.frame_times()
        why = _unclean(pf, rf, period, start, xruns() - x0, player.xruns - p0)
        if not why:
            return rec, start, k
    raise UncleanTake(f"no clean take in {tries} tries (the last: {why}); the machine is too loaded to "
                      "measure alignment")


class UncleanTake(RuntimeError):
    """No take of :func:`take` ran without a skipped or reordered cycle."""


def _unclean(pf: np.ndarray, rf: np.ndarray, period: int, start: int, xruns: int, player_xruns: int) -> str:
    """Why a take cannot be trusted ('' when it can)."""
    if xruns or player_xruns:
        return f"{xruns} xruns of the graph, {player_xruns} of the player"
    if pf.size == 0 or rf.size == 0:
        return "a client ran no cycle"
    if _gaps(pf, period) or _gaps(rf, period):
        return f"skipped cycles: player {_gaps(pf, period)}, recorder {_gaps(rf, period)}"
    if not bool(np.isin(pf, rf).all()):
        return "player cycles the recorder did not run"
    at = int(np.searchsorted(rf, pf[0])) * period
    if start != at:
        return f"the player noted index {start}, the recorder's frame times say {at}"
    return ""


def wait_until(pred, timeout: float = 10.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def realtime_allowed() -> bool:
    """Whether this process may use SCHED_FIFO (as root, or with rtprio
    limits from the audio group): then a private jackd runs realtime, as
    production JACK does, and a busy machine does not cause xruns."""
    import os

    if os.environ.get("QUIETCAST_JACK_NO_RT"):
        return False
    try:
        param = os.sched_param(1)
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, param)
        os.sched_setscheduler(0, old[0], old[1])
        return True
    except (PermissionError, OSError, AttributeError):
        return False


def jackd_command(exe: str, name: str, rate: int = 48_000, period: int = 256) -> list[str]:
    """The command line of a private dummy-driver jackd: realtime where the
    system allows it (see :func:`realtime_allowed`), else ``--no-realtime``."""
    rt = ["-R"] if realtime_allowed() else ["--no-realtime"]
    return [exe, "-n", name, *rt, "-d", "dummy", "-r", str(rate), "-p", str(period)]
