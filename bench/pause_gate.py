"""How much a confident pause decision would give: a linear pause probe on
the network's recurrent state, and a gate that it drives.

    python bench/pause_gate.py                      # default bundle, 48 held-out mixtures
    python bench/pause_gate.py --voices lower       # real male voices (klettres-data)

Why: against RNNoise the default bundle's DNSMOS BAK and OVRL gap lies
mostly in the pauses, below the 30 dB strength floor (default model card,
"What post-processing could still gain"). A gate on the model's own stems
closes part of it but cuts the quiet ends of words (ESTOI falls). This
bench asks whether the network's recurrent state knows the pauses better
than its output does.

1. The probe: a logistic regression (224 weights and a bias) from the sum
   of the two GRU outputs of each frame (``y``, the input of the gain head)
   to "speech present": the frame's clean-speech energy within 45 dB of
   the example's loudest frame. It is fitted with Adam on ``--batches``
   batches of training mixtures (``train.make_batch``, mix version 9, 6 x
   4 s each, seed 5); the bundle's weights are not touched.
2. The gate, per hop of the streaming output (``voice + a * background``
   at the bundle's strength): when the probe's speech probability for the
   hop is below ``t``, the output falls ``x`` dB further; it opens at once
   and closes by 2 dB a hop. ``--gates t:x,...`` sets them.
3. The scores (``bench/quality.py``'s scorer, the same 48 held-out mixtures
   and DNSMOS) with and without each gate, the per-mixture difference
   (mean +- standard error) and the probe's frame accuracy on the held-out
   mixtures.

It is the measurement that led to the product path, kept as it was run
(its own probe, a hard threshold): since session 21 the shipped bundles
carry such a head (``python -m quietcast.models.train --fit-pause``) and
the suppressor has the gate (``pause_db``, ``defaults.pause_threshold``;
``models/neural.py``), which ``bench/quality.py --pause-dbs`` measures.
Prints a table; writes JSON (``bench/out/pause_gate.json``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import json_safe  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "out" / "pause_gate.json"
H = 480
METRICS = ("si_sdr", "pesq_wb", "estoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")


def _gates(text: str) -> list[tuple[float, float]]:
    out = []
    for part in text.split(","):
        t, _, x = part.partition(":")
        try:
            tv, xv = float(t), float(x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--gates {part!r}: expected PROBABILITY:DB, e.g. 0.1:20") from None
        if not (0.0 < tv < 1.0 and 0.0 < xv <= 60.0):
            raise argparse.ArgumentTypeError(f"--gates {part!r}: the probability must be in 0..1 (exclusive), "
                                             "the extra attenuation in 0..60 dB")
        out.append((tv, xv))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--voices", choices=("heldout", "lower"), default="heldout")
    p.add_argument("--n", type=int, default=48, help="held-out mixtures (as bench/quality.py)")
    p.add_argument("--batches", type=int, default=40, help="training batches the probe is fitted on")
    p.add_argument("--gates", type=_gates, default=_gates("0.05:30,0.1:20,0.2:20"),
                   help="comma-separated PROBABILITY:DB gates (default 0.05:30,0.1:20,0.2:20)")
    p.add_argument("--cache", default="/tmp/quietcast_cache", help="training cache, as bench/quality.py")
    p.add_argument("--json", default=str(OUT))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import quality as Q
    from quietcast.models import train as T
    from quietcast.models.bundle import load_bundle
    from quietcast.models.neural import NeuralSuppressor, _window

    cache = T.build_cache(args.cache)
    bundle = load_bundle(args.bundle)
    net = bundle.build_model().eval()
    win = torch.from_numpy(_window(2 * H))
    captured = {}
    heads = net._heads

    def capture(y, *a, **k):  # the GRU outputs: what the gain head reads
        captured["y"] = y.detach()
        return heads(y, *a, **k)

    net._heads = capture
    pf = float(bundle.config.get("defaults", {}).get("pitch_filter", 0.0))

    def state(x: np.ndarray) -> torch.Tensor:
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        with torch.no_grad():
            net(T._stft(xt, win, H), silent=T._silent(xt, win, H), pitch_filter=pf)
        return captured["y"]

    def speech(s: np.ndarray) -> torch.Tensor:
        return T.pause_labels(torch.from_numpy(np.ascontiguousarray(s, np.float32)), win, H)

    t0 = time.time()
    corpus = T.train_corpus(cache, 9)  # the training split only: no held-out voice or noise
    rng = np.random.default_rng(5)
    ys, ls = [], []
    for _ in range(args.batches):
        x, s = T.make_batch(rng, corpus, 4 * T.SR, 6, 9)
        ys.append(state(x).reshape(-1, net.hidden))
        ls.append(speech(s).reshape(-1))
    Y, L = torch.cat(ys), torch.cat(ls)
    w, b, loss = T.fit_logistic(Y, L)
    fit = {"frames": int(L.numel()), "speech_share": float(L.mean()), "loss": loss,
           "accuracy": float(((Y @ w + b > 0).float() == L).float().mean()), "seconds": round(time.time() - t0, 1)}
    print(f"probe: {fit['frames']:,} training frames ({fit['speech_share']:.0%} speech), accuracy "
          f"{fit['accuracy']:.3f}, {fit['seconds']:.0f} s", file=sys.stderr)

    voices = Q.lower_voices() if args.voices == "lower" else None
    mixes = T.heldout_mixtures(cache, n=args.n, voices=voices)
    dns = Q.Dnsmos(n=max(len(mixes[0]["noisy"]) - Q.SKIP - Q.SR // 5, Q.SR))
    sup = NeuralSuppressor(1, bundle=args.bundle)
    a = 10 ** (-sup.PARAMS["strength_db"][2] / 20)
    names = ["no gate"] + [f"gate p<{t:g}, -{x:g} dB" for t, x in args.gates]
    rows = {k: [] for k in names}
    acc = []
    d = sup.latency
    for m in mixes:
        sup.reset()
        v, bg = sup.process_stems(m["noisy"][None])
        v, bg = v[0][d:], bg[0][d:]
        s = m["clean"][:len(v)]
        y = v + a * bg
        rows["no gate"].append(Q.scores(y[Q.SKIP:], s[Q.SKIP:], True, dns))
        n = len(m["noisy"]) // H * H
        prob = torch.sigmoid(state(m["noisy"][None, :n])[0] @ w + b).numpy()
        lab = speech(m["clean"][None, :n])[0].numpy()
        acc.append(float(((prob > 0.5) == (lab > 0.5)).mean()))
        hops = len(v) // H
        for name, (t, x) in zip(names[1:], args.gates):
            g, cur = np.ones(hops), 0.0
            for k in range(hops):  # the output hop k ends with frame k + 1
                target = -x if prob[min(k + 1, len(prob) - 1)] < t else 0.0
                cur = target if target > cur else max(target, cur - 2.0)
                g[k] = 10 ** (cur / 20)
            o = y.copy()
            o[:hops * H] *= np.interp(np.arange(hops * H), np.arange(hops) * H + H / 2, g)
            rows[name].append(Q.scores(o[Q.SKIP:], s[Q.SKIP:], True, dns))

    result = {"bundle": str(bundle.path), "voices": args.voices, "mixtures": len(mixes), "probe": fit,
              "heldout_frame_accuracy": float(np.mean(acc)), "rows": {}}
    hdr = f"{'':22s} " + " ".join(f"{k:>15s}" for k in METRICS)
    lines = [f"pause probe on {bundle.path.name}: held-out frame accuracy {np.mean(acc):.3f}", hdr, "-" * len(hdr)]
    for name in names:
        mean = {k: float(np.nanmean([r[k] for r in rows[name]])) for k in METRICS}
        diff = {}
        for k in METRICS:
            dd = np.array([r[k] - q[k] for r, q in zip(rows[name], rows["no gate"])], np.float64)
            dd = dd[np.isfinite(dd)]
            diff[k] = (float(dd.mean()), float(dd.std(ddof=1) / np.sqrt(len(dd))) if len(dd) > 1 else 0.0)
        result["rows"][name] = {"mean": mean, "diff": diff, "per_mixture": rows[name]}
        lines.append(f"{name:22s} " + " ".join(f"{mean[k]:15.3f}" for k in METRICS))
        if name != "no gate":
            lines.append(f"{'  - no gate':22s} " + " ".join(f"{diff[k][0]:+8.3f}+-{diff[k][1]:.3f}" for k in METRICS))
    print("\n".join(lines))
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
