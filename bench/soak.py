"""Soak benchmark (issue 6): the daemon under control and MIDI load for a
long run, through one jackd crash-and-restart and one config reload.

    python bench/soak.py --quick               # 60 s
    python bench/soak.py                       # 600 s
    python bench/soak.py --seconds 3600 --reload-via sighup

What runs (every process its own; all started with ``setpriv --pdeathsig
TERM`` so none outlives the bench):

- a PRIVATE jackd, dummy driver, 48 kHz, period 256
  (``quietcast.daemon.jackclients.jackd_command``), stopped with SIGTERM at
  the end. Mid-run it is killed with SIGKILL and started again under the
  same name;
- the daemon, ``quietcast run -c CFG``: 8 channels c0..c7, model ``dsp``,
  control (ipc://), MIDI and the state file on, its runtime and state
  folders in a temporary folder. Channel c0 has ``strength = 0``, so its
  output is its input delayed by the declared latency; its ``connect_in``
  / ``connect_out`` rules take the tone from the player and give its output
  to the recorder, and the daemon makes those connections again after the
  restart by itself (the bench connects no audio port). c1..c7 get the
  bundled demo clip (4 offsets) through their own rules;
- a player + recorder process (``--source-child``): ``SRC:tone`` (a 440 Hz
  sine, -12 dBFS, phase-continuous), ``SRC:clip_0..3``, and ``REC:in_0``.
  The recorder keeps, for every JACK cycle, its CLOCK_MONOTONIC time, its
  frame time, the peak, and the silent samples at its start and end and the
  longest silent run inside it (silent: ``|x| < 1e-4``, -80 dBFS); from
  those the bench finds every run of silence longer than 1 ms. The bench
  player also stamps every xrun JACK reports. This process is not reused
  across the crash (libjack clients reopened in a process whose server
  was killed were seen to never run, an xrun every cycle): it hands over
  its recording, and a fresh one, started while the server is down, opens
  its clients as soon as the new server answers (polling every 20 ms);
- control load: ``bench/control.py --zmq-child``, ``set`` commands on
  c2..c7 paced at 100/s for the whole run (pipelined DEALER; every reply
  timed);
- MIDI load: ``bench/control.py --midi-child``, CC 7 channel 1 -> c1.strength
  (mapping file written for the run) at 1,000/s from python-rtmidi's JACK
  API in another process; it dies with the server and a new one is started
  and patched in after the restart;
- an event tap (``bench/control.py --events-child``) on the PUB stream:
  ``event.state`` (reconnecting, ready, reloaded), ``event.param`` counts.

Timeline (T = ``--seconds``): measured from t0 after a warm-up; the reload
at 0.3 T (``c0.output_gain_db`` 0 -> -1 dB written to the config file, then
``ctl reload``, or SIGHUP with ``--reload-via sighup``); the kill at 0.5 T,
jackd down for ``--down-seconds`` (1 s), then started again. Restart window:
from the kill until the recorder hears audio again, plus ``--margin`` (2 s),
and until the new MIDI sender is patched in. Restart-to-audio: from the
start of the new jackd until the first non-silent recorder cycle.

Figures:

- xruns and deadline misses outside the restart window: the daemon's own
  counters (``Client.status()``, as ``quietcast ctl status``) sampled every
  second; they restart at the reconnect, so the window's two sides are
  summed: [t0, just before the kill] and [window end, T]. The bench
  player's own xrun stamps are counted beside them (JACK tells every client).
- audio gaps: runs of silence > 1 ms on c0's output outside the restart
  window; none may touch the reload (from 0.5 s before to 2 s after).
  JACK frame-time jumps seen by the recorder (xruns) are listed beside
  them. The level of the tone after the reload shows that the new value
  reached the audio.
- RSS of the daemon process (``/proc/PID/status`` VmRSS) every 10 s and
  just before and after the reload and the restart: first, last,
  least-squares slope in MB/hour; the steady segments between those events
  and the steps across them; also the private memory (RssAnon) of the
  MIDI bridge child (its VmRSS is mostly JACK's shared memory).
- restart-to-audio, with jackd ready, the player/recorder back, and the
  daemon's ``ready`` event.

Targets (the issue): 0 xruns outside the restart; no gap on reload; flat
memory (each steady segment grows by at most max(2 MB, 1 %), and the
segment after the restart, when 4 minutes or longer, by at most 5 MB/hour;
the steps across the reload and the restart are reported beside: one
restart cannot tell a one-off allocation from a leak per restart).
PASS/FAIL printed for each.
Writes bench/out/soak.json.

Caveat: the dummy driver on a shared 2-core machine: xruns may come from
other processes; the bench's own processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, SR, drop_tmp, finish, fmt_table, machine_note, report_end, result_saver  # noqa: E402
import control  # noqa: E402  (bench/control.py: the server, the daemon, the senders, the tap)
import live  # noqa: E402
from control import Child, DaemonProc, JackServer, client_for, counter_delta, jack_env, wait_ready  # noqa: E402
from live import _proc_rss_mb, _tail  # noqa: E402

SILENT = 1e-4          # |x| below this is silence (-80 dBFS; the tone's peak is 0.25)
GAP_SAMPLES = 48       # a gap: more than 1 ms of silence
TONE_HZ = 440.0
TONE_AMP = 0.25
RSS_EVERY_S = 10.0
N_CH = 8
MIDI_ADDRESS = "c1.strength"
ZMQ_ADDRESSES = tuple(f"c{i}.strength" for i in range(2, N_CH))
RELOAD_ADDRESS = "c0.output_gain_db"
RELOAD_VALUE = -1.0


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


say = control.say


# --------------------------------------------------------------------------
# the player + recorder process (survives a server restart)


def source_child(server: str, src_name: str, rec_name: str, seconds: float, period: int, mode: str) -> int:
    """``--source-child SERVER SRC REC SECONDS PERIOD MODE``; MODE ``start``:
    open the clients now; ``wait``: say READY at once, open the clients
    (and record from then on) as soon as the server answers (the bench
    starts one before restarting jackd). stdin: ``rec`` (start keeping
    cycles), ``dump PATH`` (npz of everything kept), ``stats``, ``stop``.
    stdout: READY, BACK (clients open, ``wait`` mode), AUDIO (first
    non-silent recorder cycle), DOWN (the server went away: this process
    then only answers dump/stats/stop)."""
    import jack

    sys.setswitchinterval(0.0005)
    jack.set_error_function(lambda msg: None)
    clip, clip_src = live.make_signals()
    clip = np.ascontiguousarray(clip, np.float32)
    L = clip.shape[1]
    # a whole number of tone cycles per table: 440 Hz * 1200 / 48000 = 11
    tl = int(SR // np.gcd(int(TONE_HZ), SR)) if TONE_HZ == int(TONE_HZ) else SR
    tone = (TONE_AMP * np.sin(2 * np.pi * TONE_HZ * np.arange(tl) / SR)).astype(np.float32)
    tone2 = np.concatenate([tone, tone])  # a read never wraps for periods <= tl
    cap = int((seconds + 300) * SR / period) + 1024
    rec = {"t": np.zeros(cap), "ft": np.zeros(cap, np.int64), "n": np.zeros(cap, np.int32),
           "peak": np.zeros(cap, np.float32), "lead": np.zeros(cap, np.int32), "trail": np.zeros(cap, np.int32),
           "inner": np.zeros(cap, np.int32)}
    xr = np.zeros(100_000)
    st = {"pos": 0, "cpos": 0, "k": 0, "recording": False, "xk": 0, "audio_t": None,
          "play_calls": 0, "rec_calls": 0, "rec_peak": 0.0}
    down = threading.Event()
    lock = threading.Lock()

    def play(frames):
        st["play_calls"] += 1
        p = cli["src"]
        i = st["pos"] % tl
        p["tone"].get_array()[:] = tone2[i:i + frames] if frames <= tl else np.resize(np.roll(tone, -i), frames)
        st["pos"] += frames
        j = st["cpos"]
        e = j + frames
        for k, port in enumerate(p["clip"]):
            a = port.get_array()
            if e <= L:
                a[:] = clip[k, j:e]
            else:
                a[:L - j] = clip[k, j:]
                a[L - j:] = clip[k, :e - L]
        st["cpos"] = e % L

    def record(frames):
        c = cli["rec"]
        a = c["in"].get_array()
        t = time.monotonic()
        m = np.abs(a)
        peak = float(m.max()) if frames else 0.0
        st["rec_calls"] += 1
        if peak > st["rec_peak"]:
            st["rec_peak"] = peak
        if st["audio_t"] is None and peak >= SILENT:
            st["audio_t"] = t
        if not st["recording"]:
            return
        k = st["k"]
        if k >= cap:
            return
        nz = np.flatnonzero(m >= SILENT)
        if len(nz):
            lead, trail = int(nz[0]), int(frames - 1 - nz[-1])
            inner = int(np.diff(nz).max() - 1) if len(nz) > 1 else 0
        else:
            lead = trail = frames
            inner = 0
        rec["t"][k] = t
        rec["ft"][k] = c["client"].last_frame_time
        rec["n"][k] = frames
        rec["peak"][k] = peak
        rec["lead"][k] = lead
        rec["trail"][k] = trail
        rec["inner"][k] = inner
        st["k"] = k + 1

    def on_xrun(delayed):
        k = st["xk"]
        if k < len(xr):
            xr[k] = time.monotonic()
            st["xk"] = k + 1

    cli: dict = {}

    def open_clients() -> bool:
        try:
            s = jack.Client(src_name, servername=server, no_start_server=True)
        except jack.JackError:
            return False
        try:
            r = jack.Client(rec_name, servername=server, no_start_server=True)
        except jack.JackError:
            s.close()
            return False
        src = {"client": s, "tone": s.outports.register("tone"),
               "clip": [s.outports.register(f"clip_{k}") for k in range(clip.shape[0])]}
        rc = {"client": r, "in": r.inports.register("in_0")}
        cli["src"], cli["rec"] = src, rc
        s.set_process_callback(play)
        r.set_process_callback(record)
        s.set_xrun_callback(on_xrun)
        for c in (s, r):
            c.set_shutdown_callback(lambda status, reason: down.set())
        s.activate()
        r.activate()
        return True

    cmds = queue.SimpleQueue()

    def read_stdin():
        for ln in sys.stdin:
            cmds.put(ln.strip())
        cmds.put("stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    if mode == "start":
        if not open_clients():
            say("ERROR", {"why": f"cannot open clients on {server}"})
            return 2
    else:  # "wait": ready now; the clients open (and record) as soon as the server answers
        st["recording"] = True
    say("READY", {"src": src_name, "rec": rec_name, "source": clip_src, "pid": os.getpid(), "tone_table": tl,
                  "clients": bool(cli)})
    reported_audio = False
    gone = False
    while True:
        try:
            line = cmds.get(timeout=0.01)
        except queue.Empty:
            line = None
        if line:
            cmd, _, arg = line.partition(" ")
            if cmd == "stop":
                break
            if cmd == "rec":
                with lock:
                    st["k"] = 0
                    st["recording"] = True
                say("OK", {})
            elif cmd == "stats":
                say("STATS", {k_: st[k_] for k_ in ("play_calls", "rec_calls", "rec_peak", "audio_t", "k")}
                    | {"clients": sorted(cli), "gone": gone})
            elif cmd == "dump":
                k = st["k"]
                np.savez(arg, xruns=xr[:st["xk"]].copy(), **{n: a[:k].copy() for n, a in rec.items()})
                say("DUMPED", {"cycles": k, "xruns": st["xk"]})
        if down.is_set() and not gone:
            # the server died: this process is done with JACK (libjack clients of a
            # crashed server are not reopened in the same process: seen to leave a
            # client that never runs, an xrun every cycle); the bench starts a new one
            gone = True
            st["recording"] = False
            say("DOWN", {"t": time.monotonic()})
            print(f"{time.monotonic():.3f} server gone", file=sys.stderr, flush=True)
        if not cli and not gone:
            if open_clients():
                say("BACK", {"t": time.monotonic()})
                print(f"{time.monotonic():.3f} clients open", file=sys.stderr, flush=True)
            else:
                time.sleep(0.02)
                continue
        if not reported_audio and st["audio_t"] is not None:
            reported_audio = True
            say("AUDIO", {"t": st["audio_t"]})
            print(f"{st['audio_t']:.3f} audio heard", file=sys.stderr, flush=True)
    if gone:
        sys.stdout.flush()
        os._exit(0)  # never close clients of a crashed server (may hang)
    for c in (cli.get("src"), cli.get("rec")):
        if c is not None:
            try:
                c["client"].deactivate()
                c["client"].close()
            except Exception:
                pass
    return 0


# --------------------------------------------------------------------------
# the daemon config


def config_text(server: str, client: str, src: str, rec: str, tmp: str, model: str, reconnect_ms: int,
                c0_output_gain_db: float = 0.0, state: bool = True) -> str:
    s = (f'[jack]\nclient_name = "{client}"\nserver = "{server}"\nreconnect_interval_ms = {reconnect_ms}\n'
         f'[engine]\nmodel = "{model}"\nthreads = 1\n'
         '[control]\nenabled = true\nbind = ""\nevents = ""\n'
         f'[midi]\nenabled = true\nmapping = "{tmp}/midi.toml"\n'
         f'[state]\nenabled = {"true" if state else "false"}\n')
    s += (f'[[channel]]\nname = "c0"\nstrength = 0.0\noutput_gain_db = {float(c0_output_gain_db)}\n'
          f'connect_in = ["{src}:tone"]\nconnect_out = ["{rec}:in_0"]\n')
    for i in range(1, N_CH):
        s += f'[[channel]]\nname = "c{i}"\nconnect_in = ["{src}:clip_{(i - 1) % 4}"]\nconnect_out = []\n'
    return s


MAPPING = f"""# written by bench/soak.py for one run
[[map]]
address = "{MIDI_ADDRESS}"
type = "cc"
channel = {control.MIDI_CHANNEL}
number = {control.MIDI_CC}
curve = "linear"
takeover = "jump"
"""


def remove_stale_shm(server: str) -> list[str]:
    """After our private server has stopped: the semaphores its SIGKILL
    left behind for clients that never came back (/dev/shm/jack_sem.*_NAME_*:
    only this run's unique server name)."""
    import glob

    gone = []
    for f in glob.glob(f"/dev/shm/jack_sem.*_{server}_*") + glob.glob(f"/dev/shm/jack_{server}_*"):
        try:
            os.unlink(f)
            gone.append(f)
        except OSError:
            pass
    return gone


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# analysis


def find_gaps(rec: dict, period: int) -> tuple[list[dict], list[dict]]:
    """Runs of silence longer than GAP_SAMPLES in the recorded sequence of
    cycles, each with the CLOCK_MONOTONIC time of the cycle where it
    starts; and the cycles whose JACK frame time did not follow on from the
    previous one (xruns: JACK2 then skips frame time and may report the
    same frame time twice; the audio the recorder got is still one
    sequence, so these are listed, not counted as gaps)."""
    t, ft, n = rec["t"], rec["ft"], rec["n"]
    lead, trail, inner = rec["lead"], rec["trail"], rec["inner"]
    gaps, jumps = [], []
    run, run_t = 0, None
    for k in range(len(t)):
        if k and ft[k] != (ft[k - 1] + n[k - 1]) % 2**32:
            d = (int(ft[k]) - int(ft[k - 1]) - int(n[k - 1])) % 2**32
            jumps.append({"t": float(t[k]), "frames": d if d < 2**31 else d - 2**32})
        if lead[k] >= n[k]:  # a silent cycle
            if run == 0:
                run_t = float(t[k])
            run += int(n[k])
            continue
        if run + lead[k] > GAP_SAMPLES:
            gaps.append({"t": run_t if run else float(t[k]), "samples": int(run + lead[k])})
        if inner[k] > GAP_SAMPLES:
            gaps.append({"t": float(t[k]), "samples": int(inner[k])})
        run = int(trail[k])
        run_t = float(t[k]) if run else None
    if run > GAP_SAMPLES:
        gaps.append({"t": run_t, "samples": run, "open_at_end": True})
    return gaps, jumps


def _fit(s: list) -> dict:
    out = {"first": round(s[0][1], 2), "last": round(s[-1][1], 2), "growth": round(s[-1][1] - s[0][1], 2),
           "seconds": round(s[-1][0] - s[0][0], 1), "samples": len(s)}
    if len(s) >= 3 and s[-1][0] > s[0][0]:
        t = np.asarray([x[0] for x in s]) / 3600.0
        r = np.asarray([x[1] for x in s])
        out["slope_mb_per_h"] = round(float(np.polyfit(t, r, 1)[0]), 2)
    return out


def rss_figures(samples: list[tuple]) -> dict:
    """First, last, slope; the steady segments between the events (t0 ->
    pre-reload, post-reload -> pre-kill, window-end -> end) and the steps
    across the reload and the restart."""
    s = [(t, r, lab) for t, r, lab in samples if r is not None]
    if not s:
        return {}
    out = {**_fit(s), "max": round(max(r for _, r, _ in s), 2)}
    late = [x for x in s if x[0] >= 60.0]
    if len(late) >= 3:
        out["slope_after_60s_mb_per_h"] = _fit(late).get("slope_mb_per_h")
    idx = {lab: i for i, (_, _, lab) in enumerate(s) if lab}
    segs = {}
    for name, a, b in (("before_reload", "t0", "pre-reload"), ("between", "post-reload", "pre-kill"),
                       ("after_restart", "window-end", "end")):
        if a in idx and b in idx and idx[b] > idx[a]:
            segs[name] = _fit(s[idx[a]:idx[b] + 1])
    out["segments"] = segs
    steps = {}
    for name, a, b in (("reload", "pre-reload", "post-reload"), ("restart", "pre-kill", "window-end")):
        if a in idx and b in idx:
            steps[name] = round(s[idx[b]][1] - s[idx[a]][1], 2)
    out["steps"] = steps
    return out


def rss_parts(pid: int) -> dict | None:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem: JACK's shared memory
    counts there), MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                    v = int(line.split()[1])
                    out[k] = v if k == "Threads" else round(v / 1024, 2)
    except (OSError, ValueError, IndexError):
        return None
    return out


def _describe_pid(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        cmd = "?"
    return {"pid": pid, "cmd": cmd[:120], "rss_mb": _proc_rss_mb(pid)}


def in_window(t: float, w: tuple[float, float]) -> bool:
    return w[0] <= t <= w[1]


# --------------------------------------------------------------------------
# the run


def _late_text(js: dict | None) -> str:
    """Whose cycle jackd found unfinished at its xruns (whole run)."""
    if not js:
        return "-"
    nf = js.get("not_finished", {})
    top = sorted(((sum(v.values()), k, v) for k, v in nf.items()), reverse=True)[:4]
    return (f"driver late {js.get('driver_late', 0)}; " +
            "; ".join(f"{k}: {', '.join(f'{s} {n}' for s, n in v.items())}" for _, k, v in top))


def report(res: dict) -> str:
    m = res["machine"]
    out = [f"quietcast soak benchmark  {res['date']}  ({res['mode']}, {res.get('seconds_run', 0):.0f} s measured)",
           f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, python {m['python']}, {m.get('jackd')}",
           f"NOTE: {res['note']}",
           f"daemon: {res.get('daemon', '?')}",
           f"audio: {res.get('audio', '?')}",
           f"load: {res.get('load_text', '?')}", ""]
    f = res.get("figures") or {}
    r = f.get("restart") or {}
    rl = f.get("reload") or {}
    rss = f.get("rss_mb") or {}
    br = f.get("bridge_rss_mb") or {}
    z = f.get("zmq") or {}
    zr = z.get("rtt") or {}
    ev = f.get("events_by_source") or {}
    rows = [
        ["xruns outside the restart window", f"{f.get('xruns_outside', '?')} (daemon counter: "
                                             f"{f.get('xruns_before_kill', '?')} before the kill + "
                                             f"{f.get('xruns_after_window', '?')} after the window); bench player "
                                             f"saw {f.get('player_xruns_outside', '?')}"],
        ["deadline misses outside the window", f"{f.get('misses_outside', '?')} ({f.get('missed_frames_outside', '?')} "
                                               f"frames on the dry path)"],
        ["xruns / misses in the window", f"{f.get('xruns_in_window', '?')} / {f.get('misses_in_window', '?')} "
                                         f"(daemon, since its reconnect); player saw {f.get('player_xruns_in_window', '?')}"],
        ["audio gaps > 1 ms outside the window", f"{f.get('gaps_outside', '?')}"
                                                 + (f" (longest {f.get('gap_longest_outside_ms')} ms)"
                                                    if f.get("gaps_outside") else "")
                                                 + f"; JACK frame-time jumps (xruns) outside: "
                                                   f"{f.get('frame_time_jumps_outside', '?')}"],
        ["gaps in the restart window", f"{f.get('gaps_in_window', '?')} (expected: the server was down)"],
        ["reload", f"{rl.get('how', '?')}: {rl.get('result')}; {RELOAD_ADDRESS} now {rl.get('value_after')}; "
                   f"gaps near it: {rl.get('gaps', '?')}; tone level change {rl.get('level_change_db', '?')} dB"],
        ["restart-to-audio", f"{r.get('restart_to_audio_s', '?')} s from jackd start (jackd answering after "
                             f"{r.get('jackd_ready_s', '?')} s, player/recorder back {r.get('clients_back_s', '?')} s, "
                             f"daemon ready event {r.get('daemon_ready_s', '?')} s; daemon's own "
                             f"last_reconnect_s {r.get('daemon_last_reconnect_s', '?')} incl. {r.get('down_s', '?')} s "
                             f"down)"],
        ["restart window", f"{r.get('window_s', '?')} s (kill -> audio + {res.get('margin_s')} s margin, MIDI "
                           f"re-patched)"],
        ["daemon RSS first -> last", f"{rss.get('first', '?')} -> {rss.get('last', '?')} MB "
                                     f"({rss.get('growth', 0):+.2f} MB, max {rss.get('max', '?')}, "
                                     f"{rss.get('samples', 0)} samples every {RSS_EVERY_S:g} s)"],
        ["daemon RSS slope", f"{rss.get('slope_mb_per_h', '-')} MB/hour (all), "
                             f"{rss.get('slope_after_60s_mb_per_h', '-')} MB/hour (after the first minute)"
                             + ("  [run too short to judge a slope]" if res.get("seconds_run", 0) < 300 else "")],
        ["daemon RSS steady segments", "; ".join(f"{k}: {v['growth']:+.2f} MB in {v['seconds']:.0f} s"
                                                 for k, v in (rss.get("segments") or {}).items()) or "-"],
        ["daemon RSS steps", ", ".join(f"{k} {v:+.2f} MB" for k, v in (rss.get("steps") or {}).items()) or "-"],
        ["daemon RSS parts, restart step", str((f.get("rss_parts_steps") or {}).get("restart", "-"))],
        ["daemon RSS parts, whole run", str((f.get("rss_parts_steps") or {}).get("whole run", "-"))],
        ["MIDI bridge RssAnon first -> last", f"{br.get('first', '-')} -> {br.get('last', '-')} MB (its VmRSS is mostly "
                                              "JACK's shared memory, RssShmem)"],
        ["jackd: late clients (xruns)", _late_text(f.get("jackd_says"))],
        ["control: set at 100/s", f"{z.get('sent', '?')} sent, {z.get('ok', '?')} ok, errors {z.get('errors') or {}}, "
                                  f"RTT p50/p99/max {control.fmt_ms(zr.get('p50_ms'))}/{control.fmt_ms(zr.get('p99_ms'))}"
                                  f"/{control.fmt_ms(zr.get('max_ms'))} ms"],
        ["MIDI at 1000/s", f"{f.get('midi_sent', '?')} CCs sent, {ev.get('midi', 0)} applied (event.param source "
                           f"midi)"],
        ["state file saves in the run", str(f.get("state_saves", "?"))],
    ]
    out.append(fmt_table(["soak", "value"], rows))
    out.append("")
    out.append("targets:")
    for name, ok, why in res.get("targets", []):
        out.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {why}")
    out.append("")
    out += report_end(res)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 s instead of 600 s")
    ap.add_argument("--seconds", type=float, default=None, help="measured length (default 600, --quick 60)")
    ap.add_argument("--zmq-rate", type=float, default=100.0, help="control commands a second (default 100)")
    ap.add_argument("--midi-rate", type=float, default=1000.0, help="MIDI CCs a second (default 1000)")
    ap.add_argument("--period", type=int, default=256)
    ap.add_argument("--model", default="dsp")
    ap.add_argument("--reconnect-ms", type=int, default=500,
                    help="[jack] reconnect_interval_ms of the daemon (default 500, the shipped value)")
    ap.add_argument("--down-seconds", type=float, default=1.0, help="how long jackd stays dead (default 1)")
    ap.add_argument("--margin", type=float, default=2.0, help="restart window: seconds after audio is back (2)")
    ap.add_argument("--reload-via", choices=["ctl", "sighup"], default="ctl")
    ap.add_argument("--state", choices=["on", "off"], default="on",
                    help="the daemon's state file (default on, as shipped; in the temporary folder)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds between audio flowing and t0")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "soak.json"))
    ap.add_argument("--source-child", nargs=6, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.source_child:
        s, a, b, secs, per, mode = opts.source_child
        return source_child(s, a, b, float(secs), int(per), mode)

    T = opts.seconds if opts.seconds is not None else (60.0 if opts.quick else 600.0)
    opts.tmp = tempfile.mkdtemp(prefix="qcbench-soak-")
    res: dict = {
        **control.run_record(opts.quick, argv),
        "note": (machine_note() + "dummy driver; the bench's own processes share the cores: xruns may come from "
                 "other load"),
        "seconds_planned": T, "margin_s": opts.margin,
        "silence": {"threshold": SILENT, "gap_samples": GAP_SAMPLES},
    }
    save = result_saver(res, opts.out)

    srv = daemon = client = src = None
    sources: list[Child] = []
    rec_parts: list[str] = []
    children: list[Child] = []
    midi_kids: list[Child] = []
    ctl_script = control.this_script()
    marks: dict = {}
    samples: list[dict] = []
    rss: list[tuple[float, float | None, str]] = []
    brss: list[tuple[float, float | None, str]] = []
    parts: list[tuple[float, dict | None, str]] = []
    midi_files: list[str] = []
    t_start_wall = time.monotonic()
    try:
        srv = JackServer(opts.period, log_dir=opts.tmp, tag="qcsoak").start()
        log(f"jackd {srv.name}: period {opts.period}, {'realtime' if srv.realtime else 'no realtime'}")
        tag = f"qs{uuid.uuid4().hex[:4]}"
        src_name, rec_name, dclient = f"{tag}-src", f"{tag}-rec", tag
        def source(mode: str, k: int) -> Child:
            c = Child(["--source-child", srv.name, src_name, rec_name, str(T), str(opts.period), mode],
                      os.path.join(opts.tmp, f"source{k}.log"), env=jack_env(srv.name), script=os.path.abspath(__file__))
            children.append(c)
            sources.append(c)
            return c

        src = source("start", 0)
        with open(os.path.join(opts.tmp, "midi.toml"), "w") as f:
            f.write(MAPPING)
        cfg_path = os.path.join(opts.tmp, "daemon.toml")
        cfg = lambda gain: config_text(srv.name, dclient, src_name, rec_name, opts.tmp, opts.model,  # noqa: E731
                                       opts.reconnect_ms, gain, opts.state == "on")
        write_atomic(cfg_path, cfg(0.0))
        res["daemon_config"] = cfg(0.0)
        res["midi_mapping"] = MAPPING
        daemon = DaemonProc(cfg_path, os.path.join(opts.tmp, "daemon.log"), control.daemon_env(opts.tmp, srv.name))
        client = client_for(opts.tmp)
        st = wait_ready(client, daemon)
        res["daemon"] = (f"`quietcast run -c CFG` (pid {daemon.pid}), {N_CH} channels, model {st.get('model')}, "
                         f"period {st.get('period')} at {st.get('sample_rate')} Hz, latency {st.get('latency_ms')} ms, "
                         f"reconnect_interval_ms {opts.reconnect_ms}, state file {opts.state}, jackd "
                         f"{'realtime (-R)' if srv.realtime else '--no-realtime'}; state file, sockets in a temp folder")
        res["audio"] = (f"c0: {TONE_HZ:g} Hz tone at {20 * np.log10(TONE_AMP):.0f} dBFS, strength 0, output to the "
                        f"recorder; c1-c7: {src.ready['source']}; every connection by the daemon's rules")
        res["load_text"] = (f"`set` on {ZMQ_ADDRESSES[0]}..{ZMQ_ADDRESSES[-1]} at {opts.zmq_rate:g}/s (pipelined "
                            f"DEALER); MIDI CC {control.MIDI_CC} -> {MIDI_ADDRESS} at {opts.midi_rate:g}/s (rtmidi "
                            "JACK output, another process)")
        if src.wait("AUDIO", 60) is None:
            raise RuntimeError(f"the recorder heard nothing from c0: {_tail(daemon.log_path, 1500)}")
        cmd_ep, ev_ep = control.control_endpoints(opts.tmp)
        ec = Child(["--events-child", ev_ep], os.path.join(opts.tmp, "events.log"), script=ctl_script)
        children.append(ec)
        ec.send("nokeep")
        zc = Child(["--zmq-child", cmd_ep], os.path.join(opts.tmp, "zmq.log"), script=ctl_script)
        children.append(zc)
        control.tap_handshake(client, ec, "c2.strength")
        midi_in = f"{dclient}-midi-in:in"

        def start_midi(k: int) -> Child:
            """A new MIDI sender patched into the daemon's MIDI input. After a
            restart the daemon may start its MIDI bridge twice (its retry
            timer, then reopen_jack), so the port can vanish and come back
            under the same name: wait until it has stayed 1.5 s, and
            re-patch when the handshake fails."""
            mc = None
            for attempt in range(4):
                end = time.monotonic() + 60
                since = None
                while time.monotonic() < end:
                    there = midi_in in (srv.ports(midi_in) or [])
                    since = (since or time.monotonic()) if there else None
                    if since and time.monotonic() - since >= 1.5:
                        break
                    time.sleep(0.25)
                else:
                    raise RuntimeError(f"the daemon's MIDI input {midi_in} did not appear: "
                                       f"{_tail(daemon.log_path, 1500)}")
                if mc is None:
                    mc = Child(["--midi-child", f"{tag}-ctl{k}"], os.path.join(opts.tmp, f"midi{k}.log"),
                               env=jack_env(srv.name), script=ctl_script)
                    midi_kids.append(mc)
                if not srv.connect(mc.ready["port"], midi_in):
                    continue
                if control.midi_handshake(mc, ec, opts.tmp, tries=40):
                    marks.setdefault("midi_patch_attempts", []).append(attempt + 1)
                    return mc
                log(f"MIDI handshake failed (attempt {attempt + 1}): re-patching")
            raise RuntimeError("no MIDI message reached the daemon")

        mc = start_midi(0)
        time.sleep(opts.warmup)
        # ---- t0
        t0 = time.monotonic() + 0.5
        zc.go({"n": int(T * opts.zmq_rate), "rate": opts.zmq_rate, "t0": t0, "addresses": list(ZMQ_ADDRESSES),
               "values": [round(0.1 + 0.8 * (k % 9) / 8, 4) for k in range(9)], "out": os.path.join(opts.tmp, "zmq.npz"),
               "grace_s": 10.0})
        midi_files.append(os.path.join(opts.tmp, "midi0.npz"))
        mc.go({"n": int(T * opts.midi_rate), "rate": opts.midi_rate, "t0": t0, "start": 3, "out": midi_files[-1]})
        ec.send(f"dump {os.path.join(opts.tmp, 'events-pre.json')}")
        ec.wait("DUMPED", 10)
        src.send("rec")
        src.wait("OK", 10)
        while time.monotonic() < t0:
            time.sleep(0.01)
        marks["t0"] = t0

        def sample(label: str = "") -> dict:
            try:
                s = control.slim_status(client.status())
            except Exception as e:
                s = {"error": str(e)}
            s["t"] = time.monotonic()
            if label:
                s["label"] = label
            samples.append(s)
            return s

        def mem(label: str = "") -> None:
            now_ = round(time.monotonic() - t0, 2)
            rss.append((now_, _proc_rss_mb(daemon.pid), label))
            parts.append((now_, rss_parts(daemon.pid), label))
            kids = daemon.children()
            anon = [(rss_parts(p) or {}).get("RssAnon") for p in kids]
            brss.append((now_, sum(x for x in anon if x is not None) if kids else None, label))
            if kids and "children" not in res:
                res["children"] = [_describe_pid(p) for p in kids]

        sample("t0")
        mem("t0")
        log0 = srv.log_size()
        t_reload, t_kill, t_end = t0 + 0.3 * T, t0 + 0.5 * T, t0 + T
        next_rss, next_sample = t0 + RSS_EVERY_S, t0 + 1.0
        reloaded = restarted = False
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            if not daemon.alive():
                raise RuntimeError(f"the daemon exited: {_tail(daemon.log_path, 2000)}")
            if now >= next_rss:
                mem()
                next_rss += RSS_EVERY_S
            if now >= next_sample:
                sample()
                next_sample += 1.0
            if not reloaded and now >= t_reload:
                reloaded = True
                mem("pre-reload")
                write_atomic(cfg_path, cfg(RELOAD_VALUE))
                marks["reload"] = time.monotonic()
                if opts.reload_via == "sighup":
                    daemon.proc.send_signal(signal.SIGHUP)
                    res["reload_result"] = "SIGHUP sent"
                else:
                    client.timeout = 60.0  # a loaded daemon may take a while; the reply is what counts
                    try:
                        res["reload_result"] = client.call("reload")
                    except Exception as e:
                        res["reload_result"] = f"{type(e).__name__}: {e}"
                    client.timeout = 5.0
                marks["reload_done"] = time.monotonic()
                log(f"reload ({opts.reload_via}): {res['reload_result']}")
                time.sleep(0.5)
                try:
                    res["reload_value_after"] = client.get(RELOAD_ADDRESS)
                except Exception as e:
                    res["reload_value_after"] = f"{type(e).__name__}: {e}"
                mem("post-reload")
            if not restarted and now >= t_kill:
                restarted = True
                sample("pre-kill")
                mem("pre-kill")
                marks["kill"] = time.monotonic()
                srv.kill9()
                log("jackd killed (SIGKILL)")
                # the player/recorder process is not reused after a server crash (libjack clients
                # reopened in the same process were seen to never run): it hands over what it
                # recorded and a fresh one, started while the server is down, waits for it
                src.wait("DOWN", 10)
                rec_parts.append(os.path.join(opts.tmp, "rec0.npz"))
                src.send(f"dump {rec_parts[-1]}")
                src.wait("DUMPED", 30)
                src.close("stop")
                src = source("wait", 1)
                if mc.wait("DONE", 5) is None:  # it dies with the server
                    mc.kill()
                while time.monotonic() < marks["kill"] + opts.down_seconds:
                    time.sleep(0.01)
                marks["jack_start"] = time.monotonic()
                srv.start()
                marks["jack_ready"] = time.monotonic()
                back = src.wait("BACK", 60)
                marks["clients_back"] = back["t"] if back else None
                audio = src.wait("AUDIO", 20)
                if audio is None:
                    src.send("stats")
                    stats = src.wait("STATS", 10)
                    conns = srv.ports("-c", tag)
                    raise RuntimeError(f"no audio after the restart (back: {back}; recorder stats {stats}; "
                                       f"connections {conns}); player/recorder: "
                                       f"{_tail(src.log_path, 1500)}; daemon: {_tail(daemon.log_path, 1500)}")
                marks["audio_back"] = audio["t"]
                log(f"audio back {audio['t'] - marks['jack_start']:.2f} s after jackd started")
                wait_ready(client, daemon, 60)
                mc = start_midi(1)
                left = t_end - time.monotonic()
                if left > 1:
                    midi_files.append(os.path.join(opts.tmp, "midi1.npz"))
                    mc.go({"n": int(left * opts.midi_rate), "rate": opts.midi_rate, "t0": time.monotonic() + 0.2,
                           "start": 3, "out": midi_files[-1]})
                while time.monotonic() < marks["audio_back"] + opts.margin:
                    time.sleep(0.05)
                marks["window_end"] = time.monotonic()
                sample("window-end")
                mem("window-end")
                next_sample = time.monotonic() + 1.0
            time.sleep(0.05)
        t1 = time.monotonic()
        sample("end")
        mem("end")
        marks["end"] = t1
        res["seconds_run"] = round(t1 - t0, 1)
        # ---- collect
        mc.send("abort")
        mc.wait("DONE", 10)
        zr = zc.wait("DONE", 30)
        rec_parts.append(os.path.join(opts.tmp, f"rec{len(rec_parts)}.npz"))
        src.send(f"dump {rec_parts[-1]}")
        src.wait("DUMPED", 30)
        time.sleep(0.5)
        ec.send(f"dump {os.path.join(opts.tmp, 'events.json')}")
        ec.wait("DUMPED", 30)
        with open(os.path.join(opts.tmp, "events.json")) as f:
            events = json.load(f)
        parts_ = [dict(np.load(p_)) for p_ in rec_parts]
        recd = {k: np.concatenate([d_[k] for d_ in parts_]) for k in parts_[0]}
        res["marks"] = {k: (round(v - t0, 3) if isinstance(v, float) else v) for k, v in marks.items()}
        res["status_samples"] = [{k: v for k, v in s.items() if k in (
            "t", "label", "ready", "reconnects", "xruns", "deadline_misses", "missed_frames", "late_hops",
            "skipped_hops", "cycles", "error")} for s in samples]
        for s in res["status_samples"]:
            s["t"] = round(s["t"] - t0, 2)
        # ---- figures
        fig: dict = {}
        by_label = {s.get("label"): s for s in samples if s.get("label")}
        a0, ak, aw, ae = by_label["t0"], by_label.get("pre-kill"), by_label.get("window-end"), by_label["end"]
        seg_a = counter_delta(a0, ak) if ak else counter_delta(a0, ae)
        seg_b = counter_delta(aw, ae) if aw else {}
        if aw and aw.get("reconnects") != ae.get("reconnects"):
            fig["warning"] = "the daemon reconnected again after the restart window: counters after it restarted"
        fig["xruns_before_kill"] = seg_a.get("xruns")
        fig["xruns_after_window"] = seg_b.get("xruns", 0)
        fig["xruns_outside"] = (seg_a.get("xruns") or 0) + (seg_b.get("xruns") or 0)
        fig["misses_outside"] = (seg_a.get("deadline_misses") or 0) + (seg_b.get("deadline_misses") or 0)
        fig["missed_frames_outside"] = (seg_a.get("missed_frames") or 0) + (seg_b.get("missed_frames") or 0)
        fig["late_hops_outside"] = (seg_a.get("late_hops") or 0) + (seg_b.get("late_hops") or 0)
        if aw:
            fig["xruns_in_window"] = aw.get("xruns")
            fig["misses_in_window"] = aw.get("deadline_misses")
        win = (marks.get("kill", t1 + 1), marks.get("window_end", t1 + 1))
        px = recd["xruns"]
        px = px[(px >= t0) & (px <= t1)]
        fig["player_xruns_outside"] = int(sum(1 for x in px if not in_window(x, win)))
        fig["player_xruns_in_window"] = int(sum(1 for x in px if in_window(x, win)))
        # gaps
        sel = (recd["t"] >= t0) & (recd["t"] <= t1)
        recw = {k: v[sel] for k, v in recd.items() if k != "xruns"}
        gaps, jumps = find_gaps(recw, opts.period)
        rel = lambda g: {**g, "t": round(g["t"] - t0, 3), "ms": round(1000.0 * g["samples"] / SR, 2)}  # noqa: E731
        out_gaps = [rel(g) for g in gaps if not in_window(g["t"], win)]
        fig["gaps_outside"] = len(out_gaps)
        fig["gap_longest_outside_ms"] = max((g["ms"] for g in out_gaps), default=0)
        fig["gaps_outside_list"] = out_gaps[:50]
        fig["gaps_in_window"] = sum(1 for g in gaps if in_window(g["t"], win))
        fig["gaps_in_window_list"] = [rel(g) for g in gaps if in_window(g["t"], win)][:20]
        fig["frame_time_jumps_outside"] = sum(1 for j in jumps if not in_window(j["t"], win))
        fig["frame_time_jumps_outside_list"] = [{**j, "t": round(j["t"] - t0, 3)} for j in jumps
                                                if not in_window(j["t"], win)][:50]
        fig["recorder_cycles"] = int(sel.sum())
        # reload
        if "reload" in marks:
            tr = marks["reload"]
            rw = (tr - 0.5, max(tr + 2.0, marks.get("reload_done", tr) + 2.0))
            near = [rel(g) for g in gaps if in_window(g["t"], rw)]
            nx = int(sum(1 for x in px if in_window(x, rw)))
            pk, tt = recw["peak"], recw["t"]
            before = pk[(tt >= tr - 3.0) & (tt < tr - 0.2)]
            after = pk[(tt > marks.get("reload_done", tr) + 0.5) & (tt <= marks.get("reload_done", tr) + 3.0)]
            lvl = (round(float(20 * np.log10(np.median(after) / np.median(before))), 2)
                   if len(before) and len(after) else None)
            rs = [s for t_, s in events["state"] if s.get("state") == "reloaded"]
            fig["reload"] = {"how": opts.reload_via, "result": res.get("reload_result"),
                             "value_after": res.get("reload_value_after"), "gaps": len(near), "gap_list": near,
                             "player_xruns_near": nx, "level_change_db": lvl,
                             "expected_level_change_db": RELOAD_VALUE, "reloaded_events": rs}
        # restart
        if "kill" in marks:
            js = marks["jack_start"]
            ready_ev = [t_ for t_, s in events["state"] if s.get("state") == "ready" and t_ >= js]
            fig["restart"] = {
                "down_s": round(marks["jack_start"] - marks["kill"], 3),
                "jackd_ready_s": round(marks["jack_ready"] - js, 3),
                "clients_back_s": round(marks["clients_back"] - js, 3) if marks.get("clients_back") else None,
                "daemon_ready_s": round(ready_ev[0] - js, 3) if ready_ev else None,
                "restart_to_audio_s": round(marks["audio_back"] - js, 3),
                "daemon_last_reconnect_s": ae.get("last_reconnect_s"),
                "window_s": round(marks["window_end"] - marks["kill"], 3),
                "reconnects": ae.get("reconnects"),
                "state_events": [[round(t_ - t0, 3), s] for t_, s in events["state"]],
            }
        fig["rss_mb"] = rss_figures(rss)
        fig["rss_samples"] = [[t, round(r, 2) if r else r, lab] for t, r, lab in rss]
        fig["bridge_rss_mb"] = rss_figures(brss)
        fig["rss_parts"] = [[t, p_, lab] for t, p_, lab in parts]
        pl = {lab: p_ for _, p_, lab in parts if lab and p_}
        fig["rss_parts_steps"] = {
            name: {k: round(pl[b][k] - pl[a][k], 2) for k in pl[a] if k in pl[b]}
            for name, a, b in (("reload", "pre-reload", "post-reload"), ("restart", "pre-kill", "window-end"),
                               ("whole run", "t0", "end")) if a in pl and b in pl}
        time.sleep(0.3)
        fig["jackd_says"] = srv.xrun_report(log0)
        if zr is not None and os.path.exists(os.path.join(opts.tmp, "zmq.npz")):
            fig["zmq"] = control.zmq_figures(os.path.join(opts.tmp, "zmq.npz"), zr, opts.zmq_rate)
        sent = 0
        for p in midi_files:
            if os.path.exists(p):
                sent += int(np.isfinite(np.load(p)["t_send"]).sum())
        fig["midi_sent"] = sent
        fig["events_by_source"] = events["by_source"]
        st_a = (a0.get("state") or {}).get("saves", 0)
        st_e = (ae.get("state") or {}).get("saves", 0)
        fig["state_saves"] = st_e - st_a
        res["figures"] = fig
        # ---- targets
        r_ = fig["rss_mb"]
        flat = None
        why = "no samples"
        if r_:
            lim = max(2.0, 0.01 * r_["first"])
            segs = r_.get("segments") or {}
            flat = bool(segs) and all(abs(v["growth"]) <= lim for v in segs.values())
            seg_text = ", ".join("%s %+.2f MB in %.0f s" % (k, v["growth"], v["seconds"]) for k, v in segs.items())
            why = (f"steady segments {seg_text} (limit {lim:.1f} MB each); steps {r_.get('steps')}; "
                   f"first -> last {r_['growth']:+.2f} MB")
            tail = segs.get("after_restart") or {}
            if tail.get("seconds", 0) >= 240 and tail.get("slope_mb_per_h") is not None:
                flat = flat and tail["slope_mb_per_h"] <= 5.0
                why += f"; slope after the restart {tail['slope_mb_per_h']} MB/h (limit 5)"
            else:
                why += " [too short for a slope]"
        rl = fig.get("reload") or {}
        res["targets"] = [
            ("0 xruns outside the restart window", fig["xruns_outside"] == 0,
             f"{fig['xruns_outside']} (deadline misses {fig['misses_outside']})"),
            ("no gap on reload", bool(rl) and rl.get("gaps") == 0,
             f"{rl.get('gaps', '?')} silence run(s) > 1 ms within -0.5..+2 s of it "
             f"({rl.get('player_xruns_near', '?')} xrun(s) there)"),
            ("flat memory", bool(flat), why),
            ("(extra) no audio gap outside the restart window", fig["gaps_outside"] == 0,
             f"{fig['gaps_outside']} silence run(s) > 1 ms"),
        ]
        save()
    except KeyboardInterrupt:
        res["fail"] = "interrupted"
    except Exception as e:
        import traceback

        res["fail"] = f"{type(e).__name__}: {e}"[:2000]
        res["traceback"] = traceback.format_exc()[-3000:]
        log(f"FAILED: {res['fail']}")
    finally:
        control.tear_down(res, children + midi_kids, client, daemon, srv,
                          line=lambda c: "stop" if c in sources else "quit", warnings=True)
        if srv is not None:
            remove_stale_shm(srv.name)
        drop_tmp(opts.tmp, opts.keep_logs, log)
    finish(res, opts.out, t_start_wall, report)
    return 1 if res.get("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
