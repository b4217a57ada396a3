"""``quietcast demo``: run a chain over the bundled noisy speech clip and
report what it did, in figures a broadcast engineer can check by ear.

The clip (``daemon/assets/demo/``, built by ``bench/make_demo_clip.py``)
ships as two 48 kHz mono files of the same length: ``clean.flac`` (speech
with a 1 s silent lead-in) and ``noise.flac`` (a stationary noise bed). The
noisy input is made here, ``noisy = clean + noise``, so every SNR figure is
exact rather than estimated.

The offline core is split so the live (JACK) demo can reuse it with
whatever it recorded:

- :func:`load_clip` -> ``(clean, noise)``
- :func:`analyse` (clean, noisy, processed arrays, aligned) -> summary dict
- :func:`write_report` (arrays + summary) -> ``noisy.wav``, ``cleaned.wav``,
  ``clean_reference.wav``, ``spectrogram.png``, ``summary.json``
- :func:`format_summary` -> a small table for the terminal

Figures (all in dB; "in" = the noisy input, "out" = the chain's output):

- ``input_snr_db`` / ``output_snr_db``: 10 log10(clean energy / error
  energy), error = signal - clean, over the whole clip. Any level change of
  the voice (a compressor, a limiter) counts as error here.
- ``input_si_sdr_db`` / ``output_si_sdr_db``: scale-invariant SDR, the same
  with the clean reference scaled by the least-squares gain first, so a pure
  level change is not counted as error.
- ``noise_floor_in_dbfs`` / ``noise_floor_out_dbfs`` /
  ``noise_floor_reduction_db``: RMS over the noise-only lead-in
  (``noise_floor_window_s``: 0.25-1.0 s, skipping the suppressor's first
  noise-estimate convergence), noisy vs processed.
- ``pause_noise_reduction_db``: the same over the pauses between and after
  the utterances (noise-only stretches after the lead-in, at least 100 ms
  from any voice frame): whether the suppression holds once people talk.
- ``*_a`` variants (``noise_floor_reduction_db_a`` ...): the same figures
  A-weighted, closer to how loud the residual noise sounds (unweighted
  figures are dominated by low-frequency rumble).
- ``speech_level_change_db``: level of the voice itself in the output vs in
  the clean reference, over voice-active 20 ms frames: 20 log10 of the
  least-squares gain of the clean reference in the output. It is what the
  chain did to the voice (suppressor + dynamics), not to the noise; close to
  0 dB means the voice was left alone.
- ``peak_in_dbfs`` / ``peak_out_dbfs``, ``rms_in_dbfs`` / ``rms_out_dbfs``:
  sample peak and RMS over the whole clip.
- ``latency_ms``: the chain's declared, fixed latency (already removed from
  the output files, so the three files line up sample for sample).
- ``realtime_factor``: processing time / audio duration on this machine
  (0.05 = 20x faster than real time).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

SR = 48_000
LEAD_IN_S = 1.0          # noise-only lead-in of the bundled clip
LEAD_IN_SKIP_S = 0.25    # not measured: the suppressor's noise estimate converges
FRAME_S = 0.02           # frames for voice activity
VOICE_RANGE_DB = 30.0    # frames within this of the loud frames are voice-active

OUTPUT_FILES = ("noisy.wav", "cleaned.wav", "clean_reference.wav", "spectrogram.png", "summary.json")

__all__ = [
    "SR", "OUTPUT_FILES", "assets_dir", "load_clip", "voice_mask", "a_weighted", "analyse",
    "write_report", "plot_spectrograms", "format_summary", "run_demo",
]


# --------------------------------------------------------------------------
# the bundled clip


def assets_dir() -> str:
    """Folder holding ``clean.flac`` and ``noise.flac``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo")


def _read(path: str) -> np.ndarray:
    from pedalboard.io import AudioFile

    with AudioFile(path) as f:
        if int(round(f.samplerate)) != SR:
            raise ValueError(f"{path}: expected {SR} Hz, got {f.samplerate:g} Hz")
        x = f.read(f.frames)
    return np.asarray(x, np.float32).mean(axis=0)


def load_clip(folder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noise)``: float32 mono arrays at 48 kHz, same length."""
    folder = folder or assets_dir()
    clean = _read(os.path.join(folder, "clean.flac"))
    noise = _read(os.path.join(folder, "noise.flac"))
    if clean.shape != noise.shape:
        raise ValueError(f"demo clip: clean has {clean.size} samples, noise {noise.size}")
    return clean, noise


# --------------------------------------------------------------------------
# figures


def _db(power: float) -> float:
    return float(10 * np.log10(max(float(power), 1e-20)))


def _energy(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.dot(x, x))


def _rms_dbfs(x: np.ndarray) -> float:
    return _db(_energy(x) / max(len(x), 1))


def _peak_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(max(float(np.max(np.abs(x))) if len(x) else 0.0, 1e-10)))


def _si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    est = np.asarray(est, np.float64)
    ref = np.asarray(ref, np.float64)
    alpha = np.dot(est, ref) / max(np.dot(ref, ref), 1e-20)
    target = alpha * ref
    return _db(_energy(target)) - _db(_energy(est - target))


def a_weighted(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """``x`` through the IEC 61672 A-weighting curve (zero phase, FFT;
    0 dB at 1 kHz): level figures that follow loudness of the noise rather
    than its inaudible low-frequency energy."""
    x = np.asarray(x, np.float64)
    n = len(x)
    nfft = 1 << int(np.ceil(np.log2(max(2 * n, 2))))
    f2 = np.fft.rfftfreq(nfft, 1 / sr) ** 2
    ra = (12194.0**2 * f2**2) / (
        (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
    ra *= 10 ** (2.0 / 20)
    return np.fft.irfft(np.fft.rfft(x, nfft) * ra, nfft)[:n]


def voice_mask(clean: np.ndarray, sr: int = SR) -> np.ndarray:
    """Per-sample boolean: inside a 20 ms frame whose clean level is within
    30 dB of the loud frames (95th percentile)."""
    n = max(1, int(round(FRAME_S * sr)))
    m = len(clean) // n
    fr = np.asarray(clean[: m * n], np.float64).reshape(m, n)
    db = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-20)
    if m == 0 or not np.any(db > -100):
        return np.zeros(len(clean), bool)
    active = db > np.percentile(db, 95) - VOICE_RANGE_DB
    mask = np.zeros(len(clean), bool)
    mask[: m * n] = np.repeat(active, n)
    return mask


def analyse(
    clean: np.ndarray,
    noisy: np.ndarray,
    processed: np.ndarray,
    sr: int = SR,
    *,
    lead_in_s: float = LEAD_IN_S,
    lead_in_skip_s: float = LEAD_IN_SKIP_S,
    latency_samples: int | None = None,
    processing_s: float | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Summary figures for one run. ``processed`` must already be aligned
    with ``clean``/``noisy`` (latency removed); all three are mono arrays of
    the same length. ``lead_in_s`` is the noise-only start of the clip."""
    clean = np.asarray(clean, np.float64)
    noisy = np.asarray(noisy, np.float64)
    out = np.asarray(processed, np.float64)
    if not (clean.shape == noisy.shape == out.shape) or clean.ndim != 1:
        raise ValueError(f"clean, noisy, processed must be mono and the same length: {clean.shape}, {noisy.shape}, {out.shape}")
    n = len(clean)
    e_clean = _energy(clean)
    d: dict[str, Any] = {
        "sample_rate": int(sr),
        "duration_s": n / sr,
        "input_snr_db": _db(e_clean) - _db(_energy(noisy - clean)),
        "output_snr_db": _db(e_clean) - _db(_energy(out - clean)),
        "input_si_sdr_db": _si_sdr(noisy, clean),
        "output_si_sdr_db": _si_sdr(out, clean),
    }
    noisy_a, out_a = a_weighted(noisy, sr), a_weighted(out, sr)
    # noise floor on the lead-in (noise only)
    a, b = int(lead_in_skip_s * sr), int(lead_in_s * sr)
    if b - a >= int(0.1 * sr):
        d["noise_floor_window_s"] = [lead_in_skip_s, lead_in_s]
        d["noise_floor_in_dbfs"] = _rms_dbfs(noisy[a:b])
        d["noise_floor_out_dbfs"] = _rms_dbfs(out[a:b])
        d["noise_floor_reduction_db"] = d["noise_floor_in_dbfs"] - d["noise_floor_out_dbfs"]
        d["noise_floor_in_dbfs_a"] = _rms_dbfs(noisy_a[a:b])
        d["noise_floor_out_dbfs_a"] = _rms_dbfs(out_a[a:b])
        d["noise_floor_reduction_db_a"] = d["noise_floor_in_dbfs_a"] - d["noise_floor_out_dbfs_a"]
    # voice-active and pause regions (from the clean reference)
    voice = voice_mask(clean, sr)
    # pauses: noise-only after the lead-in, 100 ms away from any voice frame
    guard = int(0.1 * sr)
    cs = np.concatenate([[0], np.cumsum(voice, dtype=np.int64)])
    idx = np.arange(n)
    near = cs[np.minimum(idx + guard + 1, n)] - cs[np.maximum(idx - guard, 0)] > 0
    pause = ~near
    pause[: b] = False
    if pause.sum() >= int(0.1 * sr):
        d["pause_noise_in_dbfs"] = _rms_dbfs(noisy[pause])
        d["pause_noise_out_dbfs"] = _rms_dbfs(out[pause])
        d["pause_noise_reduction_db"] = d["pause_noise_in_dbfs"] - d["pause_noise_out_dbfs"]
        d["pause_noise_in_dbfs_a"] = _rms_dbfs(noisy_a[pause])
        d["pause_noise_out_dbfs_a"] = _rms_dbfs(out_a[pause])
        d["pause_noise_reduction_db_a"] = d["pause_noise_in_dbfs_a"] - d["pause_noise_out_dbfs_a"]
        d["pause_s"] = float(pause.sum() / sr)
    if voice.any():
        c, y, x = clean[voice], out[voice], noisy[voice]
        g = np.dot(y, c) / max(np.dot(c, c), 1e-20)
        d["speech_level_change_db"] = float(20 * np.log10(max(abs(g), 1e-10)))
        d["speech_rms_in_dbfs"] = _rms_dbfs(x)
        d["speech_rms_out_dbfs"] = _rms_dbfs(y)
        d["speech_s"] = float(voice.sum() / sr)
    d.update({
        "peak_in_dbfs": _peak_dbfs(noisy),
        "peak_out_dbfs": _peak_dbfs(out),
        "rms_in_dbfs": _rms_dbfs(noisy),
        "rms_out_dbfs": _rms_dbfs(out),
        "snr_improvement_db": d["output_snr_db"] - d["input_snr_db"],
        "si_sdr_improvement_db": d["output_si_sdr_db"] - d["input_si_sdr_db"],
    })
    if latency_samples is not None:
        d["latency_samples"] = int(latency_samples)
        d["latency_ms"] = 1000.0 * latency_samples / sr
    if processing_s is not None:
        d["processing_s"] = float(processing_s)
        d["realtime_factor"] = float(processing_s) / (n / sr)
    if extra:
        d.update(extra)
    return _rounded(d)


_FINE = ("processing_s", "realtime_factor")


def _rounded(v: Any, key: str = "") -> Any:
    if isinstance(v, float):
        return round(v, 4 if key in _FINE else 2)
    if isinstance(v, dict):
        return {k: _rounded(x, k) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def format_summary(d: dict) -> str:
    """A small table for the terminal."""

    def f(key: str, unit: str = "dB", fmt: str = "{:+.1f}") -> str:
        v = d.get(key)
        return "—" if v is None else (fmt.format(v) + (f" {unit}" if unit else ""))

    def less(key: str) -> str:
        return "—" if d.get(key) is None else f"{d[key]:.1f} dB less"

    rows = [
        ("", "input", "output", "change"),
        ("SNR (vs clean)", f("input_snr_db", fmt="{:.1f}"), f("output_snr_db", fmt="{:.1f}"), f("snr_improvement_db")),
        ("SI-SDR", f("input_si_sdr_db", fmt="{:.1f}"), f("output_si_sdr_db", fmt="{:.1f}"), f("si_sdr_improvement_db")),
        ("noise floor, lead-in", f("noise_floor_in_dbfs", "dBFS", "{:.1f}"), f("noise_floor_out_dbfs", "dBFS", "{:.1f}"),
         less("noise_floor_reduction_db")),
        ("  A-weighted", f("noise_floor_in_dbfs_a", "dBFS", "{:.1f}"), f("noise_floor_out_dbfs_a", "dBFS", "{:.1f}"),
         less("noise_floor_reduction_db_a")),
        ("noise in pauses", f("pause_noise_in_dbfs", "dBFS", "{:.1f}"), f("pause_noise_out_dbfs", "dBFS", "{:.1f}"),
         less("pause_noise_reduction_db")),
        ("  A-weighted", f("pause_noise_in_dbfs_a", "dBFS", "{:.1f}"), f("pause_noise_out_dbfs_a", "dBFS", "{:.1f}"),
         less("pause_noise_reduction_db_a")),
        ("speech RMS (voice frames)", f("speech_rms_in_dbfs", "dBFS", "{:.1f}"), f("speech_rms_out_dbfs", "dBFS", "{:.1f}"), ""),
        ("voice level (vs clean)", "", "", f("speech_level_change_db")),
        ("peak", f("peak_in_dbfs", "dBFS", "{:.1f}"), f("peak_out_dbfs", "dBFS", "{:.1f}"), ""),
        ("RMS", f("rms_in_dbfs", "dBFS", "{:.1f}"), f("rms_out_dbfs", "dBFS", "{:.1f}"), ""),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}".rstrip())
        if i == 0:
            lines.append("-" * (sum(w) + 6))
    tail = []
    if "latency_ms" in d:
        tail.append(f"latency {d['latency_ms']:.1f} ms ({d['latency_samples']} samples, removed from the files)")
    if "realtime_factor" in d:
        rtf = d["realtime_factor"]
        speed = f", {1 / rtf:.0f}x faster than real time" if rtf > 0 else ""
        tail.append(f"processing {d['processing_s']:.2f} s for {d['duration_s']:.1f} s of audio (real-time factor {rtf:.3f}{speed})")
    if "deadline_misses" in d:
        tail.append(f"live: {d.get('path', '')}; suppressor {d.get('suppressor', '?')}; "
                    f"{d['deadline_misses']} deadline misses, {d.get('xruns', 0)} xruns, "
                    f"engine hop p99 {d.get('hop_time_p99_ms', 0):.2f} ms, callback load p99 "
                    f"{100 * d.get('callback_load_p99', 0):.1f} % of a period")
        if d.get("xruns"):
            tail.append("warning: JACK reported xruns while the clip played (a busy machine?); a skipped cycle "
                        "shifts the recording, so the figures above understate the cleaning")
    head = []
    if d.get("chain"):
        head.append(f"chain {d['chain']}: {d.get('stages', '')}".rstrip(": "))
    return "\n".join(head + lines + tail)


# --------------------------------------------------------------------------
# files


def _stft_db(x: np.ndarray, sr: int, nfft: int = 2048, hop: int = 480) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrogram in dBFS (a full-scale sine reads 0 dB), Hann window."""
    x = np.asarray(x, np.float64)
    pad = np.concatenate([np.zeros(nfft // 2), x, np.zeros(nfft // 2)])
    frames = 1 + (len(pad) - nfft) // hop
    idx = np.arange(nfft)[None, :] + hop * np.arange(frames)[:, None]
    win = np.hanning(nfft)
    S = np.abs(np.fft.rfft(pad[idx] * win, axis=1)) ** 2
    S *= 4.0 / (np.sum(win) ** 2)  # full-scale sine -> 1 (0 dB) in its bin
    t = np.arange(frames) * hop / sr
    f = np.fft.rfftfreq(nfft, 1 / sr)
    return t, f, 10 * np.log10(S.T + 1e-14)


def plot_spectrograms(path: str, panels: list[tuple[str, np.ndarray]], sr: int = SR,
                      suptitle: str | None = None, lead_in_s: float | None = LEAD_IN_S) -> None:
    """Stacked spectrograms (time in s, frequency in kHz, dBFS colour)."""
    # the Agg canvas directly: no pyplot, no global backend switch, no display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    specs = [(title, *_stft_db(x, sr)) for title, x in panels]
    top = max(float(np.percentile(s[3], 99.9)) for s in specs)
    vmax = 10 * np.ceil(top / 10)
    vmin = vmax - 90
    fig = Figure(figsize=(10, 2.5 * len(specs) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    im = None
    for ax, (title, t, f, S) in zip(axes, specs):
        im = ax.imshow(S, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                       extent=(t[0], t[-1] + (t[1] - t[0] if len(t) > 1 else 0), f[0] / 1000, f[-1] / 1000),
                       interpolation="nearest")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("frequency (kHz)")
        if lead_in_s:
            ax.axvline(lead_in_s, color="white", lw=0.8, ls="--", alpha=0.7)
    axes[-1].set_xlabel("time (s)")
    if lead_in_s:
        axes[0].text(lead_in_s / 2, f[-1] / 1000 * 0.93, "noise only", color="white", fontsize=8,
                     ha="center", va="top")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.9, pad=0.01)
    cb.set_label("level (dBFS per bin)")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.savefig(path, dpi=100)


def _write_wav(path: str, x: np.ndarray, sr: int) -> None:
    from pedalboard.io import AudioFile

    y = np.ascontiguousarray(np.clip(np.asarray(x, np.float32), -1.0, 1.0)[None, :])
    with AudioFile(path, "w", sr, 1, bit_depth=24) as f:
        f.write(y)


def write_report(out_dir: str, clean: np.ndarray, noisy: np.ndarray, processed: np.ndarray,
                 summary: dict, sr: int = SR, overwrite: bool = True,
                 lead_in_s: float | None = LEAD_IN_S) -> dict[str, str]:
    """Write the audio (24-bit WAV, all three aligned), the spectrogram and
    ``summary.json`` into ``out_dir``; returns name -> path. With
    ``overwrite=False`` nothing is written if any of them exists."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    if not overwrite:
        there = [p for p in paths.values() if os.path.exists(p)]
        if there:
            raise FileExistsError(f"{', '.join(there)} already exist; pass overwrite=True (--overwrite) to replace them")
    _write_wav(paths["noisy.wav"], noisy, sr)
    _write_wav(paths["cleaned.wav"], processed, sr)
    _write_wav(paths["clean_reference.wav"], clean, sr)
    s = summary
    plot_spectrograms(
        paths["spectrogram.png"],
        [
            (f"noisy input — SNR {s['input_snr_db']:.1f} dB, SI-SDR {s['input_si_sdr_db']:.1f} dB", noisy),
            (f"cleaned — SNR {s['output_snr_db']:.1f} dB, SI-SDR {s['output_si_sdr_db']:.1f} dB, "
             f"noise floor {s.get('noise_floor_reduction_db', float('nan')):.1f} dB lower, "
             f"voice {s.get('speech_level_change_db', float('nan')):+.1f} dB", processed),
            ("clean reference", clean),
        ],
        sr,
        suptitle=f"quietcast demo — chain {s.get('chain', '?')}" + (f", latency {s['latency_ms']:.0f} ms" if "latency_ms" in s else ""),
        lead_in_s=lead_in_s,
    )
    doc = dict(summary)
    doc["files"] = {k: os.path.basename(v) for k, v in paths.items() if k != "summary.json"}
    with open(paths["summary.json"], "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    return paths


# --------------------------------------------------------------------------
# the demo


def run_demo(out_dir: str, chain=None, overwrite: bool = True) -> dict:
    """Run ``chain`` (a :class:`~quietcast.bridge.Chain`, a bundled chain
    name or a TOML path; default: the default chain) over the bundled clip,
    write the report into ``out_dir`` and return the summary."""
    from quietcast.bridge.chain import Chain

    if chain is None:
        chain = Chain.default()
    elif isinstance(chain, (str, os.PathLike)):
        chain = Chain.load(os.fspath(chain))
    if not overwrite:
        there = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, n))]
        if there:
            raise FileExistsError(f"{', '.join(os.path.join(out_dir, n) for n in there)} already exist; "
                                  "pass overwrite=True (--overwrite) to replace them")
    clean, noise = load_clip()
    noisy = (clean + noise).astype(np.float32)

    # One processor, built before the clock starts (what chain.process_array
    # does, without building it twice): the timing is of processing only.
    proc = chain.processor(SR, 1)
    t0 = time.perf_counter()
    processed = proc.process_aligned(noisy[None, :])[0]
    elapsed = time.perf_counter() - t0
    if proc.faults:
        name, why = next(iter(proc.faults.items()))
        raise RuntimeError(f"stage {name!r} failed during the demo: {why}")

    extra = {
        "chain": chain.name,
        "stages": ", ".join(f"{s.name}:{s.type}" + (f"({s.values['model']})" if "model" in s.values else "")
                            for s in chain.stages),
    }
    try:
        from quietcast.models import resolve_model

        models = sorted({resolve_model(s.values.get("model", "default")) for s in chain.stages if s.type == "denoise"})
        if models:
            extra["suppressor"] = ", ".join(models)
    except Exception:  # pragma: no cover - informational only
        pass
    summary = analyse(clean, noisy, processed, SR, latency_samples=proc.latency, processing_s=elapsed, extra=extra)
    write_report(out_dir, clean, noisy, processed, summary, SR, overwrite=True)
    return summary


# --------------------------------------------------------------------------
# the live path: the same clip through the real daemon in a JACK graph


def jackd_running(server: str | None = None) -> bool:
    """Whether a JACK server answers (never starts one, prints nothing)."""
    try:
        import jack
    except Exception:
        return False
    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    try:
        c = jack.Client("quietcast-probe", servername=server, no_start_server=True)
        c.close()
        return True
    except Exception:
        return False
    finally:
        jack.set_error_function()
        jack.set_info_function()


class PrivateJackd:
    """``jackd -d dummy`` under a unique name (realtime where allowed),
    stopped on exit."""

    def __init__(self, rate: int = SR, period: int = 256):
        import shutil

        self.exe = shutil.which("jackd")
        if not self.exe:
            raise FileNotFoundError("jackd is not installed (Debian: apt-get install jackd2)")
        self.name = f"quietcast-demo-{os.getpid()}"
        self.rate, self.period = rate, period
        self.proc = None

    def __enter__(self) -> "PrivateJackd":
        import subprocess

        env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
        from .jackclients import jackd_command

        def die_with_parent():
            import ctypes
            import signal

            try:  # PR_SET_PDEATHSIG: the private server never outlives the demo
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
            except OSError:
                pass

        self.proc = subprocess.Popen(jackd_command(self.exe, self.name, self.rate, self.period),
                                     preexec_fn=die_with_parent,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if jackd_running(self.name):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited with status {self.proc.returncode}")
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("jackd did not start within 10 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()


def run_live_demo(out_dir: str, server: str | None = None, model: str = "default",
                  period: int = 256, progress=None) -> dict:
    """Play the bundled noisy clip through the live daemon and record it.

    With ``server`` None: the default JACK server if one runs, else a
    private ``jackd -d dummy`` started (and stopped) here. The daemon runs
    one channel ``demo``; a player client feeds its input and a recorder
    client takes its output, so what is measured is the real JACK path,
    aligned by the latency the daemon declares."""
    import threading

    from . import jackio
    from .config import parse_config
    from .jackclients import Player, Recorder
    from .service import Daemon

    clean, noise = load_clip()
    noisy = (clean + noise).astype(np.float32)
    private = None
    if server is None and not jackd_running(None):
        private = PrivateJackd(SR, period).__enter__()
        server = private.name
    say = progress or (lambda msg: None)
    try:
        cfg = parse_config(f'[jack]\nclient_name = "quietcast-demo"\nserver = "{server or ""}"\n'
                           f'[engine]\nmodel = "{model}"\n[control]\nenabled = false\n[midi]\nenabled = false\n'
                           '[state]\nenabled = false\n[[channel]]\nname = "demo"\n')
        d = Daemon(cfg)
        th = threading.Thread(target=d.run, name="quietcast-daemon", daemon=True)
        th.start()
        try:
            if not d.ready.wait(20):
                raise RuntimeError("the daemon did not connect to JACK within 20 s")
            srv = server
            recorder = Recorder(srv, 1, seconds=noisy.size / SR + 5, name="quietcast-demo-recorder")
            player = Player(srv, 1, name="quietcast-demo-player", recorder=recorder)
            try:
                player.client.connect(player.name(), "quietcast-demo:demo_in")
                player.client.connect("quietcast-demo:demo_out", recorder.name())
                io = d.io
                say(f"playing {noisy.size / SR:.1f} s through the daemon on JACK server "
                    f"{srv or 'default'} ({io.sample_rate} Hz, period {io.period}, "
                    f"declared latency {1000.0 * io.latency / io.sample_rate:.1f} ms)")
                recorder.start()
                time.sleep(0.05)
                t0 = time.perf_counter()
                xruns0 = int(io.counters[jackio.XRUNS])
                start = player.play(noisy, timeout=noisy.size / SR + 30)
                time.sleep((io.latency + 4 * io.period) / io.sample_rate + 0.1)
                rec = recorder.stop()[0]
                wall = time.perf_counter() - t0
                st = d.status()
                st["xruns_during_play"] = st["xruns"] - xruns0
            finally:
                player.close()
                recorder.close()
        finally:
            d.request_stop()
            th.join(10)
    finally:
        if private is not None:
            private.__exit__()
    L = st["latency_frames"]
    begin = start + L
    processed = rec[begin:begin + noisy.size]
    if processed.size < noisy.size:
        processed = np.pad(processed, (0, noisy.size - processed.size))
    extra = {
        "chain": "live daemon",
        "path": f"JACK {'private dummy server' if private else 'server ' + (server or 'default')}, "
                f"{st['sample_rate']} Hz, period {st['period']}",
        "suppressor": st["model"],
        "deadline_misses": st["deadline_misses"],
        "xruns": st["xruns_during_play"],
        "hop_time_p99_ms": st["hop_time"]["p99_ms"],
        "callback_load_p99": st["callback_load_p99"],
    }
    extra["wall_s"] = round(wall, 2)
    summary = analyse(clean, noisy, processed, SR, latency_samples=L, extra=extra)
    write_report(out_dir, clean, noisy, processed, summary, SR, overwrite=True)
    return summary
