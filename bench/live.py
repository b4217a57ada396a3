"""Live engine benchmark: channel capacity, callback cost and a soak run of the daemon in a JACK graph.

    python bench/live.py --quick               # ~3 min: 10 s a point, coarse search (1, 4, 16 ...), 30 s soak
    python bench/live.py                       # full: 60 s a point, exact search, 10 min soak
    python bench/live.py --only capacity --periods 256 --models dsp
    python bench/live.py --only capacity --channels 8 --periods 256   # given points, no search
    python bench/live.py --only soak --soak-seconds 3600
    python bench/live.py --quick --realtime    # jackd --realtime instead of --no-realtime

Everything runs against PRIVATE JACK servers started here (``jackd -n NAME
--no-realtime -p 2048 -d dummy -r 48000 -p PERIOD``, one per period,
stopped with SIGTERM at the end), never against a running default server.

The graph of one measurement point::

    qcbench (player, 4 outputs: the bundled noisy demo clip, looped, at 4
      |      different offsets; also counts JACK's xruns: JACK reports
      |      every xrun to every client)
      |  out_{i % 4} -> qcbN:c{i}_in  for every channel i (fan-out)
      v
    qcbN  (the daemon, N channels "c0".."c{N-1}", one suppressor batch)
      |  qcbN:c0_out -> qcbench-rec:in_1, and qcbench:out_0 -> qcbench-rec:in_0
      v  (4 s recorded: a sanity check that the output is real, suppressed
    qcbench-rec  audio: its level against the input's over the same cycles)

The daemon runs in its OWN PROCESS, so its GIL is not shared with the
player/recorder callbacks of this process. ``--daemon`` picks how:

- ``child`` (default): ``python bench/live.py --daemon-child CFG``, which
  does what ``quietcast run -c CFG`` does (load_config, logging, threads,
  ``Daemon(cfg).run()`` on its main thread) and, on a line ``status`` on
  its stdin, prints ``Daemon.status()`` plus the raw engine hop times and
  callback durations recorded since the previous request. So counters are
  read at the start and end of the measured window (start-up excluded), a
  point stops at its first deadline miss, and percentiles cover every cycle
  and hop of the window. Nothing is added to the daemon.
- ``cli``: ``quietcast run -c CFG`` itself; counters and percentiles from
  its shutdown log line ``final status: {json}`` (FINAL_STATUS_MARK). They
  cover the whole process life (start-up included) and the status'
  percentiles cover only the last 4096 cycles / 1024 hops; deadline misses
  are known only at the end (a point stops early on xruns only).
- ``thread``: ``Daemon`` on a thread of this process (as the tests do); its
  GIL is shared with the player, so the figures are pessimistic.

1. Capacity. For each JACK period (128/256/512 frames) and suppressor
   (``dsp``, and ``neural`` when it can be built here): the largest channel
   count with 0 xruns AND 0 deadline misses over ``--seconds`` (default 60,
   --quick 10) after ``--settle`` seconds of warm-up. Counts are searched
   by doubling (1, 2, 4, ... up to ``--max-channels``, 256), then bisection
   between the last pass and the first failure (--quick: 1, 4, 16, 64, 256
   and at most 2 bisection steps, so the figure may be a bracket). A point
   stops at its first xrun or deadline miss (``--no-early-stop``: runs to
   the end). Per point: the callback's own time (``JackIO._process``, from
   ``io.timings``) as a share of the period (p50/p99/max), the engine's hop
   time (ms per 10 ms hop), the daemon's CPU use, and what jackd logged
   about each xrun (which client had not finished its cycle).
2. Soak. 8 channels, period 256, model "default" (the shipped suppressor),
   ``--soak-seconds`` (default 600, --quick 30): xruns, deadline misses, RSS
   of the daemon process every 10 s (first vs last, least-squares slope in
   MB/hour), engine hop time p50/p99 over the whole run. Targets (from the
   issue): 0 xruns, 0 deadline misses, flat memory.

Prints tables and writes JSON (default ``bench/out/live.json``, git-ignored;
rewritten after every point, so an interrupted run keeps what it measured)
with machine information, the load average and the busiest other processes.

Caveats: by default jackd runs ``--no-realtime`` (as in the tests) on the
dummy driver, so every audio thread competes with everything else on the
machine; the development machine has 2 cores shared with other work, so
xruns there may be caused by other processes and the figures are
pessimistic. xruns are graph-wide: the bench's own player/recorder
callbacks (Python, in this process) are in the graph too; the per-point
``jackd_says`` tells whose cycle was late.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (FINAL_STATUS_MARK, HERE, SR, drop_tmp, finish, fmt_table, machine_info,  # noqa: E402
                    machine_note, read_final_status, report_end, result_saver)

N_SOURCES = 4  # distinct player outputs, fanned out over the channels
RSS_EVERY_S = 10.0
POLL_S = 2.0
MB = 2**20


def log(msg: str) -> None:
    print(f"[live {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# daemon side: counters and raw timings (runs inside the daemon's process)


def _b64(a: np.ndarray) -> dict:
    """An array as base64 of its bytes: cheap to encode inside the daemon
    (json.dumps of thousands of floats would hold its GIL for a millisecond)."""
    import base64

    return {"dtype": a.dtype.str, "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _unb64(v) -> list:
    import base64

    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["b64"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v or [])


class Snapshotter:
    """``Daemon.status()`` (without params/meters) plus the engine hop times
    and callback durations recorded since the previous call (the rings hold
    the last 1024 hops / 4096 cycles: call often enough)."""

    def __init__(self, daemon):
        self.d = daemon
        self.h0 = None  # hops seen
        self.c0 = None  # cycles seen
        self.io_id = None

    def __call__(self) -> dict:
        from quietcast.daemon import jackio

        d = self.d
        st = d.status()
        st.pop("params", None)
        meters = st.pop("meters", None) or {}
        gr = [m.get("gain_reduction_db") for m in meters.values() if m.get("gain_reduction_db") is not None]
        st["gain_reduction_db_min"] = min(gr) if gr else None
        st["gain_reduction_db_max"] = max(gr) if gr else None
        out: dict = {"status": st, "pid": os.getpid(), "hop_ms": [], "cb_ns": [], "lost_hops": 0, "lost_cycles": 0}
        eng, io = d.engine, d.io
        if eng is not None:
            ring = eng.hop_times
            h1 = int(eng.stats.hops)  # hop_times[h] is written before stats.hops moves past h
            if self.h0 is not None and h1 > self.h0:
                first = max(self.h0, h1 - len(ring))
                out["lost_hops"] = first - self.h0
                idx = np.arange(first, h1) % len(ring)
                out["hop_ms"] = _b64((ring[idx] * 1000.0).astype(np.float32))
            self.h0 = h1
        if io is not None and io.client is not None:
            if self.io_id != id(io):  # (re)connected: counters restarted
                self.io_id, self.c0 = id(io), None
            # CYCLES is bumped before the cycle's duration is written: leave the newest out
            c1 = max(0, int(io.counters[jackio.CYCLES]) - 1)
            if self.c0 is not None and c1 > self.c0:
                n = jackio.TIMING_SLOTS
                first = max(self.c0, c1 - n)
                out["lost_cycles"] = first - self.c0
                idx = np.arange(first, c1) % n
                out["cb_ns"] = _b64(np.minimum(io.timings[idx], 2**31 - 1).astype(np.int32))
            self.c0 = c1
        return out


def daemon_child(cfg_path: str) -> int:
    """``--daemon-child CFG``: what ``quietcast run -c CFG`` does, plus a
    status request protocol on stdin/stdout (``status`` / ``stop``)."""
    from quietcast.daemon.cli import _set_threads
    from quietcast.daemon.config import load_config
    from quietcast.daemon.service import Daemon, setup_logging

    cfg = load_config(cfg_path)
    setup_logging("info")
    _set_threads(cfg.engine.threads)
    d = Daemon(cfg)
    d.install_signal_handlers()
    snap = Snapshotter(d)
    out = sys.stdout

    def emit(kind: str) -> None:
        try:
            s = snap()
        except Exception as e:  # never kill the daemon over a report
            s = {"error": f"{type(e).__name__}: {e}"}
        out.write(f"QCBENCH {kind} {json.dumps(s)}\n")
        out.flush()

    def reader() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "status":
                emit("STATUS")
            elif cmd == "stop":
                emit("FINAL")
                break
        d.request_stop()  # "stop", or the bench went away (EOF)

    threading.Thread(target=reader, name="qcbench-control", daemon=True).start()
    return d.run()


# --------------------------------------------------------------------------
# the daemon under test, three ways


def _proc_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a whole process (all threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _cpu_times() -> list[int] | None:
    """The machine's aggregate CPU times (/proc/stat "cpu" line, ticks)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _machine_busy(a: list[int] | None, b: list[int] | None) -> dict | None:
    """Idle and steal shares of the whole machine between two _cpu_times()."""
    if not a or not b:
        return None
    d = [y - x for x, y in zip(a, b)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
    return {"idle_pct": round(100.0 * (d[3] + d[4]) / total, 1), "steal_pct": round(100.0 * d[7] / total, 1),
            "nice_pct": round(100.0 * d[1] / total, 1)}


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM if this process dies without
    cleaning up (``setpriv --pdeathsig TERM``, util-linux; it execs, so the
    pid is the command's own): no jackd or daemon is left behind."""
    sp = shutil.which("setpriv")
    return [sp, "--pdeathsig", "TERM", "--", *cmd] if sp else cmd


def quietcast_exe() -> str:
    """The console script beside this interpreter (not a pyenv shim, so the
    Popen pid is the daemon's own python process), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "quietcast")
    return here if os.access(here, os.X_OK) else (shutil.which("quietcast") or "quietcast")


class _Pipe:
    """Lines ``QCBENCH KIND {json}`` from a child's stdout; commands to its stdin."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("QCBENCH "):
                kind, _, body = line[8:].partition(" ")
                try:
                    self.q.put((kind, json.loads(body)))
                except ValueError:
                    pass
        self.q.put(("EOF", None))

    def send(self, cmd: str) -> bool:
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def wait(self, want: str, timeout: float = 15.0) -> dict | None:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                kind, body = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if kind == want:
                return body
            if kind == "EOF":
                self.q.put((kind, body))
                return None

    def ask(self, cmd: str, want: str, timeout: float = 15.0) -> dict | None:
        if self.proc.poll() is not None or not self.send(cmd):
            return None
        return self.wait(want, timeout)


class ChildDaemon:
    """The daemon in a subprocess: ``mode="child"``, this script's
    ``--daemon-child`` (counters over the stdin/stdout protocol), or
    ``mode="cli"``, ``quietcast run`` and its shutdown status log line."""

    def __init__(self, mode: str, cfg_path: str, log_path: str):
        self.mode = mode
        self.log_path = log_path
        self._log = open(log_path, "w")
        if mode == "child":
            cmd = [sys.executable, os.path.abspath(__file__), "--daemon-child", cfg_path]
            self.proc = subprocess.Popen(_with_parent(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, text=True, bufsize=1)
            self.pipe = _Pipe(self.proc)
        else:
            cmd = [quietcast_exe(), "run", "-c", cfg_path]
            self.proc = subprocess.Popen(_with_parent(cmd), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.cmd = cmd

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _ask(self, cmd: str, want: str, timeout: float = 15.0) -> dict | None:
        return self.pipe.ask(cmd, want, timeout) if self.mode == "child" else None

    def status(self) -> dict | None:
        return self._ask("status", "STATUS")

    def stop(self) -> dict | None:
        """Stop it; returns its last status (child: asked before stopping;
        cli: parsed from the shutdown log line, None without one)."""
        final = self._ask("stop", "FINAL") if self.mode == "child" else None
        if self.alive():
            if self.mode == "child":
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        self._log.close()
        if self.mode == "cli":
            final = self._final_from_log()
        return final

    def _final_from_log(self) -> dict | None:
        st = read_final_status(self.log_path)
        return None if st is None else {"status": st, "pid": self.pid, "hop_ms": [], "cb_ns": []}


class ThreadDaemon:
    """``Daemon`` on a thread of this process (shares this GIL)."""

    def __init__(self, cfg_path: str, log_path: str):
        from quietcast.daemon.config import load_config
        from quietcast.daemon.service import Daemon

        self.mode = "thread"
        self.log_path = log_path
        self.cmd = ["(in-process thread)"]
        self.d = Daemon(load_config(cfg_path))
        self.snap = Snapshotter(self.d)
        self.th = threading.Thread(target=self.d.run, name="quietcast-daemon", daemon=True)
        self.th.start()
        self.pid = os.getpid()

    def alive(self) -> bool:
        return self.th.is_alive()

    def status(self) -> dict | None:
        return self.snap()

    def stop(self) -> dict | None:
        final = self.snap() if self.d.io is not None else None
        self.d.request_stop()
        self.th.join(15)
        return final


# --------------------------------------------------------------------------
# JACK: a private server, the player (+ xrun counter), the recorder


class JackServer:
    """``jackd -n NAME --no-realtime -d dummy`` (stopped with SIGTERM: a
    SIGKILL leaks JACK's shm registry entry)."""

    def __init__(self, period: int, rate: int = SR, log_dir: str = "/tmp", realtime: bool = False):
        self.period, self.rate, self.realtime = period, rate, realtime
        self.name = f"qcbench{os.getpid()}{uuid.uuid4().hex[:4]}p{period}"
        self.log = os.path.join(log_dir, f"{self.name}.log")
        self.proc = None

    def start(self, timeout: float = 15.0) -> "JackServer":
        import jack

        exe = shutil.which("jackd")
        if not exe:
            raise RuntimeError("jackd is not installed (Debian: apt-get install jackd2)")
        env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
        # --port-max before the driver: 256 channels need 512 daemon ports
        rt = ["--realtime"] if self.realtime else ["--no-realtime"]
        self.proc = subprocess.Popen(_with_parent([exe, "-n", self.name, *rt, "-p", "2048", "-d", "dummy",
                                                   "-r", str(self.rate), "-p", str(self.period)]),
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        jack.set_error_function(lambda msg: None)
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    jack.Client("qcbench-probe", servername=self.name, no_start_server=True).close()
                    return self
                except jack.JackError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"jackd exited ({self.proc.returncode}): {_tail(self.log, 1500)}")
                    time.sleep(0.05)
        finally:
            jack.set_error_function()
        self.stop()
        raise RuntimeError(f"jackd {self.name} did not start in {timeout:g} s")

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log)
        except OSError:
            return 0

    def xrun_report(self, since: int) -> dict:
        """What jackd logged about xruns after byte ``since`` of its log:
        how often the driver itself woke late, and per client how often it
        had not finished its cycle (state Running: it was still at it;
        Triggered: it had not even started, e.g. waiting behind a late one)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return {}
        out: dict = {"driver_late": 0, "graph_errors": 0, "not_finished": {}}
        for line in text.splitlines():
            if "JackTimedDriver::Process XRun" in line:
                out["driver_late"] += 1
            elif "Process error" in line:
                out["graph_errors"] += 1
            elif "was not finished" in line and "client = " in line:
                rest = line.split("client = ", 1)[1]
                who = rest.split(" was not finished", 1)[0]
                state = rest.rsplit("state = ", 1)[-1].strip()
                d = out["not_finished"].setdefault(who, {})
                d[state] = d.get(state, 0) + 1
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # last resort only
                self.proc.wait(5)
        self.proc = None


class LoopPlayer:
    """One client: ``N_SOURCES`` outputs looping ``signals[k]`` forever, and
    JACK's xrun notifications counted in ``counters[0]`` (JACK sends them to
    every client; ``counters`` may be shared memory)."""

    def __init__(self, server: str, signals: np.ndarray, name: str = "qcbench", counters=None):
        import jack

        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.signals = np.ascontiguousarray(signals, np.float32)
        self.L = self.signals.shape[1]
        self.pos = 0
        self.counters = counters if counters is not None else np.zeros(2, np.int64)
        self.ports = [self.client.outports.register(f"out_{k}") for k in range(self.signals.shape[0])]
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._on_xrun)
        self.client.activate()

    def _process(self, frames):
        i, L = self.pos, self.L
        j = i + frames
        for k, p in enumerate(self.ports):
            a = p.get_array()
            if j <= L:
                a[:] = self.signals[k, i:j]
            else:
                a[:L - i] = self.signals[k, i:]
                a[L - i:] = self.signals[k, :j - L]
        self.pos = j % L

    def _on_xrun(self, delayed_usecs):
        self.counters[0] += 1

    def name(self, k: int) -> str:
        return self.ports[k].name

    def close(self) -> None:
        try:
            self.client.deactivate()
            self.client.close()
        except Exception:
            pass


def make_signals(seconds: float = 20.0) -> tuple[np.ndarray, str]:
    """``[N_SOURCES, frames]``: the bundled noisy demo clip (speech + noise)
    at different offsets, else a synthetic voice-like signal in noise."""
    n = int(seconds * SR)
    try:
        from quietcast.daemon.demo import load_clip

        clean, noise = load_clip()
        x = (clean + noise).astype(np.float32)
        src = f"bundled demo clip (speech + noise, {x.size / SR:.1f} s, looped)"
    except Exception as e:
        rng = np.random.default_rng(1234)
        t = np.arange(n) / SR
        f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
        ph = 2 * np.pi * np.cumsum(f0) / SR
        env = np.convolve((np.sin(2 * np.pi * 2.1 * t) > 0.2).astype(float), np.ones(480) / 480, mode="same")
        speech = 0.2 * env * sum(np.sin(k * ph) / k for k in range(1, 20))
        pink = np.convolve(rng.standard_normal(n), np.exp(-np.arange(64) / 16.0), mode="same")
        x = (speech + 0.02 * pink / pink.std()).astype(np.float32)
        src = f"synthetic voice-like signal in pink noise ({type(e).__name__} loading the demo clip)"
    if x.size < n:
        x = np.tile(x, -(-n // x.size))
    x = x[:n] if x.size > n else x
    return np.stack([np.roll(x, k * x.size // N_SOURCES) for k in range(N_SOURCES)]), src


def source_child(server: str, shm_path: str) -> int:
    """``--source-child SERVER SHM``: the player and the recorder in a
    process of their own, so nothing else in the bench competes with their
    callbacks for a GIL. The xrun count goes to shared memory (read without
    waking this process); commands on stdin: ``rec`` (start recording),
    ``levels`` (stop; c0's input and output levels), ``stop``."""
    import jack

    from quietcast.daemon.jackclients import Recorder

    sys.setswitchinterval(0.0005)
    counters = np.memmap(shm_path, dtype=np.int64, mode="r+", shape=(2,))
    signals, src = make_signals()
    player = LoopPlayer(server, signals, counters=counters)
    # in_0: channel c0's input (player out_0), in_1: its output: same cycles, so the levels compare exactly
    rec = Recorder(server, 2, seconds=4.0, name="qcbench-rec")
    player.client.connect(player.name(0), rec.name(0))

    def say(kind: str, body: dict) -> None:
        sys.stdout.write(f"QCBENCH {kind} {json.dumps(body)}\n")
        sys.stdout.flush()

    say("READY", {"outs": [player.name(k) for k in range(N_SOURCES)], "rec": [rec.name(0), rec.name(1)],
                  "source": src, "pid": os.getpid()})
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "rec":
                rec.start()
                say("OK", {})
            elif cmd == "levels":
                out = rec.stop() if rec.recording else np.zeros((2, 0), np.float32)
                lv: dict = {"seconds": round(out.shape[1] / SR, 2)}
                if out.shape[1] > SR:
                    x, y = out[0, SR // 4:], out[1, SR // 4:]  # the latency shift (~50 ms) is ~1 % of it
                    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
                    lv["in_rms"], lv["out_rms"] = rms(x), rms(y)
                    lv["out_finite"] = bool(np.isfinite(y).all())
                say("LEVELS", lv)
            elif cmd == "stop":
                break
    finally:
        for c in (player, rec):
            try:
                c.close()
            except jack.JackError:
                pass
    return 0


class Rig:
    """One private server; the player and recorder in their own process
    (``--source-child``); a control client here (never activated, so not
    in the graph) to find and connect ports."""

    def __init__(self, period: int, log_dir: str, realtime: bool = False):
        import jack

        self.period = period
        self.server = JackServer(period, log_dir=log_dir, realtime=realtime).start()
        self.shm = os.path.join(log_dir, f"xruns-p{period}.bin")
        np.zeros(2, np.int64).tofile(self.shm)
        self.counters = np.memmap(self.shm, dtype=np.int64, mode="r", shape=(2,))
        self.source = subprocess.Popen(_with_parent([sys.executable, os.path.abspath(__file__), "--source-child",
                                                     self.server.name, self.shm]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=open(os.path.join(log_dir, f"source-p{period}.log"), "w"),
                                       text=True, bufsize=1)
        self.pipe = _Pipe(self.source)
        ready = self.pipe.wait("READY", 60)
        if ready is None:
            self.close()
            raise RuntimeError("the player/recorder process did not start: "
                               + _tail(os.path.join(log_dir, f"source-p{period}.log")))
        self.outs, self.rec_ins, self.input_text = ready["outs"], ready["rec"], ready["source"]
        self.ctl = jack.Client("qcbench-ctl", servername=self.server.name, no_start_server=True)

    def xruns(self) -> int:
        return int(self.counters[0])

    def close(self) -> None:
        try:
            self.ctl.close()
        except Exception:
            pass
        if self.source.poll() is None:
            self.pipe.send("stop")
            try:
                self.source.wait(10)
            except subprocess.TimeoutExpired:
                self.source.terminate()
                self.source.wait(5)
        self.server.stop()


# --------------------------------------------------------------------------
# one measurement point


_point_seq = [0]


def daemon_sections() -> tuple[str, ...]:
    """Config sections this daemon knows (control, midi and state came later)."""
    try:
        from quietcast.daemon.config import SECTIONS

        return tuple(SECTIONS)
    except ImportError:
        return ("jack", "engine", "channel")


def config_text(server: str, client: str, model: str, n: int, features: str = "engine", tmp: str = "/tmp") -> str:
    """The daemon config of one point. Always isolated from the user's
    daemon: no state file (nothing restored or saved), private control
    endpoints. ``features="engine"``: control and MIDI off (the live engine
    alone, as in the issue); ``"all"``: control and MIDI on as shipped."""
    sections = daemon_sections()
    s = (f'[jack]\nclient_name = "{client}"\nserver = "{server}"\nreconnect_interval_ms = 100\n'
         f'[engine]\nmodel = "{model}"\nthreads = 1\n')
    on = "true" if features == "all" else "false"
    if "control" in sections:
        s += (f'[control]\nenabled = {on}\nbind = "ipc://{tmp}/{client}-control"\n'
              f'events = "ipc://{tmp}/{client}-events"\n')
    if "midi" in sections:
        s += f'[midi]\nenabled = {on}\nmapping = "{tmp}/{client}-midi.toml"\n'
    if "state" in sections:
        s += "[state]\nenabled = false\nrestore = false\n"
    for i in range(n):
        s += f'[[channel]]\nname = "c{i}"\nconnect_in = []\nconnect_out = []\n'
    return s


def _pct(a, q) -> float | None:
    return round(float(np.percentile(a, q)), 4) if len(a) else None


def _connect_retry(client, src: str, dst: str, timeout_s: float = 2.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            client.connect(src, dst)
            return
        except Exception:  # jack.JackError: the daemon not yet active
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def run_point(rig: Rig, model: str, n: int, seconds: float, opts, early_stop: bool = True,
              rss_every: float = RSS_EVERY_S, tag: str = "") -> dict:
    """Start the daemon with ``n`` channels, feed every channel, measure
    ``seconds`` after ``opts.settle`` s, stop it. Returns the point's record."""
    _point_seq[0] += 1
    client = f"qcb{_point_seq[0]}"
    cfg_path = os.path.join(opts.tmp, f"{client}.toml")
    with open(cfg_path, "w") as f:
        f.write(config_text(rig.server.name, client, model, n, opts.features, opts.tmp))
    log_path = os.path.join(opts.tmp, f"{client}.log")
    P = rig.period
    rec: dict = {"model": model, "period": P, "period_ms": round(1000.0 * P / SR, 3), "channels": n,
                 "seconds_planned": seconds, "daemon_mode": opts.daemon, "ok": False}
    t_launch = time.monotonic()
    d = ThreadDaemon(cfg_path, log_path) if opts.daemon == "thread" else ChildDaemon(opts.daemon, cfg_path, log_path)
    final = None
    end_status = None
    st0 = None
    hop_ms: list[float] = []
    cb_ns: list[int] = []
    lost = [0, 0]
    rss: list[tuple[float, float]] = []
    fail = None
    xr0 = None
    t0 = None
    cpu0 = None
    try:
        last_port = f"{client}:c{n - 1}_out"
        end = time.monotonic() + opts.start_timeout
        while True:
            if rig.ctl.get_ports(last_port):
                break
            if not d.alive():
                raise RuntimeError(f"daemon exited before its ports appeared: {_tail(log_path, 1500)}")
            if time.monotonic() > end:
                raise RuntimeError(f"daemon ports did not appear in {opts.start_timeout:g} s")
            time.sleep(0.1)
        rec["startup_s"] = round(time.monotonic() - t_launch, 2)
        # the ports exist a few ms before the client is activated, and JACK2
        # refuses connections to an inactive client: retry for a moment
        pairs = [(rig.outs[i % N_SOURCES], f"{client}:c{i}_in") for i in range(n)]
        pairs.append((f"{client}:c0_out", rig.rec_ins[1]))
        for src, dst in pairs:
            _connect_retry(rig.ctl, src, dst)
        time.sleep(opts.settle)
        # ---- the measured window
        st0 = d.status()  # child/thread: baseline of counters and raw rings
        xr0 = rig.xruns()
        log0 = rig.server.log_size()
        cpu0 = _proc_cpu_s(d.pid)
        mach0 = _cpu_times()
        t0 = time.monotonic()
        rig.pipe.ask("rec", "OK")
        rss.append((0.0, _proc_rss_mb(d.pid)))
        next_rss = t0 + rss_every
        while True:
            now = time.monotonic()
            left = t0 + seconds - now
            if left <= 0:
                break
            time.sleep(min(POLL_S, left))
            now = time.monotonic()
            if now >= next_rss:
                rss.append((round(now - t0, 2), _proc_rss_mb(d.pid)))
                next_rss += rss_every
            if not d.alive():
                fail = "daemon process exited"
                break
            s = d.status() if opts.daemon != "cli" else None
            if s is not None:
                hop_ms += _unb64(s.get("hop_ms"))
                cb_ns += _unb64(s.get("cb_ns"))
                lost[0] += s.get("lost_hops", 0)
                lost[1] += s.get("lost_cycles", 0)
            xr = rig.xruns() - xr0
            dm = None
            if s is not None and st0 is not None and "status" in s:
                dm = s["status"].get("deadline_misses", 0) - st0["status"].get("deadline_misses", 0)
            if early_stop and (xr or dm):
                fail = f"{xr} xrun(s), {dm if dm is not None else '?'} deadline miss(es) after {now - t0:.1f} s"
                break
        t1 = time.monotonic()
        rec["xruns"] = rig.xruns() - xr0
        cpu1 = _proc_cpu_s(d.pid)
        rec["machine_cpu"] = _machine_busy(mach0, _cpu_times())
        rss.append((round(t1 - t0, 2), _proc_rss_mb(d.pid)))
        end_status = d.status() if opts.daemon != "cli" else None  # counters at the end of the window
        rec["seconds_run"] = round(t1 - t0, 2)
        if cpu0 is not None and cpu1 is not None and t1 > t0:
            rec["daemon_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / (t1 - t0), 1)
        time.sleep(0.3)  # jackd writes its RT-thread messages through a buffer thread: let it catch up
        rec["jackd_says"] = rig.server.xrun_report(log0)
    except Exception as e:
        fail = f"{type(e).__name__}: {e}"[:600]
    finally:
        try:
            final = d.stop()
        except Exception as e:
            fail = fail or f"stopping the daemon: {type(e).__name__}: {e}"
    levels = rig.pipe.ask("levels", "LEVELS") or {}
    # ---- figures
    if end_status is not None and "status" in end_status:
        final = end_status  # the window's end, not the stop (a little later)
    if final is not None and "status" in final:
        hop_ms += _unb64(final.get("hop_ms"))
        cb_ns += _unb64(final.get("cb_ns"))
        lost[0] += final.get("lost_hops", 0)
        lost[1] += final.get("lost_cycles", 0)
        fs = final["status"]
        b = (st0 or {}).get("status", {}) if opts.daemon != "cli" else {}
        for k in ("deadline_misses", "missed_frames", "xruns", "late_hops", "skipped_hops", "stalls", "hops", "cycles"):
            if k in fs:
                rec[("daemon_xruns" if k == "xruns" else k)] = int(fs[k]) - int(b.get(k, 0))
        rec["latency_ms"] = fs.get("latency_ms")
        rec["model_resolved"] = fs.get("model")
        rec["gain_reduction_db_range"] = [fs.get("gain_reduction_db_min"), fs.get("gain_reduction_db_max")]
        rec["counters_from"] = ("measured window (daemon status at start and end)" if opts.daemon != "cli"
                                else "whole daemon life (final status log line)")
        if opts.daemon == "cli":  # no raw rings: the status' own percentiles (last 4096 cycles / 1024 hops)
            rec["cb_load"] = {"p50": fs.get("callback_load_p50"), "p99": fs.get("callback_load_p99"), "max": None,
                              "from": "status() percentiles over the last 4096 cycles"}
            ht = fs.get("hop_time") or {}
            rec["hop_ms"] = {"p50": ht.get("p50_ms"), "p99": ht.get("p99_ms"), "max": None,
                             "from": "status() percentiles over the last 1024 hops"}
    else:
        rec["counters_from"] = ("none: `quietcast run` logged no final status line (xruns from the bench client only)"
                                if opts.daemon == "cli" else "none (daemon status unavailable)")
    if cb_ns:
        share = np.asarray(cb_ns, np.float64) / (1e9 * P / SR)
        rec["cb_load"] = {"p50": _pct(share, 50), "p99": _pct(share, 99), "max": round(float(share.max()), 4),
                          "n": len(cb_ns), "from": "every cycle of the window"}
        rec["cb_us"] = {"p50": round(float(np.percentile(cb_ns, 50)) / 1000, 1),
                        "p99": round(float(np.percentile(cb_ns, 99)) / 1000, 1)}
    if hop_ms:
        rec["hop_ms"] = {"p50": _pct(hop_ms, 50), "p99": _pct(hop_ms, 99), "max": round(float(max(hop_ms)), 3),
                         "n": len(hop_ms), "from": "every hop of the window"}
    if lost[0] or lost[1]:
        rec["timings_lost"] = {"hops": lost[0], "cycles": lost[1]}
    rss = [(t, r) for t, r in rss if r is not None]
    if rss:
        rec["rss_mb"] = {"first": round(rss[0][1], 1), "last": round(rss[-1][1], 1),
                         "growth": round(rss[-1][1] - rss[0][1], 2)}
        if len(rss) >= 3 and rss[-1][0] > rss[0][0]:
            t = np.asarray([x[0] for x in rss]) / 3600.0
            r = np.asarray([x[1] for x in rss])
            rec["rss_mb"]["slope_mb_per_h"] = round(float(np.polyfit(t, r, 1)[0]), 2)
            late = t >= 60.0 / 3600.0  # after the first minute (allocator and caches warming up)
            if late.sum() >= 3:
                rec["rss_mb"]["slope_after_60s_mb_per_h"] = round(float(np.polyfit(t[late], r[late], 1)[0]), 2)
        rec["rss_samples"] = [[t, round(r, 2)] for t, r in rss]
    if "in_rms" in levels:
        rec["out_level_db"] = round(20 * np.log10(max(levels["out_rms"], 1e-9) / max(levels["in_rms"], 1e-9)), 2)
        rec["out_finite"] = levels["out_finite"]
    if fail is None and "xruns" not in rec:
        fail = "not measured"
    if fail is None:
        if rec["xruns"]:
            fail = f"{rec['xruns']} xrun(s)"
        elif rec.get("deadline_misses"):
            fail = f"{rec['deadline_misses']} deadline miss(es)"
        elif rec.get("out_finite") is False:
            fail = "non-finite output"
    rec["ok"] = fail is None
    if fail:
        rec["fail"] = fail
        if not rec.get("startup_s") or "exited" in fail or "Error" in fail:
            rec["daemon_log_tail"] = _tail(log_path, 1500)
    rec["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    log(f"{tag}{model:<7} period {P:<4} {n:>3} ch: {'PASS' if rec['ok'] else 'FAIL'}"
        f"  xruns {rec.get('xruns', '?')}  misses {rec.get('deadline_misses', '?')}"
        f"  cb p99 {_fmt_share((rec.get('cb_load') or {}).get('p99'))}"
        f"  hop p99 {_fmt_ms((rec.get('hop_ms') or {}).get('p99'))}"
        f"  cpu {rec.get('daemon_cpu_pct', '?')}%  {rec.get('seconds_run', 0):.0f} s"
        + (f"  ({fail})" if fail else ""))
    return rec


# --------------------------------------------------------------------------
# capacity search


def search_capacity(rig: Rig, model: str, opts, save) -> dict:
    """Doubling 1, 2, 4 ... (``opts.growth``: x4 with --quick) up to
    ``opts.max_channels``, then bisection between the last pass and the
    first failure (``opts.bisect_steps`` at most; None = until exact)."""
    points: list[dict] = []

    def run(n: int) -> bool:
        for attempt in range(opts.retries + 1):
            p = run_point(rig, model, n, opts.seconds, opts, early_stop=opts.early_stop,
                          tag=f"[{len(points) + 1}] ")
            p["attempt"] = attempt + 1
            points.append(p)
            save()
            if p["ok"]:
                return True
        return False

    if opts.channels:  # given counts, no search
        best = 0
        for n in opts.channels:
            if run(n):
                best = max(best, n)
        return {"model": model, "period": rig.period, "capacity": best, "search": "given counts",
                "exact": True, "points": points}
    lo, hi = 0, None
    n = 1
    while n <= opts.max_channels:
        if run(n):
            lo = n
            if n == opts.max_channels:
                break
            n = min(opts.growth * n, opts.max_channels)
        else:
            hi = n
            break
    steps = 0
    while hi is not None and hi - lo > 1 and (opts.bisect_steps is None or steps < opts.bisect_steps):
        mid = (lo + hi) // 2
        steps += 1
        if run(mid):
            lo = mid
        else:
            hi = mid
    exact = hi is None or hi - lo <= 1
    return {"model": model, "period": rig.period, "capacity": lo, "first_fail": hi, "exact": exact,
            "search": (("doubling" if opts.growth == 2 else f"x{opts.growth} steps") + " + bisection"
                       + ("" if exact else f" (stopped after {steps} step(s): between {lo} and {hi})")),
            "points": points}


# --------------------------------------------------------------------------
# report


def jackd_version() -> str | None:
    """The first line of ``jackd --version`` (None when it cannot be run)."""
    try:
        return subprocess.run(["jackd", "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except Exception:
        return None


def busy_processes(limit: int = 5) -> list[str]:
    """The other processes using the most CPU right now (ps), for the record."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,ni,comm,args", "--sort=-pcpu", "--no-headers"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()
    except Exception:
        return []
    me = str(os.getpid())
    rows = [ln.strip()[:140] for ln in out if me not in ln and "bench/live.py" not in ln]
    return rows[:limit]


def _late_summary(p: dict) -> str:
    """``daemon/player/recorder/driver``: how many xrun cycles jackd found
    each still running (or, for the driver, waking late)."""
    js = p.get("jackd_says")
    if not js:
        return "-"
    nf = js.get("not_finished", {})
    run = lambda who: sum(v.get("Running", 0) for k, v in nf.items() if who(k))  # noqa: E731
    d = run(lambda k: k.startswith("qcb") and not k.startswith("qcbench"))
    pl = run(lambda k: k == "qcbench")
    r = run(lambda k: k == "qcbench-rec")
    return f"{d}/{pl}/{r}/{js.get('driver_late', 0)}"


def _fmt_share(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(res: dict) -> str:
    m = res["machine"]
    out = [f"quietcast live benchmark  {res['date']}  ({res['mode']})",
           f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, python {m['python']}, {m['jackd']}",
           f"NOTE: {res['note']}",
           f"daemon: {res['daemon_mode_text']}; features: {res['features']}"
           + (" (control socket and MIDI off)" if res["features"] == "engine" else " (control socket and MIDI on)")
           + ", no state file",
           f"input: {res['input']}", ""]
    cap = res.get("capacity")
    if cap:
        out.append(f"Capacity: largest channel count with 0 xruns and 0 deadline misses over {res['seconds_per_point']:g} s "
                   f"(after {res['settle_s']:g} s warm-up); cb = the JACK process callback's own time / period; hop = "
                   "engine time per 10 ms hop")
        rows = []
        for c in cap["results"]:
            best = next((p for p in reversed(c["points"]) if p["ok"] and p["channels"] == c["capacity"]), None)
            fails = [p for p in c["points"] if not p["ok"]]
            tried = " ".join(f"{p['channels']}{'+' if p['ok'] else 'x'}" for p in c["points"])
            ff = fails[-1]["fail"] if fails else ""
            capstr = str(c["capacity"]) + ("" if c.get("exact", True) else f" (<{c.get('first_fail')})")
            cb = (best or {}).get("cb_load") or {}
            hp = (best or {}).get("hop_ms") or {}
            rows.append([c["model"], str(c["period"]), f"{1000 * c['period'] / SR:.2f}", capstr,
                         f"{_fmt_share(cb.get('p50'))} / {_fmt_share(cb.get('p99'))}",
                         f"{_fmt_ms(hp.get('p50'))} / {_fmt_ms(hp.get('p99'))}",
                         str((best or {}).get("daemon_cpu_pct", "-")), tried, ff[:60]])
        for s in cap.get("skipped", []):
            rows.append([s["model"], "-", "-", "skipped", "", "", "", "", s["reason"][:90]])
        out.append(fmt_table(["model", "period", "ms", "capacity", "cb p50 / p99 @cap", "hop ms p50 / p99 @cap",
                              "cpu% @cap", "tried (+ pass, x fail)", "last failure"], rows))
        out.append("")
        out.append("Every point (cb load = callback time / period over every cycle of the window)")
        rows = []
        for c in cap["results"]:
            for p in c["points"]:
                cb = p.get("cb_load") or {}
                hp = p.get("hop_ms") or {}
                rows.append([p["model"], str(p["period"]), str(p["channels"]), "pass" if p["ok"] else "FAIL",
                             str(p.get("xruns", "-")), str(p.get("deadline_misses", "-")),
                             f"{_fmt_share(cb.get('p50'))} / {_fmt_share(cb.get('p99'))} / {_fmt_share(cb.get('max'))}",
                             f"{_fmt_ms(hp.get('p50'))} / {_fmt_ms(hp.get('p99'))} / {_fmt_ms(hp.get('max'))}",
                             _late_summary(p), str(p.get("daemon_cpu_pct", "-")), f"{p.get('seconds_run', 0):.0f}",
                             "-" if p.get("out_level_db") is None else f"{p['out_level_db']:+.1f}",
                             f"{p['load_avg'][0]:.1f}",
                             "-" if not p.get("machine_cpu") else f"{p['machine_cpu']['idle_pct']:.0f}%"])
        out.append(fmt_table(["model", "period", "ch", "result", "xruns", "misses", "cb p50 / p99 / max",
                              "hop ms p50 / p99 / max", "late d/p/r/drv", "cpu%", "s", "out dB", "load", "idle"],
                             rows))
        out.append("  xruns: JACK xrun notifications to the bench's player client in the window (JACK2 may send several\n"
                   "    per late cycle); misses: the daemon's deadline_misses counter over the same window\n"
                   "  late d/p/r/drv: from jackd's log (approximate: written asynchronously): xrun cycles in which the\n"
                   "    daemon / the bench player / the bench recorder was still running, and cycles in which jackd's\n"
                   "    own driver thread woke late (pure scheduling delay); see jackd_says in the JSON\n"
                   "  out dB: level of channel c0's output relative to its input over the same 4 s (suppression: < 0)\n"
                   "  cpu%: the daemon process's CPU time / wall time (100% = one core); load: 1-min load average;\n"
                   "    idle: share of the machine's CPU time left idle during the point (all cores, /proc/stat)\n"
                   "  s: seconds measured (a failing point stops at its first xrun or deadline miss)")
        out.append("")
    soak = res.get("soak")
    if soak:
        p = soak
        out.append(f"Soak: {p['channels']} channels, period {p['period']}, model {p.get('model_resolved') or p['model']}, "
                   f"{p.get('seconds_run', 0):.0f} s (targets: 0 xruns, 0 deadline misses, flat memory)")
        r = p.get("rss_mb") or {}
        hp = p.get("hop_ms") or {}
        cb = p.get("cb_load") or {}
        rows = [["xruns", str(p.get("xruns", "?"))],
                ["deadline misses", str(p.get("deadline_misses", "?"))],
                ["RSS first -> last", f"{r.get('first', '?')} -> {r.get('last', '?')} MB ({r.get('growth', 0):+.2f} MB, "
                                      f"{len(p.get('rss_samples', []))} samples every {RSS_EVERY_S:g} s)"],
                ["RSS slope", f"{r.get('slope_mb_per_h', '-')} MB/hour (all samples), "
                              f"{r.get('slope_after_60s_mb_per_h', '-')} MB/hour (after the first minute)"
                              + ("  [too short to judge a slope]" if p.get("seconds_run", 0) < 300 else "")],
                ["memory flat?", str(p.get("memory_flat"))],
                ["engine hop time p50 / p99 / max", f"{_fmt_ms(hp.get('p50'))} / {_fmt_ms(hp.get('p99'))} / "
                                                    f"{_fmt_ms(hp.get('max'))} ms (of a 10 ms hop)"],
                ["callback load p50 / p99", f"{_fmt_share(cb.get('p50'))} / {_fmt_share(cb.get('p99'))}"],
                ["daemon CPU", f"{p.get('daemon_cpu_pct', '?')}% of one core"],
                ["machine idle / steal", "-" if not p.get("machine_cpu") else
                 f"{p['machine_cpu']['idle_pct']}% / {p['machine_cpu']['steal_pct']}% (all cores, during the soak)"],
                ["result", "PASS" if p.get("targets_met") else f"FAIL ({p.get('fail') or 'memory not flat'})"]]
        out.append(fmt_table(["soak", "value"], rows))
        out.append(f"  memory flat = growth <= {res['flat_rule']}")
        out.append("")
    out += report_end(res)
    return "\n".join(out)


# --------------------------------------------------------------------------
# main


def neural_available() -> tuple[bool, str]:
    """Whether ``create_suppressor("neural", 1)`` works here (in a fresh
    interpreter: torch is not loaded into this process)."""
    from quietcast.models import available_models

    if "neural" not in available_models():
        return False, "not in available_models()"
    code = "from quietcast.models import create_suppressor; create_suppressor('neural', 1)"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "building it took over 300 s"
    if r.returncode == 0:
        return True, ""
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return False, f"cannot be built here: {last[:200]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (~3 min): 10 s a point, counts 1, 4, 16 ... then 2 bisection "
                                                           "steps, 30 s soak")
    ap.add_argument("--only", choices=["capacity", "soak"], help="run one part only")
    ap.add_argument("--seconds", type=float, default=None,
                    help="measured seconds per capacity point (default 60, --quick 10)")
    ap.add_argument("--soak-seconds", type=float, default=None, help="soak length (default 600, --quick 30)")
    ap.add_argument("--settle", type=float, default=None, help="warm-up seconds before measuring (default 3, --quick 2)")
    ap.add_argument("--periods", default="128,256,512", help="JACK periods for the capacity search (default 128,256,512)")
    ap.add_argument("--models", default=None,
                    help="suppressors for the capacity search (default: dsp, and neural when it can be built here)")
    ap.add_argument("--channels", default=None, help="run these channel counts (comma list) instead of searching")
    ap.add_argument("--max-channels", type=int, default=256, help="cap of the search (default 256)")
    ap.add_argument("--bisect-steps", type=int, default=None, help="at most this many bisection steps (default: until "
                                                                   "exact; --quick 2)")
    ap.add_argument("--growth", type=int, default=None, help="factor between channel counts before bisecting "
                                                             "(default 2: 1, 2, 4, 8 ...; --quick 4: 1, 4, 16 ...)")
    ap.add_argument("--retries", type=int, default=0, help="re-run a failing point this many times before calling it a "
                                                           "failure (default 0: the target is 0 xruns)")
    ap.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                    help="run failing points to the end (default: stop at the first xrun/miss)")
    ap.add_argument("--soak-channels", type=int, default=8, help="channels of the soak (default 8)")
    ap.add_argument("--soak-period", type=int, default=256, help="JACK period of the soak (default 256)")
    ap.add_argument("--soak-model", default="default", help="suppressor of the soak (default: 'default', the shipped one)")
    ap.add_argument("--daemon", choices=["child", "cli", "thread"], default="child",
                    help="how the daemon runs: child (default: a subprocess that reports counters over a pipe), "
                         "cli (`quietcast run`: counters from its final status log line), thread (in this process)")
    ap.add_argument("--realtime", action="store_true",
                    help="jackd --realtime (SCHED_FIFO for jackd and every client's process thread) instead of "
                         "--no-realtime (the tests' setting)")
    ap.add_argument("--features", choices=["engine", "all"], default="engine",
                    help="engine (default): the daemon's control socket and MIDI off, the live engine alone; all: "
                         "control and MIDI on as shipped (private endpoints). The state file is always off")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds for the daemon's ports to appear")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temporary folder with the jackd, daemon and player logs and configs")
    ap.add_argument("--note", default="", help="added to the machine note in the output")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "live.json"),
                    help="JSON output (default bench/out/live.json)")
    ap.add_argument("--daemon-child", metavar="CFG", help=argparse.SUPPRESS)
    ap.add_argument("--source-child", nargs=2, metavar=("SERVER", "SHM"), help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.daemon_child:
        return daemon_child(opts.daemon_child)
    if opts.source_child:
        return source_child(*opts.source_child)

    q = opts.quick
    opts.seconds = opts.seconds if opts.seconds is not None else (10.0 if q else 60.0)
    opts.soak_seconds = opts.soak_seconds if opts.soak_seconds is not None else (30.0 if q else 600.0)
    opts.settle = opts.settle if opts.settle is not None else (2.0 if q else 3.0)
    if opts.bisect_steps is None and q:
        opts.bisect_steps = 2
    opts.growth = opts.growth or (4 if q else 2)
    if opts.growth < 2:
        ap.error("--growth must be 2 or more")
    periods = [int(p) for p in opts.periods.split(",") if p.strip()]
    opts.channels = [int(c) for c in opts.channels.split(",")] if opts.channels else None
    if not 1 <= opts.max_channels <= 256:
        ap.error("--max-channels must be 1..256 (the config allows at most 256 channels)")
    sys.setswitchinterval(0.0005)  # (--daemon thread: the daemon's callback needs this process's GIL every period)

    from quietcast.daemon import service

    import inspect

    has_final = FINAL_STATUS_MARK in inspect.getsource(service.Daemon.run)
    note = (machine_note()
            + ("jackd runs --realtime (SCHED_FIFO audio threads) on the dummy driver" if opts.realtime else
               "jackd runs --no-realtime on the dummy driver, so other processes compete with the audio threads")
            + ": xruns may come from other load and the figures are pessimistic")
    if opts.note:
        note += "; " + opts.note
    modes = {"child": "subprocess `bench/live.py --daemon-child` (Daemon.run as in `quietcast run`; counters over a pipe)",
             "cli": "subprocess `quietcast run -c CFG`; counters from its shutdown log line" +
                    ("" if has_final else " -- ABSENT in this daemon: xruns from the bench client only, no deadline misses"),
             "thread": "Daemon on a thread of the bench process (shares its GIL with the player: pessimistic)"}
    opts.tmp = tempfile.mkdtemp(prefix="qcbench-live-")
    res: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if q else "full",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(("numpy", "JACK-Client", "pedalboard", "torch", "quietcast"),
                                extra={"jackd": jackd_version()}),
        "note": note, "load_start": [round(x, 2) for x in os.getloadavg()],
        "other_processes": busy_processes(),
        "daemon_mode": opts.daemon, "daemon_mode_text": modes[opts.daemon], "features": opts.features,
        "daemon_config_example": config_text("SERVER", "qcb1", "dsp", 1, opts.features, opts.tmp),
        "daemon_logs_final_status": has_final,
        "input": "?",
        "seconds_per_point": opts.seconds, "settle_s": opts.settle,
        "flat_rule": "max(2 MB, 1% of the first sample) between the first and last RSS sample",
        "targets": {"xruns": 0, "deadline_misses": 0, "memory": "flat"},
    }
    save = result_saver(res, opts.out)

    if opts.daemon == "cli" and not has_final:
        log("NOTE: `quietcast run` logs no final status line: deadline misses and timings are not available in this "
            "mode (use --daemon child)")
    rigs: dict[int, Rig] = {}

    def rig_for(period: int) -> Rig:
        # one server at a time: libjack (JACK2 1.9.21) crashed this process when a client of a second
        # server was opened while the first server's clients were still active
        for P in [P for P in rigs if P != period]:
            rigs.pop(P).close()
        if period not in rigs:
            rigs[period] = Rig(period, opts.tmp, realtime=opts.realtime)
            res["input"] = f"{rigs[period].input_text}; {N_SOURCES} player outputs at different offsets, fanned out"
            log(f"JACK server {rigs[period].server.name}: period {period} ({1000 * period / SR:.2f} ms)")
        return rigs[period]

    t_start = time.monotonic()
    try:
        if opts.only in (None, "capacity"):
            skipped = []
            if opts.models:
                models = [m.strip() for m in opts.models.split(",") if m.strip()]
            else:
                models = ["dsp"]
                ok, why = neural_available()
                if ok:
                    models.append("neural")
                else:
                    skipped.append({"model": "neural", "reason": why})
                    log(f"neural: skipped ({why})")
            res["capacity"] = {"models": models, "periods": periods, "results": [], "skipped": skipped,
                               "rule": "0 xruns and 0 deadline misses over the window"}
            for P in periods:
                for model in models:
                    c = search_capacity(rig_for(P), model, opts, save)
                    res["capacity"]["results"].append(c)
                    log(f"capacity {model} period {P}: {c['capacity']} channel(s) ({c['search']})")
                    save()
        if opts.only in (None, "soak"):
            log(f"soak: {opts.soak_channels} channels, period {opts.soak_period}, model {opts.soak_model}, "
                f"{opts.soak_seconds:g} s")
            p = run_point(rig_for(opts.soak_period), opts.soak_model, opts.soak_channels, opts.soak_seconds, opts,
                          early_stop=False, tag="[soak] ")
            r = p.get("rss_mb") or {}
            if r:
                p["memory_flat"] = abs(r["growth"]) <= max(2.0, 0.01 * r["first"])
            p["targets_met"] = bool(p["ok"] and p.get("memory_flat"))
            res["soak"] = p
            save()
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
        res["interrupted"] = True
    finally:
        for r in rigs.values():
            r.close()
        drop_tmp(opts.tmp, opts.keep_logs, log, " (jackd, each daemon, the player/recorder process)")
    finish(res, opts.out, t_start, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
