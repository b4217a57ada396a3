"""Offline speed and memory benchmark: quietcast against noisereduce and speexdsp-ns.

    python bench/offline.py                 # full: 60 s input, 2 h long file (~7 min on 2 cores)
    python bench/offline.py --quick         # ~1 min: 20 s input, 5 min long file
    python bench/offline.py --out /tmp/b.json --seconds 120 --long-seconds 3600

Prints two tables and writes them, with machine information, as JSON
(default ``bench/out/offline.json``, git-ignored).

1. Real-time factor (RTF = processing time / audio duration; lower is
   better) on ONE thread (OMP/MKL/OPENBLAS_NUM_THREADS=1 are set before
   numpy is imported; threadpoolctl limits too when it is installed), all in
   this process, side by side, on the same noisy speech:

   - quietcast ``dsp`` suppressor (``create_suppressor("dsp", 1)``) streamed
     in 480-sample hops (10 ms, as live) and in 65,536-sample blocks (as
     offline);
   - the default chain (``Chain.default()``: highpass, denoise, compressor,
     limiter), ``processor(48000, 1).process`` in 65,536-sample blocks (its
     denoise model "default" is resolved by quietcast.models and named in
     the output; ``--model dsp`` pins it);
   - noisereduce ``reduce_noise(y=..., sr=48000)``, non-stationary and
     stationary, on the whole array (noisereduce is offline only: it needs
     the whole signal; it chunks internally but takes and returns arrays);
   - speexdsp-ns (``NoiseSuppression.create(frame, rate).process(bytes)``,
     16-bit PCM frames) streamed in 10 ms frames at 48 kHz (480 samples;
     the library accepts any rate, its band layout is scaled to it) and at
     16 kHz (160 samples; its usual VoIP rate; the 48->16 kHz resampling
     is timed apart and not included in its RTF).

   Each row also gives ``gap dB``: output level minus input level in the
   speech pauses (after 3 s, 100 ms away from speech, latency removed), a
   sanity check that the method really suppresses at this setting.

2. Peak RSS on a long file. A ``--long-seconds`` (default 2 h) mono 48 kHz
   16-bit WAV is written to a temporary folder (deleted afterwards) and
   processed in a SUBPROCESS, a fresh interpreter that reports its own peak
   RSS (the kernel's ``VmHWM`` for its address space, read just before it
   exits; ``ru_maxrss`` is not used because on Linux it also counts the
   parent's RSS the child held between fork and exec):

   - ``quietcast.bridge.offline.process_file(Chain.default(), src, dst)``
     (streams in blocks; the requirement is a peak under 400 MB);
   - speexdsp-ns streaming the same file in 10 ms frames at 48 kHz, with the
     same reader and writer (pedalboard.io);
   - noisereduce must hold the whole signal, so it is measured on two
     shorter files (default 2 and 10 min) and its 2 h peak is EXTRAPOLATED
     linearly from them (labelled so). Then, by default, stationary=False
     is also measured on the long file itself when that estimate is under
     half the available memory (``--nr-long`` chooses: auto, off,
     nonstationary, stationary, both); a 2 h run takes ~7 GB and ~2 min.

Input: LJ Speech utterances (public domain) from ``--data`` (default
``../shared/data`` beside the repository), resampled to 48 kHz, with 0.5 s
pauses, plus a recorded noise bed (``noise/misc/noise1.flac`` by default,
16 kHz, looped with crossfades, plus a faint synthetic hiss above its 8 kHz
band edge) at 5 dB SNR (whole-clip energy ratio, as the demo clip). Without
the data folder a seeded synthetic voice-like signal in pink noise is used
instead (and the JSON says so). The long file repeats that input.
"""

from __future__ import annotations

import os

# one thread, before numpy (or anything that loads a BLAS/OpenMP) is imported
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fade, fmt_table, hiss, load_48k, machine_info, voice_rms_db  # noqa: E402
from common import short_error as _short  # noqa: E402

try:
    from threadpoolctl import threadpool_limits  # type: ignore

    _TPL = threadpool_limits(limits=1)
    THREADPOOLCTL = "applied (limits=1)"
except Exception as _e:  # not installed: the environment variables do it
    THREADPOOLCTL = f"not used ({type(_e).__name__})"

SR = 48_000
HOP = 480
BLOCK = 65_536
SEED = 20240611
LEAD_IN_S = 1.0
GAP_S = 0.5
SNR_DB = 5.0
VOICE_RMS_DBFS = -24.0
HISS_DB = -30.0
RSS_LIMIT_MB = 400.0
GAP_MARGIN_S = 0.1
GAP_SKIP_S = 3.0

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MB = 1e6


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# input signal


def loop_to(x: np.ndarray, n: int, xfade: int = 2400) -> np.ndarray:
    """Repeat ``x`` to ``n`` samples with equal-power crossfades at the seams."""
    x = x.astype(np.float64)
    if len(x) >= n:
        return x[:n]
    xfade = min(xfade, len(x) // 4)
    t = np.linspace(0, np.pi / 2, xfade)
    fin, fout = np.sin(t), np.cos(t)
    out = x.copy()
    while len(out) < n:
        seam = out[-xfade:] * fout + x[:xfade] * fin
        out = np.concatenate([out[:-xfade], seam, x[xfade:]])
    return out[:n]


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    W = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    W /= np.sqrt(np.maximum(f, 20.0))
    return np.fft.irfft(W, n)


def synthetic_voice(n_s: float, rng: np.random.Generator) -> np.ndarray:
    """A voice-like utterance: harmonics of a gliding f0 with 1/k tilt and
    syllable envelopes (only for when the real data is absent)."""
    n = int(n_s * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    ph = 2 * np.pi * np.cumsum(f0) / SR
    y = sum(np.sin(k * ph) / k for k in range(1, 40))
    env = np.zeros(n)
    pos = 0
    while pos < n:
        L = int(rng.uniform(0.12, 0.3) * SR)
        seg = np.hanning(L)[: max(0, min(L, n - pos))]
        env[pos:pos + len(seg)] = seg
        pos += L + int(rng.uniform(0.0, 0.08) * SR)
    return (y * env).astype(np.float32)


def build_input(data: str | None, seconds: float, noise_name: str, snr_db: float) -> dict:
    """Noisy speech of exactly ``seconds`` at 48 kHz and the pauses in it."""
    rng = np.random.default_rng(SEED)
    n = int(round(seconds * SR))
    speech_dir = os.path.join(data, "speech", "ljspeech") if data else ""
    noise_path = os.path.join(data, "noise", "misc", noise_name) if data else ""
    clips = sorted(glob.glob(os.path.join(speech_dir, "*.flac"))) if data else []
    real = bool(clips) and os.path.isfile(noise_path)
    info: dict = {}
    parts = [np.zeros(int(LEAD_IN_S * SR), np.float32)]
    spans = []  # (start, end) of speech
    pos = len(parts[0])
    used = []
    i = 0
    while pos < n:
        if real:
            v, src_sr = load_48k(clips[i % len(clips)])
            used.append(os.path.basename(clips[i % len(clips)]))
        else:
            v = synthetic_voice(rng.uniform(1.5, 4.0), rng)
        v = fade(v)
        parts.append(v)
        spans.append((pos, pos + len(v)))
        pos += len(v)
        g = int(GAP_S * SR)
        parts.append(np.zeros(g, np.float32))
        pos += g
        i += 1
    clean = np.concatenate(parts)[:n].astype(np.float64)
    clean *= 10 ** ((VOICE_RMS_DBFS - voice_rms_db(clean.astype(np.float32))) / 20)
    if real:
        bed, noise_sr = load_48k(noise_path)
        bed = bed.astype(np.float64) - float(np.mean(bed))
        bed_s = len(bed) / SR
        bed = loop_to(bed, n)
        h = hiss(n, rng)
        h *= np.sqrt(np.mean(bed**2) / np.mean(h**2)) * 10 ** (HISS_DB / 20)
        noise = bed + h
        info.update(source="shared data", speech=f"LJ Speech, {len(used)} utterances ({used[0]} .. {used[-1]}), "
                    f"{src_sr / 1000:g} kHz resampled to 48 kHz",
                    noise=f"noise/misc/{noise_name} ({noise_sr / 1000:g} kHz, {bed_s:.0f} s, looped with "
                          f"crossfades) + synthetic hiss above 8 kHz at {HISS_DB:g} dB")
    else:
        noise = pink(n, rng)
        why = "no --data folder" if not data else f"{speech_dir} or {noise_path} missing"
        info.update(source=f"synthetic ({why})", speech="harmonic voice-like bursts, seeded",
                    noise="pink noise, seeded")
    noise *= np.minimum(1.0, np.arange(n) / (0.02 * SR))
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    mix = clean + noise
    peak = float(np.max(np.abs(mix)))
    if peak > 0.9:
        mix *= 0.9 / peak
    # 16-bit steps, so the long WAV file holds exactly these values
    mix = (np.round(np.clip(mix, -1, 32767 / 32768) * 32768) / 32768).astype(np.float32)
    # pauses (noise only) at least GAP_MARGIN_S away from speech, after GAP_SKIP_S
    m = int(GAP_MARGIN_S * SR)
    bounds = [0] + [p for s in spans for p in s] + [n]
    gaps = []
    for a, b in zip(bounds[0::2], bounds[1::2]):
        a, b = max(a + m, int(GAP_SKIP_S * SR)), min(b - m, n)
        if b - a > 0.05 * SR:
            gaps.append((a, b))
    info.update(seconds=n / SR, sample_rate=SR, snr_db=round(float(10 * np.log10(np.sum(clean**2) / np.sum(noise**2))), 2),
                peak_dbfs=round(20 * np.log10(float(np.max(np.abs(mix)))), 2),
                pauses_scored_s=round(sum(b - a for a, b in gaps) / SR, 2))
    return {"x": mix, "gaps": gaps, "info": info}


def gap_db(x: np.ndarray, y: np.ndarray, gaps, latency: int = 0, decim: int = 1) -> float | None:
    """Output minus input level (dB) over the pauses; ``y`` is ``x`` delayed
    by ``latency`` samples at the rate of ``x`` (48 kHz / ``decim``)."""
    ein = eout = 0.0
    for a, b in gaps:
        a, b = a // decim, b // decim
        if b + latency > len(y):
            b = len(y) - latency
        if b <= a:
            continue
        ein += float(np.sum(x[a:b].astype(np.float64) ** 2))
        eout += float(np.sum(y[a + latency:b + latency].astype(np.float64) ** 2))
    if ein <= 0 or eout <= 0:
        return None
    return round(10 * np.log10(eout / ein), 1)


# --------------------------------------------------------------------------
# in-process RTF rows


def timed(fn, repeat: int):
    """Best of ``repeat`` runs of ``fn()`` (least CPU time); returns
    (result, wall seconds, cpu seconds) of that run."""
    best = None
    for _ in range(max(1, repeat)):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or cpu < best[2]:
            best = (out, wall, cpu)
    return best


def run_dsp(x: np.ndarray, block: int):
    from quietcast.models import create_suppressor

    s = create_suppressor("dsp", 1)
    xx = x[None, :]
    n = xx.shape[1]
    warm = create_suppressor("dsp", 1)
    warm.process(xx[:, : min(n, 2 * SR)])

    def go():
        s.reset()
        out = np.empty_like(xx)
        for i in range(0, n, block):
            out[:, i:i + block] = s.process(xx[:, i:i + block])
        return out[0]

    return go, s.latency


def make_chain(model: str = "default"):
    """``Chain.default()``; with ``model`` other than "default", the same
    chain with its denoise stage(s) set to that model. Returns the chain and
    a description naming the model the denoise stage really runs."""
    from quietcast.bridge import Chain
    from quietcast.models import resolve_model

    chain = Chain.default()
    if model != "default":
        doc = chain.to_dict()
        for st in doc["stage"]:
            if st["type"] == "denoise":
                st["model"] = model
        chain = Chain.from_dict(doc, source=f"default chain, model={model}")
    models = [f"{s.values.get('model', 'default')}->{resolve_model(s.values.get('model', 'default'))}"
              for s in chain.stages if s.type == "denoise"]
    return chain, f"{chain!r}, denoise model {', '.join(models)}"


def run_chain(x: np.ndarray, block: int, model: str):
    chain, desc = make_chain(model)
    proc = chain.processor(SR, 1)
    xx = x[None, :]
    n = xx.shape[1]
    chain.processor(SR, 1).process(xx[:, : min(n, 2 * SR)])  # warm-up, a throwaway processor

    def go():
        proc.reset()
        out = np.empty_like(xx)
        for i in range(0, n, block):
            y = proc.process(xx[:, i:i + block])
            out[:, i:i + y.shape[1]] = y
        return out[0]

    return go, proc.latency, desc


def speex_stream(ns, x: np.ndarray, frame: int) -> np.ndarray:
    """float32 -> int16 frames -> NoiseSuppression.process -> float32."""
    xi = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    m = len(xi) // frame
    buf = xi[: m * frame].tobytes()
    step = 2 * frame
    proc = ns.process
    out = b"".join([proc(buf[i:i + step]) for i in range(0, len(buf), step)])
    return np.frombuffer(out, np.int16).astype(np.float32) / 32768


def run_speex(x: np.ndarray, rate: int):
    from speexdsp_ns import NoiseSuppression

    frame = rate // 100
    speex_stream(NoiseSuppression.create(frame, rate), x[: 2 * rate], frame)  # warm-up

    def go():
        ns = NoiseSuppression.create(frame, rate)  # fresh state every run
        return speex_stream(ns, x, frame)

    return go, frame


def rtf_rows(sig: dict, repeat: int, model: str) -> list[dict]:
    x, gaps = sig["x"], sig["gaps"]
    dur = len(x) / SR
    rows: list[dict] = []

    def add(key, method, mode, rate, fn, ref=None, note="", decim=1, xin=None):
        row = {"key": key, "method": method, "mode": mode, "rate_hz": rate, "audio_s": round(dur, 3), "ref": ref, "note": note}
        try:
            go, lat = fn()
            log(f"RTF: {method}, {mode} ...")
            y, wall, cpu = timed(go, repeat)
            row.update(status="ok", wall_s=round(wall, 4), cpu_s=round(cpu, 4), rtf=wall / dur, rtf_cpu=cpu / dur,
                       cpu_per_wall=round(cpu / wall, 3) if wall else None, latency_samples=lat,
                       gap_db=gap_db(x if xin is None else xin, y, gaps, lat, decim))
        except Exception as e:
            row.update(status=f"{'failed' if method.startswith('quietcast') else 'unavailable'}: {_short(e)}")
            log(f"  {method} {mode}: {row['status']}")
        rows.append(row)
        return row

    add("dsp_hop", "quietcast-dsp", f"stream, {HOP}-sample hops (10 ms)", SR,
        lambda: run_dsp(x, HOP), note="create_suppressor('dsp', 1).process per hop")
    add("dsp_block", "quietcast-dsp", f"blocks of {BLOCK}", SR, lambda: run_dsp(x, BLOCK))
    chain_desc = {}

    def chain_fn():
        go, lat, desc = run_chain(x, BLOCK, model)
        chain_desc["repr"] = desc
        return go, lat

    r = add("chain_block", "quietcast default chain", f"blocks of {BLOCK}", SR, chain_fn, ref="dsp_block")
    r["note"] = f"{chain_desc.get('repr', 'Chain.default()')}; processor(48000, 1).process"

    # speexdsp-ns: streaming, 10 ms frames of int16 PCM
    add("speex_48k", "speexdsp-ns", "stream, 480-sample frames (10 ms)", SR,
        lambda: run_speex(x, SR), ref="dsp_hop", note="int16 PCM; float<->int16 conversion included")
    x16 = None
    resample_note = ""
    try:
        from scipy.signal import resample_poly

        x16, w16, _ = timed(lambda: resample_poly(x.astype(np.float64), 1, 3).astype(np.float32), 1)
        resample_note = f"48->16 kHz resampling (scipy resample_poly) not included: RTF {w16 / dur:.4f} more"
    except Exception as e:
        resample_note = f"needs scipy to resample: {_short(e)}"

    def speex16():
        if x16 is None:
            raise RuntimeError(resample_note)
        go, frame = run_speex(x16, 16_000)
        return go, 0

    add("speex_16k", "speexdsp-ns", "stream, 160-sample frames (10 ms)", 16_000, speex16,
        ref="dsp_hop", note=resample_note, decim=3, xin=x16)

    # noisereduce: offline only, whole array (imported last: it imports torch)
    nr_state: dict = {}

    def nr_fn(stationary: bool):
        def make():
            if "mod" not in nr_state:
                t0 = time.perf_counter()
                import noisereduce  # noqa: F401

                nr_state["mod"] = noisereduce
                nr_state["import_s"] = time.perf_counter() - t0
                try:
                    import torch

                    torch.set_num_threads(1)
                except Exception:
                    pass
            nr = nr_state["mod"]
            t0 = time.perf_counter()
            nr.reduce_noise(y=x[: 2 * SR], sr=SR, stationary=stationary)  # warm-up
            nr_state[f"first_{stationary}"] = time.perf_counter() - t0
            return (lambda: nr.reduce_noise(y=x, sr=SR, stationary=stationary)), 0
        return make

    note = "offline only: takes and returns the whole array (chunk_size 600000 internally)"
    add("nr_nonstat", "noisereduce", "whole array, stationary=False", SR, nr_fn(False), ref="dsp_block", note=note)
    add("nr_stat", "noisereduce", "whole array, stationary=True", SR, nr_fn(True), ref="dsp_block", note=note)

    by_key = {r["key"]: r for r in rows}
    for r in rows:
        ref = by_key.get(r["ref"]) if r["ref"] else None
        if r.get("status") == "ok" and ref and ref.get("status") == "ok":
            q = r["rtf_cpu"] / ref["rtf_cpu"]  # one thread: CPU time is immune to other load
            r["ratio_vs_ref"] = round(q, 3)
            r["ratio_vs_ref_wall"] = round(r["rtf"] / ref["rtf"], 3)
            label = f"{ref['method']} ({'hops' if ref['key'] == 'dsp_hop' else 'blocks'})"
            r["vs_ref"] = f"{q:.1f}x slower than {label}" if q >= 1 else f"{1 / q:.1f}x faster than {label}"
        elif r.get("status") == "ok" and r["key"].startswith("dsp"):
            r["vs_ref"] = "reference"
        for k in ("rtf", "rtf_cpu"):
            if r.get(k) is not None:
                r[k] = round(r[k], 5)
    if "import_s" in nr_state:
        for r in rows:
            if r["key"].startswith("nr_"):
                st = r["key"] == "nr_stat"
                r["note"] += (f"; not included: import (with torch) {nr_state['import_s']:.1f} s, "
                              f"first call on 2 s {nr_state.get(f'first_{st}', 0):.2f} s")
    return rows


# --------------------------------------------------------------------------
# long file, subprocesses


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h")


def write_wav(path: str, x: np.ndarray, seconds: float) -> int:
    """Write ``seconds`` of ``x`` repeated as 16-bit mono 48 kHz WAV,
    streaming (``x`` holds exact 16-bit values)."""
    xi = np.round(x * 32768).astype("<i2").tobytes()
    total = int(round(seconds * SR))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        left = total
        while left > 0:
            take = min(left, len(x))
            w.writeframes(xi[: 2 * take])
            left -= take
    return os.path.getsize(path)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_now_kb() -> int | None:
    return _proc_status_kb("VmRSS")


def _peak_rss_kb() -> tuple[int, str]:
    """This process's peak RSS since exec. VmHWM belongs to the address
    space made at exec; ru_maxrss would also count what the parent's forked
    copy held before exec (the parent's own RSS), so it is only a fallback."""
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (may include the parent's RSS at fork)"


def child_main(spec: dict) -> int:
    """Run one job in this (child) process and print one JSON line."""
    out: dict = {"kind": spec["kind"]}
    cpu0 = time.process_time()
    try:
        if spec["kind"] == "chain":
            from quietcast.bridge.offline import process_file

            chain, desc = make_chain(spec.get("model", "default"))
            out["baseline_kb"] = _rss_now_kb()
            cpu0 = time.process_time()  # the work only, not the imports
            res = process_file(chain, spec["src"], spec["dst"], overwrite=True)
            if not res.ok:
                raise RuntimeError(res.error)
            out.update(audio_s=res.seconds, proc_s=res.elapsed, warnings=res.warnings, chain=desc)
        elif spec["kind"] == "speex":
            from pedalboard.io import AudioFile
            from speexdsp_ns import NoiseSuppression

            out["baseline_kb"] = _rss_now_kb()
            cpu0 = time.process_time()  # the work only, not the imports
            t0 = time.monotonic()
            frame = SR // 100
            ns = NoiseSuppression.create(frame, SR)
            done = 0
            rest = np.zeros(0, np.int16)
            with AudioFile(spec["src"]) as f, AudioFile(spec["dst"], "w", f.samplerate, 1, bit_depth=16) as o:
                while True:
                    x = f.read(BLOCK)
                    if x.shape[1] == 0:
                        break
                    done += x.shape[1]
                    xi = np.concatenate([rest, np.clip(np.round(x[0] * 32768), -32768, 32767).astype(np.int16)])
                    m = len(xi) // frame * frame
                    rest = xi[m:]
                    buf = xi[:m].tobytes()
                    y = b"".join([ns.process(buf[i:i + 2 * frame]) for i in range(0, len(buf), 2 * frame)])
                    o.write((np.frombuffer(y, np.int16).astype(np.float32) / 32768)[None, :])
            out.update(audio_s=done / SR, proc_s=time.monotonic() - t0)
        elif spec["kind"] == "noisereduce":
            from pedalboard.io import AudioFile
            import noisereduce as nr

            out["baseline_kb"] = _rss_now_kb()
            cpu0 = time.process_time()  # the work only, not the imports
            t0 = time.monotonic()
            with AudioFile(spec["src"]) as f:
                x = f.read(f.frames)[0]
            t1 = time.monotonic()
            y = nr.reduce_noise(y=x, sr=SR, stationary=bool(spec["stationary"]))
            t2 = time.monotonic()
            with AudioFile(spec["dst"], "w", SR, 1, bit_depth=16) as o:
                o.write(np.asarray(y, np.float32)[None, :])
            out.update(audio_s=len(x) / SR, proc_s=time.monotonic() - t0, reduce_s=t2 - t1)
        else:
            raise ValueError(f"unknown child kind {spec['kind']!r}")
        out["ok"] = True
    except Exception as e:
        out.update(ok=False, error=_short(e))
    out["torch_loaded"] = "torch" in sys.modules
    out["cpu_s"] = round(time.process_time() - cpu0, 2)
    out["peak_kb"], out["peak_source"] = _peak_rss_kb()
    print(json.dumps(out), flush=True)
    return 0


def run_child(spec: dict, tmp: str) -> dict:
    """Run ``spec`` in a fresh interpreter, which reports its own peak RSS
    (VmHWM) just before it exits."""
    so, se = os.path.join(tmp, "child.out"), os.path.join(tmp, "child.err")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    with open(so, "w") as fo, open(se, "w") as fe:
        p = subprocess.run(cmd, stdout=fo, stderr=fe, env=dict(os.environ), cwd=REPO)
    wall = time.perf_counter() - t0
    with open(so) as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
    with open(se) as f:
        err = f.read().strip()
    res = json.loads(lines[-1]) if lines else {"ok": False, "error": f"exit {p.returncode}: {err[-300:]}"}
    if res.get("peak_kb"):
        res["peak_rss_mb"] = round(res.pop("peak_kb") * 1024 / MB, 1)
    elif res.get("ok", True):
        res.update(ok=False, error="the child did not report its peak RSS")
    res["child_wall_s"] = round(wall, 2)
    if res.get("baseline_kb"):
        res["after_imports_mb"] = round(res.pop("baseline_kb") * 1024 / MB, 1)
    if res.get("proc_s") and res.get("audio_s"):
        res["rtf"] = round(res["proc_s"] / res["audio_s"], 5)
        if res.get("cpu_s"):
            res["rtf_cpu"] = round(res["cpu_s"] / res["audio_s"], 5)
    for k in ("proc_s", "reduce_s"):
        if k in res:
            res[k] = round(res[k], 2)
    return res


def long_file(sig: dict, long_s: float, nr_lengths: list[float], nr_long: str, tmpdir: str | None,
              model: str = "default") -> dict:
    x = sig["x"]
    tmp = tempfile.mkdtemp(prefix="qc-bench-", dir=tmpdir)
    out: dict = {"seconds": long_s, "format": "WAV 16-bit mono 48 kHz (repeats the RTF input)",
                 "limit_mb": RSS_LIMIT_MB, "runs": []}
    runs = out["runs"]
    try:
        src = os.path.join(tmp, "long.wav")
        dst = os.path.join(tmp, "long-out.wav")
        log(f"writing the {long_s / 3600:.2f} h long file in {tmp} ...")
        t0 = time.perf_counter()
        out["bytes"] = write_wav(src, x, long_s)
        out["write_s"] = round(time.perf_counter() - t0, 1)

        def one(label, spec, audio_s, how="measured"):
            log(f"peak RSS: {label} on {audio_s / 60:.1f} min ...")
            r = run_child(spec, tmp)
            r.update(method=label, how=how, audio_s=r.get("audio_s", audio_s))
            if r.get("ok") is False:
                r["status"] = f"{'failed' if spec['kind'] == 'chain' else 'unavailable'}: {r.get('error')}"
            else:
                r["status"] = "ok"
            for p in (spec.get("dst"),):
                if p and os.path.exists(p):
                    os.unlink(p)
            runs.append(r)
            return r

        r = one("quietcast default chain, process_file (streams)", {"kind": "chain", "src": src, "dst": dst, "model": model}, long_s)
        if r["status"] == "ok":
            r["within_limit"] = r["peak_rss_mb"] < RSS_LIMIT_MB
            out["quietcast_within_limit"] = r["within_limit"]
        one("speexdsp-ns 48 kHz, 10 ms frames (streams)", {"kind": "speex", "src": src, "dst": dst}, long_s)

        for stationary in (False, True):
            label = f"noisereduce stationary={stationary} (whole array)"
            pts = []
            for L in nr_lengths:
                if L >= long_s:
                    continue
                p = os.path.join(tmp, f"nr-{int(L)}.wav")
                write_wav(p, x, L)
                r = one(label, {"kind": "noisereduce", "src": p, "dst": p + ".out.wav", "stationary": stationary}, L)
                os.unlink(p)
                if r["status"] == "ok":
                    pts.append((r["audio_s"], r["peak_rss_mb"], r.get("rtf"), r.get("rtf_cpu")))
            est = None
            if len(pts) >= 2:
                (s1, m1, *_), (s2, m2, *_) = pts[0], pts[-1]
                slope = (m2 - m1) / (s2 - s1)
                est = m2 + slope * (long_s - s2)
                rtfs = [p[2] for p in pts if p[2]]
                cpus = [p[3] for p in pts if p[3]]
                runs.append({"method": label, "how": f"EXTRAPOLATED (linear from {_dur(s1)} and {_dur(s2)})",
                             "status": "ok", "audio_s": long_s, "peak_rss_mb": round(est, 1),
                             "mb_per_audio_min": round(slope * 60, 2),
                             "rtf": rtfs[-1] if rtfs else None, "rtf_cpu": cpus[-1] if cpus else None,
                             "proc_s": round(rtfs[-1] * long_s, 1) if rtfs else None,
                             "extrapolated": True})
            elif pts:
                runs.append({"method": label, "how": "not extrapolated (needs two measured lengths)",
                             "status": "skipped", "audio_s": long_s})
            want = nr_long in ("both", "stationary" if stationary else "nonstationary")
            if nr_long == "auto" and not stationary:
                # measure the default mode on the long file itself when it surely fits in memory
                avail = _mem_available_mb()
                want = est is not None and avail is not None and est < 0.5 * avail
                out["nr_long_auto"] = (f"estimate {est:.0f} MB vs {avail:.0f} MB available: "
                                       f"{'measured' if want else 'not measured (over half the available memory)'}"
                                       if est is not None and avail is not None else "no estimate: not measured")
            if want:
                one(label, {"kind": "noisereduce", "src": src, "dst": dst, "stationary": stationary}, long_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------
# report


def report(res: dict) -> str:
    m = res["machine"]
    inp = res["input"]
    out = [f"quietcast offline benchmark  {res['date']}",
           f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), python {m['python']}, "
           f"numpy {m['versions']['numpy']}, pedalboard {m['versions']['pedalboard']}, "
           f"noisereduce {m['versions']['noisereduce']}, speexdsp-ns {m['versions']['speexdsp-ns']}",
           f"threads: OMP/MKL/OPENBLAS=1, threadpoolctl {m['threads']['threadpoolctl']}",
           f"input: {inp['seconds']:g} s, 48 kHz mono, {inp['source']}; SNR {inp['snr_db']} dB",
           f"  speech: {inp['speech']}", f"  noise: {inp['noise']}", ""]
    out.append(f"Real-time factor, one thread (RTF = processing time / {inp['seconds']:g} s of audio; lower is better)")
    rows = []
    for r in res["rtf"]:
        rate = f"{r['rate_hz'] / 1000:g} kHz"
        if r.get("status") != "ok":
            rows.append([r["method"], r["mode"], rate, "-", "-", "", "", r.get("status", "?")])
            continue
        g = "" if r.get("gap_db") is None else f"{r['gap_db']:+.1f}"
        rows.append([r["method"], r["mode"], rate, f"{r['rtf']:.4f}", f"{r['rtf_cpu']:.4f}", f"{r['cpu_per_wall']:.2f}",
                     g, r.get("vs_ref", "")])
    out.append(fmt_table(["method", "mode", "rate", "RTF wall", "RTF cpu", "cpu/wall", "gap dB", "vs quietcast-dsp (cpu)"], rows))
    out.append("  RTF wall: wall-clock time / audio time; RTF cpu: this process's CPU time / audio time. With one thread\n"
               "  they agree on an idle machine (cpu/wall ~ 1.00); the ratios use CPU time so other load does not skew them")
    busy = [r for r in res["rtf"] if r.get("status") == "ok" and r["cpu_per_wall"] < 0.9]
    if busy:
        out.append(f"  NOTE: {len(busy)} row(s) got less than 90 % of a CPU (other processes were running): "
                   "their wall-clock RTF is inflated")
    for r in res["rtf"]:
        if r.get("note"):
            out.append(f"  {r['method']} / {r['mode']}: {r['note']}")
    out.append("  gap dB: output minus input level in the speech pauses; a sanity check that the method is active at\n"
               "  these settings (more negative = more removed there), NOT a quality score: it ignores speech damage")
    lf = res.get("long_file")
    if lf:
        out += ["", f"Peak RSS on a long file ({lf['seconds'] / 3600:.2f} h, {lf['format']}, "
                f"{lf.get('bytes', 0) / MB:.0f} MB), each in its own subprocess (peak = VmHWM)"]
        rows = []
        for r in lf["runs"]:
            dur = _dur(r["audio_s"])
            if r.get("status") != "ok":
                rows.append([r["method"], dur, r.get("status", "?"), "-", "", "", "", ""])
                continue
            rows.append([r["method"], dur, r.get("how", ""), f"{r['peak_rss_mb']:.0f}",
                         "" if r.get("after_imports_mb") is None else f"{r['after_imports_mb']:.0f}",
                         "" if r.get("proc_s") is None else f"{r['proc_s']:.1f}",
                         "" if r.get("rtf") is None else f"{r['rtf']:.4f}",
                         "" if r.get("rtf_cpu") is None else f"{r['rtf_cpu']:.4f}"])
        out.append(fmt_table(["method", "audio", "how", "peak RSS MB", "after imports MB", "proc s", "RTF wall", "RTF cpu"], rows))
        if "quietcast_within_limit" in lf:
            q = next(r for r in lf["runs"] if r["method"].startswith("quietcast"))
            out.append(f"  quietcast peak RSS {q['peak_rss_mb']:.0f} MB on {q['audio_s'] / 3600:.2f} h: "
                       f"{'PASS' if lf['quietcast_within_limit'] else 'FAIL'} (limit {RSS_LIMIT_MB:.0f} MB)"
                       f"{'; torch was imported' if q.get('torch_loaded') else ''}")
            if q.get("chain"):
                out.append(f"  quietcast chain: {q['chain']}")
        out.append("  proc s / RTF: read + process + write inside the child, imports excluded (noisereduce: whole-file\n"
                   "  read and write included; the RTF of an extrapolated row is that of the longest measured length)\n"
                   "  after imports MB: RSS once the child's imports are done (noisereduce imports torch)")
        if lf.get("nr_long_auto"):
            out.append(f"  noisereduce stationary=False on the long file itself: {lf['nr_long_auto']}")
        out.append(f"  long file written in {lf.get('write_s', 0):.1f} s and deleted afterwards")
    out.append("")
    out.append(f"total benchmark time {res['total_s']:.0f} s; JSON: {res['out']}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None, help="length of the RTF input (default 60, --quick 20)")
    ap.add_argument("--long-seconds", type=float, default=None,
                    help="length of the long file (default 7200 = 2 h, --quick 300; 0 skips it)")
    ap.add_argument("--nr-lengths", default=None,
                    help="comma-separated seconds noisereduce's peak RSS is measured at (default 120,600; --quick 20,60)")
    ap.add_argument("--nr-long", choices=("auto", "off", "nonstationary", "stationary", "both"), default="auto",
                    help="also measure noisereduce on the long file itself (GBs of RAM for 2 h); auto (default): "
                         "stationary=False when its extrapolated peak is under half the available memory")
    ap.add_argument("--data", default=os.path.normpath(os.path.join(REPO, "..", "shared", "data")),
                    help="shared data folder (default ../shared/data beside the repo); synthetic input if absent")
    ap.add_argument("--noise", default="noise1.flac", help="noise bed in DATA/noise/misc (default noise1.flac)")
    ap.add_argument("--model", default="default",
                    help="denoise model of the chain rows (default: the default chain as shipped, whose 'default' "
                         "model is resolved by quietcast.models; e.g. --model dsp pins the DSP suppressor)")
    ap.add_argument("--snr-db", type=float, default=SNR_DB)
    ap.add_argument("--repeat", type=int, default=None, help="best of N timed runs per RTF row (default 3, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="about a minute in all")
    ap.add_argument("--tmpdir", default=None, help="where the long file is written (default the system temp dir)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "offline.json"), help="JSON output path")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child_main(json.loads(a.child))

    t_start = time.perf_counter()
    repeat = a.repeat if a.repeat is not None else (2 if a.quick else 3)
    seconds = a.seconds if a.seconds is not None else (20.0 if a.quick else 60.0)
    long_s = a.long_seconds if a.long_seconds is not None else (300.0 if a.quick else 7200.0)
    nr_lengths = sorted(float(v) for v in (a.nr_lengths or ("20,60" if a.quick else "120,600")).split(",") if v.strip())
    if seconds < 5:
        ap.error("--seconds must be at least 5")
    data = a.data or None
    log(f"building {seconds:g} s of input ({'from ' + data if data and os.path.isdir(data) else 'synthetic'}) ...")
    sig = build_input(data, seconds, a.noise, a.snr_db)
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    machine = machine_info(("numpy", "pedalboard", "scipy", "noisereduce", "speexdsp-ns", "torch", "quietcast"),
                           extra={"threads": threads | {"threadpoolctl": THREADPOOLCTL}})
    res: dict = {"benchmark": "quietcast bench/offline.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "bench/offline.py"] + sys.argv[1:]),
                 "config": {"seconds": seconds, "long_seconds": long_s, "nr_lengths": nr_lengths, "nr_long": a.nr_long,
                            "repeat": repeat, "chain_model": a.model, "quick": a.quick, "hop": HOP, "block": BLOCK},
                 "machine": machine, "input": sig["info"]}
    res["rtf"] = rtf_rows(sig, repeat, a.model)
    if long_s > 0:
        res["long_file"] = long_file(sig, long_s, nr_lengths, a.nr_long, a.tmpdir, a.model)
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    res["out"] = a.out
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
