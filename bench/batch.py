"""Batch throughput: one process, ``--jobs 2`` and local Ray, in audio hours
per wall-clock hour; the per-file (per-task) overhead; splitting a long
file; and, with ``--exactness``, what the split-and-stitch relies on.

    python bench/batch.py                 # ~4 min on 2 cores
    python bench/batch.py --quick         # ~1.5 min
    python bench/batch.py --exactness     # + per-stage measurements (~6 min more)
    python bench/batch.py --cpus 4 --files 16 --seconds 120 --out /tmp/batch.json

Prints tables and writes them, with machine information and the load
average seen, as JSON (default ``bench/out/batch.json``, git-ignored).
Needs the ``cluster`` extra for the Ray rows (``pip install
'quietcast[cluster]'``); without it those rows say so.

1. Throughput. ``--files`` files of ``--seconds`` each (48 kHz stereo
   16-bit WAV; an edited programme cut from the demo clip's real speech
   and room noise, with short runs of digital silence) through the
   default chain, by ``process_files(workers=1)``, ``process_files(
   workers=2)`` (the ``--jobs 2`` path: spawned worker processes) and
   ``process_files_ray`` on a local Ray instance with ``--cpus`` CPUs (the
   ``--ray`` path; files not split). Ray's start-up is timed apart and
   not included; the pool's worker start-up is included (it is paid on
   every run). With a neural default chain, one more row runs the single
   process with torch limited to one thread (workers get one thread
   each already): on a busy 2-core machine torch's own intra-op threads
   made the one-process path up to ~9x slower.
2. Per-file overhead. ``--tiny`` files of 0.25 s through the ``dry`` chain
   (no processing: what is left is reading, writing, scheduling and
   result gathering): wall time per file for each path.
3. One long file (``--long-seconds``, default 10 min): Ray with the file
   split (``--split-seconds``) against Ray with ``split_seconds=0`` (one
   task), and a check that both outputs are the same bytes. A neural
   chain is never split, so this uses the default chain with its
   suppressor pinned to ``dsp`` when the default is neural.
4. ``--exactness``: for each stage type, the shortest run of digital
   silence after which its state is exactly that of a fresh one (output
   compared bit for bit afterwards), and how long after a silent gap of a
   programme a cold start's output becomes identical to the single
   pass's for good; the same for the default chain over more gaps (the
   merge time that the warm-up and the seam check rely on).

The figures are only as good as the machine is quiet: the load average
before and after is printed and stored. On a shared machine (a model
training next door) they are pessimistic.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

SR = 48_000


def _demo(name: str) -> np.ndarray:
    import quietcast.daemon
    from pedalboard.io import AudioFile

    path = os.path.join(os.path.dirname(os.path.abspath(quietcast.daemon.__file__)), "assets", "demo", name)
    with AudioFile(path) as f:
        return f.read(f.frames)[0]


def programme(seconds: float, channels: int = 2, seed: int = 0, gaps: bool = True) -> np.ndarray:
    """Items of 4-10 s of the demo clip's speech over its room noise, each
    at its own levels, with 0.3-2 s of digital silence between most."""
    rng = np.random.default_rng(seed)
    clean, noise = _demo("clean.flac"), _demo("noise.flac")
    n_total = int(seconds * SR)
    parts, n = [], 0
    while n < n_total:
        k = int(rng.uniform(4, 10) * SR)
        sp = np.resize(np.roll(clean, -int(rng.integers(clean.size))), k)
        nz = np.resize(np.roll(noise, -int(rng.integers(noise.size))), k)
        parts.append((sp * rng.uniform(0.5, 2.0) + nz * rng.uniform(0.2, 1.5)).astype(np.float32))
        n += k
        if gaps and rng.random() < 0.6:
            z = int(rng.uniform(0.3, 2.0) * SR)
            parts.append(np.zeros(z, np.float32))
            n += z
    mono = np.concatenate(parts)[:n_total]
    return np.stack([mono * (0.9 ** c) for c in range(channels)]).astype(np.float32)


def write(path: str, x: np.ndarray) -> None:
    from pedalboard.io import AudioFile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with AudioFile(path, "w", SR, x.shape[0], bit_depth=16) as f:
        f.write(x)


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def have_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# --------------------------------------------------------------------------


def run_paths(chain, src_dir: str, work: str, tag: str, cpus: int, ray_ok: bool) -> list[dict]:
    """Time the three paths over the files in ``src_dir``."""
    from quietcast.bridge.offline import plan_jobs, process_files

    def one_thread(jobs):
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return process_files(chain, jobs, workers=1)
        finally:
            torch.set_num_threads(n)

    paths = [("1 process", lambda jobs: process_files(chain, jobs, workers=1))]
    if chain.needs_neural():  # torch's own intra-op threads fight over the cores on small hops
        paths.append(("1 process, torch 1 thread", one_thread))
    paths += [(f"--jobs {cpus}", lambda jobs: process_files(chain, jobs, workers=cpus)),
              (f"Ray local ({cpus} CPUs)", None)]
    rows = []
    for name, fn in paths:
        out = os.path.join(work, f"{tag}-{len(rows)}")
        jobs = plan_jobs([src_dir], out)
        if fn is None:
            if not ray_ok:
                rows.append({"path": name, "skipped": "ray not installed (pip install 'quietcast[cluster]')"})
                continue
            from quietcast.bridge.cluster import process_files_ray

            fn = lambda jobs: process_files_ray(chain, jobs, split_seconds=0)  # noqa: E731
        t0 = time.perf_counter()
        s = fn(jobs)
        wall = time.perf_counter() - t0
        assert not s.failed, s.text()
        audio = s.audio_seconds
        rows.append({"path": name, "files": len(jobs), "audio_s": round(audio, 2), "wall_s": round(wall, 3),
                     "audio_h_per_wall_h": round(audio / wall, 1), "per_file_ms": round(1000 * wall / len(jobs), 1)})
        shutil.rmtree(out, ignore_errors=True)
    return rows


def bench_long(chain, src: str, work: str, split_seconds: float) -> list[dict]:
    from quietcast.bridge.cluster import process_files_ray
    from quietcast.bridge.offline import plan_jobs

    rows, outs = [], []
    for split in (0.0, split_seconds):
        dst = os.path.join(work, f"long-{int(split)}.wav")
        t0 = time.perf_counter()
        s = process_files_ray(chain, plan_jobs([src], dst), split_seconds=split)
        wall = time.perf_counter() - t0
        (r,) = s.results
        assert r.ok, r.error
        outs.append(dst)
        rows.append({"path": f"Ray, {'one task' if not split else f'split at {split:g} s'}",
                     "segments": getattr(r, "segments", 1), "audio_s": round(r.seconds, 1), "wall_s": round(wall, 2),
                     "audio_h_per_wall_h": round(r.seconds / wall, 1), "notes": r.warnings})
    with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
        same = a.read() == b.read()
    rows[-1]["same_bytes_as_one_task"] = same
    return rows


# --------------------------------------------------------------------------
# exactness measurements

STAGE_TYPES = {
    "highpass": {"type": "highpass", "cutoff_frequency_hz": 70},
    "lowpass": {"type": "lowpass", "cutoff_frequency_hz": 3000},
    "peak": {"type": "peak", "cutoff_frequency_hz": 1000, "gain_db": 6},
    "ladder": {"type": "ladder"},
    "compressor": {"type": "compressor", "threshold_db": -24, "ratio": 2.5, "attack_ms": 5, "release_ms": 120},
    "limiter": {"type": "limiter", "threshold_db": -1, "release_ms": 80},
    "brickwall_limiter": {"type": "brickwall_limiter"},
    "noise_gate": {"type": "noise_gate", "threshold_db": -40},
    "reverb": {"type": "reverb"},
    "delay (feedback 0.5)": {"type": "delay", "delay_seconds": 0.3, "feedback": 0.5},
    "chorus": {"type": "chorus"},
    "brickwall (true peak)": {"type": "brickwall_limiter", "ceiling_db": -1.0, "release_ms": 80, "true_peak": True},
    "gain": {"type": "gain", "gain_db": -3},
    "denoise dsp": {"type": "denoise", "model": "dsp"},
}
SILENCES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _stream_aligned(proc, x: np.ndarray, start: int = 0, block: int = 65_536) -> np.ndarray:
    """Output frames [start, n) of a cold start at ``start``, read on the
    single pass's block grid (as the segments are)."""
    from quietcast.bridge.cluster import block_end

    n, L = x.shape[1], proc.latency
    outs, pos = [], start
    while pos < n:
        e = min(n, block_end(pos, block, first=pos == start))
        outs.append(proc.process(x[:, pos:e]))
        pos = e
    if L:
        outs.append(proc.process(np.zeros((x.shape[0], L), np.float32)))
    return np.concatenate(outs, axis=1)[:, L:]


def _gaps(x: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    z = ~np.any(x != 0, axis=0)
    d = np.diff(np.concatenate([[0], z.astype(np.int8), [0]]))
    return [(int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)) if b - a >= min_frames]


def _merge_after_gaps(chain, x: np.ndarray, grid: int) -> tuple[list[float], int]:
    """Cold starts at each silent gap (>= 0.5 s, on ``grid``, 5 s from the
    start, 25 s from the end) against the single pass: seconds after the
    gap until the output is identical for good; and how many never were."""
    whole = _stream_aligned(chain.processor(SR, x.shape[0]), x)
    times, never = [], 0
    for g0, g1 in _gaps(x, SR // 2):
        if g0 < 5 * SR or g1 + 25 * SR > x.shape[1]:
            continue
        s = -(-g0 // grid) * grid
        if s >= g1:
            continue
        cold = _stream_aligned(chain.processor(SR, x.shape[0]), x, s)
        diff = np.flatnonzero(np.any(whole[:, s:] != cold, axis=0))
        if diff.size and diff[-1] + s >= x.shape[1] - 5 * SR:
            never += 1
        else:
            # 0: identical by the time the audio resumes (it forgot in the silence)
            times.append(max(0.0, round(float(((diff[-1] + 1 + s) if diff.size else s) - g1) / SR, 2)))
    return sorted(times), never


def silence_reset() -> list[dict]:
    """Per stage type: (a) loud material, then S s of digital silence, then
    a probe, against a fresh stage given the same silence and probe: the
    first S after which the probe's output is bit-identical; (b) on an
    edited programme (x2, so limiters work), cold starts at each silent
    gap against the single pass: seconds after the gap until identical."""
    from quietcast.bridge import Chain
    from quietcast.bridge.cluster import seam_grid

    rng = np.random.default_rng(0)
    pre = programme(5, 1, seed=11) + (rng.standard_normal((1, 5 * SR)) * 0.3).astype(np.float32)
    probe = programme(4, 1, seed=12, gaps=False)
    prog = programme(80, 1, seed=1) * 2.0
    from quietcast.models import available_models

    types = dict(STAGE_TYPES)
    if "neural" in available_models():
        types["denoise neural"] = {"type": "denoise", "model": "neural"}
    rows = []
    for name, spec in types.items():
        try:
            chain = Chain([{"name": "s", **spec}])
            chain.check(SR, 1)
        except Exception as e:  # e.g. no neural bundle here
            rows.append({"stage": name, "exact_after_silence_s": f"not measured: {type(e).__name__}"})
            continue
        exact_after, last = None, None
        for sil in SILENCES:
            z = np.zeros((1, int(sil * SR)), np.float32)
            a = chain.processor(SR, 1).process_aligned(np.concatenate([pre, z, probe], axis=1))[:, -probe.shape[1]:]
            b = chain.processor(SR, 1).process_aligned(np.concatenate([z, probe], axis=1))[:, -probe.shape[1]:]
            last = float(np.abs(a - b).max())
            if last == 0.0:
                exact_after = sil
                break
        times, never = _merge_after_gaps(chain, prog, seam_grid(chain, SR))
        rows.append({"stage": name, "exact_after_silence_s": exact_after,
                     "max_diff_after_10s": None if exact_after is not None else f"{last:.2g}",
                     "merge_after_gap_s": f"{min(times):.1f}-{max(times):.1f}" if times else "-",
                     "never_merged": f"{never} of {never + len(times)}"})
    return rows


def dsp_pinned(chain):
    """``chain`` with its denoise stages on the ``dsp`` suppressor."""
    from quietcast.bridge import Chain

    doc = chain.to_dict()
    for st in doc["stage"]:
        if st["type"] == "denoise":
            st["model"] = "dsp"
    return Chain.from_dict(doc, source=f"{chain.source} (dsp)")


def merge_times(chain, seeds=(1, 2, 3)) -> dict:
    """``chain``, mono: cold start at each silent gap (on the seam grid)
    against the single pass; seconds after the gap until identical for
    good (the merge time the warm-up and the seam check rely on)."""
    from quietcast.bridge.cluster import seam_grid

    grid = seam_grid(chain, SR)
    times, never = [], 0
    for seed in seeds:
        t, nv = _merge_after_gaps(chain, programme(80, 1, seed=seed), grid)
        times += t
        never += nv
    times.sort()
    from quietcast.models import resolve_model

    return {"chain": repr(chain),
            "models": [resolve_model(st.values.get("model", "default")) for st in chain.stages if st.type == "denoise"],
            "grid_frames": grid, "gaps": len(times) + never, "never_merged": never,
            "merge_s_after_gap": times,
            "max_s": max(times) if times else None, "median_s": float(np.median(times)) if times else None}


# --------------------------------------------------------------------------


def table(rows: list[dict], cols: list[str]) -> str:
    w = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(w[c]) for c in cols), "  ".join("-" * w[c] for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(w[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~1 min)")
    ap.add_argument("--files", type=int, default=8, help="files for the throughput rows (default 8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each (default 60)")
    ap.add_argument("--tiny", type=int, default=200, help="tiny files for the overhead rows (default 200)")
    ap.add_argument("--long-seconds", type=float, default=600.0, help="the long file (default 600; 0: skip)")
    ap.add_argument("--split-seconds", type=float, default=120.0, help="split length for the long file (default 120)")
    ap.add_argument("--cpus", type=int, default=2, help="--jobs and Ray CPUs (default 2)")
    ap.add_argument("--exactness", action="store_true", help="also measure what the exact stitching relies on")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "batch.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.files, a.seconds, a.tiny, a.long_seconds, a.split_seconds = 4, 20.0, 60, 180.0, 45.0

    from quietcast.bridge import Chain
    from quietcast.models import resolve_model

    ray_ok = have_ray()
    report: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": resolve_model("default"), "load_before": loadavg(),
        "note": "shared machine: other work (a model training) may be running; figures are pessimistic",
    }
    print(f"load average before: {report['load_before']} on {os.cpu_count()} CPUs "
          "(a busy machine makes every figure pessimistic)")
    work = tempfile.mkdtemp(prefix="qc-batch-")
    try:
        if ray_ok:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=a.cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            report["ray"] = {"version": ray.__version__, "start_s": round(time.perf_counter() - t0, 2)}
            print(f"Ray {ray.__version__}: local instance with {a.cpus} CPUs started in {report['ray']['start_s']} s "
                  "(not counted below)")
        chain = Chain.default()

        src = os.path.join(work, "files")
        for k in range(a.files):
            write(os.path.join(src, f"f{k:03d}.wav"), programme(a.seconds, 2, seed=k))
        rows = run_paths(chain, src, work, "thr", a.cpus, ray_ok)
        report["throughput"] = rows
        print(f"\n1. Throughput: {a.files} files x {a.seconds:g} s, 48 kHz stereo, default chain "
              f"({report['model']} suppressor)")
        print(table(rows, ["path", "files", "audio_s", "wall_s", "audio_h_per_wall_h"]))

        tiny = os.path.join(work, "tiny")
        for k in range(a.tiny):
            write(os.path.join(tiny, f"t{k:04d}.wav"), programme(0.25, 2, seed=1000 + k, gaps=False))
        rows = run_paths(Chain.load("dry"), tiny, work, "tiny", a.cpus, ray_ok)
        report["overhead"] = rows
        print(f"\n2. Per-file overhead: {a.tiny} files x 0.25 s through the 'dry' chain")
        print(table(rows, ["path", "files", "wall_s", "per_file_ms"]))

        from quietcast.bridge.cluster import keeps_state

        why = keeps_state(chain)
        split_chain = chain if why is None else dsp_pinned(chain)
        if a.long_seconds and ray_ok:
            long_src = os.path.join(work, "long", "long.wav")
            write(long_src, programme(a.long_seconds, 2, seed=99))
            rows = bench_long(split_chain, long_src, work, a.split_seconds)
            report["long_file"] = {"chain": split_chain.source, "rows": rows}
            note = "" if why is None else f" (the default chain is never split: {why}; so its dsp twin)"
            print(f"\n3. One {a.long_seconds:g} s file on Ray ({a.cpus} CPUs): one task vs split, "
                  f"chain {split_chain.source}{note}")
            print(table(rows, ["path", "segments", "audio_s", "wall_s", "audio_h_per_wall_h",
                               "same_bytes_as_one_task"]))

        if a.exactness:
            rows = silence_reset()
            report["silence_reset"] = rows
            print("\n4a. Per stage type: digital silence needed before its state equals a fresh one (bit-exact "
                  "output after); and, on a programme, seconds after a silent gap until a cold start's output is "
                  "identical to the single pass's for good")
            print(table(rows, ["stage", "exact_after_silence_s", "max_diff_after_10s", "merge_after_gap_s",
                               "never_merged"]))
            report["merge_after_gap"] = []
            for c in dict.fromkeys([chain, split_chain]):
                mt = merge_times(c)
                report["merge_after_gap"].append(mt)
                print(f"\n4b. {mt['chain']} (denoise: {', '.join(mt['models'])}), cold start at a silent gap: "
                      f"identical to the single pass for good after (s after the gap): {mt['merge_s_after_gap']} "
                      f"(max {mt['max_s']}, median {mt['median_s']}); never within the file: "
                      f"{mt['never_merged']} of {mt['gaps']}")
        if ray_ok:
            import ray

            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = loadavg()
    print(f"\nload average after: {report['load_after']}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
