"""MIDI control against a real private jackd: a control surface made of
python-rtmidi JACK clients in another process sends CC / notes / pitch
bend to our JACK MIDI input and listens on our output, a real Daemon runs
on a thread, and :class:`~quietcast.daemon.midi.MidiControl` (whose JACK
ports live in its bridge process) drives the daemon's registry.

Timing: every wait polls with a timeout; "nothing changed" is checked
after a flush (all messages sent so far have been handled: the dispatcher
counts a message once it is done with it). No test asserts a duration.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from quietcast.bridge.errors import ParameterError
from quietcast.daemon import midi
from quietcast.daemon.config import MidiConfig, parse_config
from quietcast.daemon.jackclients import wait_until
from quietcast.daemon.midi import Binding, Curve, MidiControl, MidiMapError, load_mapping, parse_mapping

# --------------------------------------------------------------------------
# curves and the mapping file (no server)


def test_db_curve_is_a_console_fader_law():
    c = Curve("db", -96.0, 24.0, bottom_inf=True)  # output_gain_db
    assert c.value(0.0) == -math.inf
    assert c.value(1.0) == pytest.approx(24.0)
    assert c.value(0.75) == pytest.approx(0.0, abs=1e-9)  # unity at 3/4 of the travel
    assert c.value(0.875) == pytest.approx(12.0)  # linear in dB above unity
    assert -10.0 < c.value(0.5) < -9.0
    assert -25.0 < c.value(0.25) < -24.0
    assert -85.0 < c.value(1 / 127) < -75.0  # the first step above the "off" stop
    ps = [i / 127 for i in range(128)]
    vs = [c.value(p) for p in ps]
    assert all(a < b for a, b in zip(vs, vs[1:]))  # monotonic
    for p, v in zip(ps, vs):
        assert c.position(v) == pytest.approx(p, abs=1e-9)
    # no 0 dB inside the range: the top is the reference
    c = Curve("db", -96.0, 0.0, bottom_inf=True)  # background_db
    assert c.value(1.0) == 0.0 and c.value(0.0) == -math.inf
    assert -8 < c.value(0.75) < -6
    # without -inf the bottom is min
    c = Curve("db", -60.0, 24.0)
    assert c.value(0.0) == pytest.approx(-60.0) and c.value(0.75) == pytest.approx(0.0, abs=1e-9)
    assert c.position(-60.0) == 0.0 and c.position(-100.0) == 0.0 and c.position(99.0) == 1.0


def test_linear_and_log_curves_invert():
    lin = Curve("linear", 0.0, 1.0)
    assert lin.value(64 / 127) == pytest.approx(64 / 127)
    rev = Curve("linear", 10.0, -10.0)
    assert rev.value(0.0) == 10.0 and rev.value(1.0) == -10.0 and rev.position(5.0) == pytest.approx(0.25)
    log = Curve("log", 20.0, 20_000.0)
    assert log.value(0.5) == pytest.approx(math.sqrt(20 * 20_000))  # geometric: equal travel per octave
    assert log.value(1 / 3) == pytest.approx(200.0)
    for p in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert log.position(log.value(p)) == pytest.approx(p, abs=1e-12)
    with pytest.raises(ValueError):
        Curve("log", 0.0, 100.0)
    with pytest.raises(ValueError):
        Curve("db", 0.0, -10.0)


def test_mapping_file_round_trips_and_lists_every_syntax_problem():
    bs = [Binding("host.strength", "cc", 1, 7), Binding("host.bypass", "note", 10, 36, button="momentary"),
          Binding("guest.output_gain_db", "cc", 2, 0, curve="db", cc14=True, min=-math.inf, max=10.0),
          Binding("guest.strength", "pitch_bend", 16, takeover="jump")]
    text = midi.mapping_to_toml(bs)
    assert parse_mapping(text) == bs
    bad = """
[[map]]
adress = "host.strength"
number = 1

[[map]]
address = "host.strength"
type = "ccc"
channel = 0
number = 128
curve = "lin"
takeover = "pick"

[[map]]
address = "host.strength"
type = "pitch_bend"
number = 3
cc14 = "yes"

[[map]]
address = "guest.strength"
number = 40
cc14 = true
max = inf

[mapp]
"""
    with pytest.raises(MidiMapError) as ei:
        parse_mapping(bad, source="midi.toml")
    e = ei.value
    text = str(e)
    assert isinstance(e, ValueError) and text.startswith("midi.toml: ")
    expected = [
        ("adress", "did you mean 'address'"), ("address", "missing"),
        ("type", "did you mean 'cc'"), ("channel", "1..16"), ("number", "0..127"),
        ("curve", "did you mean 'linear'"), ("takeover", "did you mean 'pickup'"),
        ("number", "pitch bend has no number"), ("cc14", "not a boolean"),
        ("number", "0..31"), ("max", "not a number"), ("mapp", "[[map]]"),
    ]
    for where, what in expected:
        assert any(where in p.where + " " + p.message and what in str(p) for p in e.problems), (where, what, text)
    assert len(e.problems) == len(expected), text
    with pytest.raises(MidiMapError, match="not valid TOML"):
        parse_mapping("[[map]\naddress =")
    dup = '[[map]]\naddress = "host.strength"\nnumber = 7\n[[map]]\naddress = "host.strength"\nnumber = 7\n'
    with pytest.raises(MidiMapError, match="twice"):
        parse_mapping(dup)
    lsb = ('[[map]]\naddress = "host.strength"\nnumber = 7\ncc14 = true\n'
           '[[map]]\naddress = "guest.strength"\nnumber = 39\n')
    with pytest.raises(MidiMapError, match="LSB of the 14-bit"):
        parse_mapping(lsb)


def test_atomic_save_and_missing_file(tmp_path):
    path = tmp_path / "sub" / "midi.toml"
    assert load_mapping(path) == []
    midi._write_atomic(str(path), midi.mapping_to_toml([Binding("host.mute", "note", 1, 5)]))
    assert load_mapping(path) == [Binding("host.mute", "note", 1, 5)]
    assert os.listdir(path.parent) == ["midi.toml"]  # no temp file left behind


def test_the_shipped_config_names_the_real_midi_ports():
    """default.toml said quietcast-midi:in/out; the ports are
    CLIENT-midi-in:in and CLIENT-midi-out:out."""
    from quietcast.daemon.config import DEFAULT_CONFIG_PATH

    mc = MidiControl(None, MidiConfig(), "", "quietcast")
    text = open(DEFAULT_CONFIG_PATH).read()
    assert (mc.jack_in_name, mc.jack_out_name) == ("quietcast-midi-in:in", "quietcast-midi-out:out")
    line = next(x for x in text.splitlines() if "JACK MIDI port" in x)
    assert mc.jack_in_name in line and mc.jack_out_name in line and "quietcast-midi:" not in text


def test_the_log_names_the_server_the_midi_ports_wait_for(monkeypatch):
    """Under PipeWire's JACK layer the warning about MIDI ports not there
    yet said "server 'default'" (PipeWire has no server names)."""
    from quietcast.daemon import jackio

    assert MidiControl(None, MidiConfig(), "qcx", "q")._server_words() == "server 'qcx'"
    mc = MidiControl(None, MidiConfig(), "", "q")
    monkeypatch.setattr(jackio, "libjack_version", lambda: "3.0.0.0 (using PipeWire 0.3.65)")
    assert mc._server_words() == "PipeWire's JACK layer"
    monkeypatch.setattr(jackio, "libjack_version", lambda: "1.9.21")
    assert mc._server_words() == "the default JACK server"


def test_ports_are_matched_by_name_never_blindly():
    names = ["Midi Through:Midi Through Port-0 14:0", "X-TOUCH COMPACT:X-TOUCH COMPACT MIDI 1 20:0"]
    assert midi._match_port("X-Touch Compact", names) == (1, "")
    assert midi._match_port(names[0], names) == (0, "")
    i, note = midi._match_port("nanoKONTROL", names)
    assert i is None and "no port matches" in note and "X-TOUCH" in note
    i, note = midi._match_port("midi", names)
    assert i == 0 and "2 ports match" in note


# --------------------------------------------------------------------------
# the live rig

CHAIN = """
name = "midi-test"
[[stage]]
name = "hp"
type = "highpass"
cutoff_frequency_hz = 80
[[stage]]
name = "comp"
type = "compressor"
threshold_db = -20
ratio = 2
"""


@pytest.fixture
def daemon(jack_servers, tmp_path_factory):
    """A real Daemon (2 channels; ``host`` with a post-chain hp + comp) on
    a private jackd (one per test: none may hold a JACK client while a
    test restarts the server). Its own MIDI, control socket and state file are off:
    each test starts its own MidiControl on the daemon's registry."""
    from quietcast.daemon.service import Daemon

    srv = jack_servers(256)
    folder = tmp_path_factory.mktemp("midi-daemon")
    (folder / "chain.toml").write_text(CHAIN)
    text = (f'[jack]\nclient_name = "qcmidi"\nserver = "{srv.name}"\nreconnect_interval_ms = 100\n'
            '[engine]\nmodel = "dsp"\n[control]\nenabled = false\n[midi]\nenabled = false\n[state]\nenabled = false\n'
            '[[channel]]\nname = "host"\nchain = "chain.toml"\n[[channel]]\nname = "guest"\n')
    cfg = parse_config(text, base_dir=str(folder))
    d = Daemon(cfg)
    t = threading.Thread(target=d.run, name="daemon", daemon=True)
    t.start()
    assert d.ready.wait(20), "daemon did not become ready"
    d.server_name = srv.name
    yield d
    d.request_stop()
    t.join(15)


#: the control surface: python-rtmidi's JACK API in its own process (in the
#: test process it would call libjack holding the GIL while the daemon's
#: JACK client has Python callbacks: see the midi module docstring)
SURFACE = r"""
import sys, threading, time, rtmidi
name = sys.argv[1]
def plug():
    tx = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name + "-tx")
    tx.open_virtual_port("out")
    rx = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name + "-rx", queue_size_limit=16384)
    rx.open_virtual_port("in")
    rx.ignore_types(sysex=False, timing=False, active_sense=False)
    return tx, rx
tx, rx = plug()
stopping = threading.Event()
def writer():  # polled: python-rtmidi's JACK input callback garbles bursts
    while not stopping.is_set():
        m = rx.get_message()
        if m is None:
            time.sleep(0.001)
            continue
        sys.stdout.write("rx " + " ".join(map(str, m[0])) + "\n")
        sys.stdout.flush()
poller = threading.Thread(target=writer, daemon=True)
poller.start()
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    if line.strip() == "quit":
        break
    if line.strip() == "replug":  # both ports unregistered and registered again, within milliseconds
        stopping.set()
        poller.join()
        for o in (tx, rx):
            o.close_port()
            o.delete()
        tx, rx = plug()
        stopping.clear()
        poller = threading.Thread(target=writer, daemon=True)
        poller.start()
        sys.stdout.write("replugged\n"); sys.stdout.flush()
        continue
    if line.strip():
        tx.send_message([int(x) for x in line.split()])
stopping.set()
poller.join()  # (closing rx while it is polled could crash)
tx.close_port(); rx.close_port()
"""


class Surface:
    """A MIDI control surface: python-rtmidi JACK clients in another
    process (``NAME-tx:out`` sends to the daemon's MIDI input,
    ``NAME-rx:in`` listens on its output), patched by a JACK client here."""

    def __init__(self, server: str, mc: MidiControl, name: str | None = None, connect: bool = True):
        import subprocess
        import sys

        import jack

        self.mc = mc
        self.closed = False
        self.name = name or f"surf{uuid.uuid4().hex[:6]}"
        env = dict(os.environ, JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen([sys.executable, "-c", SURFACE, self.name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.got: list[list[int]] = []
        self.replugs = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self._ready.wait(20), "the surface process did not start"
        self.patch = jack.Client(f"{self.name}-patch", servername=server, no_start_server=True)
        if connect:
            self.patch.connect(f"{self.name}-tx:out", mc.jack_in_name)
            self.patch.connect(mc.jack_out_name, f"{self.name}-rx:in")
        self.sent = 0
        # handshake: a message sent while a connection is still being made
        # can be lost; from the first one that arrives on, none is
        before = mc.counters["received"]
        for _ in range(40):
            self.send([0xBF, 119, 0])  # channel 16, nothing mapped there
            if wait_until(lambda: mc.counters["received"] > before, 0.25, 0.005):
                break
        else:
            raise AssertionError("no MIDI reached the daemon's input")
        self.base = mc.counters["received"] - self.sent

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self._ready.set()
            elif line.startswith("replugged"):
                self.replugs += 1
            elif line.startswith("rx "):
                self.got.append([int(x) for x in line.split()[1:]])

    def send(self, msg: list[int]) -> None:
        self.send_many([msg])

    def send_many(self, msgs) -> None:
        self.proc.stdin.write("".join(" ".join(map(str, m)) + "\n" for m in msgs))
        self.proc.stdin.flush()
        self.sent += len(msgs)

    def cc(self, ch: int, number: int, value: int) -> None:
        self.send([0xB0 | (ch - 1), number, value])

    def note_on(self, ch: int, note: int, vel: int = 127) -> None:
        self.send([0x90 | (ch - 1), note, vel])

    def note_off(self, ch: int, note: int) -> None:
        self.send([0x80 | (ch - 1), note, 0])

    def bend(self, ch: int, value14: int) -> None:
        self.send([0xE0 | (ch - 1), value14 & 0x7F, value14 >> 7])

    def nrpn(self, ch: int, number: int | None, msb: int | None = None, lsb: int | None = None,
             step: int = 0) -> None:
        """An NRPN as consoles send it: the select (CC 99, 98; none when
        ``number`` is None), then the data entry MSB (CC 6) and LSB (CC 38),
        each if given, and ``step`` Data Increments (CC 96, > 0) or
        Decrements (CC 97, < 0)."""
        st = 0xB0 | (ch - 1)
        msgs = [] if number is None else [[st, 99, number >> 7], [st, 98, number & 0x7F]]
        if msb is not None:
            msgs.append([st, 6, msb])
        if lsb is not None:
            msgs.append([st, 38, lsb])
        msgs += [[st, 96 if step > 0 else 97, 127]] * abs(step)
        self.send_many(msgs)

    def replug(self) -> None:
        """Unregister both ports and register them again under the same
        names at once (a controller unplugged and plugged straight back)."""
        n = self.replugs
        self.proc.stdin.write("replug\n")
        self.proc.stdin.flush()
        assert wait_until(lambda: self.replugs > n, 5, 0.002), "the surface did not replug"

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the daemon has handled every message sent so far."""
        assert wait_until(lambda: self.mc.counters["received"] >= self.sent + self.base, timeout, 0.005), \
            f"sent {self.sent}, handled {self.mc.counters['received'] - self.base}"

    def expect(self, msg: list[int], timeout: float = 5.0) -> None:
        assert wait_until(lambda: msg in self.got, timeout, 0.005), f"{msg} not received; got {self.got[-10:]}"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)
        self.patch.close()


_LIST_PORTS = """
import sys
import jack
c = jack.Client("qcprobe", servername=sys.argv[1], no_start_server=True)
print("\\n".join(p.name for p in c.get_ports()))
c.close()
"""


def _has_ports(server: str, mc: MidiControl) -> bool:
    """Whether both MIDI ports of ``mc`` are on ``server``, asked from
    another process under a time limit: a probe client in this process hung
    in ``jack_client_close`` once, while jackd restarted. The probe is a
    JACK-Client in a child Python, not ``jack_lsp``: Debian 12's jack_lsp
    aborts (a glibc malloc assertion) on a server name of exactly 24
    characters, which the session's server names (``qct{pid}{6 hex}p256r48000``,
    tests/conftest.py) are whenever the pytest PID has 5 digits."""
    try:
        r = subprocess.run([sys.executable, "-c", _LIST_PORTS, server], capture_output=True, text=True,
                           timeout=10, env=dict(os.environ, JACK_NO_START_SERVER="1"))
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and {mc.jack_in_name, mc.jack_out_name} <= set(r.stdout.split("\n"))


class Rig:
    """A MidiControl on the daemon's registry with its own mapping file,
    and a Surface connected to it."""

    def __init__(self, daemon, tmp_path, mapping: str | None = None, midi_server: str | None = None, **cfg):
        self.daemon = daemon
        self.reg = daemon.registry
        self.path = tmp_path / "midi.toml"
        if mapping is not None:
            self.path.write_text(mapping)
        self.server = midi_server or daemon.server_name
        self.mc = MidiControl(self.reg, MidiConfig(enabled=True, mapping=str(self.path), **cfg),
                              self.server, f"qcm{uuid.uuid4().hex[:6]}")
        self.mc.start()
        try:
            # start() waits for the ports, but a loaded machine may take longer
            assert wait_until(lambda: _has_ports(self.server, self.mc), 60, 0.05), self.mc.status()
            self.s = Surface(self.server, self.mc)
            self.settle()
        except BaseException:
            self.mc.stop()
            raise

    def settle(self) -> None:
        """Wait until the bridge has seen the surface's connections (it then
        sends the surface every value once, as to a controller plugged in)
        and that feedback is older than the echo window: a press in it that
        equals an LED state just sent is taken for its echo (midi.ECHO_S)."""
        want = {"in": [f"{self.s.name}-tx:out"], "out": [f"{self.s.name}-rx:in"]}
        assert wait_until(lambda: self.mc.status()["jack"]["connections"] == want, 10), self.mc.status()["jack"]
        assert wait_until(lambda: all(time.monotonic() - t > midi.ECHO_S
                                      for b in self.mc._bound for _, t in b.inflight), 10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.s.close()
        self.mc.stop()

    def value_becomes(self, address: str, want, timeout: float = 5.0, abs_tol: float = 1e-9):
        def ok():
            v = self.reg.get(address)
            if isinstance(want, bool) or want in (math.inf, -math.inf):
                return v == want
            return v == pytest.approx(want, abs=abs_tol)
        assert wait_until(ok, timeout, 0.005), f"{address} = {self.reg.get(address)!r}, expected {want!r}"


def _refused_naming(mapping: str, expected: list[tuple[str, str]]) -> tuple[list, str]:
    """Parse ``mapping`` (as ``midi.toml``), which must be refused, each
    ``(where, what)`` of ``expected`` naming one of its problems (``what``
    in its message); returns the problems and the error's text."""
    with pytest.raises(MidiMapError) as ei:
        parse_mapping(mapping, source="midi.toml")
    e = ei.value
    text = str(e)
    for where, what in expected:
        assert any(p.where == where and what in p.message for p in e.problems), (where, what, text)
    return e.problems, text


def _map(**entries) -> str:
    out = []
    for addr, kv in entries.items():
        out.append("[[map]]")
        out.append(f'address = "{addr.replace("__", ".")}"')
        for k, v in kv.items():
            out.append(f"{k} = " + ('"%s"' % v if isinstance(v, str) else ("true" if v is True else "false" if v is False
                                                                          else repr(v))))
    return "\n".join(out) + "\n"


@pytest.mark.jack
def test_cc_moves_parameters_with_their_curves(daemon, tmp_path):
    reg = daemon.registry
    mapping = _map(
        host__strength=dict(type="cc", channel=1, number=7, takeover="jump"),
        host__output_gain_db=dict(type="cc", channel=1, number=8, curve="db", takeover="jump"),
        host__chain__comp__threshold_db=dict(type="cc", channel=1, number=9, min=-60.0, max=0.0, takeover="jump"),
        host__chain__hp__cutoff_frequency_hz=dict(type="cc", channel=1, number=10, min=20.0, max=20000.0,
                                                  takeover="jump"),  # default curve for Hz: log
    )
    with Rig(daemon, tmp_path, mapping) as r:
        s = r.s
        # linear: 0..127 -> 0..1
        for raw in (0, 127, 64, 1):
            s.cc(1, 7, raw)
            r.value_becomes("host.strength", raw / 127)
        # db fader law on output_gain_db [-96, 24] or -inf: bottom stop = off
        fader = Curve("db", -96.0, 24.0, bottom_inf=True)
        s.cc(1, 8, 127)
        r.value_becomes("host.output_gain_db", 24.0)
        s.cc(1, 8, 0)
        r.value_becomes("host.output_gain_db", -math.inf)
        s.cc(1, 8, 95)  # 3/4 of the travel: about unity
        r.value_becomes("host.output_gain_db", fader.value(95 / 127))
        assert abs(reg.get("host.output_gain_db")) < 0.5
        s.cc(1, 8, 64)
        r.value_becomes("host.output_gain_db", fader.value(64 / 127))
        assert -10.0 < reg.get("host.output_gain_db") < -8.0
        # a chain stage parameter, reaching the engine's stage
        s.cc(1, 9, 64)
        r.value_becomes("host.chain.comp.threshold_db", -60.0 + 60.0 * 64 / 127)
        comp = daemon.engine.chains[0].stage("comp")
        assert wait_until(lambda: comp.values["threshold_db"] == pytest.approx(-60.0 + 60.0 * 64 / 127), 5)
        s.cc(1, 9, 0)
        r.value_becomes("host.chain.comp.threshold_db", -60.0)
        # log for Hz: equal travel per octave
        s.cc(1, 10, 0)
        r.value_becomes("host.chain.hp.cutoff_frequency_hz", 20.0, abs_tol=1e-6)
        s.cc(1, 10, 127)
        r.value_becomes("host.chain.hp.cutoff_frequency_hz", 20000.0, abs_tol=1e-6)
        s.cc(1, 10, 64)
        r.value_becomes("host.chain.hp.cutoff_frequency_hz", 20.0 * 1000.0 ** (64 / 127), abs_tol=1e-6)
        # other channels and messages are not mapped
        st = r.mc.status()
        s.cc(2, 7, 0)
        s.flush()
        assert reg.get("host.strength") == pytest.approx(1 / 127)
        assert r.mc.status()["unmapped"] > st["unmapped"]
        assert r.mc.status()["errors"] == 0
        kinds = {b["address"]: b["curve"] for b in r.mc.bindings()}
        assert kinds["host.chain.hp.cutoff_frequency_hz"] == "log" and kinds["host.output_gain_db"] == "db"


@pytest.mark.jack
def test_soft_takeover_holds_until_the_fader_crosses_the_value(daemon, tmp_path):
    reg = daemon.registry
    reg.set("host.strength", 0.5, source="test")  # the fader's raw position would be 63.5
    with Rig(daemon, tmp_path, _map(host__strength=dict(number=11))) as r:
        s, mc = r.s, r.mc
        assert r.mc.bindings()[0]["attached"] is False  # pickup: detached until the fader gets there
        ignored0 = mc.counters["ignored_pickup"]
        for raw in (10, 20, 30, 40, 50, 60):  # below the value: the parameter holds
            s.cc(1, 11, raw)
        s.flush()
        assert reg.get("host.strength") == 0.5
        assert mc.counters["ignored_pickup"] - ignored0 == 6
        s.cc(1, 11, 70)  # 60 -> 70 crosses 63.5: picked up
        r.value_becomes("host.strength", 70 / 127)
        s.cc(1, 11, 80)
        r.value_becomes("host.strength", 80 / 127)
        # a change from elsewhere detaches the fader again
        reg.set("host.strength", 0.2, source="zmq")  # raw 25.4
        s.cc(1, 11, 90)
        s.cc(1, 11, 100)
        s.flush()
        assert reg.get("host.strength") == pytest.approx(0.2)
        s.cc(1, 11, 26)  # within one step of 25.4: picked up
        r.value_becomes("host.strength", 26 / 127)
        # coming from above and crossing also picks up
        reg.set("host.strength", 0.6, source="zmq")  # raw 76.2
        s.cc(1, 11, 20)
        s.cc(1, 11, 120)  # jumped over it (fast move): crossed
        r.value_becomes("host.strength", 120 / 127)
        assert mc.counters["errors"] == 0


@pytest.mark.jack
def test_14_bit_cc_and_pitch_bend_resolution(daemon, tmp_path):
    reg = daemon.registry
    mapping = _map(host__strength=dict(number=3, cc14=True, takeover="jump"),
                   guest__strength=dict(type="pitch_bend", channel=3, takeover="jump"))
    with Rig(daemon, tmp_path, mapping) as r:
        s = r.s
        s.cc(1, 3, 64)  # MSB
        s.cc(1, 35, 1)  # LSB
        r.value_becomes("host.strength", (64 * 128 + 1) / 16383)
        s.cc(1, 35, 127)
        r.value_becomes("host.strength", (64 * 128 + 127) / 16383)
        s.cc(1, 3, 100)  # a new MSB resets the LSB (MIDI 1.0)
        r.value_becomes("host.strength", 100 * 128 / 16383)
        s.cc(1, 3, 127)
        s.cc(1, 35, 127)
        r.value_becomes("host.strength", 1.0)
        # steps finer than 7 bits: 16383 distinct values
        s.cc(1, 3, 0)
        s.cc(1, 35, 1)
        r.value_becomes("host.strength", 1 / 16383)
        assert 0 < reg.get("host.strength") < 1 / 127
        s.bend(3, 16383)
        r.value_becomes("guest.strength", 1.0)
        s.bend(3, 8192)
        r.value_becomes("guest.strength", 8192 / 16383)
        s.bend(3, 0)
        r.value_becomes("guest.strength", 0.0)


@pytest.mark.jack
def test_toggle_and_momentary_buttons(daemon, tmp_path):
    reg = daemon.registry
    for a in ("host.bypass", "host.mute", "guest.bypass"):
        reg.set(a, False, source="test")
    mapping = _map(host__bypass=dict(type="note", channel=1, number=40),
                   host__mute=dict(type="cc", channel=1, number=64, button="momentary"),
                   guest__bypass=dict(type="cc", channel=1, number=65))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s = r.s
            s.note_on(1, 40)
            r.value_becomes("host.bypass", True)
            s.expect([0x90, 40, 127])  # the button's LED follows the toggled state
            s.note_off(1, 40)
            s.flush()
            assert reg.get("host.bypass") is True
            s.note_on(1, 40, 100)
            r.value_becomes("host.bypass", False)
            s.expect([0x90, 40, 0])
            s.note_on(1, 40, 0)  # note-on with velocity 0 is a release
            s.flush()
            assert reg.get("host.bypass") is False
            # momentary: on while held
            s.cc(1, 64, 127)
            r.value_becomes("host.mute", True)
            s.cc(1, 64, 0)
            r.value_becomes("host.mute", False)
            s.cc(1, 64, 64)
            r.value_becomes("host.mute", True)
            s.cc(1, 64, 63)
            r.value_becomes("host.mute", False)
            # a CC toggle flips on each press (>= 64); releases do nothing
            s.cc(1, 65, 127)
            r.value_becomes("guest.bypass", True)
            s.cc(1, 65, 0)
            s.cc(1, 65, 127)
            r.value_becomes("guest.bypass", False)
            assert r.mc.counters["errors"] == 0
    finally:
        for a in ("host.bypass", "host.mute", "guest.bypass"):
            reg.set(a, False, source="test")


@pytest.mark.jack
def test_a_14_bit_cc_button_reads_and_shows_its_state_in_the_msb(daemon, tmp_path):
    """A button on a 14-bit CC pair (cc14 = true): its MSB says on or off,
    and the LSB that follows (0) is no release; its LED gets 127 / 0 in
    the MSB. (Before, a momentary button switched off on its LSB of 0, and
    the LED got MSB 0, LSB 127: "on" read as off.)"""
    reg = daemon.registry
    reg.set("host.mute", False, source="test")
    try:
        with Rig(daemon, tmp_path, _map(host__mute=dict(number=20, cc14=True, button="momentary"))) as r:
            s = r.s
            s.cc(1, 20, 127)
            s.cc(1, 52, 0)
            s.flush()
            r.value_becomes("host.mute", True)
            time.sleep(0.2)
            assert reg.get("host.mute") is True
            s.cc(1, 20, 0)
            s.cc(1, 52, 0)
            r.value_becomes("host.mute", False)
            time.sleep(0.6)  # (past the echo window of the LED state sent)
            got = len(s.got)
            reg.set("host.mute", True, source="zmq")
            assert wait_until(lambda: len(s.got) >= got + 2, 5), s.got
            assert s.got[got:got + 2] == [[0xB0, 20, 127], [0xB0, 52, 0]]
    finally:
        reg.set("host.mute", False, source="test")


@pytest.mark.jack
def test_feedback_follows_changes_from_elsewhere(daemon, tmp_path):
    reg = daemon.registry
    mapping = _map(host__strength=dict(number=7),
                   guest__strength=dict(number=2, cc14=True, takeover="jump"),
                   host__output_gain_db=dict(number=8, channel=5),
                   host__bypass=dict(type="note", number=40))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s = r.s
            reg.set("host.strength", 0.25, source="zmq")
            s.expect([0xB0, 7, 32])  # 0.25 * 127 = 31.75
            reg.set("guest.strength", 0.5, source="zmq")  # 14-bit: 8192 = MSB 64, LSB 0
            s.expect([0xB0, 2, 64])
            s.expect([0xB0, 34, 0])
            assert s.got.index([0xB0, 34, 0]) > s.got.index([0xB0, 2, 64])  # MSB first
            reg.set("host.output_gain_db", 0.0, source="zmq")  # unity: 3/4 of the travel on the db curve
            s.expect([0xB4, 8, 95])
            reg.set("host.output_gain_db", -math.inf, source="zmq")
            s.expect([0xB4, 8, 0])
            reg.set("host.bypass", True, source="zmq")
            s.expect([0x90, 40, 127])
            reg.set("host.bypass", False, source="zmq")
            s.expect([0x90, 40, 0])
            # no echo to the fader that made the change
            s.cc(1, 7, 32)  # picks up at 0.25 (within a step)
            s.cc(1, 7, 40)
            r.value_becomes("host.strength", 40 / 127)
            reg.set("host.bypass", True, source="zmq")  # a marker after it
            s.expect([0x90, 40, 127])
            assert [0xB0, 7, 40] not in s.got and [0xB0, 7, 32] == [m for m in s.got if m[:2] == [0xB0, 7]][-1]
            assert r.mc.counters["feedback_sent"] >= 7
    finally:
        reg.set("host.bypass", False, source="test")
        reg.set("host.output_gain_db", 0.0, source="test")


@pytest.mark.jack
def test_learn_binds_saves_and_then_follows(daemon, tmp_path):
    reg = daemon.registry
    reg.set("host.input_gain_db", 0.0, source="test")
    announced = []
    with Rig(daemon, tmp_path) as r:
        s, mc = r.s, r.mc
        mc.on_learned = announced.append
        with pytest.raises(ParameterError, match="did you mean 'input_gain_db'"):
            mc.learn("host.input_gain")
        lr = mc.learn("host.input_gain_db", timeout_s=20)
        assert mc.learn_status()["state"] == "armed"
        s.cc(2, 20, 10)
        b = lr.wait(10)
        assert b == Binding("host.input_gain_db", "cc", 2, 20, curve="db")
        assert mc.learn_status()["state"] == "learned"
        assert load_mapping(r.path, reg) == [b]  # saved
        assert announced and announced[-1]["address"] == "host.input_gain_db" and announced[-1]["number"] == 20
        # it now follows, with soft takeover: unity sits at 3/4 of the travel (raw 95.25)
        s.cc(2, 20, 90)
        s.flush()
        assert reg.get("host.input_gain_db") == 0.0
        s.cc(2, 20, 100)
        fader = Curve("db", -60.0, 24.0)
        r.value_becomes("host.input_gain_db", fader.value(100 / 127))
        s.cc(2, 20, 127)
        r.value_becomes("host.input_gain_db", 24.0)

        # 14-bit: CC n then CC n + 32 within the learn window
        lr = mc.learn("guest.strength", timeout_s=20)
        s.cc(1, 1, 64)
        s.cc(1, 33, 0)
        assert lr.wait(10) == Binding("guest.strength", "cc", 1, 1, curve="linear", cc14=True)
        # a note is passed over for a number; pitch bend is taken
        lr2 = mc.learn("guest.input_gain_db", timeout_s=20)
        s.note_on(4, 60)
        s.flush()
        assert lr2.status()["state"] == "armed" and "passed over" in lr2.status()["note"]
        s.bend(4, 8192)
        assert lr2.wait(10) == Binding("guest.input_gain_db", "pitch_bend", 4, 0, curve="db")
        # a button on an on/off parameter
        lr = mc.learn("guest.mute", timeout_s=20)
        s.note_on(1, 36)
        assert lr.wait(10) == Binding("guest.mute", "note", 1, 36, takeover="jump")
        # relearning an address replaces its binding; the file has them all
        lr = mc.learn("host.input_gain_db", timeout_s=20)
        s.cc(2, 21, 0)
        assert lr.wait(10).number == 21
        saved = load_mapping(r.path, reg)
        assert {(x.address, x.number) for x in saved} == {
            ("host.input_gain_db", 21), ("guest.strength", 1), ("guest.input_gain_db", 0), ("guest.mute", 36)}
        assert {b["address"] for b in mc.bindings()} == {x.address for x in saved}
        # unbind
        assert mc.unbind("guest.mute") == 1
        assert "guest.mute" not in {x.address for x in load_mapping(r.path, reg)}
        # timeout
        lr = mc.learn("host.strength", timeout_s=0.3)
        assert lr.wait(10) is None
        assert lr.state == "timeout" and mc.learn_status()["state"] == "timeout"
        assert wait_until(lambda: announced[-1].get("timed_out") is True, 5)
        assert announced[-1]["address"] == "host.strength"


@pytest.mark.jack
def test_a_malformed_mapping_file_lists_every_problem(daemon, tmp_path):
    bad = """
[[map]]
address = "host.strenght"
number = 1

[[map]]
address = "host.chain.comp.threshold_db"
number = 5
min = -200.0

[[map]]
address = "host.bypass"
type = "pitch_bend"

[[map]]
address = "host.strength"
type = "note"
number = 10
button = "toggel"

[[map]]
address = "host.chain.hp.cutoff_frequency_hz"
number = 6
curve = "log"
min = 0.0

[[map]]
address = "host.chain.compp.ratio"
number = 12

[[map]]
address = "guest.strength"
number = 13
curve = "db"
"""
    path = tmp_path / "midi.toml"
    path.write_text(bad)
    mc = MidiControl(daemon.registry, MidiConfig(mapping=str(path)), daemon.server_name, "qcbad")
    with pytest.raises(MidiMapError) as ei:
        mc.start()
    e = ei.value
    text = str(e)
    assert text.startswith(f"{path}: ")
    expected = ["did you mean 'strength'", "value -200 is out of range [-100, 24] dB",
                "on/off: map a button", "a note can only drive an on/off", "did you mean 'toggle'",
                "value 0 is out of range [1, 20000] Hz", "did you mean 'comp'"]
    for what in expected:
        assert any(what in str(p) for p in e.problems), (what, text)
    assert len(e.problems) == len(expected), text
    assert not mc.started and mc.status()["running"] is False
    # the daemon is untouched
    assert daemon.ready.is_set()
    # a mapping outside the parameter's range and a db curve on a linear
    # param are checked against the live registry too
    ok = _map(guest__strength=dict(number=13, curve="db"))
    assert parse_mapping(ok, registry=daemon.registry)[0].curve == "db"


@pytest.mark.jack
def test_missing_hardware_port_warns_and_the_daemon_keeps_running(daemon, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="quietcast.midi")
    with Rig(daemon, tmp_path, _map(host__strength=dict(number=7, takeover="jump")),
             inputs=("X-Touch Compact",), outputs=("X-Touch Out",)) as r:
        warnings = [rec.getMessage() for rec in caplog.records if rec.name == "quietcast.midi"]
        alsa = os.path.exists("/dev/snd/seq")
        for name in ("X-Touch Compact", "X-Touch Out"):
            msgs = [m for m in warnings if repr(name) in m]
            assert len(msgs) == 1, warnings  # one clear warning per port
            assert ("not found" if alsa else "the ALSA sequencer is not available") in msgs[0]
        st = r.mc.status()
        assert st["hardware_inputs"]["X-Touch Compact"]["open"] is False
        assert st["hardware_outputs"]["X-Touch Out"]["problem"]
        assert st["jack"]["in"] == r.mc.jack_in_name and st["jack"]["out"] == r.mc.jack_out_name
        # MIDI still works on the JACK ports, and the daemon runs on
        r.s.cc(1, 7, 100)
        r.value_becomes("host.strength", 100 / 127)
        assert daemon.ready.is_set() and daemon.status()["ready"]


@pytest.mark.jack
def test_a_flood_of_midi_does_not_crash_and_ends_on_the_last_value(daemon, tmp_path):
    with Rig(daemon, tmp_path, _map(host__strength=dict(number=7, takeover="jump"),
                                     guest__strength=dict(number=8))) as r:
        s, mc = r.s, r.mc
        hops0 = daemon.engine.stats.hops
        for i in range(999):
            s.cc(1, 7 + (i % 2), i % 128)
        s.cc(1, 7, 77)
        s.flush(timeout=30)
        r.value_becomes("host.strength", 77 / 127)
        st = mc.status()
        assert st["errors"] == 0 and st["applied"] > 0
        assert st["received"] >= 1000
        # the engine kept going and the daemon is up
        assert wait_until(lambda: daemon.engine.stats.hops > hops0 + 5, 10)
        assert daemon.ready.is_set()
        # and MIDI still answers
        s.cc(1, 7, 5)
        r.value_becomes("host.strength", 5 / 127)


@pytest.mark.jack
def test_stop_joins_the_dispatcher_and_closes_the_ports(daemon, tmp_path):
    import jack

    r = Rig(daemon, tmp_path, _map(host__strength=dict(number=7, takeover="jump")))
    mc = r.mc
    thread = mc._thread
    ins, outs = mc.jack_in_name, mc.jack_out_name
    names = lambda: {p.name for p in r.s.patch.get_ports(is_midi=True)}  # noqa: E731
    assert {ins, outs} <= names()
    r.__exit__(None, None, None)
    assert not thread.is_alive()
    probe = jack.Client("midi-probe", servername=daemon.server_name, no_start_server=True)
    try:
        assert not ({ins, outs} & {p.name for p in probe.get_ports(is_midi=True)})
    finally:
        probe.close()
    # the registry listener is gone: a set does not queue feedback any more
    daemon.registry.set("host.strength", 0.3, source="zmq")
    left = []
    while not mc._q.empty():
        left.append(mc._q.get_nowait())
    assert not [x for x in left if isinstance(x, tuple) and x[0] == "changed"], left
    mc.stop()  # twice is fine


@pytest.mark.jack
def test_disabled_or_stopped_midi_refuses_learn_and_reloads_its_file(daemon, tmp_path):
    off = MidiControl(daemon.registry, MidiConfig(enabled=False, mapping=str(tmp_path / "off.toml")),
                      daemon.server_name, "qcoff")
    off.start()
    assert not off.started and off.status()["enabled"] is False and off.status()["jack"]["in"] is None
    with pytest.raises(RuntimeError, match="not running"):
        off.learn("host.strength")
    off.stop()
    # the default mapping path is midi.toml in the state folder
    mc = MidiControl(daemon.registry, MidiConfig(), daemon.server_name, "qcdef", state_dir=str(tmp_path / "st"))
    assert mc.mapping_path == str(tmp_path / "st" / "midi.toml")
    # reload: a new file is picked up; a broken one is refused and the bindings stay
    with Rig(daemon, tmp_path, _map(host__strength=dict(number=7, takeover="jump"))) as r:
        assert [b["number"] for b in r.mc.bindings()] == [7]
        r.path.write_text(_map(host__strength=dict(number=17, takeover="jump")))
        assert r.mc.reload() == 1
        r.s.cc(1, 17, 3)
        r.value_becomes("host.strength", 3 / 127)
        r.path.write_text(_map(host__strenght=dict(number=18)))
        with pytest.raises(MidiMapError, match="did you mean 'strength'"):
            r.mc.reload()
        assert [b["number"] for b in r.mc.bindings()] == [17]
        st = r.mc.status()
        for key in ("received", "applied", "ignored_pickup", "unmapped", "feedback_sent", "errors", "learn",
                    "hardware_inputs", "hardware_outputs", "mapping", "bindings"):
            assert key in st
        assert st["running"] is True and st["bindings"] == 1


@pytest.mark.jack
def test_a_mapping_broken_at_start_is_reported_and_a_reload_starts_midi_once_fixed(jack_servers, tmp_path):
    """A daemon started with a broken mapping file runs without MIDI, and
    says why: ``status``'s ``midi.problem`` and ``learn``'s error hold the
    file's problems (learn said "MIDI is disabled in this daemon's config",
    status had midi: null). Once the file is fixed a reload starts MIDI (it
    was only reloaded while running: off until a restart)."""
    from quietcast.daemon.client import Client
    from quietcast.daemon.config import load_config
    from quietcast.daemon.errors import ControlError
    from quietcast.daemon.service import Daemon

    srv = jack_servers(256)
    mapping = tmp_path / "map.toml"
    mapping.write_text(_map(host__strenght=dict(number=7, takeover="jump")))
    cfgfile = tmp_path / "quietcast.toml"
    cfgfile.write_text(f'[jack]\nclient_name = "qcbm{uuid.uuid4().hex[:4]}"\nserver = "{srv.name}"\n'
                       f'[engine]\nmodel = "dsp"\n[control]\nbind = "ipc://{tmp_path}/ctl"\n'
                       f'events = "ipc://{tmp_path}/ev"\n[midi]\nmapping = "map.toml"\n[state]\nenabled = false\n'
                       '[[channel]]\nname = "host"\n')
    d = Daemon(load_config(cfgfile))
    t = threading.Thread(target=d.run, name="daemon", daemon=True)
    t.start()
    s = None
    try:
        assert d.ready.wait(20), "daemon did not become ready"
        with Client(f"ipc://{tmp_path}/ctl", timeout=20) as c:
            assert wait_until(lambda: "did you mean" in c.status()["midi"]["problem"], 20), c.status()["midi"]
            st = c.status()["midi"]
            assert st["enabled"] is True and st["running"] is False and st["mapping"] == str(mapping)
            assert st["problem"].startswith("not started (fix this, then reload the config")
            assert f"{mapping}: 1 problem" in st["problem"] and "did you mean 'strength'" in st["problem"]
            with pytest.raises(ControlError) as e:
                c.call("learn", address="host.strength")
            assert e.value.code == "unavailable" and "disabled" not in e.value.message
            assert e.value.message.startswith("MIDI is not running: not started") and "'strength'" in e.value.message
            # a reload with the file still broken: still off, still saying why
            c.call("reload")
            assert d.midi is None and "did you mean 'strength'" in c.status()["midi"]["problem"]
            mapping.write_text(_map(host__strength=dict(number=7, takeover="jump")))
            assert c.call("reload") == {"changed": [], "rebuilt": False}
            st = c.status()["midi"]
            assert st["running"] is True and st["bindings"] == 1 and "problem" not in st, st
            assert wait_until(lambda: _has_ports(srv.name, d.midi), 60, 0.05), d.midi.status()
            s = Surface(srv.name, d.midi)
            s.cc(1, 7, 64)
            assert wait_until(lambda: d.registry.get("host.strength") == pytest.approx(64 / 127), 10)
            assert c.call("learn", address="host.input_gain_db", timeout_s=1)["armed"] == "host.input_gain_db"
            # the [midi] section changes: another mapping file, then MIDI off (a reload kept the old
            # settings while MIDI ran, until session 25)
            s.close()
            s = None
            first = d.midi
            (tmp_path / "map2.toml").write_text(_map(host__strength=dict(number=9, takeover="jump"),
                                                     host__input_gain_db=dict(number=10, takeover="jump")))
            text = cfgfile.read_text()
            cfgfile.write_text(text.replace('mapping = "map.toml"', 'mapping = "map2.toml"'))
            c.call("reload")
            st = c.status()["midi"]
            assert d.midi is not first and not first.started
            assert st["running"] is True and st["bindings"] == 2 and st["mapping"] == str(tmp_path / "map2.toml"), st
            cfgfile.write_text(text.replace('mapping = "map.toml"', 'mapping = "map2.toml"\nenabled = false'))
            c.call("reload")
            st = c.status()["midi"]
            assert d.midi is None and st["running"] is False and "enabled = false" in st["problem"], st
    finally:
        if s is not None:
            s.close()
        d.request_stop()
        t.join(15)
    assert not t.is_alive() and (d.midi is None or not d.midi.started)


@pytest.mark.jack
def test_midi_ports_come_back_after_jackd_restarts(jack_server, tmp_path):
    """jackd restarts under the MIDI ports. A real registry and engine, the
    engine built without opening JACK: no JACK client of this process is
    open while the server dies and starts again (libjack's process-wide
    state does not like that; the daemon's own reconnect is tested in
    test_live.py, in a subprocess)."""
    from quietcast.daemon.service import Daemon

    srv = jack_server
    d = Daemon(parse_config('[engine]\nmodel = "dsp"\n[[channel]]\nname = "host"\n'))
    d._engine_for(48_000)
    path = tmp_path / "midi.toml"
    path.write_text(_map(host__strength=dict(number=7, takeover="jump")))
    mc = MidiControl(d.registry, MidiConfig(mapping=str(path)), srv.name, "qcmr")
    mc.start()
    s = None

    def becomes(raw):
        return wait_until(lambda: d.registry.get("host.strength") == pytest.approx(raw / 127), 10)

    try:
        assert wait_until(lambda: _has_ports(srv.name, mc), 30)
        s = Surface(srv.name, mc)
        s.cc(1, 7, 10)
        assert becomes(10)
        s.close()
        srv.restart()
        # the MIDI ports come back by themselves (no call needed)
        assert wait_until(lambda: _has_ports(srv.name, mc), 30), mc.status()
        assert mc.status()["jack"]["in"] == mc.jack_in_name and mc.status()["jack"]["bridge_starts"] == 2
        s = Surface(srv.name, mc)  # connects to the reopened ports and hands a message over
        s.cc(1, 7, 90)
        assert becomes(90)
        # reopen_jack() (for the daemon to call after it reconnects) does it at once
        s.close()
        mc.reopen_jack()
        assert wait_until(lambda: mc.status()["jack"]["bridge_starts"] == 3 and _has_ports(srv.name, mc), 30)
        s = Surface(srv.name, mc)
        s.cc(1, 7, 20)
        assert becomes(20)
        assert mc.counters["errors"] == 0
    finally:
        if s is not None:
            s.close()
        mc.stop()


@pytest.mark.jack
def test_learning_the_lsb_of_a_14_bit_control_keeps_a_loadable_mapping(daemon, tmp_path):
    """Learning a knob on CC 39 while CC 7 is a 14-bit binding (39 is its
    LSB): the new binding wins and the 14-bit one goes, with a note. Until
    session 24 both stayed, and the saved file was one the next start
    refused: no MIDI at all after a restart."""
    mapping = ('[[map]]\naddress = "host.strength"\ntype = "cc"\nchannel = 1\nnumber = 7\ncc14 = true\n'
               'takeover = "jump"\n')
    with Rig(daemon, tmp_path, mapping=mapping) as r:
        lr = r.mc.learn("guest.strength", timeout_s=20)
        r.s.cc(1, 39, 100)
        b = lr.wait(10)
        assert b == Binding("guest.strength", "cc", 1, 39, curve="linear")
        assert "LSB of the 14-bit control of 'host.strength'" in lr.status()["note"]
        saved = load_mapping(r.path, daemon.registry)  # loads: it raised MidiMapError before
        assert [x.address for x in saved] == ["guest.strength"]


def _fake_alsa(monkeypatch, plugged: list[str], opened: list | None = None, sent: list | None = None) -> None:
    """rtmidi's ALSA side, as a stand-in (this machine has no ALSA
    sequencer): ``plugged`` lists the ports "plugged in" (the test changes
    it); each port opened is added to ``opened``, each message sent to
    ``sent`` as ``(port, message)``. Hardware ports are looked for again
    every 0.1 s."""
    import types

    from quietcast.daemon import midi as M

    class Port:
        def __init__(self, api, name=""):
            self.port = None

        def get_ports(self):
            return list(plugged)

        def ignore_types(self, **kw):
            pass

        def set_callback(self, cb, data):
            pass

        def cancel_callback(self):
            pass

        def open_port(self, i, name=""):
            self.port = plugged[i]
            if opened is not None:
                opened.append(plugged[i])

        def send_message(self, m):
            if sent is not None:
                sent.append((self.port, list(m)))

        def close_port(self):
            pass

        def delete(self):
            pass

    fake = types.SimpleNamespace(MidiIn=Port, MidiOut=Port, API_LINUX_ALSA=1, RtMidiError=RuntimeError)
    monkeypatch.setattr(M, "_rtmidi", lambda: fake)
    monkeypatch.setattr(M, "HARDWARE_RETRY_S", 0.1)


def test_an_unplugged_alsa_controller_is_reopened_when_it_comes_back(monkeypatch):
    """A USB controller unplugged and plugged back comes back in ALSA as
    another client (20:0, then 24:0). The daemon notices the port went,
    says so, and opens the new one. This machine has no ALSA sequencer, so
    rtmidi's ALSA side is a stand-in that lists what is "plugged in"; the
    JACK MIDI path has its real tests above. (Until session 24 the dead
    port stayed "open" until a restart.)"""
    from quietcast.daemon import midi as M

    plugged = ["X-TOUCH COMPACT:X-TOUCH COMPACT MIDI 1 20:0"]
    opened = []
    _fake_alsa(monkeypatch, plugged, opened=opened)

    class Reg:
        def add_listener(self, f):
            pass

        def remove_listener(self, f):
            pass

    mc = M.MidiControl(Reg(), MidiConfig(enabled=True, inputs=("X-Touch Compact",), mapping="/nonexistent/m.toml"),
                       jack_server=f"none{uuid.uuid4().hex[:6]}", client_name="qcreplug")
    mc.start(wait_ready_s=0)
    try:
        assert wait_until(lambda: mc.status()["hardware_inputs"]["X-Touch Compact"]["open"], 5)
        plugged.clear()
        assert wait_until(lambda: not mc.status()["hardware_inputs"]["X-Touch Compact"]["open"], 5)
        plugged.append("X-TOUCH COMPACT:X-TOUCH COMPACT MIDI 1 24:0")
        assert wait_until(lambda: mc.status()["hardware_inputs"]["X-Touch Compact"].get("port", "").endswith("24:0"), 5)
        assert opened == ["X-TOUCH COMPACT:X-TOUCH COMPACT MIDI 1 20:0", "X-TOUCH COMPACT:X-TOUCH COMPACT MIDI 1 24:0"]
    finally:
        mc.stop()


@pytest.mark.jack
def test_a_controller_that_echoes_its_feedback_does_not_move_anything(daemon, tmp_path):
    """A motor-fader surface (or a soft thru) that sends back what it
    receives, here the daemon's MIDI out patched into its MIDI in: a value
    set exactly from elsewhere stays exact, and two controllers on one
    address do not feed each other for ever. (Until session 24 the echo
    counted as a move: -6 dB came back as -5.94, 0.5 as 0.5039, and two
    ganged controllers made 564 sets in 2 s from one move.)"""
    import jack

    mapping = _map(host__strength={"type": "cc", "channel": 1, "number": 7},
                   guest__output_gain_db={"type": "cc", "channel": 3, "number": 7})
    mapping += '[[map]]\naddress = "host.strength"\ntype = "cc"\nchannel = 2\nnumber = 7\n'
    reg = daemon.registry
    with Rig(daemon, tmp_path, mapping=mapping) as r:
        loop = jack.Client("qcecho", servername=r.server, no_start_server=True)
        try:
            loop.connect(r.mc.jack_out_name, r.mc.jack_in_name)
            for address, v in (("guest.output_gain_db", -6.0), ("host.strength", 0.5)):
                reg.set(address, v, source="test")
                assert wait_until(lambda: r.mc.counters["echo_ignored"] > 0, 5)
                time.sleep(0.3)
                assert reg.get(address) == v
            applied = r.mc.counters["applied"]
            r.s.cc(1, 7, 64)  # controller 1 at the current value (0.5): it attaches and sets
            time.sleep(1.0)
            n = r.mc.counters["applied"] - applied
            assert n <= 2, f"{n} sets from one move: the controllers feed each other"
        finally:
            loop.close()


@pytest.mark.jack
def test_a_loaded_chain_moves_its_faders_and_they_pick_its_values_up(daemon, tmp_path):
    """load_chain puts the new file's values on the mapped chain
    parameters: their feedback goes out (a motor fader moves there) and a
    fader with soft takeover must pick the new value up before it changes
    it. (Until session 24 nothing was sent, and the next nudge of the
    fader jumped the value back near the old one.)"""
    mapping = _map(host__chain__comp__threshold_db={"type": "cc", "channel": 1, "number": 20, "curve": "linear"})
    new_chain = tmp_path / "b.toml"
    new_chain.write_text(CHAIN.replace("threshold_db = -20", "threshold_db = -10"))
    reg = daemon.registry
    with Rig(daemon, tmp_path, mapping=mapping) as r:
        b = r.mc._by_address["host.chain.comp.threshold_db"][0]
        b.refresh()
        raw = b.raw_for(-20.0)
        r.s.cc(1, 20, raw)  # the fader sits at the current value: attached
        r.s.flush()
        assert b.attached
        daemon.midi = r.mc
        try:
            daemon.load_chain("host", str(new_chain))
        finally:
            daemon.midi = None
        assert reg.get("host.chain.comp.threshold_db") == -10.0
        r.s.expect([0xB0, 20, b.raw_for(-10.0)])
        before = r.mc.counters["ignored_pickup"]
        r.s.cc(1, 20, raw + 1)  # a nudge from where the fader was: not a move of the new value
        r.s.flush()
        assert r.mc.counters["ignored_pickup"] == before + 1
        assert reg.get("host.chain.comp.threshold_db") == -10.0


@pytest.mark.jack
def test_buttons_on_a_surface_that_echoes_their_leds_keep_their_state(daemon, tmp_path):
    """A surface (or a soft thru) that sends back the LED state it gets,
    here the daemon's MIDI out patched into its MIDI in. A toggle switched
    on from elsewhere stays on, a momentary button does not feed itself,
    and a hand's presses still toggle. (Before, the echoed note-on was a
    press: bypass set on from ctl flipped straight back off, and a
    momentary mute set from ctl made ~190 sets a second, for ever.)"""
    import jack

    reg = daemon.registry
    addrs = ("host.bypass", "guest.bypass", "host.mute")
    for a in addrs:
        reg.set(a, False, source="test")
    mapping = _map(host__bypass=dict(type="note", number=40), guest__bypass=dict(type="cc", number=70),
                   host__mute=dict(type="cc", number=71, button="momentary"))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            mc = r.mc
            loop = jack.Client("qcecho", servername=r.server, no_start_server=True)
            try:
                loop.connect(mc.jack_out_name, mc.jack_in_name)
                for on in (True, False, True):
                    applied, echoes = mc.counters["applied"], mc.counters["echo_ignored"]
                    for a in addrs:
                        reg.set(a, on, source="zmq")
                    assert wait_until(lambda: mc.counters["echo_ignored"] >= echoes + 3, 5), mc.counters
                    time.sleep(0.5)  # room for an echo loop to show
                    assert {a: reg.get(a) for a in addrs} == {a: on for a in addrs}
                    assert mc.counters["applied"] == applied, "an echo was taken as a press"
                # a script's quick off/on/off/on, all sent before the first echo is back: each LED
                # message's echo is its own (with only the last one remembered, the echo of an
                # earlier "off" wiped it and the last "on" came back as a press)
                for _ in range(3):
                    applied, echoes = mc.counters["applied"], mc.counters["echo_ignored"]
                    for on in (False, True, False, True):
                        reg.set("host.bypass", on, source="zmq")
                        reg.set("guest.bypass", on, source="zmq")
                    assert wait_until(lambda: mc.counters["echo_ignored"] >= echoes + 8, 5), mc.counters
                    time.sleep(0.3)
                    assert (reg.get("host.bypass"), reg.get("guest.bypass")) == (True, True)
                    assert mc.counters["applied"] == applied, "an echo was taken as a press"
                # the hand: press and release toggle once each time, echo or not
                reg.set("host.bypass", False, source="zmq")
                time.sleep(0.1)
                r.s.note_on(1, 40)
                r.value_becomes("host.bypass", True)
                time.sleep(0.05)
                r.s.note_off(1, 40)
                r.s.note_on(1, 40)  # at once again (a double tap): its release came between
                r.value_becomes("host.bypass", False)
                r.s.note_off(1, 40)
                r.s.flush()
                time.sleep(0.3)
                assert reg.get("host.bypass") is False
                r.s.cc(1, 71, 127)  # momentary: held
                r.value_becomes("host.mute", True)
                r.s.cc(1, 71, 0)
                r.value_becomes("host.mute", False)
                time.sleep(0.3)
                assert reg.get("host.mute") is False and mc.counters["errors"] == 0
            finally:
                loop.close()
    finally:
        for a in addrs:
            reg.set(a, False, source="test")


@pytest.mark.jack
def test_learn_takes_a_14_bit_fader_whose_lsb_comes_first(daemon, tmp_path):
    """MIDI 1.0 lets a 14-bit controller send the LSB (CC n + 32) alone
    while the MSB stays the same: a fader moved slowly, or one already
    moving when learn is armed, shows its LSB first. Learn binds the MSB
    as 14-bit (before, the LSB was bound as a 7-bit CC: the value wrapped
    0..1 on every 1/128 of the fader's travel). A 7-bit knob on CC 32..63
    is still learned as one."""
    reg = daemon.registry
    reg.set("guest.strength", 0.5, source="test")  # 14-bit position 8192: MSB 64, LSB 0
    with Rig(daemon, tmp_path) as r:
        lr = r.mc.learn("guest.strength", timeout_s=20)
        r.s.send_many([[0xB0, 39, 10], [0xB0, 39, 11], [0xB0, 7, 64], [0xB0, 39, 12]])
        assert lr.wait(10) == Binding("guest.strength", "cc", 1, 7, curve="linear", cc14=True)
        r.s.send_many([[0xB0, 7, 64], [0xB0, 7, 80], [0xB0, 39, 1]])  # picked up at 0.5, then moved
        r.value_becomes("guest.strength", (80 * 128 + 1) / 16383)
        lr = r.mc.learn("host.strength", timeout_s=20)
        r.s.send_many([[0xB0, 45, v] for v in range(10, 20)])
        assert lr.wait(10) == Binding("host.strength", "cc", 1, 45, curve="linear")
        assert {b.address: b for b in load_mapping(r.path, reg)}["guest.strength"].cc14


def test_a_controller_plugged_in_later_gets_the_current_values(monkeypatch, tmp_path):
    """A hardware output (motor faders, LED rings) that is plugged in, or
    back in, after the start gets every mapped value once it opens, as the
    JACK MIDI output does when its ports come back. (Before, only the start
    sent them: a controller replugged mid-show kept its faders where they
    fell until each value changed.) No ALSA sequencer on this machine: a
    stand-in lists what is plugged in; a real registry and engine."""
    from quietcast.daemon import midi as M
    from quietcast.daemon.service import Daemon

    plugged: list[str] = []
    sent: list[tuple[str, list[int]]] = []
    _fake_alsa(monkeypatch, plugged, sent=sent)
    d = Daemon(parse_config('[engine]\nmodel = "dsp"\n[[channel]]\nname = "host"\n'))
    d._engine_for(48_000)
    d.registry.set("host.strength", 0.25, source="test")
    path = tmp_path / "midi.toml"
    path.write_text(_map(host__strength=dict(number=7), host__mute=dict(type="note", number=16)))
    mc = M.MidiControl(d.registry, MidiConfig(enabled=True, outputs=("X-Touch",), mapping=str(path)),
                       jack_server=f"none{uuid.uuid4().hex[:6]}", client_name="qcplug")
    mc.start(wait_ready_s=0)
    try:
        time.sleep(0.3)
        assert sent == [] and not mc.status()["hardware_outputs"]["X-Touch"]["open"]
        plugged.append("X-TOUCH:X-TOUCH MIDI 1 24:0")
        want = {("X-TOUCH:X-TOUCH MIDI 1 24:0", (0xB0, 7, 32)), ("X-TOUCH:X-TOUCH MIDI 1 24:0", (0x90, 16, 0))}
        assert wait_until(lambda: want <= {(p, tuple(m)) for p, m in sent}, 5), sent
    finally:
        mc.stop()


@pytest.mark.jack
def test_a_jack_midi_controller_that_goes_and_comes_back_is_connected_again(daemon, tmp_path):
    """A controller's JACK MIDI ports go away and come back under the same
    names (unplugged and plugged in again behind a2jmidid or PipeWire, its
    bridge restarted): the connections made to the daemon's MIDI ports by
    hand are made again, both ways, the controller gets the values that
    changed meanwhile, and a connection taken down by hand while both
    ports exist stays down. (Before, the controller was dead
    until someone ran jack_connect again.)"""
    reg = daemon.registry
    with Rig(daemon, tmp_path, _map(host__strength=dict(number=7, takeover="jump"))) as r:
        mc, name = r.mc, r.s.name
        conns = lambda: mc.status()["jack"]["connections"]  # noqa: E731
        assert wait_until(lambda: conns() == {"in": [f"{name}-tx:out"], "out": [f"{name}-rx:in"]}, 5), conns()
        r.s.close()  # unplugged: its ports go
        time.sleep(0.6)
        assert conns() == {"in": [f"{name}-tx:out"], "out": [f"{name}-rx:in"]}  # remembered
        reg.set("host.strength", 0.25, source="zmq")  # meanwhile
        r.s = Surface(r.server, mc, name=name, connect=False)  # plugged in again: nobody connects it
        r.s.expect([0xB0, 7, 32])  # linked again, its motor fader catches up
        r.s.cc(1, 7, 99)
        r.value_becomes("host.strength", 99 / 127)
        # unplugged and plugged straight back, within one look of the bridge (0.25 s): the port is new
        # (its uuid), so its connections were not taken down by hand; made again (they were forgotten)
        for v in (40, 41, 42):
            r.s.replug()
            assert wait_until(lambda: bool(r.s.patch.get_all_connections(f"{name}-tx:out"))
                              and bool(r.s.patch.get_all_connections(f"{name}-rx:in")), 5), conns()
            r.s.cc(1, 7, v)  # both ways
            r.value_becomes("host.strength", v / 127)
            reg.set("host.strength", (v + 20) / 127, source="zmq")
            r.s.expect([0xB0, 7, v + 20])
            time.sleep(0.6)  # (the bridge has looked again since)
            assert conns() == {"in": [f"{name}-tx:out"], "out": [f"{name}-rx:in"]}
        r.s.cc(1, 7, 98)
        r.value_becomes("host.strength", 98 / 127)
        # taken down by hand: forgotten, not made again
        r.s.patch.disconnect(f"{name}-tx:out", mc.jack_in_name)
        assert wait_until(lambda: conns()["in"] == [], 5), conns()
        time.sleep(0.6)
        assert not r.s.patch.get_all_connections(f"{name}-tx:out")


@pytest.mark.jack
def test_ctl_learn_catches_a_control_already_moving_and_ends_when_cancelled(jack_servers, tmp_path):
    """`quietcast ctl learn` against a real daemon (control and MIDI on):
    a fader already moving when learn is armed is learned and printed (it
    may be learned within milliseconds: `ctl` subscribes before arming,
    and asks `status` when the stream stays quiet); a learn cancelled from
    elsewhere ends `ctl learn` at once, with the reason (it waited out its
    time, then said "no answer")."""
    from conftest import quietcast_exe, sigint_default

    from quietcast.daemon.client import Client
    from quietcast.daemon.config import load_config
    from quietcast.daemon.service import Daemon

    srv = jack_servers(256)
    (tmp_path / "map.toml").write_text("")
    cfgfile = tmp_path / "quietcast.toml"
    cfgfile.write_text(f'[jack]\nclient_name = "qcl{uuid.uuid4().hex[:4]}"\nserver = "{srv.name}"\n'
                       f'[engine]\nmodel = "dsp"\n[control]\nbind = "ipc://{tmp_path}/ctl"\n'
                       f'events = "ipc://{tmp_path}/ev"\n[midi]\nmapping = "map.toml"\n[state]\nenabled = false\n'
                       '[[channel]]\nname = "host"\n')
    d = Daemon(load_config(cfgfile))
    t = threading.Thread(target=d.run, name="daemon", daemon=True)
    t.start()
    s, stop = None, threading.Event()
    ctl = [quietcast_exe(), "ctl", "--endpoint", f"ipc://{tmp_path}/ctl", "learn"]
    try:
        assert d.ready.wait(20), "daemon did not become ready"
        with Client(f"ipc://{tmp_path}/ctl", timeout=20) as c:
            assert wait_until(lambda: c.status()["midi"].get("running"), 30), c.status()["midi"]
            assert wait_until(lambda: _has_ports(srv.name, d.midi), 60, 0.05), d.midi.status()
            s = Surface(srv.name, d.midi)

            def move():
                v = 0
                while not stop.is_set():
                    s.cc(3, 7, v)
                    v = (v + 1) % 128
                    time.sleep(0.005)

            # a learn of the same address left armed (a `ctl learn` killed): the new one replaces it, and
            # the old one's end ("replaced") is not the new one's (matched by learn_id, not by address)
            assert c.call("learn", address="host.strength", timeout_s=30)["learn_id"] >= 1
            mover = threading.Thread(target=move, daemon=True)
            mover.start()
            r = subprocess.run(ctl + ["host.strength", "--wait", "5"], capture_output=True, text=True, timeout=60)
            stop.set()
            mover.join()
            assert r.returncode == 0, r.stderr
            assert '"number": 7' in r.stdout or "number: 7" in r.stdout, r.stdout
            assert [(b["address"], b["channel"], b["number"]) for b in d.midi.bindings()] == [("host.strength", 3, 7)]

            p = subprocess.Popen(ctl + ["host.input_gain_db", "--wait", "30"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            try:
                assert wait_until(lambda: c.status()["midi"]["learn"].get("address") == "host.input_gain_db", 20)
                time.sleep(0.3)  # (its subscription is well on its way)
                assert c.call("learn", cancel=True) == {"armed": None}
                t0 = time.monotonic()
                out, err = p.communicate(timeout=15)
                took = time.monotonic() - t0
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            assert p.returncode == 1 and took < 10, (took, err)
            assert "learn for host.input_gain_db ended without a binding: cancelled by a client" in err, err
            # Ctrl-C disarms it (else the next control moved would be bound, with nobody waiting)
            p = subprocess.Popen(ctl + ["host.input_gain_db", "--wait", "30"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
            try:
                assert wait_until(lambda: c.status()["midi"]["learn"].get("state") == "armed", 20)
                time.sleep(0.3)
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=15)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            st = c.status()["midi"]["learn"]
            assert st["state"] == "cancelled" and st["note"] == "cancelled by a client", st
    finally:
        stop.set()
        if s is not None:
            s.close()
        d.request_stop()
        t.join(15)
    assert not t.is_alive()


# --------------------------------------------------------------------------
# relative (endless) encoders


def test_relative_encodings_decode_ticks():
    d = midi.relative_delta
    # two's complement: 1..63 up, 127 = -1, 64 = -64
    assert [d("twos_complement", v) for v in (0, 1, 5, 63, 64, 65, 127)] == [0, 1, 5, 63, -64, -63, -1]
    # binary offset: around 64
    assert [d("binary_offset", v) for v in (64, 65, 70, 127, 63, 58, 0)] == [0, 1, 6, 63, -1, -6, -64]
    # sign and magnitude: bit 6 is the sign
    assert [d("sign_magnitude", v) for v in (0, 1, 5, 63, 64, 65, 70, 127)] == [0, 1, 5, 63, 0, -1, -6, -63]
    with pytest.raises(ValueError, match="twos_complement, binary_offset, sign_magnitude"):
        d("offset", 1)


def test_relative_bindings_round_trip_and_every_problem_is_named():
    bs = [Binding("host.strength", "cc", 1, 20, mode="relative"),
          Binding("host.output_gain_db", "cc", 2, 21, curve="db", mode="relative", encoding="binary_offset", step=0.05),
          Binding("guest.strength", "cc", 1, 22, mode="relative", encoding="sign_magnitude")]
    text = midi.mapping_to_toml(bs)
    assert 'mode = "relative"' in text and 'encoding = "twos_complement"' in text and "step = 0.05" in text
    assert parse_mapping(text) == bs
    assert "(relative, binary_offset)" in bs[1].describe_control()
    bad = """
[[map]]
address = "host.strength"
number = 1
mode = "relativ"

[[map]]
address = "host.input_gain_db"
number = 2
mode = "relative"
encoding = "offset"
step = 0

[[map]]
address = "guest.strength"
number = 3
encoding = "binary_offset"
step = 0.1

[[map]]
address = "guest.input_gain_db"
type = "pitch_bend"
mode = "relative"
step = 2

[[map]]
address = "host.background_db"
number = 4
mode = "relative"
cc14 = true
takeover = "jump"
"""
    expected = [
        ("[[map]] 1 (host.strength) mode", "did you mean 'relative'"),
        ("[[map]] 2 (host.input_gain_db) encoding", "twos_complement, binary_offset, sign_magnitude"),
        ("[[map]] 2 (host.input_gain_db) step", "not a number in (0, 1]"),
        ("[[map]] 3 (guest.strength) encoding", 'applies to mode = "relative" only'),
        ("[[map]] 3 (guest.strength) step", 'applies to mode = "relative" only'),
        ("[[map]] 4 (guest.input_gain_db) step", "not a number in (0, 1]"),
        ("[[map]] 4 (guest.input_gain_db) mode", "type = \"cc\" only, not 'pitch_bend'"),
        ("[[map]] 5 (host.background_db) cc14", "7-bit steps"),
        ("[[map]] 5 (host.background_db) takeover", "no soft takeover needed"),
    ]
    problems, text = _refused_naming(bad, expected)
    assert len(problems) == len(expected), text
    # one knob sends one kind of value
    mixed = _map(host__strength=dict(number=9, mode="relative"), guest__strength=dict(number=9))
    with pytest.raises(MidiMapError, match=r"CC 9 on channel 1 is absolute here but relative \(twos_complement\) "
                                           r"for 'host.strength'"):
        parse_mapping(mixed)
    two = _map(host__strength=dict(number=9, mode="relative"),
               guest__strength=dict(number=9, mode="relative", encoding="binary_offset"))
    with pytest.raises(MidiMapError, match="give both the same mode and encoding"):
        parse_mapping(two)


def test_the_readme_encoder_example_is_a_valid_mapping():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    block = readme.split("**Endless encoders.**", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    (b,) = parse_mapping("\n".join(line.strip() for line in block.splitlines()))
    assert (b.mode, b.encoding, b.step) == ("relative", "binary_offset", 0.02)


def test_relative_steps_add_up_on_int_parameters_and_stop_at_the_ends():
    """An int parameter moves at least one whole number per tick by
    default; a finer ``step`` adds up over ticks instead of rounding back."""
    from quietcast.bridge.params import Param

    p = Param("delay_samples", "int", 0, 0, 10)
    b = midi._Bound(Binding("x.delay_samples", mode="relative"), None)
    b.param, b.curve = p, midi._curve_for(b.spec, p)
    assert b.rel_step == pytest.approx(0.1)
    assert b.relative_target(3, 1)[0] == 4 and b.relative_target(3, -2)[0] == 1
    assert b.relative_target(9, 5)[0] == 10 and b.relative_target(1, -5)[0] == 0
    fine = midi._Bound(Binding("x.delay_samples", mode="relative", step=0.04), None)
    fine.param, fine.curve = p, b.curve
    cur, seen = 3, []
    for _ in range(5):
        cur, pos = fine.relative_target(cur, 1)
        fine.rel = (pos, cur)
        seen.append(cur)
    assert seen == [3, 4, 4, 5, 5]  # 0.34, 0.38, 0.42, 0.46, 0.50 of the travel
    big = Param("n", "int", 0, 0, 1000)
    wide = midi._Bound(Binding("x.n", mode="relative"), None)
    wide.param, wide.curve = big, midi._curve_for(wide.spec, big)
    assert wide.relative_target(500, 1)[0] == 510  # 1 % of the travel


@pytest.mark.jack
def test_relative_encoders_move_from_the_value_along_the_curve(daemon, tmp_path):
    """Endless encoders send ticks, not positions: each tick moves the
    value by ``step`` of the fader travel (along the parameter's curve),
    several at once when the encoder accelerates, from wherever the value
    is (no soft takeover), stopping at the ends; the LED ring gets the
    absolute position on the same CC."""
    reg = daemon.registry
    reg.set("host.strength", 0.3, source="test")
    reg.set("host.output_gain_db", 0.0, source="test")
    reg.set("guest.strength", 0.5, source="test")
    mapping = _map(host__strength=dict(number=20, mode="relative"),
                   host__output_gain_db=dict(number=21, mode="relative", encoding="binary_offset", step=0.05),
                   guest__strength=dict(number=22, mode="relative", encoding="sign_magnitude", step=0.1))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s, mc = r.s, r.mc
            assert all(b["attached"] for b in mc.bindings())
            # two's complement, default step 1 %
            s.cc(1, 20, 1)
            r.value_becomes("host.strength", 0.31)
            s.expect([0xB0, 20, round(0.31 * 127)])  # the ring follows the encoder that moved it
            s.cc(1, 20, 127)  # -1
            r.value_becomes("host.strength", 0.30)
            s.cc(1, 20, 5)  # accelerated: 5 ticks at once
            r.value_becomes("host.strength", 0.35)
            # a change from elsewhere: the next tick moves on from there, no pickup
            reg.set("host.strength", 0.8, source="zmq")
            s.cc(1, 20, 1)
            r.value_becomes("host.strength", 0.81)
            s.cc(1, 20, 64)  # -64 ticks
            r.value_becomes("host.strength", 0.17)
            s.cc(1, 20, 64)  # stops at the bottom
            r.value_becomes("host.strength", 0.0)
            s.expect([0xB0, 20, 0])
            s.cc(1, 20, 127)  # further down: stays, the ring is told the end again
            s.flush()
            assert reg.get("host.strength") == 0.0
            # binary offset on a dB parameter: it moves like its fader (unity at 3/4 of the travel)
            fader = Curve("db", -96.0, 24.0, bottom_inf=True)
            s.cc(1, 21, 65)
            r.value_becomes("host.output_gain_db", fader.value(0.80))
            assert reg.get("host.output_gain_db") == pytest.approx(4.8)
            s.cc(1, 21, 63)
            r.value_becomes("host.output_gain_db", 0.0)
            s.cc(1, 21, 62)  # two down: 0.65 of the travel
            r.value_becomes("host.output_gain_db", fader.value(0.65))
            s.expect([0xB0, 21, round(0.65 * 127)])
            s.cc(1, 21, 0)  # 64 down: the bottom stop, off
            r.value_becomes("host.output_gain_db", -math.inf)
            s.cc(1, 21, 65)
            r.value_becomes("host.output_gain_db", fader.value(0.05))
            # sign and magnitude, step 0.1
            s.cc(1, 22, 0x40 | 2)  # bit 6 set: down 2
            r.value_becomes("guest.strength", 0.3)
            s.cc(1, 22, 3)
            r.value_becomes("guest.strength", 0.6)
            s.cc(1, 22, 20)
            r.value_becomes("guest.strength", 1.0)
            s.expect([0xB0, 22, 127])
            assert mc.counters["ignored_pickup"] == 0 and mc.counters["errors"] == 0
    finally:
        reg.set("host.output_gain_db", 0.0, source="test")


@pytest.mark.jack
def test_relative_encoders_step_through_choices_and_switch_bools(daemon, tmp_path):
    """A choice moves one choice per tick (more when accelerated) and
    stops at the first and last; an on/off parameter turns on clockwise
    and off counterclockwise. The ring shows the position."""
    reg = daemon.registry
    chain = tmp_path / "ladder.toml"
    chain.write_text('[[stage]]\nname = "lad"\ntype = "ladder"\nmode = "LPF12"\n')
    daemon.load_chain("guest", str(chain))
    reg.set("host.bypass", False, source="test")
    mapping = _map(guest__chain__lad__mode=dict(number=30, mode="relative"),
                   host__bypass=dict(number=31, mode="relative", encoding="binary_offset"))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s = r.s
            b = r.mc._by_address["guest.chain.lad.mode"][0]
            s.cc(1, 30, 1)
            r.value_becomes("guest.chain.lad.mode", "HPF12")
            s.expect([0xB0, 30, b.raw_for("HPF12")])
            s.cc(1, 30, 2)
            r.value_becomes("guest.chain.lad.mode", "LPF24")
            s.cc(1, 30, 10)
            r.value_becomes("guest.chain.lad.mode", "BPF24")  # the last
            s.cc(1, 30, 127)
            r.value_becomes("guest.chain.lad.mode", "HPF24")
            s.cc(1, 30, 64)
            r.value_becomes("guest.chain.lad.mode", "LPF12")  # the first
            s.cc(1, 31, 66)
            r.value_becomes("host.bypass", True)
            s.expect([0xB0, 31, 127])
            s.cc(1, 31, 65)  # on already: stays on
            s.flush()
            assert reg.get("host.bypass") is True
            s.cc(1, 31, 63)
            r.value_becomes("host.bypass", False)
            s.expect([0xB0, 31, 0])
            assert r.mc.counters["errors"] == 0
    finally:
        reg.set("host.bypass", False, source="test")


@pytest.mark.jack
def test_a_relative_encoder_on_a_surface_that_echoes_its_ring_moves_only_by_its_ticks(daemon, tmp_path):
    """The ring position sent back by a surface or soft thru that echoes
    (the daemon's MIDI out patched into its MIDI in) is not ticks: taken as
    ticks, 0.5 (ring 64 = -64 ticks in two's complement) dropped to 0, and
    each tick's ring came back as more ticks, for ever."""
    import jack

    reg = daemon.registry
    reg.set("host.strength", 0.3, source="test")
    reg.set("guest.strength", 0.2, source="test")
    gang = _map(host__strength=dict(number=20, mode="relative"), guest__strength=dict(number=20, mode="relative"))
    with Rig(daemon, tmp_path, gang) as r:
        mc = r.mc
        loop = jack.Client("qcecho", servername=r.server, no_start_server=True)
        try:
            loop.connect(mc.jack_out_name, mc.jack_in_name)
            echoes = mc.counters["echo_ignored"]
            reg.set("host.strength", 0.5, source="zmq")
            assert wait_until(lambda: mc.counters["echo_ignored"] > echoes, 5), mc.counters
            time.sleep(0.3)
            assert reg.get("host.strength") == 0.5
            applied = mc.counters["applied"]
            r.s.cc(1, 20, 1)
            r.value_becomes("host.strength", 0.51)
            time.sleep(0.6)  # room for an echo loop to show
            r.s.cc(1, 20, 1)
            r.value_becomes("host.strength", 0.52)
            time.sleep(0.6)
            assert reg.get("host.strength") == pytest.approx(0.52)
            # the other encoder of the gang took the same two ticks, and no ring of either as more
            assert reg.get("guest.strength") == pytest.approx(0.22)
            assert mc.counters["applied"] - applied == 4
        finally:
            loop.close()


@pytest.mark.jack
def test_jack_midi_connections_survive_a_midi_reload_and_a_restart(jack_servers, tmp_path):
    """A controller patched to the JACK MIDI ports by hand stays patched
    when a reload changes the [midi] section (a new MidiControl and bridge:
    the connections were the old bridge's only) and when the daemon starts
    again (the state file's ``midi_connections``)."""
    from quietcast.daemon.client import Client
    from quietcast.daemon.config import load_config
    from quietcast.daemon.service import Daemon

    srv = jack_servers(256)
    (tmp_path / "map.toml").write_text(_map(host__strength=dict(number=7, takeover="jump")))
    (tmp_path / "map2.toml").write_text(_map(host__strength=dict(number=8, takeover="jump")))
    cfgfile = tmp_path / "quietcast.toml"
    text = (f'[jack]\nclient_name = "qcc{uuid.uuid4().hex[:4]}"\nserver = "{srv.name}"\n'
            f'[engine]\nmodel = "dsp"\n[control]\nbind = "ipc://{tmp_path}/ctl"\n'
            f'events = "ipc://{tmp_path}/ev"\n[midi]\nmapping = "map.toml"\n'
            f'[state]\nfile = "{tmp_path}/state.json"\nsave_debounce_ms = 100\n[[channel]]\nname = "host"\n')
    cfgfile.write_text(text)

    def start():
        d = Daemon(load_config(cfgfile))
        t = threading.Thread(target=d.run, name="daemon", daemon=True)
        t.start()
        assert d.ready.wait(20), "daemon did not become ready"
        assert wait_until(lambda: d.midi is not None and _has_ports(srv.name, d.midi), 60, 0.05)
        return d, t

    def stop(d, t):
        d.request_stop()
        t.join(15)
        assert not t.is_alive()

    s = None
    d, t = start()
    try:
        s = Surface(srv.name, d.midi)  # patched by hand, both ways
        tx, rx = f"{s.name}-tx:out", f"{s.name}-rx:in"

        def patched(mc):
            return ([p.name for p in s.patch.get_all_connections(tx)] == [mc.jack_in_name]
                    and [p.name for p in s.patch.get_all_connections(rx)] == [mc.jack_out_name])

        assert wait_until(lambda: d.midi.jack_connections == [["in", tx], ["out", rx]], 5), d.midi.jack_connections
        first = d.midi
        cfgfile.write_text(text.replace('mapping = "map.toml"', 'mapping = "map2.toml"'))
        with Client(f"ipc://{tmp_path}/ctl", timeout=20) as c:
            c.call("reload")
        assert d.midi is not first and not first.started
        assert wait_until(lambda: patched(d.midi), 10), d.midi.status()["jack"]
        s.cc(1, 8, 127)
        assert wait_until(lambda: d.registry.get("host.strength") == 1.0, 10)
        assert wait_until(lambda: json.loads((tmp_path / "state.json").read_text()).get("midi_connections")
                          == [["in", tx], ["out", rx]], 10)
    finally:
        stop(d, t)
    d, t = start()
    try:
        assert wait_until(lambda: patched(d.midi), 10), d.midi.status()["jack"]
        s.cc(1, 8, 0)
        assert wait_until(lambda: d.registry.get("host.strength") == 0.0, 10)
    finally:
        if s is not None:
            s.close()
        stop(d, t)


# --------------------------------------------------------------------------
# NRPN


def test_nrpn_bindings_round_trip_and_every_problem_is_named():
    bs = [Binding("host.strength", "nrpn", 2, 1234),
          Binding("host.output_gain_db", "nrpn", 2, 16383, curve="db", cc14=True, step=0.05),
          Binding("guest.strength", "nrpn", 16, 0, takeover="jump"),
          Binding("guest.input_gain_db", "cc", 1, 6)]  # plain CC 6 on a channel without NRPN bindings
    text = midi.mapping_to_toml(bs)
    assert 'type = "nrpn"' in text and "number = 16383" in text and "step = 0.05" in text
    assert parse_mapping(text) == bs
    assert bs[0].describe_control() == "NRPN 1234 on channel 2"
    assert bs[1].describe_control() == "NRPN 16383 (14-bit) on channel 2"
    assert bs[0].control == ("nrpn", 1, 1234) and bs[0].steps == 127 and bs[1].steps == 16383
    bad = """
[[map]]
address = "host.strength"
type = "nrpn"
channel = 2
number_msb = 9
number_lsb = 82

[[map]]
address = "host.input_gain_db"
type = "nrpn"
number = 16384
mode = "relative"

[[map]]
address = "guest.strength"
type = "nrpn"
number = 5
step = 0

[[map]]
address = "guest.input_gain_db"
type = "nprn"
number = 5

[[map]]
address = "host.background_db"
number = 7
step = 0.1
"""
    expected = [
        ("[[map]] 1 (host.strength) number_msb", "number = MSB * 128 + LSB"),
        ("[[map]] 1 (host.strength) number_msb", "(here number = 1234)"),
        ("[[map]] 1 (host.strength) number_lsb", "(here number = 1234)"),
        ("[[map]] 1 (host.strength) number", "the NRPN parameter number 0..16383"),
        ("[[map]] 2 (host.input_gain_db) number", "not an integer 0..16383"),
        ("[[map]] 2 (host.input_gain_db) mode", "type = \"cc\" only, not 'nrpn'"),
        ("[[map]] 3 (guest.strength) step", "one Data Increment / Decrement"),
        ("[[map]] 4 (guest.input_gain_db) type", "cc, note, pitch_bend, nrpn (did you mean 'nrpn'?)"),
        ("[[map]] 5 (host.background_db) step", 'type = "nrpn"'),
    ]
    problems, text = _refused_naming(bad, expected)
    assert len(problems) == len(expected) - 1, text  # (number_msb's two checks are one problem)
    # one NRPN on one channel is 7- or 14-bit, not both
    mixed = _map(host__strength=dict(type="nrpn", channel=2, number=1234, cc14=True),
                 guest__strength=dict(type="nrpn", channel=2, number=1234))
    with pytest.raises(MidiMapError) as ei:
        parse_mapping(mixed)
    (p,) = ei.value.problems
    assert p.where == "[[map]] 2 (guest.strength) cc14"
    assert "NRPN 1234 on channel 2 is 7-bit here but 14-bit (cc14 = true) for 'host.strength'" in p.message
    # ... on other channels or numbers they are separate parameters; a gang of one kind is fine
    ok = _map(host__strength=dict(type="nrpn", channel=2, number=1234, cc14=True),
              guest__strength=dict(type="nrpn", channel=3, number=1234),
              host__input_gain_db=dict(type="nrpn", channel=2, number=1235),
              guest__input_gain_db=dict(type="nrpn", channel=2, number=1234, cc14=True))
    assert len(parse_mapping(ok)) == 4
    # CCs 6, 38, 96..101 on a channel with NRPN bindings are NRPN's
    clash = _map(host__strength=dict(type="nrpn", channel=2, number=1234),
                 guest__strength=dict(type="cc", channel=2, number=99),
                 host__input_gain_db=dict(type="cc", channel=2, number=6, cc14=True),
                 guest__input_gain_db=dict(type="cc", channel=2, number=7),  # not one of them
                 host__background_db=dict(type="cc", channel=3, number=99))  # another channel
    with pytest.raises(MidiMapError) as ei:
        parse_mapping(clash)
    ps = ei.value.problems
    assert [p.where for p in ps] == ["[[map]] 2 (guest.strength) number", "[[map]] 3 (host.input_gain_db) number"]
    assert "CC 99 on channel 2 belongs to NRPN: channel 2 has NRPN bindings (e.g. NRPN 1234 on channel 2 for " \
           "'host.strength')" in ps[0].message and "use another CC or channel" in ps[0].message
    assert ps[1].message.startswith("CC 6/38 (14-bit) on channel 2 belongs to NRPN")


def test_the_nrpn_selection_follows_cc_99_98_and_an_rpn_deselects_it():
    sel = midi._NrpnSelect()
    assert sel.number is None
    sel.update(99, 9)
    assert sel.number is None  # half a select
    sel.update(98, 82)
    assert sel.number == 1234
    sel.update(98, 83)  # the MSB stays
    assert sel.number == 1235
    sel.update(101, 0)  # an RPN (pitch bend range): not an NRPN any more
    sel.update(100, 0)
    assert sel.number is None and sel.active == "rpn"
    sel.update(99, 9)
    assert sel.number == 1235
    sel.update(101, 127)
    sel.update(100, 127)  # the null RPN: nothing selected
    assert sel.number is None and sel.active is None


def test_an_nrpn_increment_moves_one_data_step_or_its_step():
    from quietcast.bridge.params import Param

    p = Param("strength", "float", 0.5, 0.0, 1.0)
    for spec, want in ((Binding("x.strength", "nrpn", 1, 5), 1 / 127),
                       (Binding("x.strength", "nrpn", 1, 5, cc14=True), 1 / 16383),
                       (Binding("x.strength", "nrpn", 1, 5, step=0.1), 0.1)):
        b = midi._Bound(spec, None)
        b.param, b.curve = p, midi._curve_for(spec, p)
        assert b.rel_step == pytest.approx(want)
    n = Param("delay_samples", "int", 0, 0, 10)
    b = midi._Bound(Binding("x.delay_samples", "nrpn", 1, 5), None)
    b.param, b.curve = n, midi._curve_for(b.spec, n)
    assert b.relative_target(3, 1)[0] == 4  # an int: at least one whole number


def _expect_seq(s: Surface, seq: list[list[int]], timeout: float = 5.0) -> None:
    """``seq`` arrived on the surface, message after message."""
    def found():
        got, n = list(s.got), len(seq)
        return any(got[i:i + n] == seq for i in range(len(got) - n + 1))
    assert wait_until(found, timeout, 0.005), f"{seq} not received in a row; got {s.got[-12:]}"


def _linked(r: Rig) -> None:
    """Wait until the daemon has seen the surface linked to its output and
    sent it every value (the bridge looks every 0.25 s): a later resync
    would look like feedback to the control that moved."""
    port = f"{r.s.name}-rx:in"
    assert wait_until(lambda: port in r.mc.status()["jack"]["connections"]["out"], 10, 0.01)
    time.sleep(0.3)  # its "linked" line follows the "conn" line within the same look
    r.mc._call(lambda: None)  # the dispatcher has handled what the bridge queued before


@pytest.mark.jack
def test_nrpn_moves_parameters_with_7_and_14_bit_data(daemon, tmp_path):
    """A console's NRPN: CC 99/98 select the parameter, CC 6 (and CC 38
    for 14-bit) set it, with the binding's curve and soft takeover; the
    selection stays for the data that follows, an RPN select ends it. Plain
    CCs 6 and 99 on a channel without NRPN bindings stay plain CCs."""
    reg = daemon.registry
    reg.set("guest.strength", 0.5, source="test")
    mapping = _map(host__strength=dict(type="nrpn", channel=2, number=1234, takeover="jump"),
                   host__output_gain_db=dict(type="nrpn", channel=2, number=1235, cc14=True, takeover="jump"),
                   guest__strength=dict(type="nrpn", channel=2, number=300, cc14=True),  # soft takeover
                   host__input_gain_db=dict(type="cc", channel=1, number=6, takeover="jump"),
                   guest__input_gain_db=dict(type="cc", channel=1, number=99, takeover="jump"))
    with Rig(daemon, tmp_path, mapping) as r:
        s, mc = r.s, r.mc
        s.nrpn(2, 1234, 64)  # NRPN 1234 = 9 * 128 + 82
        r.value_becomes("host.strength", 64 / 127)
        s.nrpn(2, 1234, 127)
        r.value_becomes("host.strength", 1.0)
        s.nrpn(2, None, 0)  # data entry alone: the selected NRPN still
        r.value_becomes("host.strength", 0.0)
        # 14-bit on the db fader law
        fader = Curve("db", -96.0, 24.0, bottom_inf=True)
        s.nrpn(2, 1235, 127, 127)
        r.value_becomes("host.output_gain_db", 24.0)
        s.nrpn(2, 1235, 96, 0)
        r.value_becomes("host.output_gain_db", fader.value(96 * 128 / 16383))
        s.nrpn(2, None, None, 5)  # the LSB alone refines
        r.value_becomes("host.output_gain_db", fader.value((96 * 128 + 5) / 16383))
        assert reg.get("host.output_gain_db") != pytest.approx(fader.value(96 * 128 / 16383), abs=1e-9)
        s.nrpn(2, None, 100)  # a new MSB resets the LSB
        r.value_becomes("host.output_gain_db", fader.value(100 * 128 / 16383))
        # an NRPN not mapped, and data after an RPN select (or the null RPN) move nothing
        s.nrpn(2, 1234, 10)
        r.value_becomes("host.strength", 10 / 127)
        unmapped = mc.counters["unmapped"]
        s.nrpn(2, 1236, 90)
        s.send_many([[0xB1, 101, 0], [0xB1, 100, 0], [0xB1, 6, 90], [0xB1, 38, 0], [0xB1, 96, 127]])
        s.send_many([[0xB1, 101, 127], [0xB1, 100, 127], [0xB1, 6, 91]])
        s.flush()
        assert reg.get("host.strength") == pytest.approx(10 / 127)
        assert mc.counters["unmapped"] - unmapped == 5
        s.nrpn(2, 1234, 20)  # selected again
        r.value_becomes("host.strength", 20 / 127)
        # soft takeover: guest.strength is at 0.5 (8191.5 of 16383)
        ignored = mc.counters["ignored_pickup"]
        s.nrpn(2, 300, 10, 0)
        s.nrpn(2, None, 30, 0)
        s.flush()
        assert reg.get("guest.strength") == 0.5
        assert mc.counters["ignored_pickup"] - ignored == 4  # (each MSB and each LSB)
        s.nrpn(2, None, 70, 3)  # crossed it: picked up
        r.value_becomes("guest.strength", (70 * 128 + 3) / 16383)
        # channel 1 has no NRPN binding: its CCs 6 and 99 are plain CCs
        s.cc(1, 6, 127)
        r.value_becomes("host.input_gain_db", 24.0)
        s.cc(1, 99, 127)
        r.value_becomes("guest.input_gain_db", 24.0)
        s.cc(1, 6, 0)
        r.value_becomes("host.input_gain_db", -60.0)
        controls = {b["address"]: b["control"] for b in mc.bindings()}
        assert controls["host.strength"] == "NRPN 1234 on channel 2"
        assert controls["host.output_gain_db"] == "NRPN 1235 (14-bit) on channel 2"
        assert mc.counters["errors"] == 0


@pytest.mark.jack
def test_nrpn_increment_decrement_and_buttons(daemon, tmp_path):
    """Data Increment / Decrement (CC 96 / 97) move the selected NRPN one
    data step (or ``step``) from where it is, stopping at the ends, and the
    console gets the new value; a fader on it picks the value up again. An
    on/off NRPN is a button: data >= 64 presses it (a 14-bit one's LSB does
    not release it), increment turns it on, decrement off."""
    reg = daemon.registry
    reg.set("host.strength", 64 / 127, source="test")  # on the 7-bit grid
    reg.set("guest.strength", 0.5, source="test")
    for a in ("host.bypass", "host.mute"):
        reg.set(a, False, source="test")
    mapping = _map(host__strength=dict(type="nrpn", channel=3, number=10),
                   guest__strength=dict(type="nrpn", channel=3, number=11, cc14=True, step=0.1),
                   host__bypass=dict(type="nrpn", channel=3, number=20),
                   host__mute=dict(type="nrpn", channel=3, number=21, button="momentary", cc14=True))
    # what only the parameter tells: an on/off or a choice NRPN has no step
    with pytest.raises(MidiMapError) as ei:
        parse_mapping(_map(host__bypass=dict(type="nrpn", number=20, step=0.1)), registry=reg)
    assert [(p.where, "Data Increment (CC 96) turns it on" in p.message) for p in ei.value.problems] == [
        ("[[map]] 1 (host.bypass) step", True)]
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s, mc = r.s, r.mc
            _linked(r)
            s.nrpn(3, 10, step=1)
            r.value_becomes("host.strength", 65 / 127)
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 10], [0xB2, 6, 65]])  # the console follows
            s.nrpn(3, None, step=-2)
            r.value_becomes("host.strength", 63 / 127)
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 10], [0xB2, 6, 63]])
            # a fader on the data entry picks the stepped value up before it moves it
            ignored = mc.counters["ignored_pickup"]
            s.nrpn(3, 10, 100)
            s.flush()
            assert reg.get("host.strength") == pytest.approx(63 / 127)
            assert mc.counters["ignored_pickup"] == ignored + 1
            s.nrpn(3, 10, 62)  # within a step of 63
            r.value_becomes("host.strength", 62 / 127)
            # step = 0.1 of the travel, 14-bit feedback
            s.nrpn(3, 11, step=3)
            r.value_becomes("guest.strength", 0.8)
            raw = round(0.8 * 16383)
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 11], [0xB2, 6, raw >> 7], [0xB2, 38, raw & 0x7F]])
            s.nrpn(3, None, step=5)
            r.value_becomes("guest.strength", 1.0)  # the top
            s.nrpn(3, None, step=1)
            s.flush()
            assert reg.get("guest.strength") == 1.0
            # a toggle: presses (data >= 64) flip it, releases do nothing; its LED follows
            s.nrpn(3, 20, 127)
            r.value_becomes("host.bypass", True)
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 20], [0xB2, 6, 127]])
            s.nrpn(3, None, 0)
            s.flush()
            assert reg.get("host.bypass") is True
            s.nrpn(3, 20, 100)
            r.value_becomes("host.bypass", False)
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 20], [0xB2, 6, 0]])
            s.nrpn(3, 20, step=1)  # increment: on
            r.value_becomes("host.bypass", True)
            s.nrpn(3, None, step=-1)  # decrement: off
            r.value_becomes("host.bypass", False)
            # a 14-bit momentary button: held while the MSB says so, whatever the LSB
            s.nrpn(3, 21, 127, 0)
            r.value_becomes("host.mute", True)
            s.flush()
            time.sleep(0.1)
            assert reg.get("host.mute") is True
            s.nrpn(3, 21, 0, 0)
            r.value_becomes("host.mute", False)
            reg.set("host.mute", True, source="zmq")  # its LED: MSB 127, LSB 0
            _expect_seq(s, [[0xB2, 99, 0], [0xB2, 98, 21], [0xB2, 6, 127], [0xB2, 38, 0]])
            assert mc.counters["errors"] == 0
    finally:
        for a in ("host.bypass", "host.mute"):
            reg.set(a, False, source="test")


@pytest.mark.jack
def test_nrpn_feedback_sends_the_whole_sequence_and_its_echo_is_ignored(daemon, tmp_path):
    """A value changed elsewhere goes out as the whole NRPN (99, 98, 6,
    and 38 for 14-bit) so that a motor fader follows; the fader that moved
    it gets no echo. A surface (or soft thru) that sends the sequence back,
    here the daemon's MIDI out patched into its MIDI in, moves nothing: an
    exact value stays exact, a button stays, two controllers do not feed
    each other."""
    import jack

    reg = daemon.registry
    reg.set("host.bypass", False, source="test")
    mapping = _map(host__strength=dict(type="nrpn", channel=2, number=1234),
                   guest__output_gain_db=dict(type="nrpn", channel=2, number=1235, cc14=True),
                   host__bypass=dict(type="nrpn", channel=2, number=20))
    mapping += '[[map]]\naddress = "host.strength"\ntype = "cc"\nchannel = 1\nnumber = 7\n'  # a second controller
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s, mc = r.s, r.mc
            _linked(r)
            reg.set("host.strength", 0.25, source="zmq")
            _expect_seq(s, [[0xB1, 99, 9], [0xB1, 98, 82], [0xB1, 6, 32]])
            b = mc._by_address["guest.output_gain_db"][0]
            reg.set("guest.output_gain_db", -6.0, source="zmq")
            raw = b.raw_for(-6.0)
            _expect_seq(s, [[0xB1, 99, 9], [0xB1, 98, 83], [0xB1, 6, raw >> 7], [0xB1, 38, raw & 0x7F]])
            reg.set("host.bypass", True, source="zmq")
            _expect_seq(s, [[0xB1, 99, 0], [0xB1, 98, 20], [0xB1, 6, 127]])
            # no echo to the fader that made the change
            s.nrpn(2, 1234, 32)  # picks up at 0.25
            s.nrpn(2, 1234, 40)
            r.value_becomes("host.strength", 40 / 127)
            reg.set("host.bypass", False, source="zmq")  # a marker after it
            _expect_seq(s, [[0xB1, 99, 0], [0xB1, 98, 20], [0xB1, 6, 0]])
            assert [0xB1, 6, 40] not in s.got
            s.expect([0xB0, 7, 40])  # the other controller of host.strength follows
            loop = jack.Client("qcecho", servername=r.server, no_start_server=True)
            try:
                loop.connect(mc.jack_out_name, mc.jack_in_name)
                applied = mc.counters["applied"]
                for address, v in (("guest.output_gain_db", -6.5), ("host.strength", 0.5), ("host.bypass", True),
                                   ("host.bypass", False)):
                    echoes = mc.counters["echo_ignored"]
                    reg.set(address, v, source="zmq")
                    assert wait_until(lambda: mc.counters["echo_ignored"] > echoes, 5), mc.counters
                    time.sleep(0.3)
                    assert reg.get(address) == v
                assert mc.counters["applied"] == applied, "an echo was taken as a move or a press"
                s.nrpn(2, 1234, 64)  # the hand, at the value: it attaches and sets
                time.sleep(1.0)
                n = mc.counters["applied"] - applied
                assert 1 <= n <= 2, f"{n} sets from one move: the controllers feed each other"
                # a console that selects once and then sends data alone: the hand selects 1234 (B);
                # A (1235) changes from elsewhere and its sequence comes back; the hand's next data
                # still moves B (the echoed select took the selection over, and moved A)
                s.nrpn(2, 1234, 70)
                r.value_becomes("host.strength", 70 / 127)
                echoes = mc.counters["echo_ignored"]
                reg.set("guest.output_gain_db", -12.0, source="zmq")
                assert wait_until(lambda: mc.counters["echo_ignored"] > echoes, 5), mc.counters
                time.sleep(0.3)
                s.nrpn(2, None, 72)  # data alone
                r.value_becomes("host.strength", 72 / 127)
                assert reg.get("guest.output_gain_db") == -12.0
            finally:
                loop.close()
            assert mc.counters["errors"] == 0
    finally:
        reg.set("host.bypass", False, source="test")
        reg.set("guest.output_gain_db", 0.0, source="test")


@pytest.mark.jack
def test_learn_binds_an_nrpn_not_its_select_cc(daemon, tmp_path):
    """Learn with a console that sends NRPNs binds the NRPN (14-bit when
    CC 38 follows the data entry), not CC 99 as a plain CC (which bound
    the select: every NRPN of the console on that channel moved it). The
    data of an NRPN selected before learn was armed is learned as that
    NRPN; RPNs are passed over; a plain CC binding that the new NRPN
    channel takes over is removed, and the file stays loadable."""
    reg = daemon.registry
    reg.set("host.strength", 0.5, source="test")
    reg.set("host.bypass", False, source="test")
    mapping = _map(host__input_gain_db=dict(type="cc", channel=2, number=6))
    try:
        with Rig(daemon, tmp_path, mapping) as r:
            s, mc = r.s, r.mc
            lr = mc.learn("host.strength", timeout_s=20)
            s.nrpn(2, 1234, 64, 0)
            assert lr.wait(10) == Binding("host.strength", "nrpn", 2, 1234, curve="linear", cc14=True)
            assert "belong to NRPN now" in lr.status()["note"] and "CC 6 on channel 2" in lr.status()["note"]
            assert [b.address for b in load_mapping(r.path, reg)] == ["host.strength"]
            s.nrpn(2, 1234, 64, 0)  # at the value (8192 of 16383): picked up
            s.nrpn(2, None, 100, 1)
            r.value_becomes("host.strength", (100 * 128 + 1) / 16383)
            # 7-bit: no CC 38 follows
            lr = mc.learn("guest.strength", timeout_s=20)
            s.nrpn(3, 300, 10)
            assert lr.wait(10) == Binding("guest.strength", "nrpn", 3, 300, curve="linear")
            # a button: learned on its press, which does not toggle it
            lr = mc.learn("host.bypass", timeout_s=20)
            s.nrpn(3, 20, 127)
            assert lr.wait(10) == Binding("host.bypass", "nrpn", 3, 20, takeover="jump")
            s.flush()
            assert reg.get("host.bypass") is False
            s.nrpn(3, 20, 0)
            s.nrpn(3, 20, 127)
            r.value_becomes("host.bypass", True)
            # the data of an NRPN the console selected before learn was armed
            s.nrpn(4, 77)
            s.flush()
            lr = mc.learn("guest.input_gain_db", timeout_s=20)
            s.nrpn(4, None, 50)
            assert lr.wait(10) == Binding("guest.input_gain_db", "nrpn", 4, 77, curve="db")
            # RPNs (pitch bend range here) are passed over, their data too, until the null RPN
            lr = mc.learn("host.input_gain_db", timeout_s=20)
            s.send_many([[0xB4, 101, 0], [0xB4, 100, 0], [0xB4, 6, 2], [0xB4, 38, 0]])
            s.flush()
            assert lr.status()["state"] == "armed" and "RPN" in lr.status()["note"]
            s.send_many([[0xB4, 101, 127], [0xB4, 100, 127]])
            s.cc(5, 7, 10)
            assert lr.wait(10) == Binding("host.input_gain_db", "cc", 5, 7, curve="db")
            saved = {b.address: b.describe_control() for b in load_mapping(r.path, reg)}
            assert saved == {"host.strength": "NRPN 1234 (14-bit) on channel 2",
                             "guest.strength": "NRPN 300 on channel 3", "host.bypass": "NRPN 20 on channel 3",
                             "guest.input_gain_db": "NRPN 77 on channel 4", "host.input_gain_db": "CC 7 on channel 5"}
            assert mc.counters["errors"] == 0
    finally:
        reg.set("host.bypass", False, source="test")


def test_the_readme_nrpn_example_is_a_valid_mapping():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    block = readme.split("**NRPN.**", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    (b,) = parse_mapping("\n".join(line.strip() for line in block.splitlines()))
    assert (b.type, b.number, b.cc14, b.describe_control()) == ("nrpn", 1234, True, "NRPN 1234 (14-bit) on channel 2")
    assert 9 * 128 + 82 == 1234  # (the README's worked example)
