"""Control benchmark (issue 4): round-trip latency of ZeroMQ commands and
MIDI-to-parameter latency while the daemon plays audio.

    python bench/control.py --quick            # 10 s loaded window (+ 5 s idle baseline)
    python bench/control.py                    # 30 s loaded window (+ 10 s idle baseline)
    python bench/control.py --seconds 60 --zmq-rate 1000 --midi-rate 1000
    python bench/control.py --split            # also each stream alone, before both together
    python bench/control.py --state off        # the daemon without its state file (for comparison)
    python bench/control.py --meter-hz 60      # [control] meter_hz (the event loop's idle tick)

What runs (every process its own, so no two share a GIL; all started with
``setpriv --pdeathsig TERM`` so none outlives the bench):

- a PRIVATE jackd (``quietcast.daemon.jackclients.jackd_command``: dummy
  driver, 48 kHz, period 256; realtime where the system allows it), stopped
  with SIGTERM at the end;
- a player (``--source-child``): 4 JACK outputs looping the bundled noisy
  demo clip at 4 offsets (bench/live.py's LoopPlayer);
- the daemon: ``quietcast run -c CFG`` (a real process), 4 channels
  (host, guest, music, phone), model ``dsp``, control on ipc:// sockets and
  MIDI on, a mapping file written for the run (CC 7 on MIDI channel 1 ->
  ``host.strength``, linear, ``takeover = "jump"``), its state file and
  sockets in a temporary folder (RUNTIME_DIRECTORY, XDG_STATE_HOME). Its
  ``connect_in`` rules connect player output i to channel i; the outputs
  are connected nowhere;
- a ZeroMQ load (``--zmq-child``): one DEALER socket, ``set`` commands
  paced at ``--zmq-rate`` (absolute schedule: a late send is caught up, not
  dropped), pipelined (it never waits for a reply before the next send),
  each with its own ``id``; RTT = the reply's arrival minus its send time,
  both stamped in that process (poll wakes on the reply);
- a MIDI controller (``--midi-child``): python-rtmidi's JACK API, CC 7 on
  channel 1 paced at ``--midi-rate``, patched into the daemon's MIDI input
  (``CLIENT-midi-in:in``); values ``(37 k + c) % 128``, so consecutive
  values always differ;
- an event tap (``--events-child``): a SUB socket on the daemon's PUB
  stream (``event.``) stamping each message on arrival. MIDI latency = the
  arrival of the ``event.param`` with source ``midi`` minus the send time
  of the CC that carried that value (matched in order: the daemon's MIDI
  dispatcher is one FIFO thread), so it includes JACK MIDI (up to one
  period), the daemon's MIDI bridge process, the dispatcher, the registry
  and the publishing of the event.

Phases: an idle baseline (ZeroMQ and MIDI at ``--idle-rate``, 20/s each),
then (``--split``) each stream alone at its load rate, then the load (both
at 1,000/s at the same time). Before each loaded window the bench waits
until the daemon has answered what the previous one left queued. A reply
that has not come 5 s after the last send is counted as missing (it is
still queued in the daemon: the daemon answers in order, so RTTs then
grow with the backlog). For each window the
daemon's own counters come from ``Client.status()`` (what ``quietcast ctl
status`` shows) just before and just after: xruns, deadline misses, missed
frames, late and skipped hops; plus the daemon's CPU use and what jackd
logged about xruns.

All clocks are CLOCK_MONOTONIC (``time.monotonic()``), shared by every
process on the machine. Prints a table and writes bench/out/control.json.

Caveats: the dummy driver with other work on the machine (2 cores here)
means xruns can come from other processes; the bench's own processes (the
two senders, the tap, the player) compete for the same cores as the
daemon: the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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
from common import (HERE, SR, drop_tmp, finish, fmt_table, machine_info, machine_note,  # noqa: E402
                    read_final_status, report_end, result_saver)
import live  # noqa: E402  (bench/live.py: the player, process helpers)
from live import _Pipe, _cpu_times, _machine_busy, _proc_cpu_s, _proc_rss_mb, _tail, _with_parent  # noqa: E402

MIDI_CC = 7          # CC 7 (volume) on MIDI channel 1 drives the mapped address
MIDI_CHANNEL = 1
MIDI_STEP = 37       # coprime with 128: 128 consecutive messages carry 128 different values


def log(msg: str) -> None:
    print(f"[{os.path.basename(sys.argv[0]).replace('.py', '')} {time.strftime('%H:%M:%S')}] {msg}",
          file=sys.stderr, flush=True)


def say(kind: str, body: dict | None = None) -> None:
    """A child's report line, read by live._Pipe in the bench process."""
    sys.stdout.write(f"QCBENCH {kind} {json.dumps(body or {})}\n")
    sys.stdout.flush()


def this_script() -> str:
    return os.path.abspath(__file__)


# --------------------------------------------------------------------------
# the private JACK server


def jack_env(server: str | None = None) -> dict:
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
    if server:
        env["JACK_DEFAULT_SERVER"] = server
    return env


class JackServer(live.JackServer):
    """A private ``jackd -d dummy`` started with
    ``quietcast.daemon.jackclients.jackd_command`` (``-R`` where the system
    allows realtime, else ``--no-realtime``). Probed with ``jack_lsp`` in a
    subprocess, so the bench process never loads libjack (its clients would
    not survive a server restart). ``kill9()`` crashes it; ``start()`` again
    brings it back under the same name. ``stop()`` is SIGTERM."""

    def __init__(self, period: int = 256, rate: int = SR, log_dir: str = "/tmp", tag: str = "qcbench"):
        from quietcast.daemon.jackclients import realtime_allowed

        super().__init__(period, rate, log_dir, realtime=realtime_allowed())
        self.name = f"{tag}{os.getpid()}{uuid.uuid4().hex[:4]}"
        self.log = os.path.join(log_dir, f"{self.name}.log")
        self.starts = 0

    def command(self) -> list[str]:
        from quietcast.daemon.jackclients import jackd_command

        exe = shutil.which("jackd")
        if not exe:
            raise RuntimeError("jackd is not installed (Debian: apt-get install jackd2)")
        return jackd_command(exe, self.name, self.rate, self.period)

    def start(self, timeout: float = 20.0) -> "JackServer":
        cmd = self.command()
        self.proc = subprocess.Popen(_with_parent(cmd), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     env=jack_env(), start_new_session=True)
        self.starts += 1
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.answers():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited ({self.proc.returncode}): {_tail(self.log, 1500)}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"jackd {self.name} did not start in {timeout:g} s")

    def answers(self) -> bool:
        return self.ports() is not None

    def ports(self, *filters: str) -> list[str] | None:
        """Port names (jack_lsp), or None when the server does not answer."""
        try:
            r = subprocess.run(["jack_lsp", "-s", self.name, *filters], capture_output=True, text=True, timeout=10,
                               env=jack_env(self.name))
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0 or "JACK server not running" in r.stderr or "not running" in r.stdout[:200]:
            return None
        return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]

    def connect(self, src: str, dst: str) -> bool:
        r = subprocess.run(["jack_connect", "-s", self.name, src, dst], capture_output=True, text=True, timeout=10,
                           env=jack_env(self.name))
        return r.returncode == 0 or "already" in (r.stderr + r.stdout).lower()

    def wait_port(self, port: str, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if port in (self.ports(port) or []):
                return True
            time.sleep(0.1)
        return False

    def kill9(self) -> None:
        """Crash it (SIGKILL), as a failing server would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


# --------------------------------------------------------------------------
# the daemon: `quietcast run -c CFG` in its own process


def daemon_env(tmp: str, server: str) -> dict:
    """The daemon's environment: runtime and state folders inside ``tmp``
    (never the user's), no $STATE_DIRECTORY, no $QUIETCAST_* settings."""
    run, state = os.path.join(tmp, "run"), os.path.join(tmp, "state")
    os.makedirs(run, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    env = {k: v for k, v in jack_env(server).items() if not k.startswith("QUIETCAST_") and k != "STATE_DIRECTORY"}
    env.update(RUNTIME_DIRECTORY=run, XDG_STATE_HOME=state, OMP_NUM_THREADS="1")
    return env


def control_endpoints(tmp: str) -> tuple[str, str]:
    run = os.path.join(tmp, "run")
    return f"ipc://{run}/control", f"ipc://{run}/events"


class DaemonProc:
    """``quietcast run -c CFG`` (the console script beside this interpreter:
    its pid is the daemon's own Python process), log to a file."""

    def __init__(self, cfg_path: str, log_path: str, env: dict):
        self.cmd = [live.quietcast_exe(), "run", "-c", cfg_path]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(_with_parent(self.cmd), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> dict | None:
        """SIGTERM (fade out, save, exit 0); returns the ``final status:``
        JSON of its log, or None."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.final_status()

    def final_status(self) -> dict | None:
        return read_final_status(self.log_path)

    def children(self) -> list[int]:
        """Direct child processes (the MIDI bridge)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []


def client_for(tmp: str, timeout: float = 5.0):
    from quietcast.daemon.client import Client

    cmd, ev = control_endpoints(tmp)
    return Client(endpoint=cmd, events_endpoint=ev, timeout=timeout)


def wait_ready(client, daemon: DaemonProc, timeout: float = 120.0) -> dict:
    """Poll ``status`` until ``ready``; returns that status."""
    from quietcast.daemon.errors import ControlError

    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited ({daemon.proc.returncode}): {_tail(daemon.log_path, 2000)}")
        try:
            st = client.status()
            last = st
            if st.get("ready"):
                return st
        except ControlError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the daemon was not ready after {timeout:g} s (last status {str(last)[:300]}): "
                       f"{_tail(daemon.log_path, 1500)}")


COUNTERS = ("xruns", "deadline_misses", "missed_frames", "hops", "late_hops", "skipped_hops", "stalls", "cycles")


def counter_delta(a: dict, b: dict) -> dict:
    """What the daemon's counters did between two statuses (same JACK
    connection: they restart at a reconnect)."""
    out = {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in COUNTERS if k in b}
    ca, cb = a.get("control") or {}, b.get("control") or {}
    if cb:
        out["control_requests"] = cb.get("requests", 0) - ca.get("requests", 0)
        out["control_errors"] = cb.get("errors", 0) - ca.get("errors", 0)
    return out


def slim_status(st: dict) -> dict:
    return {k: v for k, v in st.items() if k not in ("meters", "params")}


# --------------------------------------------------------------------------
# children: the player, the ZeroMQ load, the MIDI controller, the event tap


def source_child(server: str, name: str) -> int:
    """``--source-child SERVER NAME``: 4 outputs looping the demo clip."""
    import jack

    sys.setswitchinterval(0.0005)
    signals, src = live.make_signals()
    player = live.LoopPlayer(server, signals, name=name)
    say("READY", {"outs": [player.name(k) for k in range(signals.shape[0])], "source": src, "pid": os.getpid()})
    try:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
    finally:
        try:
            player.close()
        except jack.JackError:
            pass
    say("XRUNS", {"xruns": int(player.counters[0])})
    return 0


def zmq_child(endpoint: str) -> int:
    """``--zmq-child ENDPOINT``: on ``go {json}`` send ``n`` paced,
    pipelined ``set`` commands (``rate``/s from monotonic ``t0``, addresses
    and values in turn); stamp every send and reply; write ``out`` (npz)
    and say DONE with a summary."""
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = 0
    sock.connect(endpoint)
    base = 0
    say("READY", {"pid": os.getpid()})
    for line in sys.stdin:
        cmd, _, body = line.strip().partition(" ")
        if cmd == "quit":
            break
        if cmd != "go":
            continue
        doc = json.loads(body)
        n, rate, t0 = int(doc["n"]), float(doc["rate"]), float(doc["t0"])
        addrs, vals = doc["addresses"], doc["values"]
        base += 10_000_000
        t_send = np.full(n, np.nan)
        t_recv = np.full(n, np.nan)
        ok = np.zeros(n, bool)
        codes: dict[str, int] = {}
        reqs = [json.dumps({"v": 1, "id": base + k, "cmd": "set",
                            "args": {"address": addrs[k % len(addrs)], "value": vals[k % len(vals)]}},
                           separators=(",", ":")).encode() for k in range(n)]
        k = 0
        got = 0
        stray = 0
        grace = float(doc.get("grace_s", 5.0))
        end_wait = None
        while True:
            now = time.monotonic()
            while k < n and now >= t0 + k / rate:  # due: send (a late one is caught up at once)
                t_send[k] = time.monotonic()
                sock.send(reqs[k])
                k += 1
                now = time.monotonic()
            if k >= n:
                if got >= n:
                    break
                if end_wait is None:
                    end_wait = now + grace
                elif now > end_wait:
                    break
                wait_ms = 50
            else:
                wait_ms = max(0, math.ceil((t0 + k / rate - now) * 1000))
            if sock.poll(wait_ms, zmq.POLLIN):
                while True:
                    try:
                        raw = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = time.monotonic()
                    try:
                        rep = json.loads(raw)
                        i = int(rep.get("id")) - base
                    except (ValueError, TypeError):
                        stray += 1
                        continue
                    if not 0 <= i < n or not math.isnan(t_recv[i]):
                        stray += 1
                        continue
                    t_recv[i] = t
                    got += 1
                    ok[i] = bool(rep.get("ok"))
                    if not ok[i]:
                        c = (rep.get("error") or {}).get("code", "?")
                        codes[c] = codes.get(c, 0) + 1
        np.savez(doc["out"], t_send=t_send, t_recv=t_recv, ok=ok)
        say("DONE", {"sent": k, "replies": got, "errors": codes, "stray": stray})
    sock.close(0)
    return 0


def midi_child(name: str) -> int:
    """``--midi-child NAME`` (server from $JACK_DEFAULT_SERVER): a
    python-rtmidi JACK output ``NAME:out``. ``send RAW`` sends one CC;
    ``go {json}`` sends ``n`` CCs paced at ``rate``/s from ``t0``
    (values ``(start + 37 k) % 128``), stamping each send; writes ``out``
    (npz), says DONE. Exits at once (after saving what it sent) when the
    server goes away: rtmidi's JACK client does not survive it."""
    import jack
    import rtmidi

    dead = threading.Event()
    watch = jack.Client(name + "-watch", no_start_server=True)
    watch.set_shutdown_callback(lambda status, reason: dead.set())
    mo = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
    mo.open_virtual_port("out")
    port = next((p.name for p in watch.get_ports(is_midi=True, is_output=True) if p.name.startswith(name + ":")),
                f"{name}:out")
    cmds: queue.SimpleQueue = queue.SimpleQueue()
    abort = threading.Event()

    def read_stdin():
        for ln in sys.stdin:
            if ln.strip() == "abort":
                abort.set()
            else:
                cmds.put(ln.strip())
        abort.set()
        cmds.put("quit")

    threading.Thread(target=read_stdin, daemon=True).start()
    status = 0xB0 | (MIDI_CHANNEL - 1)
    say("READY", {"port": port, "pid": os.getpid()})
    while True:
        try:
            line = cmds.get(timeout=0.1)
        except queue.Empty:
            if dead.is_set():
                say("DEAD", {})
                os._exit(3)
            continue
        cmd, _, body = line.partition(" ")
        if cmd == "quit":
            break
        if cmd == "send":
            mo.send_message([status, MIDI_CC, int(body)])
            continue
        if cmd != "go":
            continue
        doc = json.loads(body)
        n, rate, t0 = int(doc["n"]), float(doc["rate"]), float(doc["t0"])
        raw = ((int(doc.get("start", 0)) + MIDI_STEP * np.arange(n)) % 128).astype(np.int64)
        t_send = np.full(n, np.nan)
        abort.clear()
        aborted = False
        for k in range(n):
            d = t0 + k / rate - time.monotonic()
            if d > 0:
                time.sleep(d)
            if dead.is_set() or abort.is_set():
                aborted = True
                break
            t_send[k] = time.monotonic()
            mo.send_message([status, MIDI_CC, int(raw[k])])
        sent = int(np.isfinite(t_send).sum())
        np.savez(doc["out"], t_send=t_send, raw=raw)
        say("DONE", {"sent": sent, "aborted": aborted, "server_gone": dead.is_set()})
        if dead.is_set():
            os._exit(3)
    try:
        mo.close_port()
        mo.delete()
        watch.close()
    except Exception:
        pass
    os._exit(0)


def events_child(endpoint: str) -> int:
    """``--events-child ENDPOINT``: a SUB socket on ``event.``; every
    message stamped on arrival. ``event.param`` with source ``midi``: kept
    (time, address, value); others counted by source; ``event.state`` and
    ``event.xrun`` kept. ``dump PATH`` writes what was gathered since the
    previous dump (json) and says DUMPED; ``count`` says COUNT (clears
    nothing); ``nokeep``: from then on ``event.param`` is only counted (a
    long run); FIRST is said on the first message."""
    import zmq

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0  # our side never drops; the daemon's PUB drops past its own high-water mark
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"event.")
    cmds: queue.SimpleQueue = queue.SimpleQueue()

    def read_stdin():
        for ln in sys.stdin:
            cmds.put(ln.strip())
        cmds.put("quit")

    threading.Thread(target=read_stdin, daemon=True).start()

    def fresh():
        return {"midi_t": [], "midi_v": [], "midi_addr": [], "by_source": {}, "state": [], "xrun": [],
                "zmq_t": [], "first_t": None, "last_t": None}

    acc = fresh()
    first = False
    keep = True  # "nokeep": count only (long runs)
    say("READY", {"pid": os.getpid()})
    while True:
        try:
            line = cmds.get_nowait()
        except queue.Empty:
            line = None
        if line is not None:
            cmd, _, arg = line.partition(" ")
            if cmd == "quit":
                break
            if cmd == "nokeep":
                keep = False
            elif cmd == "count":
                say("COUNT", {"midi": acc["by_source"].get("midi", 0), "by_source": acc["by_source"]})
            elif cmd == "dump":
                with open(arg, "w") as f:
                    json.dump(acc, f)
                say("DUMPED", {"midi": len(acc["midi_t"]), "by_source": acc["by_source"]})
                acc = fresh()
            continue
        if not sub.poll(50, zmq.POLLIN):
            continue
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            t = time.monotonic()
            if len(frames) < 2:
                continue
            topic = frames[0].decode("utf-8", "replace")
            try:
                doc = json.loads(frames[1])
            except ValueError:
                continue
            if acc["first_t"] is None:
                acc["first_t"] = t
            acc["last_t"] = t
            if topic == "event.param":
                src = str(doc.get("source"))
                acc["by_source"][src] = acc["by_source"].get(src, 0) + 1
                if src == "midi":
                    if keep or len(acc["midi_t"]) < 1000:
                        acc["midi_t"].append(t)
                        acc["midi_v"].append(doc.get("value"))
                        acc["midi_addr"].append(doc.get("address"))
                elif src == "zmq" and keep:
                    acc["zmq_t"].append(t)
            elif topic == "event.state":
                acc["state"].append([t, doc])
            elif topic == "event.xrun":
                acc["xrun"].append([t, doc])
            if not first:
                first = True
                say("FIRST", {"topic": topic})
    sub.close(0)
    return 0


class Child:
    """A child process of this bench (one of the ``--*-child`` modes of
    ``script``) with the QCBENCH line protocol."""

    def __init__(self, args: list[str], log_path: str, env: dict | None = None, script: str | None = None,
                 ready_timeout: float = 60.0):
        self.log_path = log_path
        cmd = [sys.executable, script or this_script(), *args]
        self.proc = subprocess.Popen(_with_parent(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log_path, "a"), text=True, bufsize=1, env=env)
        self.pid = self.proc.pid
        self.pipe = _Pipe(self.proc)
        self.ready = self.pipe.wait("READY", ready_timeout)
        if self.ready is None:
            self.close()
            raise RuntimeError(f"child {' '.join(args[:1])} did not start: {_tail(log_path, 1500)}")

    def send(self, line: str) -> bool:
        return self.pipe.send(line)

    def wait(self, kind: str, timeout: float) -> dict | None:
        return self.pipe.wait(kind, timeout)

    def go(self, doc: dict) -> bool:
        return self.send("go " + json.dumps(doc))

    def close(self, line: str = "quit", timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.pipe.send(line)
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------
# figures


def pct(a, q) -> float | None:
    return round(float(np.percentile(a, q)), 3) if len(a) else None


def lat_summary(ms: np.ndarray) -> dict:
    ms = np.asarray(ms, np.float64)
    ms = ms[np.isfinite(ms)]
    if not len(ms):
        return {"n": 0}
    return {"n": int(len(ms)), "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
            "p999_ms": pct(ms, 99.9), "max_ms": round(float(ms.max()), 3), "mean_ms": round(float(ms.mean()), 3)}


def zmq_figures(path: str, reply: dict | None, rate: float) -> dict:
    d = np.load(path)
    ts, tr, ok = d["t_send"], d["t_recv"], d["ok"]
    sent = np.isfinite(ts)
    rtt = (tr - ts) * 1000.0
    out = {"rate_planned": rate, "sent": int(sent.sum()), "replies": int(np.isfinite(tr).sum()),
           "ok": int(ok.sum()), "errors": (reply or {}).get("errors", {}), "rtt": lat_summary(rtt[ok])}
    if sent.sum() > 1:
        span = float(np.nanmax(ts) - np.nanmin(ts))
        out["rate_achieved"] = round((sent.sum() - 1) / span, 1) if span > 0 else None
        lag = (ts[sent] - (np.nanmin(ts) + np.arange(sent.sum()) / rate)) * 1000.0
        out["send_lag_ms_p99"] = pct(lag, 99)  # how far behind schedule the sender itself ran
    out["missing_replies"] = int(sent.sum() - np.isfinite(tr).sum())
    return out


def match_midi(sent_t: np.ndarray, sent_raw: np.ndarray, ev_t: list, ev_v: list, steps: int = 127) -> dict:
    """Latency of each MIDI message to its ``event.param``: events in
    arrival order against messages in send order; each event is the next
    message (from the current position, within one cycle of 128 values)
    that carried its value. Unmatched events and lost messages counted."""
    ok_sent = np.isfinite(sent_t)
    st, sr = sent_t[ok_sent], sent_raw[ok_sent]
    lat = []
    i = 0
    unmatched = 0
    skipped = 0
    for t, v in zip(ev_t, ev_v):
        try:
            r = int(round(float(v) * steps))
        except (TypeError, ValueError):
            unmatched += 1
            continue
        j = i
        lim = min(len(sr), i + 128)
        while j < lim and sr[j] != r:
            j += 1
        if j < lim and t >= st[j]:
            lat.append((t - st[j]) * 1000.0)
            skipped += j - i
            i = j + 1
        else:
            unmatched += 1
    return {"sent": int(len(st)), "events": len(ev_t), "matched": len(lat), "unmatched_events": unmatched,
            "lost": int(len(st) - len(lat)), "skipped_in_order": skipped, "latency": lat_summary(np.asarray(lat))}


def midi_figures(send_path: str, events: dict, address: str, rate: float) -> dict:
    d = np.load(send_path)
    ts, raw = d["t_send"], d["raw"]
    sel = [k for k, a in enumerate(events["midi_addr"]) if a == address]
    ev_t = [events["midi_t"][k] for k in sel]
    ev_v = [events["midi_v"][k] for k in sel]
    out = {"rate_planned": rate, **match_midi(ts, raw, ev_t, ev_v)}
    sent = np.isfinite(ts)
    if sent.sum() > 1:
        span = float(np.nanmax(ts) - np.nanmin(ts))
        out["rate_achieved"] = round((sent.sum() - 1) / span, 1) if span > 0 else None
    return out


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# --------------------------------------------------------------------------
# the run


CHANNELS = ("host", "guest", "music", "phone")
MIDI_ADDRESS = "host.strength"
ZMQ_ADDRESSES = ("guest.strength", "music.strength", "phone.strength")


def config_text(server: str, client: str, src: str, tmp: str, model: str, state: bool = True,
                meter_hz: float | None = None) -> str:
    s = (f'[jack]\nclient_name = "{client}"\nserver = "{server}"\n'
         f'[engine]\nmodel = "{model}"\nthreads = 1\n'
         '[control]\nenabled = true\nbind = ""\nevents = ""\n'
         + (f"meter_hz = {float(meter_hz)}\n" if meter_hz else "")
         + f'[midi]\nenabled = true\nmapping = "{tmp}/midi.toml"\n'
         f'[state]\nenabled = {"true" if state else "false"}\n')
    for i, name in enumerate(CHANNELS):
        s += f'[[channel]]\nname = "{name}"\nconnect_in = ["{src}:out_{i}"]\nconnect_out = []\n'
    return s


MAPPING = f"""# written by bench/control.py for one run
[[map]]
address = "{MIDI_ADDRESS}"
type = "cc"
channel = {MIDI_CHANNEL}
number = {MIDI_CC}
curve = "linear"
takeover = "jump"
"""


def midi_handshake(midi: Child, events: Child, tmp: str, tries: int = 60) -> bool:
    """Send single CCs until one reaches the event stream (a message sent
    while a connection is being made can be lost; from the first that
    arrives on, none is). Uses the tap's ``count`` (nothing is cleared)."""
    events.send("count")
    base = (events.wait("COUNT", 10) or {}).get("midi", 0)
    for k in range(tries):
        midi.send(f"send {(5 + MIDI_STEP * k) % 128}")
        time.sleep(0.25)
        events.send("count")
        got = events.wait("COUNT", 10) or {}
        if got.get("midi", 0) > base:
            time.sleep(0.3)
            return True
    return False


def tap_handshake(client, events: Child, address: str) -> None:
    """Send ``set ADDRESS 0.5`` (a set makes an event) until the event tap
    hears its first event (at most 100 tries, 0.1 s each): then the tap is
    connected."""
    for _ in range(100):
        client.set(address, 0.5)
        if events.wait("FIRST", 0.1) is not None:
            return
    raise RuntimeError("the event tap heard nothing")


def run_record(quick: bool, argv) -> dict:
    """How the JSON of this bench and bench/soak.py starts: date, mode,
    arguments, the machine (with jackd's version), the load average and the
    busiest other processes at the start."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(("numpy", "JACK-Client", "pyzmq", "python-rtmidi", "quietcast"),
                                extra={"jackd": live.jackd_version()}),
        "load_start": [round(x, 2) for x in os.getloadavg()], "other_processes": live.busy_processes(),
    }


def tear_down(res: dict, children: list[Child], client, daemon: DaemonProc | None, srv: JackServer | None,
              line=lambda c: "quit", warnings: bool = False) -> None:
    """Stop what a run started, last first: the ``children`` (each told
    ``line(child)``, killed when that fails), the control client, the
    daemon (into ``res``: its final status, exit code, with ``warnings``
    its first 40 WARNING/ERROR log lines, and its log's tail), then jackd."""
    for c in reversed(children):
        try:
            c.close(line(c))
        except Exception:
            c.kill()
    if client is not None:
        client.close()
    if daemon is not None:
        res["daemon_final_status"] = daemon.stop()
        res["daemon_exit"] = daemon.proc.returncode
        if warnings:
            try:
                text = open(daemon.log_path, encoding="utf-8", errors="replace").read()
                res["daemon_warnings"] = [ln[:300] for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln][:40]
            except OSError:
                pass
        res["daemon_log_tail"] = _tail(daemon.log_path, 2500)
    if srv is not None:
        srv.stop()


def run_phase(name: str, seconds: float, zmq_rate: float, midi_rate: float, rig: dict, opts) -> dict:
    """One window: ZeroMQ sets and MIDI CCs at the given rates, at the
    same time, for ``seconds``; counters from status before and after."""
    tmp, client, d, srv = opts.tmp, rig["client"], rig["daemon"], rig["server"]
    zc, mc, ec = rig["zmq"], rig["midi"], rig["events"]
    nz, nm = int(round(seconds * zmq_rate)), int(round(seconds * midi_rate))
    zpath, mpath, epath = (os.path.join(tmp, f"{name}-{x}") for x in ("zmq.npz", "midi.npz", "events.json"))
    ec.send(f"dump {os.path.join(tmp, 'pre.json')}")  # start the tap afresh
    ec.wait("DUMPED", 10)
    st0 = client.status()
    log0 = srv.log_size()
    cpu0, mach0, tc0 = _proc_cpu_s(d.pid), _cpu_times(), time.monotonic()
    t0 = time.monotonic() + 0.5
    zc.go({"n": nz, "rate": zmq_rate, "t0": t0, "addresses": list(ZMQ_ADDRESSES),
           "values": [round(0.05 + 0.9 * (k % 19) / 18, 4) for k in range(19)], "out": zpath})
    mc.go({"n": nm, "rate": midi_rate, "t0": t0, "start": 11, "out": mpath})
    zr = zc.wait("DONE", seconds + 60)
    mr = mc.wait("DONE", seconds + 60)
    t1 = time.monotonic()
    time.sleep(0.5)  # the last events out
    ec.send(f"dump {epath}")
    ec.wait("DUMPED", 30)
    st1 = client.status()
    cpu1, tc1 = _proc_cpu_s(d.pid), time.monotonic()
    rec: dict = {"phase": name, "seconds": round(t1 - t0, 2), "zmq_rate": zmq_rate, "midi_rate": midi_rate}
    if cpu0 is not None and cpu1 is not None:
        rec["daemon_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / (tc1 - tc0), 1)
    rec["machine_cpu"] = _machine_busy(mach0, _cpu_times())
    rec["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    rec["counters"] = counter_delta(st0, st1)
    rec["reconnects"] = st1.get("reconnects", 0) - st0.get("reconnects", 0)
    rec["callback_load_p99_after"] = st1.get("callback_load_p99")
    rec["hop_time_after"] = st1.get("hop_time")
    rec["state_saves"] = ((st1.get("state") or {}).get("saves", 0) - (st0.get("state") or {}).get("saves", 0))
    time.sleep(0.3)
    rec["jackd_says"] = srv.xrun_report(log0)
    rec["zmq"] = zmq_figures(zpath, zr, zmq_rate) if zr is not None and os.path.exists(zpath) else {"error": "no result"}
    if mr is not None and os.path.exists(mpath):
        with open(epath) as f:
            ev = json.load(f)
        rec["midi"] = midi_figures(mpath, ev, MIDI_ADDRESS, midi_rate)
        rec["events_by_source"] = ev["by_source"]
        rec["event_xrun_messages"] = len(ev["xrun"])
    else:
        rec["midi"] = {"error": "no result"}
    log(f"{name}: zmq p50/p99/max {fmt_ms(rec['zmq'].get('rtt', {}).get('p50_ms'))}/"
        f"{fmt_ms(rec['zmq'].get('rtt', {}).get('p99_ms'))}/{fmt_ms(rec['zmq'].get('rtt', {}).get('max_ms'))} ms; "
        f"midi {fmt_ms(rec['midi'].get('latency', {}).get('p50_ms'))}/"
        f"{fmt_ms(rec['midi'].get('latency', {}).get('p99_ms'))}/{fmt_ms(rec['midi'].get('latency', {}).get('max_ms'))}"
        f" ms; xruns {rec['counters'].get('xruns')}, misses {rec['counters'].get('deadline_misses')}")
    return rec


def drain(client, opts, quiet_s: float = 1.0, timeout: float = 120.0) -> None:
    """Before a window: wait until the daemon has answered everything the
    previous window left queued (its request count stops moving)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        n = (client.status().get("control") or {}).get("requests")
        if n is not None and last is not None and n - last <= 2:  # only our own status calls
            return
        last = n
        time.sleep(quiet_s)


def report(res: dict) -> str:
    m = res["machine"]
    out = [f"quietcast control benchmark  {res['date']}  ({res['mode']})",
           f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, python {m['python']}, {m.get('jackd')}",
           f"NOTE: {res['note']}",
           f"daemon: {res.get('daemon', '(did not start)')}",
           f"audio: {res.get('audio', '-')}",
           f"load: {res.get('load_text', '-')}", ""]
    rows = []
    for p in res.get("phases", []):
        z, mi = p.get("zmq", {}), p.get("midi", {})
        zr, ml = z.get("rtt", {}), mi.get("latency", {})
        if p["zmq_rate"]:
            rows.append([p["phase"], "zmq set: send -> reply", f"{p['zmq_rate']:g} ({z.get('rate_achieved', '-')})",
                         str(z.get("sent", "-")), f"{z.get('ok', '-')} ok, {z.get('missing_replies', '-')} missing"
                         + (f", errors {z['errors']}" if z.get("errors") else ""),
                         fmt_ms(zr.get("p50_ms")), fmt_ms(zr.get("p99_ms")), fmt_ms(zr.get("max_ms"))])
        if p["midi_rate"]:
            rows.append([p["phase"], "MIDI CC -> event.param", f"{p['midi_rate']:g} ({mi.get('rate_achieved', '-')})",
                         str(mi.get("sent", "-")), f"{mi.get('matched', '-')} matched, {mi.get('lost', '-')} lost, "
                                                   f"{mi.get('unmatched_events', '-')} unmatched",
                         fmt_ms(ml.get("p50_ms")), fmt_ms(ml.get("p99_ms")), fmt_ms(ml.get("max_ms"))])
    out.append(fmt_table(["phase", "stream", "rate/s (achieved)", "sent", "answered", "p50 ms", "p99 ms",
                         "max ms"], rows))
    out.append("")
    rows = []
    for p in res.get("phases", []):
        c = p.get("counters", {})
        mc = p.get("machine_cpu") or {}
        js = p.get("jackd_says") or {}
        rows.append([p["phase"], f"{p['seconds']:.1f}", str(c.get("xruns", "?")), str(c.get("deadline_misses", "?")),
                     str(c.get("missed_frames", "?")), f"{c.get('late_hops', '?')}/{c.get('skipped_hops', '?')}",
                     str(c.get("control_requests", "?")), f"{p.get('daemon_cpu_pct', '?')}%",
                     f"{mc.get('idle_pct', '?')}%", str(p.get("state_saves", "?")),
                     f"{js.get('driver_late', '-')}/{sum(sum(v.values()) for v in js.get('not_finished', {}).values())}"
                     if js else "-"])
    out.append(fmt_table(["phase", "s", "xruns", "deadline misses", "missed frames", "late/skipped hops",
                         "requests", "daemon cpu", "machine idle", "state saves", "jackd late drv/clients"], rows))
    out.append("  counters: the daemon's own (Client.status(), what `quietcast ctl status` shows) before and after "
               "the window")
    out.append("  MIDI latency: CC sent (rtmidi JACK API, another process) -> event.param (source midi) received on "
               "the PUB stream")
    out.append("")
    out += report_end(res)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 s loaded window, 5 s idle baseline")
    ap.add_argument("--seconds", type=float, default=None, help="loaded window (default 30, --quick 10)")
    ap.add_argument("--idle-seconds", type=float, default=None, help="idle baseline window (default 10, --quick 5)")
    ap.add_argument("--zmq-rate", type=float, default=1000.0, help="set commands a second under load (default 1000)")
    ap.add_argument("--midi-rate", type=float, default=1000.0, help="MIDI CCs a second under load (default 1000)")
    ap.add_argument("--idle-rate", type=float, default=20.0, help="rate of each stream in the idle baseline (20)")
    ap.add_argument("--period", type=int, default=256, help="JACK period (default 256)")
    ap.add_argument("--model", default="dsp", help="suppressor (default dsp)")
    ap.add_argument("--state", choices=["on", "off"], default="on",
                    help="the daemon's state file (default on, as shipped; in the temporary folder)")
    ap.add_argument("--meter-hz", type=float, default=None,
                    help="[control] meter_hz of the daemon (default: the shipped 20)")
    ap.add_argument("--split", action="store_true",
                    help="also run each stream alone at its load rate (ZeroMQ only, MIDI only) before both together")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the daemon is ready before measuring")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temporary folder (logs, configs, raw data)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "control.json"), help="JSON output")
    ap.add_argument("--source-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--zmq-child", help=argparse.SUPPRESS)
    ap.add_argument("--midi-child", help=argparse.SUPPRESS)
    ap.add_argument("--events-child", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.source_child:
        return source_child(*opts.source_child)
    if opts.zmq_child:
        return zmq_child(opts.zmq_child)
    if opts.midi_child:
        return midi_child(opts.midi_child)
    if opts.events_child:
        return events_child(opts.events_child)

    q = opts.quick
    opts.seconds = opts.seconds if opts.seconds is not None else (10.0 if q else 30.0)
    opts.idle_seconds = opts.idle_seconds if opts.idle_seconds is not None else (5.0 if q else 10.0)
    opts.tmp = tempfile.mkdtemp(prefix="qcbench-control-")
    res: dict = {
        **run_record(q, argv),
        "note": (machine_note() + "the bench's own senders, event tap and player share those cores with the "
                 "daemon: figures are pessimistic and xruns may come from other load"),
        "phases": [],
    }
    save = result_saver(res, opts.out)

    srv = daemon = client = None
    children: list[Child] = []
    t_start = time.monotonic()
    try:
        srv = JackServer(opts.period, log_dir=opts.tmp, tag="qcctl").start()
        log(f"jackd {srv.name}: period {opts.period}, {'realtime' if srv.realtime else 'no realtime'}")
        name = f"qcc{uuid.uuid4().hex[:4]}"
        src_name, dclient = f"{name}-src", name
        src = Child(["--source-child", srv.name, src_name], os.path.join(opts.tmp, "source.log"), env=jack_env(srv.name))
        children.append(src)
        with open(os.path.join(opts.tmp, "midi.toml"), "w") as f:
            f.write(MAPPING)
        cfg_path = os.path.join(opts.tmp, "daemon.toml")
        with open(cfg_path, "w") as f:
            f.write(config_text(srv.name, dclient, src_name, opts.tmp, opts.model, opts.state == "on", opts.meter_hz))
        res["daemon_config"] = open(cfg_path).read()
        res["midi_mapping"] = MAPPING
        daemon = DaemonProc(cfg_path, os.path.join(opts.tmp, "daemon.log"), daemon_env(opts.tmp, srv.name))
        client = client_for(opts.tmp)
        st = wait_ready(client, daemon)
        res["daemon"] = (f"`quietcast run -c CFG` (pid {daemon.pid}), {len(CHANNELS)} channels, model "
                         f"{st.get('model')}, period {st.get('period')} at {st.get('sample_rate')} Hz, latency "
                         f"{st.get('latency_ms')} ms, engine realtime {st.get('engine_realtime')}, jackd "
                         f"{'realtime (-R)' if srv.realtime else '--no-realtime'}; state file {opts.state}, meter_hz "
                         f"{opts.meter_hz or 'default (20)'}; state and sockets in a temp folder")
        res["audio"] = (f"{src.ready['source']}: player outputs 0-3 -> channels {', '.join(CHANNELS)} by the daemon's "
                        "connect_in rules; outputs not connected")
        res["load_text"] = (f"ZeroMQ: one DEALER, `set` on {', '.join(ZMQ_ADDRESSES)} in turn, paced, pipelined; "
                            f"MIDI: CC {MIDI_CC} ch {MIDI_CHANNEL} -> {MIDI_ADDRESS} (linear, jump), python-rtmidi JACK "
                            "output in its own process; both streams at the same time")
        cmd_ep, ev_ep = control_endpoints(opts.tmp)
        ec = Child(["--events-child", ev_ep], os.path.join(opts.tmp, "events.log"))
        children.append(ec)
        zc = Child(["--zmq-child", cmd_ep], os.path.join(opts.tmp, "zmq.log"))
        children.append(zc)
        mc = Child(["--midi-child", f"{name}-ctl"], os.path.join(opts.tmp, "midi.log"), env=jack_env(srv.name))
        children.append(mc)
        midi_in = f"{dclient}-midi-in:in"
        if not srv.wait_port(midi_in, 60):
            raise RuntimeError(f"the daemon's MIDI input {midi_in} did not appear: {_tail(daemon.log_path, 1500)}")
        if not srv.connect(mc.ready["port"], midi_in):
            raise RuntimeError(f"could not connect {mc.ready['port']} -> {midi_in}")
        tap_handshake(client, ec, "guest.strength")
        if not midi_handshake(mc, ec, opts.tmp):
            raise RuntimeError("no MIDI message reached the daemon")
        time.sleep(opts.settle)
        log(f"idle baseline: {opts.idle_seconds:g} s at {opts.idle_rate:g}/s each")
        res["phases"].append(run_phase("idle", opts.idle_seconds, opts.idle_rate, opts.idle_rate,
                                       {"client": client, "daemon": daemon, "server": srv, "zmq": zc, "midi": mc,
                                        "events": ec}, opts))
        save()
        rig = {"client": client, "daemon": daemon, "server": srv, "zmq": zc, "midi": mc, "events": ec}
        plan = [("zmq-only", opts.zmq_rate, 0.0), ("midi-only", 0.0, opts.midi_rate)] if opts.split else []
        for name_, zr_, mr_ in plan + [("load", opts.zmq_rate, opts.midi_rate)]:
            drain(client, opts)
            log(f"{name_}: {opts.seconds:g} s, ZeroMQ {zr_:g}/s + MIDI {mr_:g}/s")
            res["phases"].append(run_phase(name_, opts.seconds, zr_, mr_, rig, opts))
            save()
        res["daemon_rss_mb"] = _proc_rss_mb(daemon.pid)
        save()
    except KeyboardInterrupt:
        res["fail"] = "interrupted"
    except Exception as e:
        res["fail"] = f"{type(e).__name__}: {e}"[:2000]
        log(f"FAILED: {res['fail']}")
    finally:
        tear_down(res, children, client, daemon, srv)
        drop_tmp(opts.tmp, opts.keep_logs, log)
    finish(res, opts.out, t_start, report)
    return 1 if res.get("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
