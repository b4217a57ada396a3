"""The live daemon against a real private jackd (dummy driver): declared
latency is exact, channels are routed and uncorrupted, bypass is
bit-exact, a slow engine never gives a gap, jackd restarts are survived,
a bad config starts nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import jack
import numpy as np
import pytest

from conftest import longest_quiet, quietcast_exe

from quietcast.daemon.jackclients import Player, Recorder, take, wait_until
from quietcast.daemon import jackio
from quietcast.daemon.config import parse_config
from quietcast.daemon.service import Daemon

pytestmark = pytest.mark.jack


def config(server, channels, model="dsp", client="qcd", **engine):
    eng = "\n".join(f"{k} = {v}" for k, v in engine.items())
    text = f'[jack]\nclient_name = "{client}"\nserver = "{server}"\nreconnect_interval_ms = 100\n'
    text += f'[engine]\nmodel = "{model}"\n{eng}\n'
    # the audio path only: control, MIDI and state have their own tests
    text += '[control]\nenabled = false\n[midi]\nenabled = false\n[state]\nenabled = false\n'
    for ch in channels:
        text += "[[channel]]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in ch.items()) + "\n"
    return parse_config(text)


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


class Running:
    """A Daemon on a thread, with a player and a recorder wired to it."""

    def __init__(self, cfg, n_play=1, n_rec=1, **opts):
        self.daemon = Daemon(cfg, **opts)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        assert self.daemon.ready.wait(15), "daemon did not become ready"
        srv = cfg.jack.server
        self.recorder = Recorder(srv, n_rec)
        self.player = Player(srv, n_play, recorder=self.recorder)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for c in (self.player, self.recorder):
            try:
                c.close()
            except Exception:
                pass
        self.daemon.request_stop()
        self.thread.join(10)

    def connect(self, src, dst):
        self.player.client.connect(src, dst)

    def run(self, signals, tries: int = 8):
        """Play ``signals`` and record; returns (recording aligned so that
        index 0 is the player's first frame, declared latency). A take in
        which JACK skipped a cycle (a busy machine: the recording shifts) is
        played again, up to ``tries`` takes (``jackclients.take``)."""
        io = self.daemon.io
        rec, start, _ = take(self.player, self.recorder, signals, (io.latency + 4 * io.period) / 48_000 + 0.1,
                             tries, xruns=lambda: int(io.counters[jackio.XRUNS]))
        return rec[:, start:], io.latency


def assert_c_callback_under_ci(st):
    """CI builds the C process callback (daemon/rtcallback.c): the live
    tests must run it, not the Python fallback (a fallback is not a pass)."""
    assert st["callback"] == "c" or st["callback"].startswith("python (")
    if os.environ.get("CI"):
        assert st["callback"] == "c", st["callback"]
    # (which JACK answers: these tests run a private JACK2 server, whose libjack gives its version alone)
    assert re.fullmatch(r"1\.9\.\d+", st["jack_version"]), st["jack_version"]


@pytest.mark.parametrize("period", [64, 256, 1024])
def test_impulse_comes_out_after_exactly_the_declared_latency(jack_servers, period):
    srv = jack_servers(period)
    # strength 0: the output is the input, through the whole real path
    cfg = config(srv.name, [{"name": "host", "strength": 0.0}])
    with Running(cfg) as r:
        r.connect(r.player.name(), "qcd:host_in")
        r.connect("qcd:host_out", r.recorder.name())
        x = np.zeros(48_000, np.float32)
        x[1000] = 0.5
        y, latency = r.run(x)
        st = r.daemon.status()
        assert st["latency_frames"] == latency
        assert_c_callback_under_ci(st)
        assert int(np.argmax(np.abs(y[0]))) == 1000 + latency
        assert y[0, 1000 + latency] == pytest.approx(0.5, abs=1e-6)
        # (a deadline missed on a loaded machine would not show here: the dry
        # fallback has the same latency; test_a_slow_engine... covers it)
        # JACK knows it too: the output port's capture latency includes ours
        lo, hi = jackio.port_latency(r.player.client, "qcd:host_out", jackio.CAPTURE)
        cap_lo, _ = jackio.port_latency(r.player.client, "qcd:host_in", jackio.CAPTURE)
        assert lo == cap_lo + latency
        # the declared figure is the documented formula
        hop = 480
        assert latency == r.daemon.engine.processing_latency + hop + period - np.gcd(hop, period) + 480


def test_channels_are_routed_uncorrupted_and_bypass_is_bit_exact(jack_server):
    chans = [{"name": "a", "bypass": True}, {"name": "b", "bypass": True}, {"name": "c", "bypass": True, "stems": True}]
    cfg = config(jack_server.name, chans)
    with Running(cfg, n_play=3, n_rec=3) as r:
        for i, ch in enumerate("abc"):
            r.connect(r.player.name(i), f"qcd:{ch}_in")
            r.connect(f"qcd:{ch}_out", r.recorder.name(i))
        ports = {p.name for p in r.player.client.get_ports("qcd:")}
        assert {"qcd:c_voice", "qcd:c_background"} <= ports and "qcd:a_voice" not in ports
        rng = np.random.default_rng(7)
        x = (rng.standard_normal((3, 24_000)) * 0.2).astype(np.float32)
        y, L = r.run(x)
        for i in range(3):
            np.testing.assert_array_equal(y[i, L:L + x.shape[1]], x[i], err_msg=f"channel {i}")


def test_suppressor_cleans_noise_live(jack_server, noisy_speechlike):
    noisy, speech, noise = noisy_speechlike
    cfg = config(jack_server.name, [{"name": "host"}])
    with Running(cfg) as r:
        r.connect(r.player.name(), "qcd:host_in")
        r.connect("qcd:host_out", r.recorder.name())
        y, L = r.run(noisy[0])
        out = y[0, L:L + noisy.shape[1]]
        # compare the second half, after the noise estimate settled
        half = slice(noisy.shape[1] // 2, None)
        err_in = np.mean((noisy[0, half] - speech[half]) ** 2)
        err_out = np.mean((out[half] - speech[half]) ** 2)
        assert 10 * np.log10(err_in / err_out) > 2.0
        meters = r.daemon.status()["meters"]["host"]
        assert meters["gain_reduction_db"] <= 0.0


@pytest.mark.parametrize("callback", ["c", "python"])
def test_a_freewheeling_export_is_processed_not_dry(jack_servers, callback, monkeypatch):
    """JACK freewheels when a DAW exports or bounces: cycles run back to
    back, not in real time. The callback then waits for the engine, so the
    export is processed (until session 25 it never waited: the engine fell
    behind at once and the whole export was the dry input)."""
    if callback == "python":
        monkeypatch.setenv(jackio.RT_ENV, "python")
    srv = jack_servers(256)
    cfg = config(srv.name, [{"name": "host"}])
    x = (0.1 * np.random.default_rng(3).standard_normal(48_000 * 8)).astype(np.float32)
    with Running(cfg) as r:
        r.connect(r.player.name(), "qcd:host_in")
        r.connect("qcd:host_out", r.recorder.name())
        io = r.daemon.io
        misses0 = int(io.counters[jackio.DEADLINE_MISSES])
        r.recorder.start()
        r.player.client.set_freewheel(True)
        try:
            assert wait_until(lambda: io.freewheel, 5)
            t0 = time.monotonic()
            start = r.player.play(x)
            time.sleep(0.3)
        finally:
            r.player.client.set_freewheel(False)
        y = r.recorder.stop()[0]
        wall = time.monotonic() - t0
        assert wait_until(lambda: not io.freewheel, 5)
        out = y[start + io.latency:start + io.latency + x.size]
        assert out.size == x.size
        # the dsp suppressor takes about 14 dB off white noise; the dry input is 0 dB
        B = 4800
        lvl = [10 * np.log10(np.mean(out[i:i + B] ** 2) / np.mean(x[i:i + B] ** 2)) for i in range(48_000, x.size - B, B)]
        assert np.median(lvl) < -8.0 and max(lvl) < -3.0, lvl
        assert int(io.counters[jackio.DEADLINE_MISSES]) - misses0 <= 2
        print(f"freewheel ({callback}): {x.size / 48_000 / wall:.1f} s of audio per second, median {np.median(lvl):.1f} dB")


@pytest.mark.parametrize("callback", ["c", "python"])
def test_a_slow_engine_never_leaves_a_gap(jack_server, callback, monkeypatch):
    # every hop takes 12 ms for 10 ms of audio: the engine must fall behind.
    # Also run with the Python fallback callback, so it stays tested live.
    if callback == "python":
        monkeypatch.setenv(jackio.RT_ENV, "python")
    else:
        monkeypatch.delenv(jackio.RT_ENV, raising=False)
    cfg = config(jack_server.name, [{"name": "host", "strength": 0.0}], max_backlog_ms=200.0)
    with Running(cfg, engine_options={"slow_hop_s": 0.012}) as r:
        r.connect(r.player.name(), "qcd:host_in")
        r.connect("qcd:host_out", r.recorder.name())
        t = np.arange(48_000 * 2) / 48_000
        x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        y, L = r.run(x)
        st = r.daemon.status()
        if callback == "python":
            assert st["callback"] == "python (QUIETCAST_RT_CALLBACK=python)"
        else:
            assert_c_callback_under_ci(st)
        assert st["deadline_misses"] > 0 and st["missed_frames"] > 0
        out = y[0, L:L + x.size]
        # continuous: the processed path and the dry fallback are both the
        # input delayed by L, so the whole output is the input
        np.testing.assert_allclose(out, x, atol=1e-5)


def test_bad_config_starts_nothing(jack_server, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(f'[jack]\nserver = "{jack_server.name}"\nclient_nam = "x"\n[engine]\nmodel = "dps"\n'
                 '[[channel]]\nname = "Host"\n[[channel]]\nname = "b"\nstrength = 2\n')
    exe = quietcast_exe()
    r = subprocess.run([exe, "run", "-c", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "4 problems" in r.stderr
    for needle in ("did you mean 'client_name'", "did you mean 'dsp'", "'Host' is not allowed", "strength: value 2 is out of range"):
        assert needle in r.stderr
    c = jack.Client("looker", servername=jack_server.name, no_start_server=True)
    try:
        assert not c.get_ports("quietcast:") and not c.get_ports("x:")
    finally:
        c.close()


def test_jackd_restart_is_survived_with_connections_restored(jack_servers, tmp_path):
    srv = jack_servers(period=128, rate=48_000)
    cfgfile = tmp_path / "live.toml"
    cfgfile.write_text(
        f'[jack]\nclient_name = "qcr"\nserver = "{srv.name}"\nreconnect_interval_ms = 100\n'
        '[engine]\nmodel = "dsp"\n'
        '[[channel]]\nname = "host"\nstrength = 0.0\nconnect_in = ["player:out_0"]\nconnect_out = ["recorder:in_*"]\n')
    proc = subprocess.Popen([quietcast_exe(), "run", "-c", str(cfgfile)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def flows():
            """Start player+recorder, return seconds until a tone arrives."""
            t0 = time.monotonic()
            p, rec = Player(srv.name), Recorder(srv.name, seconds=20)
            try:
                tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48_000 * 8) / 48_000)).astype(np.float32)
                rec.start()
                th = threading.Thread(target=p.play, args=(tone,), daemon=True)
                th.start()
                got = wait_until(lambda: rec.n > 0 and np.abs(rec.buf[0, :rec.n]).max() > 0.1, timeout=8)
                return (time.monotonic() - t0) if got else None
            finally:
                p.pos = -1
                p.done.set()  # let the playing thread return
                th.join(5)
                p.close()
                rec.close()

        assert flows() is not None, "no audio before the restart"
        srv.stop(crash=True)
        time.sleep(0.5)
        t_restart = time.monotonic()
        srv.start()
        dt = flows()
        assert dt is not None, "no audio after the restart"
        total = time.monotonic() - t_restart
        assert total < 2.0 + 1.0, f"audio back after {total:.2f} s"  # 2 s target, +1 s for our own clients' start-up
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "JACK server went away" in out and "back after" in out
    assert out.count("JACK process callback:") == 1, out  # said once, not at every reconnect
    if os.environ.get("CI"):
        assert "JACK process callback: C (" in out, out


def _jack(server: str, *cmd: str) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1"))
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def _links(server: str, client: str) -> set[tuple[str, str]]:
    """(source, destination) of every connection of ``client``'s ports (jack_lsp -c)."""
    out, port, links = _jack(server, "jack_lsp", "-c", "-p"), None, set()
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            port = line.strip()
        elif "properties:" not in line and port and port.startswith(client + ":"):
            other = line.strip()
            links.add((port, other) if port.endswith("_out") else (other, port))
    return links


def test_connections_made_by_hand_come_back_after_a_jackd_crash_and_a_restart(jack_servers, tmp_path):
    """A patch made by hand (jack_connect) is made again when jackd comes
    back after a crash, and when the daemon starts again (the state file).
    One taken down by hand stays down; one whose other port is gone waits
    for it (a player that restarts, also within the 0.3 s the daemon
    waits before it looks). A connection made by a rule is the rule's: it
    is not kept in the state file."""
    srv = jack_servers(period=256, rate=48_000)
    cfgfile = tmp_path / "live.toml"
    cfgfile.write_text(
        f'[jack]\nclient_name = "qch"\nserver = "{srv.name}"\nreconnect_interval_ms = 100\n'
        f'[engine]\nmodel = "dsp"\n[control]\nbind = "ipc://{tmp_path}/ctl"\nevents = "ipc://{tmp_path}/ev"\n'
        f'[midi]\nenabled = false\n[state]\nfile = "{tmp_path}/state.json"\nsave_debounce_ms = 100\n'
        '[[channel]]\nname = "host"\nconnect_in = ["system:capture_2"]\n')
    from quietcast.daemon.client import Client

    def start():
        proc = subprocess.Popen([quietcast_exe(), "run", "-c", str(cfgfile)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        with Client(f"ipc://{tmp_path}/ctl", timeout=5) as c:
            assert wait_until(lambda: _ready(c), 30), "daemon not ready"
        return proc

    def _ready(c):
        try:
            return c.status()["ready"]
        except Exception:
            return False

    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        return out

    by_hand = {("system:capture_1", "qch:host_in"), ("qch:host_out", "system:playback_1")}
    want = by_hand | {("system:capture_2", "qch:host_in")}
    proc = start()
    try:
        _jack(srv.name, "jack_connect", "system:capture_1", "qch:host_in")
        _jack(srv.name, "jack_connect", "qch:host_out", "system:playback_1")
        _jack(srv.name, "jack_connect", "qch:host_out", "system:playback_2")
        _jack(srv.name, "jack_disconnect", "qch:host_out", "system:playback_2")  # taken down by hand
        assert _links(srv.name, "qch") == want
        # a player's port, connected, then the player goes (its connection with it) and comes back
        other = jack.Client("qcplayer", servername=srv.name, no_start_server=True)
        other.outports.register("out_0")
        other.activate()
        _jack(srv.name, "jack_connect", "qcplayer:out_0", "qch:host_in")
        time.sleep(1.0)  # (the daemon looks 0.3 s after the last change)
        other.deactivate()
        other.close()
        time.sleep(1.0)
        assert _links(srv.name, "qch") == want
        other = jack.Client("qcplayer", servername=srv.name, no_start_server=True)
        other.outports.register("out_0")
        other.activate()
        try:
            assert wait_until(lambda: ("qcplayer:out_0", "qch:host_in") in _links(srv.name, "qch"), 10)
            time.sleep(1.0)
        finally:
            other.deactivate()
            other.close()
        # a player that closes and opens again at once (before the daemon looked)
        other = jack.Client("qcplayer", servername=srv.name, no_start_server=True)
        other.outports.register("out_0")
        other.activate()
        try:
            assert wait_until(lambda: ("qcplayer:out_0", "qch:host_in") in _links(srv.name, "qch"), 10)
        finally:
            other.deactivate()
            other.close()
        time.sleep(1.0)
        srv.stop(crash=True)
        time.sleep(0.5)
        srv.start()
        assert wait_until(lambda: _links(srv.name, "qch") == want, 15), _links(srv.name, "qch")
        (tmp_path / "state.json").unlink()
        with Client(f"ipc://{tmp_path}/ctl", timeout=5) as c:
            c.call("save_state")  # (it wrote the values only until the review)
        saved = json.loads((tmp_path / "state.json").read_text())["connections"]
        assert {tuple(p) for p in saved} == by_hand | {("qcplayer:out_0", "qch:host_in")}
    finally:
        out = stop(proc)
    assert "JACK server went away" in out and "restored 2 connection(s) the ports had before" in out, out
    saved = json.loads((tmp_path / "state.json").read_text())["connections"]
    assert {tuple(p) for p in saved} == by_hand | {("qcplayer:out_0", "qch:host_in")}  # (not the rule's)
    proc = start()
    try:
        assert wait_until(lambda: _links(srv.name, "qch") == want, 15), _links(srv.name, "qch")
    finally:
        out = stop(proc)
    assert "restored 2 connection(s) from the state file" in out, out


def test_the_readme_demo_runs_live_on_a_private_server(tmp_path):
    """`quietcast demo` (the README's first command): no JACK server is
    running for it, so it starts its own dummy one, plays the clip through
    the daemon and writes the report."""
    out = tmp_path / "demo"
    env = dict(os.environ)
    env.pop("JACK_DEFAULT_SERVER", None)
    r = subprocess.run([quietcast_exe(), "demo", "-o", str(out)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "through the daemon on JACK server quietcast-demo-" in r.stderr
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["chain"] == "live daemon" and s["suppressor"] in ("dsp", "neural")
    assert s["latency_samples"] > 0 and isinstance(s["deadline_misses"], int)
    assert s["noise_floor_reduction_db"] > 6.0  # the lead-in, before any xrun could shift things
    for f in ("noisy.wav", "cleaned.wav", "clean_reference.wav", "spectrogram.png"):
        assert (out / f).stat().st_size > 1000
    # the private server is gone again
    assert subprocess.run(["pgrep", "-f", "jackd -n quietcast-demo-"], capture_output=True).returncode != 0


def _lags(y: np.ndarray, ref: np.ndarray, lags: list[int], win: int = 160) -> list[int | None]:
    """For each ``win``-frame window of ``y`` (from the largest lag on):
    which of ``lags`` makes it exactly ``ref`` that many frames earlier
    (None: none does)."""
    out = []
    for s in range(max(lags), y.size - win + 1, win):
        hit = [L for L in lags if np.abs(y[s:s + win] - ref[s - L:s - L + win]).max() <= 1e-6]
        out.append(hit[0] if len(hit) == 1 else None)
    return out


@pytest.mark.parametrize("callback", ["c", "python"])
def test_a_period_change_moves_the_latency_in_place_with_no_gap_and_no_click(callback, monkeypatch):
    """A JACK period change (``jack_bufsize``; PipeWire's quantum) used to
    re-open the daemon's client: silence and its ports re-registered. Now
    the engine moves its buffering in place: the output is the input
    delayed by the old latency up to one 10 ms crossfade and by the new one
    after it, with nothing silent and no click between (the second
    difference stays within the tone's own); the new latency is in
    ``status`` and on the ports; the client is the same one. Both ways: a
    longer period (256 -> 1024: the latency grows, the frames between are
    played again) and a shorter one (1024 -> 128: it shrinks, they are
    skipped). With the C callback and with its Python twin."""
    from conftest import JackServer

    if callback == "python":
        monkeypatch.setenv(jackio.RT_ENV, "python")
    srv = JackServer(f"qcb{os.getpid()}{uuid.uuid4().hex[:6]}", period=256).start()
    try:
        cfg = config(srv.name, [{"name": "host", "strength": 0.0}])  # (the output is the delayed input)
        with Running(cfg, n_rec=2) as r:
            d = r.daemon
            r.connect(r.player.name(), "qcd:host_in")
            r.connect("qcd:host_out", r.recorder.name(0))
            r.connect(r.player.name(), r.recorder.name(1))  # the reference: what went in, as recorded
            io = d.io
            sr = 48_000
            t = np.arange(6 * sr) / sr
            x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3130 * t)).astype(np.float32)
            ctl = jack.Client("bufsize", servername=srv.name, no_start_server=True)

            def period(p):
                ctl.blocksize = p
                assert wait_until(lambda: d.status().get("period") == p, 5), d.status()
                return d.io.latency

            try:
                # a take with an xrun or a missed deadline (the machine too loaded) is played again; a period
                # that grows before the buffering does misses deadlines in every take
                for _ in range(4):
                    L1 = period(256)
                    x0, p0 = int(io.counters[jackio.XRUNS]), r.player.xruns
                    m0 = int(io.counters[jackio.DEADLINE_MISSES])
                    r.recorder.start()
                    play = threading.Thread(target=r.player.play, args=(x,))
                    play.start()
                    time.sleep(2.0)
                    L2 = period(1024)
                    time.sleep(1.5)
                    L3 = period(128)
                    st = d.status()
                    play.join(20)
                    time.sleep(0.3)
                    rec = r.recorder.stop()
                    misses = int(io.counters[jackio.DEADLINE_MISSES]) - m0
                    if int(io.counters[jackio.XRUNS]) == x0 and r.player.xruns == p0 and not misses:
                        break
                else:
                    raise AssertionError(f"an xrun or a missed deadline in each of 4 takes (the last: {misses} "
                                         "missed)")
                lo, _ = jackio.port_latency(ctl, "qcd:host_out", jackio.CAPTURE)
                cap_lo, _ = jackio.port_latency(ctl, "qcd:host_in", jackio.CAPTURE)
            finally:
                ctl.close()
            assert d.io is io and st["reconnects"] == 0  # the same client throughout: not re-opened
            if callback == "python":
                assert st["callback"].startswith("python ("), st["callback"]
            else:
                assert_c_callback_under_ci(st)
            assert st["latency_frames"] == L3
            assert (L1, L2, L3) == tuple(d.engine.latency_for_period(p) for p in (256, 1024, 128))
            assert lo == cap_lo + L3  # re-declared on the ports
            y, ref = rec[0], rec[1]
            on = np.flatnonzero(np.abs(ref) > 0)
            y, ref = y[:on[-1] + L3], ref[:on[-1] + L3]
            lags = _lags(y[on[0]:], ref[on[0]:], [L1, L2, L3])
            # exactly the old latency, then the new one, each change within one crossfade (480 frames)
            known = [L for L in lags if L is not None]
            order = [k for i, k in enumerate(known) if i == 0 or known[i - 1] != k]
            assert order == [L1, L2, L3], order
            assert lags.count(None) <= 2 * (480 // 160 + 1), lags.count(None)
            # nothing silent, nothing that clicks
            seg = y[on[0] + L1 + 1:]
            assert longest_quiet(seg) <= 2
            assert np.abs(np.diff(seg, 2)).max() <= 1.5 * np.abs(np.diff(x, 2)).max()
    finally:
        srv.stop()


def test_at_44_1_khz_the_latency_is_still_declared(jack_servers):
    srv = jack_servers(period=256, rate=44_100)
    cfg = config(srv.name, [{"name": "host", "strength": 0.0}])
    with Running(cfg) as r:
        r.connect(r.player.name(), "qcd:host_in")
        r.connect("qcd:host_out", r.recorder.name())
        assert r.daemon.engine.hop == 441  # 10 ms at the server's rate
        x = np.zeros(44_100, np.float32)
        x[1000] = 0.5
        y, latency = r.run(x)
        # the suppressor runs at 48 kHz behind resamplers that land on a
        # whole frame of its declared latency: the peak lands on it exactly
        assert int(np.argmax(np.abs(y[0]))) == 1000 + latency
        assert np.abs(y[0]).max() > 0.4


def test_a_take_across_a_skipped_cycle_is_played_again(jack_server):
    """The live tests' alignment (``jackclients.take``): when JACK skips a
    cycle of the recorder (as a loaded machine does), that take's recording
    is a period short and everything after the hole comes early; the hole
    shows in the recorder's frame times and the take is played again."""

    class Dropping(Recorder):
        drop_at = 20  # the recorder's 20th cycle of the first take is lost

        def _process(self, frames):
            if self.recording and self.drop_at is not None and self.nc == self.drop_at:
                self.drop_at = None
                return
            super()._process(frames)

    rec = Dropping(jack_server.name, 1, seconds=5, name="droprec")
    play = Player(jack_server.name, 1, name="dropplay", recorder=rec)
    try:
        play.client.connect(play.name(), rec.name())
        x = np.zeros(24_000, np.float32)
        x[10_000] = 0.5  # after the hole (cycle 20 of 256 frames)
        y, start, takes = take(play, rec, x, 0.2)
        assert rec.drop_at is None  # the first take did lose a cycle
        assert takes >= 2
        assert rec.gaps() == 0 and play.gaps() == 0
        assert int(np.argmax(np.abs(y[0]))) == start + 10_000  # direct connection: no delay
    finally:
        play.close()
        rec.close()


def test_a_take_is_refused_when_its_start_index_disagrees_with_the_frame_times():
    """The player notes the recorder's count at its first cycle; if the
    recorder had already run that cycle (or a callback came late) the take
    is a period off although no cycle is missing: the recorder's own frame
    times say where the player's first cycle is, and the two must agree."""
    from quietcast.daemon.jackclients import _unclean

    rf = np.arange(100, 120) * 256
    pf = rf[4:15]
    assert _unclean(pf, rf, 256, 4 * 256, 0, 0) == ""
    assert "index 1280" in _unclean(pf, rf, 256, 5 * 256, 0, 0)
    assert "skipped" in _unclean(pf, np.delete(rf, 10), 256, 4 * 256, 0, 0)
    assert "xruns" in _unclean(pf, rf, 256, 4 * 256, 1, 0)
    assert "did not run" in _unclean(pf + 128, rf, 256, 4 * 256, 0, 0)


def test_a_second_daemon_with_the_same_client_name_waits_and_says_why(jack_server, caplog):
    """JACK would rename a second client "qcd" to "qcd-01": its ports are
    then named by no connection rule or patch, yet it said ready. Now the
    second daemon asks for the exact name, is refused, says so once, and
    waits; when the first goes, it takes over."""
    import logging

    cfg = config(jack_server.name, [{"name": "host"}])
    with Running(cfg) as first:
        second = Daemon(config(jack_server.name, [{"name": "host"}]))
        th = threading.Thread(target=second.run, daemon=True)
        with caplog.at_level(logging.WARNING, logger="quietcast"):
            th.start()
            try:
                assert wait_until(lambda: any("is taken by another client" in r.message for r in caplog.records), 10)
                assert not second.ready.is_set()
                names = {p.name.split(":")[0] for p in first.player.client.get_ports()}
                assert "qcd-01" not in names
                first.daemon.request_stop()
                first.thread.join(10)
                assert second.ready.wait(15)  # the name is free: the second one takes over
            finally:
                second.request_stop()
                th.join(10)
