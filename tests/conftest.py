"""Shared fixtures. Tests mirror the package tree (bridge/, daemon/, models/).

The real VST3 test plugin (tests/plugins/qcgain, built with Debian's
dpf-source) is built once per session into a temporary folder. Where the
toolchain is missing the plugin tests are skipped on a developer machine,
but fail under CI (CI=true), which installs it: a skipped test is not a
passed one. Under CI every skip but a ``gpu`` test's (CI has no GPU)
becomes a failure naming its reason (``pytest_runtest_makereport``), so
a missing install step cannot hide behind a green run.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from plugins.build import ToolchainMissing, build_qcgain  # noqa: E402
from signals import harmonic_bursts  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")


def quietcast_exe() -> str:
    """The ``quietcast`` console script of the Python running the tests
    (the project's .venv under .ci/run), never another install on PATH."""
    import shutil

    here = pathlib.Path(sys.executable).parent / "quietcast"
    return str(here) if here.exists() else (shutil.which("quietcast") or "quietcast")


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test sends SIGINT (Ctrl-C): its
    SIGINT back to the default action, so Python in it raises
    KeyboardInterrupt. A test run started in the background by a
    non-interactive shell (``pytest ... &``) has SIGINT ignored, and a
    child inherits that: it would never see the Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped test fails, naming why it would have skipped;
    only tests marked ``gpu`` may skip there (no CI machine has CUDA)."""
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI skips no test but a gpu one; this one would skip: {reason}"


@pytest.fixture(autouse=True, scope="session")
def _private_dirs(tmp_path_factory):
    """Daemons started by tests keep their state files and control sockets
    in this session's temporary folders, never in the user's."""
    state = tmp_path_factory.mktemp("state")
    run = tmp_path_factory.mktemp("run")
    old = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "RUNTIME_DIRECTORY", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = str(state)
    os.environ["RUNTIME_DIRECTORY"] = str(run)
    os.environ.pop("STATE_DIRECTORY", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _build(tmp_path_factory, channels: int, lookahead: bool = False) -> pathlib.Path:
    try:
        return build_qcgain(tmp_path_factory.mktemp(f"qcgain{channels}{'la' if lookahead else ''}"),
                            channels=channels, lookahead=lookahead)
    except ToolchainMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the plugin toolchain: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def qcgain_vst3(tmp_path_factory) -> pathlib.Path:
    """Path of our stereo test plugin 'QC Test Gain' (.vst3 bundle):
    parameters gain_db [-60, 24], delay_samples [0, 4800] (declared as
    latency), fault (0/1: outputs NaN)."""
    return _build(tmp_path_factory, 2)


@pytest.fixture(scope="session")
def qcgain_mono_vst3(tmp_path_factory) -> pathlib.Path:
    return _build(tmp_path_factory, 1)


@pytest.fixture(scope="session")
def qcgain_la_vst3(tmp_path_factory) -> pathlib.Path:
    """Path of 'QC Test Lookahead' (stereo .vst3 bundle): QC Test Gain with
    one more, continuous, parameter lookahead_ms [0, 50] that adds
    round(lookahead_ms * rate / 1000) samples to its delay and latency."""
    return _build(tmp_path_factory, 2, lookahead=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def noisy_speechlike(rng):
    """3 s of a speech-like signal (gated harmonic bursts at 110-170 Hz) in
    pink-ish noise, 48 kHz: ``(mix[1, frames], speech, noise)``."""
    return harmonic_bursts(140.0, rng)


# --------------------------------------------------------------------------
# a private JACK server (jackd --no-realtime -d dummy), unique per session


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (even by
    SIGKILL), so no private jackd outlives its session."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class JackServer:
    """A private ``jackd -d dummy`` with a unique name (realtime where the
    machine allows it, like a production jackd; else --no-realtime);
    ``restart()`` kills and starts it again (same name, same settings)."""

    def __init__(self, name: str, rate: int = 48_000, period: int = 256):
        self.name, self.rate, self.period = name, rate, period
        self.proc = None
        self.log = pathlib.Path(f"/tmp/{name}.log")

    def start(self, timeout: float = 10.0) -> "JackServer":
        import shutil
        import subprocess
        import time

        jackd = shutil.which("jackd")
        if not jackd:
            if os.environ.get("CI"):
                pytest.fail("CI must install jackd2 (jackd not on PATH)")
            pytest.skip("jackd not installed (apt-get install jackd2)")
        env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
        from quietcast.daemon.jackclients import jackd_command

        self.proc = subprocess.Popen(
            jackd_command(jackd, self.name, self.rate, self.period),
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        import jack

        while time.monotonic() < deadline:
            try:
                c = jack.Client("probe", servername=self.name, no_start_server=True)
                c.close()
                return self
            except jack.JackError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jackd exited: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)
        raise RuntimeError(f"jackd {self.name} did not start in {timeout} s")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM (jackd cleans up after itself), or SIGKILL with
        ``crash=True`` to look like a crash."""
        import signal
        import subprocess

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> "JackServer":
        self.stop()
        return self.start()


def _clean_stale_jack_shm() -> None:
    """A jackd killed with SIGKILL leaves its entry in JACK's shared-memory
    registry, and JACK2 refuses to start a ninth server ("Too many servers
    already active"). When no jackd runs at all, the registry is stale:
    remove it."""
    import glob
    import subprocess

    if subprocess.run(["pgrep", "-x", "jackd"], capture_output=True).returncode == 0:
        return
    for f in glob.glob("/dev/shm/jack*"):
        try:
            os.unlink(f)
        except OSError:
            pass


@pytest.fixture(scope="session")
def jack_servers():
    """Factory: ``jack_servers(period=256, rate=48000)`` -> a running
    private server, shared by the session for the same settings."""
    import uuid

    _clean_stale_jack_shm()
    made: dict = {}
    tag = uuid.uuid4().hex[:6]

    def get(period: int = 256, rate: int = 48_000) -> JackServer:
        key = (period, rate)
        srv = made.pop(key, None)
        if srv is None or srv.proc is None or srv.proc.poll() is not None:
            # JACK2 allows few servers at once: keep the two most recent
            while len(made) >= 2:
                made.pop(next(iter(made))).stop()
            srv = JackServer(f"qct{os.getpid()}{tag}p{period}r{rate}", rate, period).start()
        made[key] = srv  # most recently used last
        return srv

    yield get
    for srv in made.values():
        srv.stop()


@pytest.fixture
def jack_server(jack_servers):
    return jack_servers(256)


def longest_quiet(y, below: float = 1e-4) -> int:
    """The most frames in a row of ``y`` below ``below`` (a dropout in a
    steady tone; its zero crossings give 1 or 2)."""
    import numpy as np

    edges = np.flatnonzero(np.diff(np.concatenate([[0], (np.abs(y) < below).astype(np.int8), [0]])))
    return int((edges[1::2] - edges[::2]).max(initial=0))
