"""Training throughput of ``python -m quietcast.models.train`` on this machine.

    python bench/train_speed.py                 # ~2 min on 2 cores
    python bench/train_speed.py --steps 40 --json /tmp/train_speed.json
    python bench/train_speed.py --device cuda --synthetic --batches 6,32,128   # a GPU machine

Times the parts of one training step (batch 12 x 2 s, the default
architecture from scratch, one torch thread, mix version 3: what the
shipped bundles were trained with) and then whole steps, in this order:

- ``mixing``: making one batch of mixtures (numpy/scipy, on the
  training thread);
- ``network``: STFT, forward pass, loss, backward pass and Adam step for a
  batch with leading digital silence in some rows (the 25 % of examples
  that start mid-hop), on ``--device`` (the CPU, or a GPU); with
  ``--batches`` once per batch size;
- ``loss``: the loss alone, forward and backward (part of ``network``);
- ``step, workers=0`` and ``step, workers=1``: the training loop's
  step as ``train --workers 0|1`` runs it (``models.train.Batches``: the
  mixing between steps, or ahead in one worker process);
- ``step, workers=N`` for each ``--pools`` size: a pool of N mixing
  processes (``train --workers N``), each batch split among them.

Each figure is the median over ``--steps`` steps after 3 warm-up steps, in
wall seconds (CPU seconds of this process beside them). ``steps/CPU-hour``
is what a ``--minutes 60`` run gets through. The summary says how many
mixing processes it takes to keep the network busy at each batch size
(its mixtures per second against one process's). It needs the training
cache (``--cache``, built from ../shared/data by the first training run or
here), or ``--synthetic``: generated voices and noises
(``models.train.synthetic_cache``, numpy only), for a machine without the
data, such as a GPU machine: the network's timings are the same, the
audio is not speech, and it mixes faster than the real cache (on the
2-core machine 106 against 67 mixtures of 4 s per second in one process,
mix version 9), so the processes it asks for are a lower bound. Writes
JSON (default ``bench/out/train_speed.json``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import REPO, fmt_table, loadavg, machine_info, write_json  # noqa: E402


def _timed(fn, steps: int, warm: int = 3) -> dict:
    wall, cpu = [], []
    for i in range(warm + steps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        if i >= warm:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu)), "steps": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row (default 20)")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--batches", default="",
                    help="comma-separated batch sizes for extra network rows (e.g. 6,32,128 on a GPU)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--mix-version", type=int, default=3)
    ap.add_argument("--device", default="auto", help="where the network runs: auto, cpu, cuda, cuda:N")
    ap.add_argument("--pools", default=None,
                    help="comma-separated mixing-pool sizes to time (default: 2, and the core count when "
                         "above 2; empty for none)")
    ap.add_argument("--cache", default="/tmp/quietcast_cache")
    ap.add_argument("--synthetic", action="store_true",
                    help="generated audio instead of the training cache (a machine without ../shared/data)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=os.path.join(REPO, "bench", "out", "train_speed.json"))
    args = ap.parse_args(argv)

    import torch

    from quietcast.models import train as T
    from quietcast.models.neural import HOP, QCNet, _window

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.synthetic:
        import tempfile

        cache = T.synthetic_cache(pathlib.Path(tempfile.mkdtemp(prefix="qc_synth_")))
    else:
        cache = T.build_cache(args.cache, args.data)
    corpus = T.train_corpus(cache, args.mix_version)
    n = int(args.seconds * T.SR) // HOP * HOP
    pools = ([2] + ([os.cpu_count()] if (os.cpu_count() or 1) > 2 else [])) if args.pools is None else \
        [int(v) for v in args.pools.split(",") if v.strip()]
    rng = np.random.default_rng(0)
    fixed = T.make_batch(rng, corpus, n, args.batch, args.mix_version)
    rows = {}
    rows["mixing"] = _timed(lambda: T.make_batch(rng, corpus, n, args.batch, args.mix_version), args.steps)
    # the pools first: their processes are forked before CUDA starts
    batches = {w: T.Batches(np.random.default_rng(1), corpus, n, args.batch, args.mix_version, workers=w,
                            seed=1) for w in [0, 1] + pools}
    device = T.train_device(args.device)
    win = torch.from_numpy(_window(2 * HOP)).to(device)
    net = QCNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def network(xb, sb):  # the training loop's own step
        T.train_step(net, opt, xb, sb, win, HOP)

    xs = torch.from_numpy(fixed[0]).to(device)
    X0, S0 = T._stft(xs, win, HOP), T._stft(torch.from_numpy(fixed[1]).to(device), win, HOP)

    def loss_only():
        V = (X0 * 0.5).requires_grad_()
        g = torch.full((X0.shape[0], X0.shape[1], net.n_bands), 0.5, requires_grad=True, device=device)
        T._loss(net, V, S0, X0, g)[0].backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows["network"] = _timed(lambda: network(*fixed), args.steps)
    rows["loss"] = _timed(loss_only, args.steps)
    per_batch = {args.batch: rows["network"]["wall_s"]}
    for b in sorted({int(v) for v in args.batches.split(",") if v.strip()} - {args.batch}):
        xb = np.concatenate([fixed[0]] * -(-b // args.batch))[:b]
        sb = np.concatenate([fixed[1]] * -(-b // args.batch))[:b]
        rows[f"network, batch {b}"] = r = _timed(lambda: network(xb, sb), args.steps)
        per_batch[b] = r["wall_s"]
    try:
        for w, bt in batches.items():
            rows[f"step, workers={w}"] = _timed(lambda: network(*bt.next()), args.steps)
    finally:
        for bt in batches.values():
            bt.close()
    for r in rows.values():
        r["steps_per_cpu_hour"] = round(3600.0 / r["cpu_s"]) if r["cpu_s"] > 0 else None
        r["steps_per_hour"] = round(3600.0 / r["wall_s"])
    w0, w1 = rows["step, workers=0"], rows["step, workers=1"]
    table = [[k, f"{r['wall_s'] * 1000:.0f}", f"{r['cpu_s'] * 1000:.0f}", f"{r['steps_per_hour']:,}"]
             for k, r in rows.items()]
    print(f"training throughput: batch {args.batch} x {args.seconds:g} s, {sum(p.numel() for p in net.parameters()):,}"
          f" parameters, mix version {args.mix_version}, network on {T._device_name(device)}, 1 torch thread,"
          f" {os.cpu_count()} cores, load {loadavg()}" + (" (synthetic audio)" if args.synthetic else ""))
    print(fmt_table(["part", "wall ms", "cpu ms (this process)", "per wall hour"], table))
    speedup = w0["wall_s"] / w1["wall_s"]
    print(f"  a mixing worker: {speedup:.2f}x the steps per wall hour "
          f"({w0['steps_per_hour']:,} -> {w1['steps_per_hour']:,})")
    mix_rate = args.batch / rows["mixing"]["wall_s"]  # mixtures per second, one process
    need = {b: (b / s) / mix_rate for b, s in per_batch.items()}
    for b, s in sorted(per_batch.items()):
        print(f"  batch {b}: the network takes {b / s:,.0f} mixtures/s; one mixing process makes "
              f"{mix_rate:,.0f}/s: {need[b]:.1f} processes keep it busy")
    write_json(args.json, {"bench": "train_speed", "machine": machine_info(), "load": loadavg(),
                           "device": T._device_name(device), "synthetic": bool(args.synthetic),
                           "batch": args.batch, "segment_s": args.seconds, "mix_version": args.mix_version,
                           "rows": rows, "worker_speedup": speedup, "mixtures_per_s_one_process": mix_rate,
                           "network_s_per_batch": {str(b): s for b, s in per_batch.items()},
                           "processes_to_feed": {str(b): v for b, v in need.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
