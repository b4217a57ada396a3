"""Service and reliability: systemd units verify, sd_notify in the right
order, the watchdog follows the engine, reload by SIGHUP, state survives
kill -9, a corrupt state file is set aside, a faulty plugin costs only its
stage, SIGTERM and a second SIGINT."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import quietcast_exe

from quietcast.daemon import jackio
from quietcast.daemon.client import Client
from quietcast.daemon.errors import ControlError
from quietcast.daemon.config import load_config
from quietcast.daemon.jackclients import Player, Recorder, take, wait_until
from quietcast.daemon.notify import Notifier
from quietcast.daemon.service import Daemon

REPO = pathlib.Path(__file__).resolve().parents[2]
EXE = quietcast_exe()


# --------------------------------------------------------------------------
# units


def _verify(unit_files: list[pathlib.Path], user: bool, tmp_path) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("CI must have systemd-analyze (apt-get install systemd)")
        pytest.skip("systemd-analyze not installed")
    env = dict(os.environ)
    if user:
        rt = tmp_path / "xdg"
        rt.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(rt)
    cmd = [exe, "verify"] + (["--user"] if user else []) + [str(f) for f in unit_files]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def _localised(src: pathlib.Path, dst_dir: pathlib.Path) -> pathlib.Path:
    """The unit with ExecStart pointing at this machine's quietcast (and
    pw-jack replaced by env where PipeWire is absent)."""
    text = src.read_text().replace("/usr/local/bin/quietcast", EXE)
    if not os.path.exists("/usr/bin/pw-jack"):
        text = text.replace("/usr/bin/pw-jack ", shutil.which("env") + " ")
    dst = dst_dir / src.name
    dst.write_text(text)
    return dst


def test_system_units_verify(tmp_path):
    units = [_localised(REPO / "systemd" / n, tmp_path) for n in ("quietcast.service", "jackd.service")]
    r = _verify(units, False, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO / "systemd" / "quietcast.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RuntimeDirectory=quietcast",
                "StateDirectory=quietcast", "ConfigurationDirectory=quietcast", "SupplementaryGroups=audio",
                "LimitRTPRIO=", "LimitMEMLOCK=infinity", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallArchitectures=native",
                "After=jackd.service", "ExecReload="):
        assert key in text, key


def test_user_unit_verifies(tmp_path):
    d = tmp_path / "user"
    d.mkdir()
    r = _verify([_localised(REPO / "systemd" / "user" / "quietcast.service", d)], True, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_unit_is_caught(tmp_path):
    bad = tmp_path / "quietcast.service"
    bad.write_text((REPO / "systemd" / "quietcast.service").read_text().replace("/usr/local/bin/quietcast", "/nonexistent/qc"))
    r = _verify([bad], False, tmp_path)
    assert r.returncode != 0 and "not executable" in (r.stdout + r.stderr)


# --------------------------------------------------------------------------
# helpers: a daemon in a subprocess, a fake NOTIFY_SOCKET


def write_config(tmp_path, server, client="qcs", extra_channel_host="", post=None, debounce=100):
    if post:
        (tmp_path / "post.toml").write_text(post)
    text = (f'[jack]\nclient_name = "{client}"\nserver = "{server}"\nreconnect_interval_ms = 100\n'
            '[engine]\nmodel = "dsp"\n'
            f'[control]\nbind = "ipc://{tmp_path}/ctl"\nevents = "ipc://{tmp_path}/ev"\n'
            f'[midi]\nenabled = false\n[state]\nfile = "{tmp_path}/state.json"\nsave_debounce_ms = {debounce}\n'
            f'[[channel]]\nname = "host"\n{extra_channel_host}' + ('chain = "post.toml"\n' if post else "")
            + '[[channel]]\nname = "guest"\n')
    path = tmp_path / "quietcast.toml"
    path.write_text(text)
    return path


class NotifySocket:
    def __init__(self, tmp_path):
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> list[str]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass
        return [m for _, m in self.messages]

    def wait_for(self, line: str, timeout: float = 20.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(line in m.split("\n") for _, m in self.messages):
                return True
            self.drain(0.2)
        return False

    def close(self):
        self.sock.close()


def start(cfg_path, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([EXE, "run", "-c", str(cfg_path), "--log-level", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def client(tmp_path, timeout=10.0):
    return Client(f"ipc://{tmp_path}/ctl", timeout=timeout)


def wait_ready(tmp_path, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with client(tmp_path, timeout=1.0) as c:
                if c.status()["ready"]:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def stop(proc, sig=signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


# --------------------------------------------------------------------------
# notify, watchdog, reload, stop


def test_notify_messages_in_order(tmp_path, jack_server):
    ns = NotifySocket(tmp_path)
    cfg = write_config(tmp_path, jack_server.name)
    proc = start(cfg, {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "1000000"})
    try:
        assert ns.wait_for("READY=1"), stop(proc)
        ns.drain(1.5)
        with client(tmp_path) as c:
            c.call("reload")
        ns.drain(0.5)
        out = stop(proc)
        assert proc.returncode == 0, out
        ns.drain(0.5)
    finally:
        ns.close()
    msgs = [m for _, m in ns.messages]
    first_ready = next(i for i, m in enumerate(msgs) if "READY=1" in m.split("\n"))
    assert any(l.startswith("STATUS=") and "latency" in l for l in msgs[first_ready].split("\n"))
    assert any(m == "WATCHDOG=1" for m in msgs[first_ready:])
    rel = next(i for i, m in enumerate(msgs) if m.startswith("RELOADING=1"))
    assert rel > first_ready
    assert any("READY=1" in m.split("\n") for m in msgs[rel + 1:])
    stopping = [i for i, m in enumerate(msgs) if m == "STOPPING=1"]
    assert stopping and stopping[0] > rel
    assert "final status" in out


def test_a_stalled_engine_stops_the_watchdog(tmp_path, jack_server):
    cfg = load_config(write_config(tmp_path, jack_server.name))
    ns = NotifySocket(tmp_path)
    d = Daemon(cfg)
    d.notifier = Notifier({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "600000"})
    th = threading.Thread(target=d.run, daemon=True)
    th.start()
    try:
        assert d.ready.wait(20)
        before = [m for m in ns.drain(2.0) if m == "WATCHDOG=1"]
        assert len(before) >= 3  # every 0.3 s while audio flows
        d.engine.slow_hop_s = 5.0  # the engine thread hangs inside a hop
        ns.drain(1.0)  # the ping in flight
        ns.messages.clear()
        after = [m for m in ns.drain(2.5) if m == "WATCHDOG=1"]
        assert after == []
        # the control thread is fine all along: it does not hide the hang
        with Client(f"ipc://{tmp_path}/ctl") as c:
            assert c.call("version")["protocol"] == 1
    finally:
        d.engine.slow_hop_s = 0.0
        d.request_stop()
        th.join(20)
        ns.close()


def test_sighup_reloads_good_and_keeps_running_on_broken(tmp_path, jack_server):
    cfg = write_config(tmp_path, jack_server.name)
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path)
        good = cfg.read_text().replace('name = "guest"\n', 'name = "guest"\nstrength = 0.6\n')
        cfg.write_text(good)
        proc.send_signal(signal.SIGHUP)
        with client(tmp_path) as c:
            assert wait_until(lambda: c.get("guest.strength") == 0.6, timeout=10)
            cfg.write_text(good.replace("strength = 0.6", "strength = 6\nstrenght = 1"))
            proc.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            assert c.get("guest.strength") == 0.6 and c.status()["ready"]
        out = stop(proc)
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
    assert "reload refused, the running config stays" in out
    assert "did you mean 'strength'" in out and "out of range [0, 1]" in out


def test_kill_9_and_restart_restores_every_parameter(tmp_path, jack_server):
    post = '[[stage]]\nname = "comp"\ntype = "compressor"\nthreshold_db = -20\nratio = 3\n'
    cfg = write_config(tmp_path, jack_server.name, post=post)
    values = {"host.strength": 0.35, "host.input_gain_db": -4.5, "host.output_gain_db": "-inf",
              "host.background_db": -18.0, "host.mute": True, "guest.bypass": True,
              "host.chain.comp.threshold_db": -31.0, "host.chain.comp.ratio": 6.5, "host.chain.comp.bypass": True}
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path)
        with client(tmp_path) as c:
            c.call("set", values=values)
        state = tmp_path / "state.json"
        assert wait_until(lambda: state.exists() and json.loads(state.read_text())["params"]["host.chain.comp.ratio"] == 6.5,
                          timeout=10)
    finally:
        stop(proc, signal.SIGKILL)
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path)
        with client(tmp_path) as c:
            got = c.call("get", addresses=list(values))
        assert got == values
    finally:
        out = stop(proc)
    assert "restored" in out


def test_corrupt_state_file_is_set_aside(tmp_path, jack_server):
    cfg = write_config(tmp_path, jack_server.name)
    (tmp_path / "state.json").write_bytes(b'{"params": {"host.strength": 0.2,,, garbage')
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path)
        with client(tmp_path) as c:
            assert c.get("host.strength") == 1.0  # from the config
    finally:
        out = stop(proc)
    assert proc.returncode == 0
    assert "is corrupt" in out and "moved aside" in out
    assert glob.glob(str(tmp_path / "state.json.corrupt-*"))


def test_libjack_says_only_once_per_wait_that_the_server_is_not_there(tmp_path):
    """While jackd was down libjack printed five lines on stderr at every
    attempt (~110 every 6 s in the journal). Now the first attempt of each
    wait prints them and the rest are left out, through a C message function
    (a Python one can be called on libjack's real-time thread and made a
    daemon hang at its stop). libjack's own functions are back once
    connected: the server going away is reported again, and SIGTERM stops
    the daemon."""
    import uuid

    from conftest import JackServer
    from quietcast.daemon import jackio

    if not shutil.which("jackd"):
        pytest.skip("jackd not installed (apt-get install jackd2)")
    if jackio.libjack_quiet.silent_function() is None:
        pytest.skip(f"no compiled qc_jack_silent: {jackio.rt_library()[1]}")
    name = f"qcq{os.getpid()}{uuid.uuid4().hex[:6]}"
    cfg = write_config(tmp_path, name)
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([EXE, "run", "-c", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    srv = JackServer(name)
    said = lambda: log.read_text().count("Cannot connect to server")  # noqa: E731
    try:
        assert wait_until(lambda: "waiting for the JACK server" in log.read_text(), 20)
        first = said()
        time.sleep(2.0)  # 20 attempts at reconnect_interval_ms = 100
        assert 1 <= first == said() <= 4, log.read_text()[-3000:]  # the first attempt (open + name probe) only
        assert "libjack's messages about each attempt are left out" in log.read_text()
        srv.start()
        assert wait_ready(tmp_path), log.read_text()[-3000:]
        srv.stop()
        assert wait_until(lambda: said() > first, 10), log.read_text()[-3000:]  # libjack speaks again
        time.sleep(0.5)  # (the rest of that first attempt's lines)
        again = said()
        time.sleep(1.5)
        assert said() == again, log.read_text()[-3000:]  # and is left out again from the second attempt
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.stop()


# --------------------------------------------------------------------------
# a frozen jackd (kill -STOP): the daemon still stops when asked


class _Frozen:
    """A private jackd of its own (freezing the session's would stall the
    other tests' clients), stopped with SIGSTOP while inside ``with``;
    always let go again and stopped with SIGTERM (a SIGKILLed jackd keeps
    its slot in JACK's registry of at most 8 servers)."""

    def __init__(self):
        import uuid

        from conftest import JackServer

        if not shutil.which("jackd"):
            pytest.skip("jackd not installed (apt-get install jackd2)")
        self.srv = JackServer(f"qcz{os.getpid()}{uuid.uuid4().hex[:6]}")

    def freeze(self):
        os.kill(self.srv.proc.pid, signal.SIGSTOP)

    def thaw(self):
        if self.srv.proc is not None and self.srv.proc.poll() is None:
            os.kill(self.srv.proc.pid, signal.SIGCONT)

    def close(self):
        p = self.srv.proc
        self.thaw()
        if p is not None and p.poll() is None:
            # let go, jackd first times out on the clients that went while it was stopped: seconds
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.srv.proc = None
        if p is not None and p.returncode != 0:
            # it did not end cleanly (jackd 1.9.21, once let go, can die of SIGPIPE writing to the socket
            # of a client killed while it was stopped, e.g. the MIDI bridge), and its slot in JACK's
            # registry stays taken: a start under the same name takes it back, a clean stop frees it
            self.srv.start()
            self.srv.stop()


def _wait_exit(proc, timeout: float) -> float | None:
    """Seconds until ``proc`` exits, or None (it is then killed)."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout)
        return time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


@pytest.mark.parametrize("midi", [False, True], ids=["no-midi", "midi"])
def test_sigterm_with_a_frozen_jackd_stops_promptly_with_the_state_saved(tmp_path, midi):
    """jackd frozen (kill -STOP) under a running daemon, then SIGTERM. The
    daemon deactivated and closed its JACK client on the way out, and
    libjack waits for a frozen server's answer without end: the stop hung
    until systemd's SIGKILL (TimeoutStopSec=15s; measured: still running
    20 s after the SIGTERM). Now the client is closed by a helper thread
    given 1.5 s; the stop goes on without it (a warning says why), to its
    end (final status), with a value set just before saved by the stop
    itself (a debounce of a minute: nothing else saves it). With MIDI
    control on (the default), its JACK MIDI bridge process hangs the same
    way closing its clients: it gets 1.5 s (it was 5 s), then it is
    killed, beside the client's close. Measured: exit 0 after 1.8 s, with MIDI too (3.3 s while
    MIDI stopped before the client closed)."""
    z = _Frozen()
    cfg = write_config(tmp_path, z.srv.start().name, debounce=60_000)
    if midi:
        cfg.write_text(cfg.read_text().replace("[midi]\nenabled = false\n", "[midi]\nenabled = true\n"))
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path), stop(proc)
        with client(tmp_path) as c:
            if midi:
                assert wait_until(lambda: c.status()["midi"].get("jack", {}).get("in"), 20), c.status()["midi"]
            c.set("host.strength", 0.42)
        z.freeze()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        took = _wait_exit(proc, 12.0)  # under systemd's TimeoutStopSec=15s
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        z.close()
    assert took is not None, "still running 12 s after SIGTERM with jackd frozen"
    assert proc.returncode == 0, out
    assert "did not answer the client's deactivate/close" in out, out
    assert "final status" in out and "the stop did not finish" not in out, out
    if midi:
        assert "the JACK MIDI bridge did not close within" in out, out
    assert json.loads((tmp_path / "state.json").read_text())["params"]["host.strength"] == 0.42


def test_a_jackd_frozen_under_the_daemon_is_reported_and_waited_for(tmp_path):
    """jackd frozen (kill -STOP) while the daemon runs, then let go
    (SIGCONT). libjack says nothing (no shutdown, no xrun): the audio stood
    still while ``status`` said ready, nothing was logged, and the watchdog
    pings stopped with the engine's hops, so systemd (WatchdogSec=10s)
    would have killed the daemon 10 s into the freeze, to restart it into
    a jack_client_open that waits for the frozen server. Now, after
    ``Daemon.JACK_STALL_S`` (2 s) without a cycle, a warning says so,
    ``status`` says not ready with ``jack_stalled_s`` (and answers at once
    all along), and the watchdog is pinged on; when jackd runs again the
    daemon is ready again by itself (measured: cycles and hops move within
    0.5 s of SIGCONT; one xrun)."""
    z = _Frozen()
    cfg = write_config(tmp_path, z.srv.start().name)
    ns = NotifySocket(tmp_path)
    proc = start(cfg, {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "1000000"})
    try:
        assert ns.wait_for("READY=1"), stop(proc)
        with client(tmp_path, timeout=2.0) as c:
            assert wait_until(lambda: c.status()["hops"] > 0, 10)
            z.freeze()
            ns.drain(3.0)
            st = c.status()  # answers while jackd is frozen
            assert st["ready"] is False and st["jack_stalled_s"] >= 0.5, st
            ns.messages.clear()
            assert "WATCHDOG=1" in ns.drain(2.0)  # a frozen server is not the daemon's hang
            hops = c.status()["hops"]
            z.thaw()
            assert wait_until(lambda: c.status()["ready"], 10)
            st = c.status()
            assert st["jack_stalled_s"] is None and st["reconnects"] == 0
            assert wait_until(lambda: c.status()["hops"] > hops + 10, 10)
        out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        z.close()
        ns.close()
    assert proc.returncode == 0, out
    assert "the JACK server has run no cycle for" in out and "the JACK server runs cycles again" in out, out


def test_while_jackd_is_frozen_status_answers_during_a_load_chain_that_fails_for_good(tmp_path):
    """jackd frozen under the running daemon, then ``load_chain`` (a chain
    within the latency budget: the engine swaps it at its next hop, and
    there is none while the server runs no cycles). The control thread
    answered every request itself and so waited for the supervisor with
    it: ``status`` from another client got no reply for those 5 s (and for
    up to 60 s when the supervisor waited in jack_client_open, e.g. for a
    ``reload`` while the daemon started against a frozen jackd). Then
    load_chain failed, but the swap stayed queued and the engine made it
    when jackd ran again: the new chain on air after a reply of ``failed``.
    Now blocking commands (reload, load_chain) are answered from a worker
    thread while the control thread answers the rest (status: ~2 ms), and
    a swap not taken in time is called off: the old chain stays."""
    z = _Frozen()
    cfg = write_config(tmp_path, z.srv.start().name, post='[[stage]]\nname = "p"\ntype = "gain"\ngain_db = -1\n')
    (tmp_path / "other.toml").write_text('[[stage]]\nname = "g"\ntype = "gain"\ngain_db = -3\n')
    proc = start(cfg)
    got: dict = {}

    def load():
        try:
            with client(tmp_path, timeout=30.0) as c:
                got["result"] = c.call("load_chain", channel="host", chain=str(tmp_path / "other.toml"))
        except ControlError as e:
            got["error"] = e

    try:
        assert wait_ready(tmp_path), stop(proc)
        with client(tmp_path, timeout=2.0) as c:
            z.freeze()
            assert wait_until(lambda: c.status()["jack_stalled_s"] is not None, 10)
            th = threading.Thread(target=load, daemon=True)
            th.start()
            time.sleep(1.0)  # load_chain waits for the engine
            assert c.status()["ready"] is False  # answered (a ControlError "timeout" after 2 s before)
            th.join(20)
            assert "error" in got, got
            assert got["error"].code == "failed" and "the old chain stays" in got["error"].message, got
            # a reload of an edited chain file meanwhile is refused at once, with nothing changed (it set
            # the config, waited 5 s for the swap and failed: the next reload then saw no change)
            (tmp_path / "post.toml").write_text('[[stage]]\nname = "p"\ntype = "gain"\ngain_db = -6\n')
            with client(tmp_path, timeout=20.0) as c2:
                t0 = time.monotonic()
                with pytest.raises(ControlError) as e:
                    c2.call("reload")
                assert time.monotonic() - t0 < 4.0
            assert e.value.code == "failed" and "runs no cycles" in e.value.message, e.value.message
            hops = c.status()["hops"]
            z.thaw()
            assert wait_until(lambda: c.status()["ready"] and c.status()["hops"] > hops + 20, 10)
            with pytest.raises(ControlError) as e:
                c.get("host.chain.g.gain_db")  # the swap was called off, not made late
            assert e.value.code == "unknown_param"
            assert c.get("host.chain.p.gain_db") == -1.0
            with client(tmp_path, timeout=20.0) as c2:
                assert "host.chain" in c2.call("reload")["changed"]  # made now that the server runs
            assert c.get("host.chain.p.gain_db") == -6.0
        out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        z.close()
    assert proc.returncode == 0, out


def _other_thread(pid: int) -> int:
    """A thread of process ``pid`` other than its main one that does not
    block SIGTERM (libzmq's own threads block every signal)."""
    for task in sorted(pathlib.Path(f"/proc/{pid}/task").iterdir()):
        tid = int(task.name)
        if tid == pid:
            continue
        blocked = next(int(ln.split()[1], 16) for ln in (task / "status").read_text().splitlines()
                       if ln.startswith("SigBlk:"))
        if not blocked & (1 << (signal.SIGTERM - 1)):
            return tid
    raise AssertionError(f"no thread of {pid} takes SIGTERM")


def test_sigterm_reaches_a_daemon_whose_main_thread_waits_on_a_frozen_jackd(tmp_path):
    """The daemon starts while jackd is frozen: ``jack_client_open`` waits
    for the server's answer without end, on the main thread, where Python
    runs signal handlers (and only between bytecodes). A SIGTERM that
    interrupts that wait (EINTR) is seen; one that the kernel hands to
    another thread (here sent there on purpose, with tgkill) left the
    daemon waiting until SIGKILL. Now a thread of the daemon wakes on every
    signal (signal.set_wakeup_fd), sets the stop flag, and when the stop
    has not finished ``Daemon.STOP_DEADLINE_S`` (5 s) later, logs where the
    supervisor waits, saves the state and exits (status 0). Meanwhile the
    control socket answers ``status`` (not ready)."""
    z = _Frozen()
    cfg = write_config(tmp_path, z.srv.start().name)
    z.freeze()
    proc = start(cfg)
    try:
        with client(tmp_path, timeout=2.0) as c:
            assert wait_until(lambda: _status_or_none(c) is not None, 20)
            assert c.status()["ready"] is False
        time.sleep(1.0)  # into jack_client_open
        _tgkill(proc.pid, _other_thread(proc.pid), signal.SIGTERM)
        took = _wait_exit(proc, 15.0)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        z.close()
    assert took is not None, "still running 15 s after SIGTERM with jackd frozen"
    assert proc.returncode == 0, out
    assert "the stop did not finish within 5 s" in out and "_try_open" in out, out


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread of another process (Python has no tgkill)."""
    import ctypes
    import platform

    nr = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
    if nr is None:
        pytest.skip(f"tgkill's syscall number on {platform.machine()} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(nr, pid, tid, int(sig)) == 0, os.strerror(ctypes.get_errno())


def _status_or_none(c):
    try:
        return c.status()
    except Exception:
        return None


def test_second_sigint_forces_exit(tmp_path, jack_server):
    proc = start(write_config(tmp_path, jack_server.name))
    try:
        assert wait_ready(tmp_path)
        # a slow stop (fading out) is cut short by a second ^C
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # the first one is being handled: the fade-out takes ~0.2 s
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "second interrupt" in out


def test_sigusr1_dumps_thread_stacks(tmp_path, jack_server):
    proc = start(write_config(tmp_path, jack_server.name))
    try:
        assert wait_ready(tmp_path)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
    finally:
        out = stop(proc)
    assert "quietcast-engine" in out or "Thread 0x" in out
    assert proc.returncode == 0


# --------------------------------------------------------------------------
# a faulty plugin costs its stage, nothing else


@pytest.mark.plugin
def test_faulty_plugin_is_isolated_to_its_channel(tmp_path, jack_server, qcgain_vst3):
    post = f'[[stage]]\nname = "v"\ntype = "plugin"\npath = "{qcgain_vst3}"\n'
    cfg = write_config(tmp_path, jack_server.name, post=post,
                       extra_channel_host="strength = 0.0\n")
    text = cfg.read_text().replace('name = "guest"\n', 'name = "guest"\nstrength = 0.0\n')
    cfg.write_text(text)
    proc = start(cfg)
    rec = play = None
    try:
        assert wait_ready(tmp_path)
        srv = jack_server.name
        rec = Recorder(srv, 2, name="frec")
        play = Player(srv, 2, name="fplay", recorder=rec)
        for i, ch in enumerate(("host", "guest")):
            play.client.connect(play.name(i), f"qcs:{ch}_in")
            play.client.connect(f"qcs:{ch}_out", rec.name(i))
        with client(tmp_path) as c:
            c.set("host.chain.v.fault", True)  # the plugin now returns NaN
            assert wait_until(lambda: "host.chain.v" in c.status()["faults"], timeout=10)
            st = c.status()
            assert "NaN" in st["faults"]["host.chain.v"] and st["ready"]
            lat = st["latency_frames"]
        t = np.arange(48_000) / 48_000
        x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
        # a take across a skipped cycle is shifted by a period: take() plays it again
        r, start_i, _ = take(play, rec, x, lat / 48_000 + 0.3)
        y = r[:, start_i + lat:start_i + lat + x.shape[1]]
        # both channels still carry their own signal, finite, aligned
        assert np.isfinite(y).all()
        for i in range(2):
            np.testing.assert_allclose(y[i], x[i], atol=1e-4)
    finally:
        for cl in (play, rec):
            if cl is not None:
                cl.close()
        out = stop(proc)
    assert "stage v failed" in out and "the other channels run on" in out


# --------------------------------------------------------------------------
# a start builds each chain once


#: ``quietcast run`` with every hosted plugin instance (pedalboard.load_plugin) and every suppressor
#: (a model load) counted; the counts are printed as the daemon exits
_COUNTED_RUN = """
import atexit, sys
import pedalboard
import quietcast.models as models
from quietcast.daemon.cli import main
n = {"plugins": 0, "suppressors": 0}
def counted(f, key):
    def g(*a, **k):
        n[key] += 1
        return f(*a, **k)
    return g
pedalboard.load_plugin = counted(pedalboard.load_plugin, "plugins")
models.create_suppressor = counted(models.create_suppressor, "suppressors")
atexit.register(lambda: print("BUILT", n["plugins"], n["suppressors"], flush=True))
sys.exit(main())
"""


@pytest.mark.plugin
@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_a_start_builds_each_chain_once(tmp_path, jack_servers, qcgain_vst3, rate):
    """`quietcast run` checked each chain by building it, then built the
    engine to check it (every chain again), then the daemon built its own
    (every chain a third time): each hosted plugin was loaded three times
    per channel and the model twice before any audio ran, three times the
    plugins' start-up after a systemd restart. Now the engine the check
    built is the one that runs, when the server runs at its rate (48 kHz);
    at another rate it is built again, for that rate. A reload that
    rebuilds the engine builds each chain once, and so does load_chain."""
    srv = jack_servers(period=256, rate=rate)
    post = (f'[[stage]]\nname = "v"\ntype = "plugin"\npath = "{qcgain_vst3}"\nparams = {{ gain_db = -6 }}\n'
            '[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "dsp"\n')
    cfg = write_config(tmp_path, srv.name, post=post)
    cfg.write_text(cfg.read_text() + 'chain = "post.toml"\n')  # the guest's chain too: two channels, two plugins
    proc = subprocess.Popen([sys.executable, "-c", _COUNTED_RUN, "run", "-c", str(cfg), "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_ready(tmp_path, timeout=60)
        with client(tmp_path) as c:
            st = c.status()
            assert st["sample_rate"] == rate and st["hop"] == rate // 100  # the engine runs at the server's rate
            assert c.get("host.chain.v.gain_db") == pytest.approx(-6.0)
            c.set("guest.chain.v.gain_db", -3.0)  # a live value on the handed-over plugin
            assert c.get("guest.chain.v.gain_db") == pytest.approx(-3.0)
            cfg.write_text(cfg.read_text().replace('model = "dsp"\n', 'model = "dsp"\nsafety_ms = 12\n', 1))
            assert c.call("reload")["rebuilt"]
            assert c.get("guest.chain.v.gain_db") == pytest.approx(-3.0)  # (kept by the rebuild)
            c.call("load_chain", channel="host", chain=str(tmp_path / "post.toml"))
            assert c.status()["ready"]
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    built = [line.split()[1:] for line in out.splitlines() if line.startswith("BUILT ")]
    # per channel: the start's check (its build runs at 48 kHz; at 44.1 kHz it is built again), the reload's
    # rebuild; and the chain load_chain put on the host; the engine's own suppressor is one more each time
    starts = 1 if rate == 48_000 else 2
    assert built == [[str(2 * starts + 2 + 1), str(3 * starts + 3 + 1)]], out[-3000:]


def test_an_engine_handed_over_on_another_thread_than_the_supervisors_is_built_again(tmp_path, jack_server):
    """Hosted plugins are loaded on one thread: an engine built on another
    thread than the one that runs the daemon is not run, one is built on
    the supervisor's (on the same thread it runs: the test above)."""
    from quietcast.daemon.preflight import startup_check

    cfg = load_config(write_config(tmp_path, jack_server.name))
    built, problems = startup_check(cfg, midi=False)
    assert not problems and built.sample_rate == 48_000
    d = Daemon(cfg, engine=built)
    th = threading.Thread(target=d.run, daemon=True)
    th.start()
    try:
        assert d.ready.wait(20)
        assert d.engine is not None and d.engine is not built
    finally:
        d.request_stop()
        th.join(20)


# --------------------------------------------------------------------------
# the weights' licence is said where an operator looks


@pytest.mark.parametrize("model", ["neural", "neural-clean", "./bundles/mine"])
def test_the_log_says_when_weights_are_non_commercial(tmp_path, jack_server, model):
    """The default neural weights trained on non-commercial data: the
    daemon's log says so once and names the model that allows commercial
    use; with that model (``neural-clean``) there is no such warning. A
    bundle folder of one's own (here a copy of the default bundle, given
    relative to the config file) runs, with its own licence said."""
    cfg = write_config(tmp_path, jack_server.name)
    if model.startswith("./"):
        import shutil

        from quietcast.models.bundle import ASSETS

        shutil.copytree(ASSETS / "default", cfg.parent / model)
    cfg.write_text(cfg.read_text().replace('model = "dsp"', f'model = "{model}"'))
    proc = start(cfg)
    try:
        assert wait_ready(tmp_path, timeout=60.0)
    finally:
        out = stop(proc)
    warned = [ln for ln in out.splitlines() if "commercial" in ln and "WARNING" in ln.upper()]
    if model != "neural-clean":
        assert len(warned) == 1, out
        assert "UrbanSound8K" in warned[0] and 'engine.model = "neural-clean" allows commercial use' in warned[0]
        if model.startswith("./"):  # the folder's own bundle, its path made absolute
            assert f"model {cfg.parent / 'bundles' / 'mine'} (mine)" in warned[0], warned[0]
    else:
        assert warned == [], out
    # the engine line states the strength and the pitch filter the channels get (the bundles' own 0.5)
    assert any("engine: " in ln and "pitch filter 0.5" in ln for ln in out.splitlines()), out
    assert proc.returncode == 0


def test_a_failure_while_connecting_by_rule_is_logged_not_raised(caplog):
    """The supervisor thread applies the connection rules; an error from
    JACK there is logged and the thread carries on (a later port change
    tries again)."""
    from types import SimpleNamespace

    class _IO:
        ports_changed = threading.Event()

        def apply_rules(self, rules_in, rules_out):
            raise RuntimeError("the server went away")

    me = SimpleNamespace(io=_IO(), config=SimpleNamespace(channels=[SimpleNamespace(connect_in=[], connect_out=[])]))
    me.io.ports_changed.set()
    with caplog.at_level("WARNING", logger="quietcast"):
        Daemon._apply_rules(me)
    assert not me.io.ports_changed.is_set()
    assert "connecting ports by rule failed: the server went away" in caplog.text


# --------------------------------------------------------------------------
# a hosted plugin's latency moved live


@pytest.mark.plugin
def test_a_plugin_value_set_answers_in_about_a_millisecond(tmp_path, jack_server, qcgain_vst3):
    """``set`` of a hosted plugin's value answers at once: a plain plugin
    stage's never waits for the supervisor (measured: 0.4 ms median), and
    a ``live_latency`` stage's, foreseen there, is run as soon as it is
    posted (0.9 ms median; it waited for the supervisor's next 50 ms round,
    50.5 ms, so a MIDI burst of 20 took a second)."""
    post = (f'[[stage]]\nname = "p"\ntype = "plugin"\npath = "{qcgain_vst3}"\n'
            f'[[stage]]\nname = "v"\ntype = "plugin"\npath = "{qcgain_vst3}"\nlive_latency = true\n'
            'params = { delay_samples = 300 }\n')
    proc = start(write_config(tmp_path, jack_server.name, post=post))
    try:
        assert wait_ready(tmp_path)
        with client(tmp_path) as c:
            for stage in ("p", "v"):
                took = []
                for i in range(20):
                    t0 = time.perf_counter()
                    c.set(f"host.chain.{stage}.delay_samples", 100 + i % 2)
                    took.append(time.perf_counter() - t0)
                assert np.median(took) < 0.02, (stage, took)
    finally:
        stop(proc)


@pytest.mark.plugin
def test_a_plugin_latency_moved_live_keeps_the_declared_latency_true(tmp_path, jack_server, qcgain_vst3,
                                                                     qcgain_la_vst3):
    """A hosted plugin's latency set live through the daemon (``delay_samples``
    is our plugin's). A shorter one used to shift the output off the
    declared latency (300 -> 100: 200 samples early); now it is padded, so
    ``status``, JACK's port latency and the output agree before and after.
    A longer one than the daemon declared is refused at once, named, and
    nothing moves (the engine thread never sees a plugin's new latency:
    the supervisor foresees it on an instance of its own). The stages say
    ``live_latency = true``. A continuous look-ahead (``lookahead_ms``)
    is foreseen too, and two latency values of one stage set together
    (``set`` with ``values``) are judged together: 200 samples + 2 ms ->
    0 + 6 ms is 288 samples, within the 296 declared (the 6 ms alone: 488,
    refused)."""
    post = (f'[[stage]]\nname = "v"\ntype = "plugin"\npath = "{qcgain_vst3}"\nlive_latency = true\n'
            'params = { delay_samples = 300 }\n'
            f'[[stage]]\nname = "la"\ntype = "plugin"\npath = "{qcgain_la_vst3}"\nlive_latency = true\n'
            'params = { delay_samples = 200, lookahead_ms = 2.0 }\n')
    cfg = write_config(tmp_path, jack_server.name, post=post, extra_channel_host="strength = 0.0\n")
    proc = start(cfg)
    rec = play = None
    try:
        assert wait_ready(tmp_path)
        srv = jack_server.name
        rec = Recorder(srv, 1, name="lrec")
        play = Player(srv, 1, name="lplay", recorder=rec)
        play.client.connect(play.name(0), "qcs:host_in")
        play.client.connect("qcs:host_out", rec.name(0))
        x = np.zeros(24_000, np.float32)
        x[1000] = 0.5

        def impulse_at() -> tuple[int, float]:
            r, start_i, _ = take(play, rec, x[None], lat / 48_000 + 0.3)
            y = r[0, start_i:]
            k = int(np.argmax(np.abs(y)))
            return k - 1000, float(y[k])

        with client(tmp_path) as c:
            lat = c.status()["latency_frames"]
            assert impulse_at() == (lat, pytest.approx(0.5, abs=1e-6))
            c.set("host.chain.v.delay_samples", 100)
            time.sleep(0.3)  # (applied at the next hop, crossfaded across it)
            assert c.status()["latency_frames"] == lat
            assert impulse_at() == (lat, pytest.approx(0.5, abs=1e-6))  # (was lat - 200)
            lo, _ = jackio.port_latency(play.client, "qcs:host_out", jackio.CAPTURE)
            cap_lo, _ = jackio.port_latency(play.client, "qcs:host_in", jackio.CAPTURE)
            assert lo == cap_lo + lat
            c.set("host.chain.la.lookahead_ms", 1.0)  # (continuous: 296 -> 248 samples, padded)
            time.sleep(0.3)
            assert impulse_at() == (lat, pytest.approx(0.5, abs=1e-6))
            with pytest.raises(ControlError, match=r"host\.chain\.la\.lookahead_ms: value 6 would make the plugin's "
                                                   r"latency 488 samples"):
                c.set("host.chain.la.lookahead_ms", 6.0)
            c.call("set", values={"host.chain.la.delay_samples": 0, "host.chain.la.lookahead_ms": 6.0})
            time.sleep(0.3)
            assert c.status()["latency_frames"] == lat
            assert impulse_at() == (lat, pytest.approx(0.5, abs=1e-6))
            with pytest.raises(ControlError) as ei:
                c.set("host.chain.v.delay_samples", 600)
            assert "delay_samples" in str(ei.value) and "600" in str(ei.value) and "300" in str(ei.value)
            assert c.get("host.chain.v.delay_samples") == 100
            with pytest.raises(ControlError):  # several at once: all are checked before any is applied
                c.call("set", values={"host.output_gain_db": -6.0, "host.chain.v.delay_samples": 600})
            assert c.get("host.output_gain_db") == 0.0
            c.set("host.chain.v.delay_samples", 300)  # back up to what was declared: allowed
            time.sleep(0.3)
            assert c.status()["latency_frames"] == lat
            assert impulse_at() == (lat, pytest.approx(0.5, abs=1e-6))
    finally:
        for cl in (play, rec):
            if cl is not None:
                cl.close()
        out = stop(proc)
    assert "Traceback" not in out, out
