"""The live engine's own cost per 10 ms hop, by channel count: what the
daemon's engine thread spends around the suppressor.

    python bench/engine_hop.py                       # ~1 min: 1..4096 channels
    python bench/engine_hop.py --channels 64,1024 --hops 300 --out /tmp/eh.json

On a GPU the suppressor's hop for 1024 channels is meant to take under
2 ms (issue 5); the engine thread has 10 ms for the whole hop, so what it
spends on the host around that call decides how many channels one daemon
can really carry. The daemon's config allows at most 256 channels
(``config.MAX_CHANNELS``); the rows above that show how the same host
work grows at the suppressor's larger GPU batches. No JACK here: ``Engine.process_hop`` is called directly
on one thread (what the engine thread does once the callback has published
a hop), on noisy speech-like input, with every channel's parameters at
their defaults and one channel's ``strength`` moved every 10 hops (a
fader being ridden, so a ramp and a new parameter snapshot happen as in
use). Rows, per channel count:

- ``engine``: ``Engine.process_hop`` with the ``passthrough`` model, whose
  hop is a copy: the engine's own work (input gain, the suppressor's
  stream and input checks, the delay lines, the background remix, bypass,
  output gain, meters).
- ``neural stream``: ``NeuralSuppressor.process`` as the engine calls it
  (aligned, whole hops), with the hop core replaced by a no-op: the host
  work the neural suppressor adds around a GPU hop (input checks, fifo,
  rows copied out). Not a run of the model.
- ``engine + neural (C step)``: the real thing on this CPU, up to
  ``--neural-max`` channels (default 64): the C step's own cost dominates.

Each row: p50 / p99 / max ms per hop over ``--hops`` hops after 20 warm-up
hops, and the share of the 10 ms hop at p99. One thread (OMP/MKL/OPENBLAS
and torch limited to 1). Prints a table and writes JSON (default
``bench/out/engine_hop.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, fmt_table, machine_info, machine_note, save_result  # noqa: E402

HOP = 480


def _input(channels: int, hops: int, seed: int = 0) -> np.ndarray:
    """``[hops, C, HOP]`` float32: gated harmonic bursts in noise, a
    different phase per channel (levels like speech at -20 dBFS)."""
    rng = np.random.default_rng(seed)
    n = hops * HOP
    t = np.arange(n) / 48_000
    base = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12)).astype(np.float32)
    gate = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(np.float32)
    x = np.empty((channels, n), np.float32)
    for c in range(channels):
        x[c] = 0.05 * np.roll(base * gate, 997 * c) + 0.01 * rng.standard_normal(n).astype(np.float32)
    return np.ascontiguousarray(x.reshape(channels, hops, HOP).transpose(1, 0, 2))


def _stats(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4),
            "max_ms": round(float(a.max()), 4), "hops": len(ts)}


def _time(step, frames: np.ndarray, warm: int = 20, ride=None) -> dict:
    ts = []
    for k in range(len(frames)):
        if ride is not None and k % 10 == 0:
            ride(k)
        t0 = time.perf_counter()
        step(frames[k])
        if k >= warm:
            ts.append(time.perf_counter() - t0)
    return _stats(ts)


def engine_row(channels: int, model: str, frames: np.ndarray) -> dict:
    from quietcast.daemon.config import ChannelConfig
    from quietcast.daemon.engine import Engine

    eng = Engine([ChannelConfig(name=f"c{i}") for i in range(channels)], 48_000, model=model)

    def ride(k):  # a fader on channel 0: a new snapshot and a ramp every 10 hops
        eng.set_params("c0", strength=0.5 + 0.5 * ((k // 10) % 2))

    r = _time(eng.process_hop, frames, ride=ride)
    r["backend"] = eng.backend
    return r


def stream_row(channels: int, frames: np.ndarray) -> dict:
    from quietcast.models.neural import NeuralSuppressor

    sup = NeuralSuppressor(channels=channels)
    sup.set_aligned(True)
    if hasattr(sup, "set_stems"):
        sup.set_stems(False)  # as the engine's denoise stage runs it
    sup._core = lambda hop: None  # the hop itself excluded: only the host work around it
    return _time(sup.process, frames)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", default="1,8,64,256,1024,4096", help="channel counts (default %(default)s)")
    ap.add_argument("--hops", type=int, default=220, help="hops timed per row, 20 of them warm-up (default %(default)s)")
    ap.add_argument("--neural-max", type=int, default=64,
                    help="largest channel count for the real neural row (default %(default)s)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "out", "engine_hop.json"))
    a = ap.parse_args(argv)
    try:
        counts = [int(v) for v in a.channels.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--channels {a.channels!r}: comma-separated whole numbers")
    if not counts or min(counts) < 1:
        ap.error(f"--channels {a.channels!r}: at least one count, each 1 or more")
    if a.hops < 40:
        ap.error(f"--hops {a.hops}: at least 40 (20 are warm-up)")
    import torch

    torch.set_num_threads(1)
    res = {"machine": machine_info(), "note": machine_note(), "hops": a.hops, "rows": {}}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    rows = []
    for c in counts:
        frames = _input(c, a.hops)
        got = {"engine": engine_row(c, "passthrough", frames), "neural stream": stream_row(c, frames)}
        if c <= a.neural_max:
            got["engine + neural (C step)"] = engine_row(c, "default", frames)
        res["rows"][str(c)] = got
        save_result(res, a.out)
        for name, r in got.items():
            rows.append([str(c), name, f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['max_ms']:.3f}",
                         f"{100 * r['p99_ms'] / 10:.0f} %"])
            print("  ".join(rows[-1]), flush=True)
    print()
    print(fmt_table(["channels", "row", "p50 ms", "p99 ms", "max ms", "p99 of 10 ms"], rows))
    print(f"\n{res['note']}one thread; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
