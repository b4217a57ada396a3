"""The ``dsp`` suppressor: streaming invariants, input hygiene, parameters,
and what it does to speech and noise (real LJSpeech speech where the shared
data is present, synthetic speech-like signals otherwise)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from quietcast.models.base import MAX_ABS
from quietcast.models.dsp import DspSuppressor

SR = 48_000
LATENCY = 960
REPO = pathlib.Path(__file__).resolve().parents[2]
# ../shared/data beside the checkout (as on CI), or $QUIETCAST_DATA
DATA = pathlib.Path(os.environ.get("QUIETCAST_DATA", REPO.parent / "shared" / "data"))
# the bundled demo clip's clean track is LJSpeech too (public domain)
DEMO_CLEAN = REPO / "daemon" / "assets" / "demo" / "clean.flac"


# ----------------------------------------------------------------- helpers
def _stream(sup, x, block):
    return np.concatenate(
        [sup.process(x[:, i:i + block]) for i in range(0, x.shape[1], block)], axis=1
    )


def _db(e):
    return 10.0 * np.log10(max(float(e), 1e-30))


def _energy(x):
    return float(np.sum(np.asarray(x, np.float64) ** 2))


def _resample(x, sr_in, sr_out=SR):
    """Band-limited (FFT) resampling of a whole clip, numpy only."""
    if sr_in == sr_out:
        return x
    from math import gcd

    g = gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    n_in = (len(x) // down) * down
    n_out = n_in * up // down
    X = np.fft.rfft(x[:n_in])
    Y = np.zeros(n_out // 2 + 1, complex)
    m = min(len(X), len(Y))
    Y[:m] = X[:m]
    return np.fft.irfft(Y, n_out) * (n_out / n_in)


def _read(path):
    try:
        import soundfile

        x, sr = soundfile.read(str(path), dtype="float64", always_2d=True)
        return x.mean(axis=1), int(sr)
    except ImportError:
        pass
    try:
        from pedalboard.io import AudioFile
    except ImportError:
        pytest.skip("neither soundfile nor pedalboard can read FLAC here")
    with AudioFile(str(path)) as f:
        sr = int(f.samplerate)
        x = f.read(f.frames).astype(np.float64).mean(axis=0)
    return x, sr


def _speech(name):
    """An LJSpeech utterance at 48 kHz: from ../shared/data when it is
    there, else the bundled demo clip's speech (never a skip)."""
    path = DATA / "speech" / "ljspeech" / name
    if not path.is_file():
        if os.environ.get("CI") and not DEMO_CLEAN.is_file():
            pytest.fail(f"no speech: neither {path} nor {DEMO_CLEAN}")
        x, sr = _read(DEMO_CLEAN)
        return _resample(x, sr)
    x, sr = _read(path)
    return _resample(x, sr)


def _pink(n, rng):
    """1/f noise from 20 Hz up."""
    X = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(X)) * (SR / n)
    X[f < 20.0] = 0.0
    y = np.fft.irfft(X / np.sqrt(np.maximum(f, 20.0)), n)
    return y / y.std()


def _mix(speech, noise, snr_db):
    noise = noise * np.sqrt(_energy(speech) / _energy(noise) / 10 ** (snr_db / 10))
    return speech + noise, noise


def _snr_gain(speech, noise, sup=None, skip=0):
    """SNR of the output against the clean speech minus the input SNR (dB);
    the output is aligned by the latency, the first ``skip`` samples are not
    scored."""
    sup = sup or DspSuppressor(1)
    x = (speech + noise).astype(np.float32)
    y = sup.process(np.concatenate([x, np.zeros(LATENCY, np.float32)])[None])[0, LATENCY:]
    s = speech[skip:].astype(np.float64)
    snr_in = _db(_energy(s) / _energy(noise[skip:]))
    snr_out = _db(_energy(s) / _energy(y[skip:] - s))
    return snr_out - snr_in


def _attenuation(x, y, start, stop):
    """Level drop (dB) of the latency-aligned output over [start, stop)."""
    return _db(_energy(x[start:stop]) / max(_energy(y[start + LATENCY:stop + LATENCY]), 1e-30))


# -------------------------------------------------------- streaming invariants
def test_identity_and_latency():
    sup = DspSuppressor()
    assert sup.name == "dsp"
    assert sup.channels == 1 and sup.sample_rate == SR
    assert (sup.hop, sup.window, sup.algorithmic_latency) == (480, 960, 480)
    assert sup.latency == LATENCY == sup.hop + sup.algorithmic_latency


@pytest.mark.parametrize("block", [1, 64, 65, 256, 8193])
def test_streaming_equals_one_shot(noisy_speechlike, block):
    x = noisy_speechlike[0]
    # two channels: the speech-like mix, and a copy that starts late and
    # has a digital-silence gap (the start-up / mute path), cut for block=1
    n = 2 * SR + 123 if block == 1 else x.shape[1]
    x2 = np.concatenate([x, x])[:, :n].copy()
    x2[1, :10_000] = 0.0
    x2[1, 50_000:70_000] = 0.0
    one_shot = DspSuppressor(2).process(x2)
    y = _stream(DspSuppressor(2), x2, block)
    assert y.shape == x2.shape and y.dtype == np.float32
    assert np.array_equal(y, one_shot)
    assert np.all(y[:, :480] == 0.0)  # the hop buffer's pre-filled zeros
    assert np.max(np.abs(y)) > 0.01


def test_strength_zero_is_the_delayed_input(noisy_speechlike):
    x = noisy_speechlike[0]
    xx = np.concatenate([x, -0.5 * x])
    sup = DspSuppressor(2, strength_db=0.0)
    y = _stream(sup, xx, 777)
    assert np.max(np.abs(y[:, LATENCY:] - xx[:, :-LATENCY])) <= 1e-5
    assert np.array_equal(y[:, LATENCY:], xx[:, :-LATENCY])  # in fact exact
    assert np.all(y[:, :LATENCY] == 0.0)
    # an impulse comes out LATENCY samples later
    imp = np.zeros((1, 4000), np.float32)
    imp[0, 100] = 1.0
    assert int(np.argmax(np.abs(DspSuppressor(strength_db=0).process(imp)[0]))) == 100 + LATENCY


def test_unit_gain_synthesis_reconstructs(noisy_speechlike):
    """The STFT path itself (gain exactly 1 through the filter bank, not the
    strength-0 shortcut) reconstructs the delayed input to float32
    rounding."""
    x = noisy_speechlike[0]
    sup = DspSuppressor(1, strength_db=0.0)
    sup.process(x[:, :48_000])
    y_ola = sup._ola.copy()  # noqa: SLF001 - white-box check of the filter bank
    prev = x[:, 48_000 - 480:48_000]
    # after the last full hop the overlap-add tail holds w^2 * (last hop)
    w2 = sup._win[480:] ** 2  # noqa: SLF001
    assert np.max(np.abs(y_ola - w2 * prev)) <= 1e-6
    w = sup._win.astype(np.float64)  # noqa: SLF001
    assert np.max(np.abs(w[:480] ** 2 + w[480:] ** 2 - 1.0)) <= 1e-6


def test_reset_forgets_everything(noisy_speechlike):
    x = noisy_speechlike[0]
    sup = DspSuppressor(1)
    first = sup.process(x)
    sup.process(np.full_like(x, 0.3))
    sup.reset()
    assert sup.bad_samples == 0
    assert np.array_equal(sup.process(x), first)


def test_batch_equals_channels_processed_separately(noisy_speechlike, rng):
    x = noisy_speechlike[0][0]
    n = x.size
    rows = np.stack([
        x,
        0.1 * rng.standard_normal(n),
        np.concatenate([np.zeros(20_000), x[:n - 20_000]]),  # starts late
        x * np.where((np.arange(n) // 30_000) % 2 == 0, 1.0, 0.0),  # muted on/off
    ]).astype(np.float32)
    batch = _stream(DspSuppressor(4), rows, 1000)
    for i in range(rows.shape[0]):
        alone = _stream(DspSuppressor(1), rows[i:i + 1], 1000)
        assert np.array_equal(batch[i:i + 1], alone), i


def test_wrong_block_shape_is_refused():
    sup = DspSuppressor(2)
    with pytest.raises(ValueError, match="channels=2"):
        sup.process(np.zeros((1, 480), np.float32))
    assert sup.process(np.zeros((2, 0), np.float32)).shape == (2, 0)


# ------------------------------------------------------------ input hygiene
def test_non_finite_denormal_and_huge_input(noisy_speechlike):
    x = noisy_speechlike[0].copy()
    x[0, 1000:1100] = np.nan
    x[0, 5000:5010] = np.inf
    x[0, 9000:9020] = -np.inf
    x[0, 20_000:20_500] = np.float32(1e-41)  # subnormal
    x[0, 30_000:30_050] = np.float32(3e38)  # huge, finite
    x[0, 40_000:40_005] = -1e30
    sup = DspSuppressor(1)
    y = _stream(sup, x, 333)
    assert np.all(np.isfinite(y))
    assert sup.bad_samples == 100 + 10 + 20
    assert np.max(np.abs(y)) <= 2 * MAX_ABS
    # it recovers: the last second looks like a clean run's
    ref = DspSuppressor(1).process(noisy_speechlike[0])
    tail = slice(-SR, None)
    assert abs(_db(_energy(y[0, tail]) / _energy(ref[0, tail]))) < 1.0


def test_full_scale_and_silence_inputs():
    sup = DspSuppressor(2)
    z = sup.process(np.zeros((2, 20_000), np.float32))
    assert np.all(z == 0.0)
    t = np.arange(2 * SR) / SR
    loud = np.stack([np.sign(np.sin(2 * np.pi * 50 * t)) * MAX_ABS,  # clipped square
                     np.full(t.size, -MAX_ABS)]).astype(np.float32)  # DC at the clip
    y = sup.process(loud)
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 2 * MAX_ABS
    assert np.all(np.isfinite(sup.gain_reduction_db))


# -------------------------------------------------------------- parameters
def test_params_table_and_defaults():
    lo, hi, default, unit = DspSuppressor.PARAMS["strength_db"]
    assert (lo, hi, unit) == (0.0, 60.0, "dB") and lo <= default <= hi
    sup = DspSuppressor()
    assert sup.strength_db == default == sup.get_param("strength_db")
    sup.set_param("strength_db", 25)
    assert sup.strength_db == 25.0
    sup.strength_db = 6.5
    assert sup.get_param("strength_db") == 6.5


@pytest.mark.parametrize("value", [120, -1, 60.5, float("nan"), float("inf")])
def test_out_of_range_strength_is_refused_with_the_range(value):
    sup = DspSuppressor(strength_db=10)
    with pytest.raises(ValueError) as e:
        sup.set_param("strength_db", value)
    msg = str(e.value)
    assert "strength_db" in msg and str(value) in msg and "[0, 60]" in msg
    with pytest.raises(ValueError, match=r"\[0, 60\]"):
        sup.strength_db = value
    with pytest.raises(ValueError, match=r"\[0, 60\]"):
        DspSuppressor(strength_db=value)
    assert sup.strength_db == 10.0  # unchanged


def test_bad_parameter_names_and_types():
    sup = DspSuppressor()
    with pytest.raises(ValueError, match="strength_db=120 is out of range \\[0, 60\\]"):
        sup.set_param("strength_db", 120)
    with pytest.raises(ValueError, match="unknown parameter 'strenght_db'.*strength_db"):
        sup.set_param("strenght_db", 3)
    for bad in ("12", None, True, [3]):
        with pytest.raises(ValueError, match="not a number.*\\[0, 60\\]"):
            sup.set_param("strength_db", bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        sup.get_param("nope")


def test_strength_changes_while_streaming():
    rng = np.random.default_rng(7)
    x = (0.05 * rng.standard_normal((1, 6 * SR))).astype(np.float32)
    sup = DspSuppressor(1, strength_db=10)
    y = [sup.process(x[:, :3 * SR])]
    sup.set_param("strength_db", 25)
    y.append(sup.process(x[:, 3 * SR:]))
    y = np.concatenate(y, axis=1)
    att10 = _attenuation(x[0], y[0], 1 * SR, 3 * SR - LATENCY)
    att25 = _attenuation(x[0], y[0], 4 * SR, 6 * SR - LATENCY)
    assert 8.0 < att10 <= 10.5 and 22.0 < att25 <= 25.5, (att10, att25)
    # no click at the change: no output sample far above the input's level
    assert np.max(np.abs(y)) < 4 * np.max(np.abs(x))


# ------------------------------------------------------- what it does to audio
@pytest.mark.parametrize("strength, white_min, pink_min", [(6.0, 5.5, 5.0), (15.0, 13.5, 11.5), (30.0, 25.0, 19.5)])
def test_stationary_noise_is_attenuated_by_strength(strength, white_min, pink_min, rng):
    """Noise-only input ends close to the floor; less so at high strengths
    and on steep (low-frequency heavy) spectra, where random spectral peaks
    still read as possible speech. Measured (white / pink): 6 dB -> 6.0 /
    5.9, 15 -> 14.2 / 12.9, 30 -> 27.3 / 22.3."""
    for noise, at_least in ((rng.standard_normal(5 * SR), white_min), (_pink(5 * SR, rng), pink_min)):
        x = (0.05 * noise).astype(np.float32)
        sup = DspSuppressor(1, strength_db=strength)
        y = sup.process(x[None])[0]
        gr = float(sup.gain_reduction_db[0])  # the meter, on the last hop
        y = np.concatenate([y, sup.process(np.zeros((1, LATENCY), np.float32))[0]])
        att = _attenuation(x, y, SR // 2, 5 * SR - LATENCY)  # after 0.5 s
        assert at_least < att <= strength + 0.5, (strength, att)
        assert at_least - 3.0 < gr <= strength + 0.5, (strength, gr)


def test_converges_fast_at_the_start(rng):
    x = (0.05 * rng.standard_normal(SR)).astype(np.float32)
    y = DspSuppressor(1).process(np.concatenate([x, np.zeros(LATENCY, np.float32)])[None])[0]
    assert _attenuation(x, y, 0, SR // 4) > 9.0  # first 250 ms
    assert _attenuation(x, y, SR // 4, SR // 2) > 13.0


def test_improves_snr_of_synthetic_speech(noisy_speechlike):
    x, speech, noise = noisy_speechlike
    gain = _snr_gain(speech, noise, skip=SR // 2)
    assert gain > 2.0, gain  # measured ~3 dB (high input SNR: ~15 dB)


@pytest.mark.parametrize("noise_kind, min_gain", [("white", 6.0), ("pink", 3.5)])  # measured 8.5, 5.2
def test_improves_snr_of_real_speech(noise_kind, min_gain):
    rng = np.random.default_rng(3)
    speech = _speech("LJ001-0012.flac")[: 6 * SR]
    noise = rng.standard_normal(speech.size) if noise_kind == "white" else _pink(speech.size, rng)
    _x, noise = _mix(speech, noise, 5.0)
    gain = _snr_gain(speech, noise)
    assert gain > min_gain, (noise_kind, gain)


def test_real_speech_is_kept_and_noise_removed():
    """Applied to each component separately, the gains computed on the
    5 dB mix keep speech within ~1 dB and take ~10 dB off the noise."""
    rng = np.random.default_rng(5)
    speech = _speech("LJ001-0012.flac")[: 6 * SR]
    _x, noise = _mix(speech, rng.standard_normal(speech.size), 5.0)

    class Recording(DspSuppressor):
        def reset_core(self):
            super().reset_core()
            self.gains = []

        def process_hop(self, hop):
            y = super().process_hop(hop)
            self.gains.append(self.gain[0].copy())
            return y

    sup = Recording(1)
    sup.process((speech + noise)[None].astype(np.float32))
    G = np.array(sup.gains)

    def stft_power(v):
        w = sup._win.astype(np.float64)  # noqa: SLF001
        v = np.concatenate([np.zeros(480), v])
        n = (v.size - 960) // 480 + 1
        frames = np.stack([v[i * 480:i * 480 + 960] * w for i in range(n)])
        return np.abs(np.fft.rfft(frames, axis=1)) ** 2

    m = min(len(G), (speech.size - 480) // 480)
    Ps, Pn = stft_power(speech)[:m], stft_power(noise)[:m]
    G2 = G[:m].astype(np.float64) ** 2
    speech_loss = _db(Ps.sum() / (G2 * Ps).sum())
    noise_loss = _db(Pn.sum() / (G2 * Pn).sum())
    assert speech_loss < 1.5, speech_loss  # measured 0.4 dB
    assert noise_loss > 9.0, noise_loss  # measured 11.5 dB


def test_follows_a_rising_noise_floor_and_spares_held_vowels(rng):
    # noise steps up by 20 dB at 2 s: suppressed again within ~2.5 s
    n = 0.005 * _pink(8 * SR, rng)
    n[2 * SR:] *= 10.0
    x = n.astype(np.float32)
    y = DspSuppressor(1).process(np.concatenate([x, np.zeros(LATENCY, np.float32)])[None])[0]
    assert _attenuation(x, y, 2 * SR, int(2.5 * SR)) < 3.0  # first looks like a signal
    assert _attenuation(x, y, int(4.5 * SR), 8 * SR - LATENCY) > 12.0  # measured 13.5
    # a held vowel (harmonic tone, 1 s, +10 dB) in white noise is kept whole
    t = np.arange(4 * SR) / SR
    vowel = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 30))
    vowel *= (t >= 2.0) & (t < 3.0)
    noise = rng.standard_normal(t.size)
    vowel *= np.sqrt(_energy(noise) / len(t) / (_energy(vowel) / SR) * 10)
    sv = DspSuppressor(1)
    yv = sv.process(np.concatenate([vowel + noise, np.zeros(LATENCY)])[None].astype(np.float32))[0]
    seg = slice(int(2.1 * SR) + LATENCY, 3 * SR + LATENCY)
    out = yv[seg]
    ref = (vowel + noise)[int(2.1 * SR):3 * SR]
    assert abs(_db(_energy(out) / _energy(ref))) < 1.0  # vowel + noise passes at ~0 dB


def test_mute_and_unmute_keep_the_noise_estimate(rng):
    x = 0.02 * rng.standard_normal(8 * SR)
    x[2 * SR:5 * SR] = 0.0  # digital silence (a muted source)
    x = x.astype(np.float32)
    y = DspSuppressor(1).process(np.concatenate([x, np.zeros(LATENCY, np.float32)])[None])[0]
    assert np.all(y[2 * SR + LATENCY + 480:5 * SR + LATENCY - 480] == 0.0)
    assert _attenuation(x, y, 5 * SR, int(5.2 * SR)) > 13.0  # right away after unmute


def test_import_is_numpy_only():
    code = ("import sys, quietcast.models.dsp as d; d.DspSuppressor(2).process("
            "__import__('numpy').zeros((2, 4800), 'float32')); "
            "print(sorted(m for m in ('scipy', 'torch', 'pedalboard', 'soundfile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_aligned_mode_drops_the_hop_buffer_and_keeps_the_output():
    from quietcast.models.base import HOP

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, HOP * 40)) * 0.1).astype(np.float32)
    a = DspSuppressor(channels=2)
    b = DspSuppressor(channels=2)
    b.set_aligned(True)
    assert b.latency == a.latency - HOP == b.algorithmic_latency
    ya = a.process(x)
    yb = np.concatenate([b.process(x[:, i:i + HOP]) for i in range(0, x.shape[1], HOP)], axis=1)
    # the same signal, one hop earlier
    np.testing.assert_array_equal(yb[:, :-HOP], ya[:, HOP:])
    with pytest.raises(ValueError, match="whole hops"):
        b.process(x[:, :100])
