"""Where the neural model loses quality: its band gains against the ideal ones.

    python bench/gains.py                          # default bundle, 48 held-out mixtures
    python bench/gains.py --bundle neural-clean --json /tmp/gains_clean.json
    python bench/gains.py --voices lower           # real male voices (klettres-data), as bench/quality.py

The model's voice estimate is ``V = G * X``: 32 band gains, interpolated to
the 481 bins. This bench runs the bundle offline (``QCNet.forward``) on the
held-out mixtures of ``bench/quality.py`` (same seed, same 48 mixtures) and
puts three gain sets side by side, per input SNR:

- ``model``: the bundle's gains;
- ``ideal bands``: the ideal gains of the same 32 bands, from the clean
  speech, ``sqrt(E_speech / E_mixture)`` per band and frame (at most 1), and
  interpolated the same way. This is the ceiling of the architecture: what a
  perfect estimator of these band gains would reach;
- ``ideal bins``: the ideal gain of every bin (the ceiling of a per-bin
  mask with the noisy phase).

For each it applies the same gains to the speech and to the noise of the
mixture separately (the signal path is linear in the input for given
gains), so the loss splits in two:

- ``SI-SDR``: of the voice estimate (dB, from 0.5 s, the algorithmic delay
  of 480 samples removed);
- ``speech kept``: SI-SDR of the gained speech alone against the clean
  speech: what the gains do to the voice (distortion and cut words);
- ``noise cut``: how far the gained noise is below the noise (dB).

And for the model against the ideal band gains, on band-frames where the
speech dominates (ideal gain > 0.5) and where the noise does (< 0.1): the
mean gain of each. A model that is unsure lands in between: it cuts voice
where speech dominates and leaves noise where it does not.

A second table splits the same figures by voice (all SNRs): on the
default held-out set LJ Speech is a reader the model trained on (unseen
sentences) and the Russian asterisk voice a speaker it never heard; if
the model hedges on both alike, it underfits rather than fails to
generalise. ``--voices lower`` uses bench/quality.py's real male voices.

Writes JSON (default ``bench/out/gains.json``). Needs ../shared/data and the
training cache, like bench/quality.py.
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

from common import REPO, fmt_table, machine_info, write_json  # noqa: E402

SR = 48_000
HOP = 480
SKIP = SR // 2


def analyse(net, mix: dict, win) -> dict:
    """The three gain sets on one mixture: SI-SDR, speech kept, noise cut
    (dB), and the band gains (model, ideal) after the first 0.5 s."""
    import torch

    from quietcast.models.neural import overlap_add
    from quietcast.models.train import _stft, ideal_band_gains, si_sdr

    x, s = torch.from_numpy(mix["noisy"][None]), torch.from_numpy(mix["clean"][None])
    n = x.shape[1] // HOP * HOP
    x, s = x[:, :n], s[:, :n]
    X, S, N = _stft(x, win, HOP), _stft(s, win, HOP), _stft(x - s, win, HOP)
    with torch.no_grad():
        _V, g = net(X)
    g_ideal = ideal_band_gains(net, X, S)
    sets = {"model": g @ net.fb_interp, "ideal bands": g_ideal @ net.fb_interp,
            "ideal bins": (S.abs() / (X.abs() + 1e-12)).clamp(0.0, 1.0)}

    def synth(V):
        return overlap_add(V, win, HOP)[0].numpy()

    ref = mix["clean"][SKIP:n - HOP]
    noise = (mix["noisy"] - mix["clean"])[SKIP:n - HOP]
    out = {}
    for name, G in sets.items():
        v, vs, vn = synth(X * G)[SKIP + HOP:], synth(S * G)[SKIP + HOP:], synth(N * G)[SKIP + HOP:]
        out[name] = {"si_sdr": si_sdr(v, ref), "speech_kept": si_sdr(vs, ref),
                     "noise_cut_db": float(10 * np.log10(np.sum(noise.astype(np.float64) ** 2)
                                                         / (np.sum(vn.astype(np.float64) ** 2) + 1e-20)))}
    t0 = SKIP // HOP
    return {"scores": out, "g": g[0, t0:].numpy(), "g_ideal": g_ideal[0, t0:].numpy()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="default", help="bundle name or folder")
    p.add_argument("--n", type=int, default=48, help="held-out mixtures (as bench/quality.py)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--cache", default="/tmp/quietcast_cache")
    p.add_argument("--voices", choices=("heldout", "lower"), default="heldout",
                   help="clean speech as bench/quality.py --voices: the held-out split or real male voices")
    p.add_argument("--json", default=str(pathlib.Path(REPO) / "bench" / "out" / "gains.json"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from quietcast.models.bundle import load_bundle
    from quietcast.models.neural import _window
    from quietcast.models.train import build_cache, heldout_mixtures

    t0 = time.time()
    b = load_bundle(args.bundle)
    net = b.build_model().eval()
    win = torch.from_numpy(_window(2 * HOP))
    voices = None
    if args.voices == "lower":
        from quality import lower_voices

        voices = lower_voices()
    mixes = heldout_mixtures(build_cache(args.cache), n=args.n, seed=args.seed, seconds=6.0, voices=voices)
    per = [analyse(net, m, win) for m in mixes]
    snrs = sorted({m["snr_db"] for m in mixes})
    names = ["model", "ideal bands", "ideal bins"]

    def summary(sel: list) -> tuple[dict, list]:
        """Mean scores and gains over the mixtures ``sel``, and its table cells."""
        g = np.concatenate([r["g"] for r in sel])
        gi = np.concatenate([r["g_ideal"] for r in sel])
        speech, noise = gi > 0.5, gi < 0.1
        e = {k: {name: float(np.mean([r["scores"][name][k] for r in sel])) for name in names}
             for k in ("si_sdr", "speech_kept", "noise_cut_db")}
        e["gain_where_speech"] = {"model": float(g[speech].mean()), "ideal": float(gi[speech].mean()),
                                  "share": float(speech.mean())}
        e["gain_where_noise"] = {"model": float(g[noise].mean()), "ideal": float(gi[noise].mean()),
                                 "share": float(noise.mean())}
        cells = ([" / ".join(f"{e[k][nm]:.1f}" for nm in names) for k in ("si_sdr", "speech_kept", "noise_cut_db")]
                 + [f"{e['gain_where_speech']['model']:.2f} / {e['gain_where_speech']['ideal']:.2f}",
                    f"{e['gain_where_noise']['model']:.3f} / {e['gain_where_noise']['ideal']:.3f}"])
        return e, cells

    cols = ["SI-SDR dB", "speech kept dB", "noise cut dB", "gain, speech bands", "gain, noise bands"]
    by_snr, rows = {}, []
    for snr in snrs + ["all"]:
        e, cells = summary([r for r, m in zip(per, mixes) if snr == "all" or m["snr_db"] == snr])
        by_snr[str(snr)] = e
        rows.append(["all" if snr == "all" else f"{snr:g} dB"] + cells)
    table = fmt_table(["input SNR"] + cols, rows)
    by_voice, vrows = {}, []
    for grp in dict.fromkeys(m["group"] for m in mixes):
        e, cells = summary([r for r, m in zip(per, mixes) if m["group"] == grp])
        by_voice[grp] = e
        vrows.append([grp] + cells)
    vtable = fmt_table(["voice (all SNRs)"] + cols, vrows)
    print(f"bundle {b.path} (sha256 {b.config['weights']['sha256'][:12]}), {len(mixes)} held-out mixtures "
          f"({args.voices} voices);\n"
          "each cell: model / ideal band gains / ideal bin gains (gain columns: model / ideal bands)\n")
    print(table)
    print()
    print(vtable)
    write_json(args.json, {"benchmark": "quietcast bench/gains.py", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "command": " ".join(["bench/gains.py"] + (argv if argv is not None else sys.argv[1:])),
                           "bundle": str(b.path), "sha256": b.config["weights"]["sha256"],
                           "mixtures": len(mixes), "seed": args.seed, "voices": args.voices,
                           "machine": machine_info(), "by_snr": by_snr, "by_voice": by_voice,
                           "table": table.splitlines(), "voice_table": vtable.splitlines(),
                           "seconds": round(time.time() - t0, 1)})
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
