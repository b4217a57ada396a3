"""The real ``quietcast`` command, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import quietcast_exe
from pedalboard.io import AudioFile

EXE = quietcast_exe()


def qc(*args, cwd=None):
    cmd = [EXE] if EXE else [sys.executable, "-m", "quietcast.daemon"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_console_script_is_installed():
    assert EXE, "pip install should put the 'quietcast' console script on PATH"


@pytest.mark.parametrize("args", [[], ["process"], ["demo"], ["chain"], ["chain", "check"], ["chain", "show"],
                                  ["chain", "types"], ["models"], ["ctl"], ["ctl", "set"], ["ctl", "get"],
                                  ["ctl", "load-chain"], ["keys", "generate"]])
def test_help_on_every_level(args):
    r = qc(*args, "--help")
    assert r.returncode == 0 and "usage: quietcast" in r.stdout
    assert f"usage: quietcast {' '.join(args)}".rstrip() in r.stdout


def test_ctl_set_help_and_values_that_look_like_options(tmp_path, capsys):
    """`ctl set --help` printed "give ADDRESS VALUE pairs" (a `--` went in
    before --help); values such as -inf must still be values."""
    from quietcast.daemon.cli import main

    for argv in (["ctl", "set", "-h"], ["ctl", "--timeout", "1", "set", "-h", "x"], ["ctl", "--json", "set", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: quietcast ctl set ")
    daemon = _StandIn(tmp_path / "d" / "ctl")
    ep = f"ipc://{daemon.path}"
    try:
        for argv in (["ctl", "-e", ep, "--json", "set", "host.background_db", "-inf"],
                     ["ctl", "--time", "5", f"--endpoint={ep}", "--json", "set", "host.background_db", "-inf"],
                     ["ctl", f"-e{ep}", "--json", "set", "--", "host.background_db", "-inf"]):
            assert main(argv) == 0, argv
            res = json.loads(capsys.readouterr().out)
            assert res["args"] == {"address": "host.background_db", "value": "-inf"}, argv
        assert main(["ctl", "-e", ep, "--json", "set", "a.b", "-1.5", "c.d", "off"]) == 0
        assert json.loads(capsys.readouterr().out)["args"] == {"values": {"a.b": -1.5, "c.d": False}}
    finally:
        daemon.close()


def test_no_command_prints_help_and_fails():
    r = qc()
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    x = (np.random.default_rng(0).standard_normal((1, 48_000)) * 0.1).astype(np.float32)
    for name in ("one.wav", "two.wav"):
        with AudioFile(str(d / name), "w", 48_000, 1) as f:
            f.write(x)
    (d / "zz_corrupt.flac").write_bytes(b"fLaC" + os.urandom(3000))
    return d


def test_process_folder_with_corrupt_file(folder, tmp_path):
    out = tmp_path / "out"
    r = qc("process", "default", folder, "-o", out, "--jobs", 2, "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["failed"] == 1
    bad = [f for f in doc["files"] if not f["ok"]]
    assert bad[0]["src"].endswith("zz_corrupt.flac")
    assert "FAILED: " in r.stderr and "zz_corrupt.flac" in r.stderr
    assert sorted(os.listdir(out)) == ["one.wav", "two.wav"]
    assert "Traceback" not in r.stderr


def test_rerun_without_overwrite_refuses_and_keeps_outputs(folder, tmp_path):
    out = tmp_path / "out"
    assert qc("process", "dry", folder / "one.wav", "-o", out / "x.wav").returncode == 0
    before = (out / "x.wav").read_bytes()
    r = qc("process", "default", folder / "one.wav", "-o", out / "x.wav")
    assert r.returncode == 1 and "--overwrite" in r.stderr
    assert (out / "x.wav").read_bytes() == before
    assert qc("process", "default", folder / "one.wav", "-o", out / "x.wav", "--overwrite").returncode == 0
    assert (out / "x.wav").read_bytes() != before


@pytest.mark.parametrize("args,needle", [
    (["process", "nope.toml", "x.wav", "-o", "y.wav"], "cannot read chain file"),
    (["process", "default", "missing.wav", "-o", "y.wav"], "input not found: missing.wav"),
    (["process", "default", "in", "-o", "o", "--jobs", "0"], "--jobs 0 is out of range"),
    (["process", "defualt", "in", "-o", "o"], "did you mean 'default'"),
    (["chain", "types", "higpass"], "did you mean 'highpass'"),
])
def test_user_mistakes_are_one_clear_line(args, needle, folder, tmp_path):
    (tmp_path / "in").mkdir(exist_ok=True)
    r = qc(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.startswith("quietcast: error:")
    assert "Traceback" not in r.stderr


def test_chain_check_lists_all_problems(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[[stage]]\nname = "a"\ntype = "gian"\n[[stage]]\nname = "b"\ntype = "compressor"\nratio = 0\n')
    r = qc("chain", "check", f)
    assert r.returncode == 2
    assert "2 problems" in r.stderr and "did you mean 'gain'" in r.stderr and "ratio: value 0 is out of range" in r.stderr


def test_chain_show_reports_latency():
    r = qc("chain", "show", "default", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["latency_samples"] == sum(s["latency_samples"] for s in doc["stages"]) > 0
    assert doc["latency_ms"] == pytest.approx(1000 * doc["latency_samples"] / 48_000, abs=1e-3)


def test_models_lists_dsp():
    r = qc("models", "--json")
    names = {m["name"] for m in json.loads(r.stdout)}
    assert {"default", "dsp", "passthrough"} <= names


def test_models_state_the_weights_licence():
    """A user must see that the shipped neural weights are for
    non-commercial use (their noise data), in both forms of the listing."""
    rows = {m["name"]: m for m in json.loads(qc("models", "--json").stdout)}
    assert rows["neural"]["commercial_use"] is False
    assert "non-commercial" in rows["neural"]["licence_note"]
    assert rows["dsp"]["commercial_use"] is None  # no weights
    assert rows["neural-clean"]["commercial_use"] is True  # the licence-clean bundle
    assert rows["neural"]["copyleft"] == []  # no GPL training data in the shipped bundles
    text = qc("models").stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("neural "))
    assert "NON-COMMERCIAL only" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("neural-clean "))
    assert "commercial use allowed" in line


def test_models_state_their_default_strength():
    """engine.max_attenuation_db left out means the model's own default:
    `quietcast models` must say what that is."""
    from quietcast.models import create_suppressor

    rows = {m["name"]: m for m in json.loads(qc("models", "--json").stdout)}
    assert rows["dsp"]["default_strength_db"] == 15.0
    for name in ("neural", "neural-clean"):
        want = create_suppressor(name, 1).bundle.config["defaults"]["strength_db"]
        assert rows[name]["default_strength_db"] == want
        line = next(ln for ln in qc("models").stdout.splitlines() if ln.startswith(name + " "))
        assert f"strength {want:g} dB" in line
        pf = create_suppressor(name, 1).bundle.config["defaults"].get("pitch_filter", 0.0)
        assert rows[name]["default_pitch_filter"] == pf
        assert f"pitch filter {pf:g}" in line
        pg = create_suppressor(name, 1).bundle.config["defaults"].get("pause_db")
        assert rows[name]["default_pause_db"] == pg
        pt = create_suppressor(name, 1).bundle.config["defaults"].get("pause_threshold")
        assert rows[name]["default_pause_threshold"] == pt
        assert (f"pause gate {pg:g} dB below {pt:g}" in line) == bool(pg)
        assert ("pause gate off" in line) == (pg == 0)
    assert rows["dsp"]["default_pitch_filter"] is None and rows["dsp"]["default_pause_db"] is None
    assert rows["dsp"]["default_pause_threshold"] is None


def test_chain_show_lists_only_the_parameters_a_stage_has(tmp_path):
    """A denoise stage on the ``dsp`` model has no pitch filter or pause
    gate: ``chain show`` leaves them out (it listed them as None before
    session 24); on the neural model it shows their values."""
    for model, gate in (("dsp", False), ("neural", True)):
        path = tmp_path / f"{model}.toml"
        path.write_text(f'[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "{model}"\n')
        r = qc("chain", "show", str(path), "--json")
        assert r.returncode == 0, r.stderr
        params = json.loads(r.stdout)["stages"][0]["params"]
        assert params["model"] == model and params["strength"] == 1.0
        for g in ("pitch_filter", "pause_db", "pause_threshold"):
            assert (g in params) is gate, (model, g, params)
            if gate:
                assert isinstance(params[g], float)


def test_ctl_with_a_malformed_endpoint_is_a_usage_error():
    """One error line naming the endpoint, exit 2 (it was a zmq traceback, exit 1)."""
    r = qc("ctl", "-e", "bogus", "status")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["quietcast: error: ctl: --endpoint 'bogus': Invalid argument (addr='bogus')"]


# --------------------------------------------------------------------------
# ctl without -e: finding the daemon's control socket


class _StandIn:
    """A stand-in daemon: a ROUTER socket on ``ipc://PATH`` answering every
    request with ``{"answered_on": PATH, "cmd": CMD, "args": ARGS}``."""

    def __init__(self, path):
        import threading

        import zmq

        from quietcast.daemon import commands as proto

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = str(path)
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.bind(f"ipc://{path}")
        self._stop = threading.Event()

        def serve():
            while not self._stop.is_set():
                if self._sock.poll(50):
                    frames = self._sock.recv_multipart()
                    id_, cmd, args = proto.parse_request(frames[-1])
                    result = {"answered_on": self.path, "cmd": cmd, "args": args}
                    self._sock.send_multipart(frames[:-1] + [proto.dumps(proto.reply_ok(id_, result))])

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)


@pytest.fixture
def operator_shell(tmp_path, monkeypatch):
    """An operator's shell next to the system service: no RUNTIME_DIRECTORY,
    no QUIETCAST_ENDPOINT, an XDG_RUNTIME_DIR; /run/quietcast and /tmp
    stand-ins under tmp_path. Returns the three socket paths a client looks
    at, in order."""
    from quietcast.daemon import control

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("QUIETCAST_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    monkeypatch.setattr(control, "SERVICE_RUNTIME_DIR", str(tmp_path / "run" / "quietcast"))
    monkeypatch.setattr(control, "TMP_ROOT", str(tmp_path / "tmp"))
    return (tmp_path / "run" / "quietcast" / "control", tmp_path / "xdg" / "quietcast" / "control",
            tmp_path / "tmp" / f"quietcast-{os.getuid()}" / "control")


def test_ctl_finds_the_system_services_control_socket(operator_shell, capsys):
    """The service binds under /run/quietcast ($RUNTIME_DIRECTORY), the
    operator's shell has another XDG_RUNTIME_DIR or none: `ctl` finds the
    socket that exists, the service's first (it looked only in
    $XDG_RUNTIME_DIR/quietcast or /tmp/quietcast-UID, and timed out)."""
    from quietcast.daemon.cli import main

    service, user, tmp = operator_shell
    daemons = [_StandIn(tmp)]
    try:
        assert main(["ctl", "--timeout", "5", "--json", "version"]) == 0
        assert json.loads(capsys.readouterr().out)["answered_on"] == str(tmp)
        daemons.append(_StandIn(user))
        assert main(["ctl", "--timeout", "5", "--json", "version"]) == 0
        assert json.loads(capsys.readouterr().out)["answered_on"] == str(user)
        daemons.append(_StandIn(service))
        assert main(["ctl", "--timeout", "5", "--json", "version"]) == 0
        assert json.loads(capsys.readouterr().out)["answered_on"] == str(service)
    finally:
        for d in daemons:
            d.close()


def test_ctl_with_no_socket_anywhere_names_where_it_looked(operator_shell, capsys):
    from quietcast.daemon.cli import main

    assert main(["ctl", "--timeout", "0.3", "status"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("quietcast: error: timeout: no reply from ")
    for path in operator_shell:
        assert str(path) in err
    assert "-e/--endpoint" in err and "QUIETCAST_ENDPOINT" in err


def test_ctl_load_chain_sends_a_local_file_as_an_absolute_path(tmp_path, monkeypatch, capsys):
    """The daemon reads the chain file in its own working folder ("/" under
    systemd): `ctl load-chain guest voice.toml` must send the absolute path
    of the file next to the user (it sent "voice.toml"). Bundled names,
    "" and paths that do not exist here go as typed."""
    from quietcast.daemon.cli import main

    daemon = _StandIn(tmp_path / "d" / "ctl")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "voice.toml").write_text(POST_CHAIN)
    monkeypatch.chdir(tmp_path / "work")
    try:
        for typed, sent in (("voice.toml", str(tmp_path / "work" / "voice.toml")), ("default", "default"), ("", ""),
                            ("elsewhere/x.toml", "elsewhere/x.toml")):
            assert main(["ctl", "-e", f"ipc://{daemon.path}", "--json", "load-chain", "guest", typed]) == 0
            res = json.loads(capsys.readouterr().out)
            assert res["cmd"] == "load_chain" and res["args"] == {"channel": "guest", "chain": sent}
    finally:
        daemon.close()


POST_CHAIN = '[[stage]]\nname = "comp"\ntype = "compressor"\n'


def test_keys_generate_never_replaces_a_key_pair_without_force(tmp_path):
    """A second `keys generate` into the same folder replaced the pair with
    exit 0, locking out every client holding the old public key."""
    keys = tmp_path / "keys"
    r = qc("keys", "generate", "keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pub, sec = keys / "quietcast.key", keys / "quietcast.key_secret"
    assert f"public key: {pub}\n" in r.stdout and f"secret key: {sec}\n" in r.stdout  # absolute paths
    assert f"curve_secret_key = '{sec}'" in r.stdout
    assert oct(sec.stat().st_mode & 0o777) == "0o600"
    before = {pub: pub.read_bytes(), sec: sec.read_bytes()}
    for there in ((pub, sec), (sec,), (pub,)):  # either file alone is refused too
        for p in (pub, sec):
            p.write_bytes(before[p]) if p in there else p.unlink(missing_ok=True)
        r = qc("keys", "generate", "keys", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "--force" in r.stderr
        assert all(str(p) in r.stderr for p in there)
        assert {p: p.read_bytes() for p in there} == {p: before[p] for p in there}
        assert all(not p.exists() for p in (pub, sec) if p not in there)
    sec.write_bytes(before[sec])
    sec.chmod(0o644)  # an old secret key left readable, and a link where the public key was
    pub.unlink()
    (tmp_path / "elsewhere").write_text("not a key")
    pub.symlink_to(tmp_path / "elsewhere")
    r = qc("keys", "generate", keys, "--force")
    assert r.returncode == 0, r.stderr
    assert pub.read_bytes() != before[pub] and sec.exists() and not pub.is_symlink()
    assert (tmp_path / "elsewhere").read_text() == "not a key"  # the link was replaced, not followed
    assert oct(sec.stat().st_mode & 0o777) == "0o600"  # a new file: never readable by others
    r = qc("keys", "generate", keys, "--name", "other")  # another name beside it is fine
    assert r.returncode == 0 and (keys / "other.key").exists()
    (tmp_path / "afile").write_text("x")
    r = qc("keys", "generate", tmp_path / "afile")
    assert r.returncode == 2 and r.stderr.strip() == f"quietcast: error: keys generate: {tmp_path / 'afile'} exists and is not a folder"


def test_ctl_key_files_it_cannot_use_are_one_line_naming_the_file(tmp_path):
    """A missing --server-key, a public key given as --client-key, a file or
    folder that is no key: each a traceback before (OSError, TypeError from
    zmq), now one line naming the option, the file and what is wrong."""
    import zmq.auth

    pub, sec = zmq.auth.create_certificates(str(tmp_path), "k")
    (tmp_path / "noise.wav").write_bytes(b"RIFF" + os.urandom(100))
    ep = ["-e", f"ipc://{tmp_path}/nothing", "--timeout", "0.3"]
    for keys, want in (
        (["--server-key", tmp_path / "nope.key", "--client-key", sec], f"ctl --server-key {tmp_path / 'nope.key'}: no such file"),
        (["--server-key", pub, "--client-key", pub], f"ctl --client-key {pub}: is a public key"),
        (["--server-key", tmp_path / "noise.wav"], f"ctl --server-key {tmp_path / 'noise.wav'}: not a CURVE key file"),
        (["--server-key", pub, "--client-key", tmp_path], f"ctl --client-key {tmp_path}: is a folder"),
        (["--client-key", sec], "ctl: --client-key needs --server-key"),
    ):
        r = qc("ctl", *ep, *keys, "status")
        assert r.returncode == 2, (keys, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"quietcast: error: {want}"), (keys, r.stderr)
    r = qc("ctl", *ep, "--server-key", pub, "--client-key", sec, "status")  # usable keys: on to the request
    assert r.returncode == 3 and "no reply" in r.stderr


def test_demo_into_a_file_is_one_line(tmp_path):
    (tmp_path / "out.wav").write_bytes(b"x")
    r = qc("demo", "--offline", "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "quietcast: error: demo: -o out.wav is a file; give a folder (made if missing) for the demo's five files"]
    assert (tmp_path / "out.wav").read_bytes() == b"x"


def test_a_path_the_system_refuses_is_one_line_with_the_path_and_the_reason(tmp_path):
    """The last resort for OSError: the path and the reason, exit 1 (it was a traceback)."""
    (tmp_path / "afile").write_text("x")
    r = qc("keys", "generate", tmp_path / "afile" / "keys")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"quietcast: error: {tmp_path / 'afile' / 'keys'}: Not a directory"]


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of models/assets that `quietcast models` (run in this
    process) reads instead, to damage; the shipped bundles stay as they are."""
    import shutil

    from quietcast.models import bundle

    dst = tmp_path / "assets"
    shutil.copytree(bundle.ASSETS, dst)
    monkeypatch.setattr(bundle, "ASSETS", dst)
    return dst


def test_models_lists_every_model_when_a_bundle_is_broken(shipped_copy, capsys):
    """One broken bundle no longer stops the listing: its model is listed
    as unavailable, with the reason, and `default` says it is dsp and why."""
    from quietcast.daemon.cli import main

    w = shipped_copy / "default" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    cfg = json.loads((shipped_copy / "clean" / "config.json").read_text())
    cfg["arch"]["hidden"] += 1  # hand-edited: the weights no longer fit
    (shipped_copy / "clean" / "config.json").write_text(json.dumps(cfg))
    assert main(["models"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert set(lines) == {"default", "dsp", "neural", "neural-clean", "passthrough"}
    assert lines["default"].startswith(f"default       (= dsp: {w}: sha256 mismatch")
    assert "20.0 ms" in lines["default"] and "20.0 ms" in lines["dsp"]
    assert " ".join(lines["neural"].split()[:3]) == f"neural unavailable: {w}:"
    assert "sha256 mismatch" in lines["neural"]
    assert " ".join(lines["neural-clean"].split()[:3]) == f"neural-clean unavailable: {shipped_copy / 'clean'}:"
    assert "weights do not match the architecture of config.json (" in lines["neural-clean"]
    assert "gru1.weight_ih_l0" in lines["neural-clean"]
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["default"]["is"] == "dsp" and rows["default"]["fallback_reason"].startswith(f"{w}: sha256 mismatch")
    assert rows["default"]["unavailable"] is None and rows["default"]["latency_samples"] == 960
    assert rows["neural"]["unavailable"].startswith(f"{w}: sha256 mismatch")
    assert "weights do not match" in rows["neural-clean"]["unavailable"]
    assert rows["dsp"]["unavailable"] is None and rows["dsp"]["fallback_reason"] is None


def test_models_says_nothing_of_a_fallback_when_there_is_none():
    rows = {m["name"]: m for m in json.loads(qc("models", "--json").stdout)}
    assert rows["default"]["is"] == "neural" and rows["default"]["fallback_reason"] is None
    assert all(r["unavailable"] is None for r in rows.values())
