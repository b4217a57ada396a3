"""The live daemon under PipeWire's JACK layer (``pw-jack``), as on a
desktop (systemd/user/quietcast.service): a private, headless PipeWire
server (its Dummy-Driver drives the graph; no session manager, no sound
card), the real ``quietcast run`` under ``pw-jack``, and a peer under
``pw-jack`` that plays into the daemon, records it and is its MIDI
surface. PipeWire's JACK layer is its own libjack, not JACK2's: the same
calls, other behaviour (its own period, 1024 frames here; its own port
registration).

Needs Debian's ``pipewire`` and ``pipewire-jack`` (.ci/setup installs
them). Everything under PipeWire runs in subprocesses: this process
already holds JACK2's libjack for the other tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.jack

# The peer: plays impulses into the daemon's input and records its output
# (one JACK client), and is a MIDI surface on the daemon's JACK MIDI ports
# (python-rtmidi, as a controller behind PipeWire's MIDI bridge would be).
PEER = r"""
import ctypes, ctypes.util, json, sys, time
ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0", mode=ctypes.RTLD_GLOBAL)  # (see daemon/midi.py)
import jack, numpy as np, rtmidi
qc = sys.argv[1]
play = jack.Client("peer-play", no_start_server=True)
recc = jack.Client("peer-rec", no_start_server=True)
sr, period = play.samplerate, play.blocksize
n = 4 * sr
sig = np.zeros(n, np.float32)
marks = [sr, 2 * sr + 123, 3 * sr + 457]
for i in marks:
    sig[i] = 0.9
base, rec = [None], np.zeros(n, np.float32)  # indexed by JACK frame time - base (the player's first cycle)
armed = [False]  # the player plays from its first cycle once connected to the daemon (before: into nothing)
# "steady": what was played (port ref, straight from the player) and what came back, recorded side by side
# cycle after cycle in one callback: no frame times (under PipeWire a client's last_frame_time can jump by
# two periods and then by none at a small quantum, which left a hole in a recording indexed by it)
seq, pos, ppos = [None], [0], [0]
out = play.outports.register("out")
inp = recc.inports.register("in")
ref = recc.inports.register("ref")
@play.set_process_callback
def playing(frames):
    o = out.get_array()
    o[:] = 0.0
    if not armed[0]:
        return
    if base[0] is None:
        base[0] = play.last_frame_time
    p = ppos[0] if seq[0] is not None else play.last_frame_time - base[0]  # ("steady": cycle after cycle)
    if 0 <= p < n:
        k = min(frames, n - p)
        o[:k] = sig[p:p + k]
    ppos[0] = p + frames
@recc.set_process_callback
def recording(frames):
    if base[0] is not None and seq[0] is not None:
        q, m = pos[0], seq[0].shape[1]
        if q < m:
            k = min(frames, m - q)
            seq[0][0, q:q + k] = ref.get_array()[:k]
            seq[0][1, q:q + k] = inp.get_array()[:k]
            pos[0] = q + k
    elif base[0] is not None:
        p = recc.last_frame_time - base[0]
        if 0 <= p < n:
            k = min(frames, n - p)
            rec[p:p + k] = inp.get_array()[:k]
tx = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="peer-tx")
tx.open_virtual_port("out")
rx = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="peer-rx")
rx.open_virtual_port("in")
recc.activate()
recc.connect(qc + ":host_out", inp)
recc.connect("peer-tx:out", qc + "-midi-in:in")
recc.connect(qc + "-midi-out:out", "peer-rx:in")
sys.stdout.write("ready %d %d\n" % (sr, period)); sys.stdout.flush()
got = []
for line in sys.stdin:  # commands from the test, one a line
    cmd = line.split()
    if cmd[0] == "cc":
        tx.send_message([0xB0, int(cmd[1]), int(cmd[2])])
    elif cmd[0] == "rx":  # MIDI received so far
        while True:
            m = rx.get_message()
            if m is None:
                break
            got.append(m[0])
        sys.stdout.write("rx %s\n" % json.dumps(got)); sys.stdout.flush()
    elif cmd[0] == "audio":  # play, and the delays of the marks once all is recorded
        play.activate()
        play.connect(out, qc + ":host_in")
        armed[0] = True
        t0 = time.monotonic()
        while (base[0] is None or recc.frame_time - base[0] < n + 2 * period) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        d = []
        for i in marks:
            seg = np.abs(rec[i:i + sr // 2])
            d.append(int(np.argmax(seg > 0.02)) if seg.max() > 0.02 else -1)
        sys.stdout.write("audio %s\n" % json.dumps(d)); sys.stdout.flush()
    elif cmd[0] == "steady":  # play a steady tone for SECONDS; save what was played and what came back
        m = int(float(cmd[2]) * sr)
        t = np.arange(m) / sr
        sig2 = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3130 * t)).astype(np.float32)
        armed[0], base[0] = False, None
        sig, n = sig2, m  # (the callbacks read these names at each cycle)
        pos[0], ppos[0], seq[0] = 0, 0, np.zeros((2, m), np.float32)
        try:
            play.activate()
        except jack.JackError:
            pass  # (active already)
        for a, b in ((out, qc + ":host_in"), (out, ref)):
            try:
                play.connect(a, b)
            except jack.JackError:
                pass  # (connected already)
        armed[0] = True
        sys.stdout.write("steady started\n"); sys.stdout.flush()
        t0 = time.monotonic()
        while pos[0] < seq[0].shape[1] and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        np.save(cmd[1], seq[0])
        sys.stdout.write("steady %s\n" % json.dumps(cmd[1])); sys.stdout.flush()
for cl in (play, recc):
    cl.deactivate()
    cl.close()
"""


class PipeWire:
    """A private, headless PipeWire server; ``env`` for its ``pw-jack``
    clients."""

    def __init__(self, rt):
        self.rt = rt
        os.chmod(rt, 0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(rt), PIPEWIRE_RUNTIME_DIR=str(rt))
        for k in ("JACK_DEFAULT_SERVER", "PIPEWIRE_REMOTE", "DBUS_SESSION_BUS_ADDRESS"):
            self.env.pop(k, None)
        self.proc = None

    def start(self) -> "PipeWire":
        log = open(self.rt / "pipewire.log", "a")
        self.proc = subprocess.Popen(["pipewire"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        t0 = time.monotonic()
        while not (self.rt / "pipewire-0").exists():
            assert self.proc.poll() is None, (self.rt / "pipewire.log").read_text()
            assert time.monotonic() - t0 < 20, "PipeWire did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """As ``systemctl --user restart pipewire`` stops it (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        t0 = time.monotonic()
        while (self.rt / "pipewire-0").exists() and time.monotonic() - t0 < 5:
            time.sleep(0.05)


@pytest.fixture
def pipewire(tmp_path_factory):
    missing = [t for t in ("pipewire", "pw-jack") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install pipewire pipewire-jack)")
    pw = PipeWire(tmp_path_factory.mktemp("pwrt")).start()
    try:
        yield pw
    finally:
        pw.stop()


def _config(tmp_path, name: str, mapping: str = "", strength: float | None = None,
            quantum: int = 0) -> pathlib.Path:
    """A config for the daemon under PipeWire (``quantum``: ``[jack]
    pipewire_quantum``; 0, PipeWire's own, 1024 frames here)."""
    (tmp_path / "map.toml").write_text(mapping)
    cfg = tmp_path / "quietcast.toml"
    cfg.write_text(f'[jack]\nclient_name = "{name}"\npipewire_quantum = {quantum}\n[engine]\nmodel = "dsp"\n'
                   f'[control]\nbind = "ipc://{tmp_path}/ctl"\nevents = "ipc://{tmp_path}/ev"\n'
                   '[midi]\nmapping = "map.toml"\n[state]\nenabled = false\n[[channel]]\nname = "host"\n'
                   + (f"strength = {strength}\n" if strength is not None else ""))
    return cfg


def _run_daemon(pipewire, tmp_path, cfg):
    """``quietcast run --config CFG`` under ``pw-jack``; (the process, a
    function giving the end of its log)."""
    from conftest import quietcast_exe

    daemon = subprocess.Popen(["pw-jack", quietcast_exe(), "run", "--config", str(cfg)], env=pipewire.env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"))
    return daemon, lambda: (tmp_path / "daemon.log").read_text()[-3000:]


def _stop(*procs) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            if p.stdin is not None:
                p.stdin.close()
            else:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait(pred, timeout, step=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def test_the_daemon_under_pipewires_jack_layer_states_its_latency_and_takes_jack_midi(pipewire, tmp_path):
    """Under ``pw-jack`` the daemon comes up at PipeWire's rate and period,
    its output lands exactly the declared latency after its input (as
    PipeWire itself reports it on the ports), and its JACK MIDI ports work
    both ways: a fader's CC moves a parameter, and a change from ``ctl``
    goes back to the controller. (JACK MIDI did not start at all here:
    python-rtmidi's wheel brings a libjack of its own that only reaches a
    JACK2 server.)"""
    from quietcast.daemon.client import Client

    name = f"qpw{uuid.uuid4().hex[:5]}"
    cfg = _config(tmp_path, name, '[[map]]\naddress = "host.strength"\ntype = "cc"\nchannel = 1\nnumber = 7\n'
                  'takeover = "jump"\n')
    daemon, log = _run_daemon(pipewire, tmp_path, cfg)
    peer = None
    try:
        with Client(f"ipc://{tmp_path}/ctl", timeout=10) as c:
            assert _wait(lambda: c.status()["ready"] and c.status()["midi"]["jack"]["in"], 30), log()
            st = c.status()
            peer = subprocess.Popen(["pw-jack", sys.executable, "-c", PEER, name], env=pipewire.env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)

            def ask(line: str, tag: str) -> object:
                peer.stdin.write(line + "\n")
                peer.stdin.flush()
                while True:
                    got = peer.stdout.readline()
                    assert got, "the peer ended"
                    if got.startswith(tag + " "):
                        return json.loads(got[len(tag) + 1:])

            first = peer.stdout.readline().split()
            assert first[0] == "ready", first
            sr, period = int(first[1]), int(first[2])
            assert (st["sample_rate"], st["period"]) == (sr, period)
            assert "PipeWire" in st["jack_version"], st["jack_version"]  # (what answers, in status)
            lat = st["latency_frames"]
            lsp = subprocess.run(["pw-jack", "jack_lsp", "-l", f"{name}:host_out"], env=pipewire.env,
                                 capture_output=True, text=True, timeout=20).stdout
            assert f"port capture latency = [ {lat} {lat} ] frames" in lsp, lsp

            # MIDI in: a fader on CC 7 moves the strength
            assert _wait(lambda: c.status()["midi"]["jack"]["connections"]["in"], 10), c.status()["midi"]
            for _ in range(40):  # (until the connection carries: a message may be lost while it is made)
                peer.stdin.write("cc 7 32\n")
                peer.stdin.flush()
                if _wait(lambda: abs(c.call("get", address="host.strength") - 32 / 127) < 1e-6, 0.25):
                    break
            assert c.call("get", address="host.strength") == pytest.approx(32 / 127)
            # MIDI out: a change from ctl reaches the controller (its motor fader, its LED ring)
            c.call("set", address="host.strength", value=100 / 127)
            assert _wait(lambda: [0xB0, 7, 100] in ask("rx", "rx"), 5)

            # audio: each impulse comes out exactly the declared latency later
            delays = ask("audio", "audio")
            assert delays == [lat] * 3, (delays, lat, period)
            assert c.status()["xruns"] == 0
    finally:
        _stop(peer, daemon)
    assert daemon.returncode == 0, log()


def test_the_daemon_comes_back_after_pipewire_restarts(pipewire, tmp_path):
    """PipeWire restarted under a running daemon (``systemctl --user
    restart pipewire``): PipeWire's libjack sends no shutdown and its client
    goes on as if connected; only the cycles stop. The daemon saw a frozen
    server and waited for ever. Now, while stalled, it asks the server
    whether it still has the daemon's client; it has not: a reconnect,
    ready again, its JACK MIDI ports back."""
    from quietcast.daemon.client import Client

    name = f"qpw{uuid.uuid4().hex[:5]}"
    cfg = _config(tmp_path, name)
    daemon, log = _run_daemon(pipewire, tmp_path, cfg)
    try:
        with Client(f"ipc://{tmp_path}/ctl", timeout=10) as c:
            assert _wait(lambda: c.status()["ready"] and c.status()["midi"]["jack"]["in"], 30), log()
            pipewire.stop()
            assert _wait(lambda: not c.status()["ready"], 10), log()
            pipewire.start()
            assert _wait(lambda: c.status()["ready"], 20), (c.status(), log())
            st = c.status()
            assert st["reconnects"] == 1 and st["jack_stalled_s"] is None, st
            assert _wait(lambda: c.status()["midi"]["jack"]["in"] and c.status()["midi"]["jack"]["bridge_starts"] >= 2,
                         20), c.status()["midi"]
            lsp = subprocess.run(["pw-jack", "jack_lsp", name], env=pipewire.env, capture_output=True, text=True,
                                 timeout=20).stdout
            assert f"{name}:host_in" in lsp and f"{name}-midi-in:in" in lsp, lsp
            assert "no longer has this client" in log()
    finally:
        _stop(daemon)
    assert daemon.returncode == 0, log()


def test_a_quantum_change_moves_the_latency_in_place_with_no_gap(pipewire, tmp_path):
    """PipeWire changes its quantum (the JACK period) whenever an
    application asking for another latency starts or stops. The daemon
    used to re-open its JACK client to declare the new latency: ~50 ms of
    silence (2,176 frames measured here) and its ports re-registered, at every
    such change. Now it moves its buffering in place: the new latency is
    in ``status`` and on the ports, nothing reconnects, and the output
    goes on. What is left is PipeWire's own: at a quantum change its JACK
    layer runs no client's process callback for a cycle (the peer's and
    the daemon's alike, pipewire-jack.c: ``c->pending``), so one cycle
    (256 frames) is lost, as for every JACK application there. (The clean
    crossfade itself is measured under JACK2, test_live.py, where no cycle
    is lost.)"""
    import numpy as np

    from conftest import longest_quiet

    from quietcast.daemon.client import Client

    name = f"qpw{uuid.uuid4().hex[:5]}"
    cfg = _config(tmp_path, name, strength=0.0)  # (the output is the input, delayed: easy to check exactly)
    daemon, log = _run_daemon(pipewire, tmp_path, cfg)
    peer = None
    try:
        with Client(f"ipc://{tmp_path}/ctl", timeout=10) as c:
            assert _wait(lambda: c.status()["ready"], 30), log()
            before = c.status()
            peer = subprocess.Popen(["pw-jack", sys.executable, "-c", PEER, name], env=pipewire.env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert peer.stdout.readline().startswith("ready ")
            out = tmp_path / "steady.npy"
            peer.stdin.write(f"steady {out} 5\n")
            peer.stdin.flush()
            assert peer.stdout.readline().startswith("steady started")
            time.sleep(2.0)
            subprocess.run(["pw-metadata", "-n", "settings", "0", "clock.force-quantum", "256"], env=pipewire.env,
                           check=True, capture_output=True, timeout=20)
            assert _wait(lambda: c.status()["period"] == 256, 10), (c.status(), log())
            after = c.status()
            lsp = subprocess.run(["pw-jack", "jack_lsp", "-l", f"{name}:host_out"], env=pipewire.env,
                                 capture_output=True, text=True, timeout=20).stdout
            got = peer.stdout.readline()
            assert got.startswith("steady "), got
            sig, rec = np.load(out)  # (what was played and what came back, side by side)
    finally:
        _stop(peer, daemon)
    assert daemon.returncode == 0, log()
    L1, L2 = before["latency_frames"], after["latency_frames"]
    assert (before["period"], after["period"]) == (1024, 256) and L2 < L1, (before, after)
    assert f"port capture latency = [ {L2} {L2} ] frames" in lsp, lsp  # re-declared on the ports
    sr = after["sample_rate"]
    # before the change the output is the input L1 later, after it L2 later: exactly
    np.testing.assert_allclose(rec[L1 + sr // 2:L1 + sr], sig[sr // 2:sr], atol=1e-6)
    np.testing.assert_allclose(rec[-sr:], sig[-sr - L2:-L2], atol=1e-6)
    # in between, nothing quiet for longer than PipeWire's own lost cycle (a re-open: ~2,256 frames)
    s0 = int(np.argmax(np.abs(sig) > 0))  # (the player's first cycle can reach neither the daemon nor ref)
    quiet = longest_quiet(rec[s0 + L1 + 100:-L2])
    assert quiet <= 256, f"{quiet} quiet frames in a row"
    assert after["reconnects"] == 0 and "changed in place" in log(), (after, log())


def test_a_sample_rate_forced_under_the_daemon_rebuilds_its_engine_at_that_rate(pipewire, tmp_path):
    """PipeWire can change its graph's rate under a running client
    (``clock.force-rate``; JACK2 cannot). The daemon went on at 48 kHz:
    its suppressor and chains ran 44.1 kHz audio as if it were 48 kHz and
    ``status`` said 48000. Now it re-opens and builds its engine at the
    new rate: ``status`` says 44100 with that rate's latency, and an
    impulse comes out exactly that latency later."""
    from quietcast.daemon.client import Client

    name = f"qpw{uuid.uuid4().hex[:5]}"
    cfg = _config(tmp_path, name, strength=0.0)
    daemon, log = _run_daemon(pipewire, tmp_path, cfg)
    peer = None
    try:
        with Client(f"ipc://{tmp_path}/ctl", timeout=10) as c:
            assert _wait(lambda: c.status()["ready"], 30), log()
            assert c.status()["sample_rate"] == 48000
            subprocess.run(["pw-metadata", "-n", "settings", "0", "clock.force-rate", "44100"], env=pipewire.env,
                           check=True, capture_output=True, timeout=20)
            assert _wait(lambda: c.status()["sample_rate"] == 44100 and c.status()["ready"], 20), (c.status(), log())
            peer = subprocess.Popen(["pw-jack", sys.executable, "-c", PEER, name], env=pipewire.env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            first = peer.stdout.readline().split()
            assert first[0] == "ready" and int(first[1]) == 44100, first
            peer.stdin.write("audio\n")
            peer.stdin.flush()
            got = peer.stdout.readline()
            assert got.startswith("audio "), got
            delays = json.loads(got[len("audio "):])
            # (read now: at 44.1 kHz PipeWire may also move its quantum, 1024 -> 512, as the peer joins; the
            # daemon follows in place, before the first impulse at 1 s)
            st = c.status()
    finally:
        _stop(peer, daemon)
    assert daemon.returncode == 0, log()
    assert "engine: 1 channel(s) at 44100 Hz" in log() and st["sample_rate"] == 44100
    assert delays == [st["latency_frames"]] * 3, (delays, st, log())


def test_the_daemon_asks_pipewire_for_its_quantum(pipewire, tmp_path):
    """``[jack] pipewire_quantum`` (256 by default): under PipeWire the
    daemon asks the graph for that period (PIPEWIRE_LATENCY), so it runs
    at 34.7 ms instead of PipeWire's own 1024 frames (50.7 ms); the other
    tests here ask for none (0) and run at 1024."""
    from quietcast.daemon.client import Client

    name = f"qpw{uuid.uuid4().hex[:5]}"
    daemon, log = _run_daemon(pipewire, tmp_path, _config(tmp_path, name, quantum=256))
    try:
        with Client(f"ipc://{tmp_path}/ctl", timeout=10) as c:
            assert _wait(lambda: c.status()["ready"] and c.status()["period"] == 256, 30), (c.status(), log())
            st = c.status()
            # (PipeWire 0.3.65's JACK layer passes a port latency partly in quanta, which a reader turns
            # back into frames with the quantum it knows: a jack_lsp asking for none reads 1664 frames as
            # 6 x 1024 + 128 = 6272; one at the graph's quantum, as a running DAW is, reads 1664)
            # (and it publishes it a moment after the client is up: [ 0 0 ] until then)
            lsp = ""

            def latency_shown() -> bool:
                nonlocal lsp
                lsp = subprocess.run(["pw-jack", "jack_lsp", "-l", f"{name}:host_out"],
                                     env=dict(pipewire.env, PIPEWIRE_LATENCY="256/48000"),
                                     capture_output=True, text=True, timeout=20).stdout
                return "port capture latency = [ 0 0 ]" not in lsp

            _wait(latency_shown, 10, step=0.2)
            # the request is each node's node.latency: the audio client's and the MIDI bridge's
            asked = {}

            def requests(want) -> bool:
                nonlocal asked
                nodes = json.loads(subprocess.run(["pw-dump"], env=pipewire.env, capture_output=True, text=True,
                                                  timeout=20).stdout)
                asked = {o["info"]["props"].get("node.name"): o["info"]["props"].get("node.latency")
                         for o in nodes if o.get("type", "").endswith(":Node")
                         and str(o["info"]["props"].get("node.name", "")).startswith(name)}
                return set(asked) == {name, f"{name}-midi-watch", f"{name}-midi-in", f"{name}-midi-out"} \
                    and set(asked.values()) == {want}

            assert _wait(lambda: requests("256/48000"), 10, step=0.2), asked
            # a reload that asks for none re-opens the client, and restarts the MIDI bridge, without the
            # request (the bridge kept asking for 256 until session 29). (The graph may stay at 256 while
            # JACK clients run: PipeWire's JACK nodes lock the quantum they run at, node.lock-quantum)
            _config(tmp_path, name, quantum=0)
            c.call("reload")
            assert _wait(lambda: c.status()["ready"] and requests(None), 20), (asked, log())
            assert "MIDI control stopped: [jack] pipewire_quantum changed" in log()
    finally:
        _stop(daemon)
    assert daemon.returncode == 0, log()
    assert st["latency_frames"] == 1664 and "PIPEWIRE_LATENCY=256/48000" in log(), (st, log())
    assert "port capture latency = [ 1664 1664 ] frames" in lsp, lsp
