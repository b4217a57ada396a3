"""The ``denoise`` stage at chain rates other than 48 kHz, where its
suppressor runs behind pedalboard's resamplers: the output lands on the
declared latency at every frequency (not a fraction of a frame off), so
whatever meets the dry signal again (a ``mix`` stage, the stage's own
bypass, ``strength`` 0, the engine's background stem) lines up with it.
The live engine (at the JACK server's rate) and offline processing (at
the file's rate) run the same stage. Real pedalboard resamplers and the
real ``dsp`` model (``passthrough`` for the engine's stems)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from pedalboard.io import AudioFile, StreamResampler

from quietcast.bridge import Chain
from quietcast.bridge.offline import process_file
from quietcast.bridge.stages import DenoiseStage, resampled_offset, whole_frame_trim
from quietcast.daemon.config import ChannelConfig
from quietcast.daemon.engine import Engine

FREQS = (200.0, 1000.0, 5000.0, 10_000.0, 15_000.0, 19_000.0)


def stream(proc, x, block):
    return np.concatenate([proc.process(x[:, i:i + block]) for i in range(0, x.shape[1], block)], axis=1)


def noise(sr: int, seconds: float = 2.0, seed: int = 7, top: float | None = None) -> np.ndarray:
    """White noise, RMS 0.1; ``top``: none above this many Hz."""
    x = 0.1 * np.random.default_rng(seed).standard_normal((1, int(sr * seconds)))
    if top is not None:
        X = np.fft.rfft(x)
        X[:, np.fft.rfftfreq(x.shape[1], 1.0 / sr) > top] = 0.0
        x = np.fft.irfft(X, x.shape[1])
    return x.astype(np.float32)


def response(x: np.ndarray, y: np.ndarray, sr: int, latency: int, freqs, nfft: int = 4096):
    """``y`` against ``x`` delayed by ``latency``: at each of ``freqs``, how
    many frames later than that ``y`` is (phase delay) and its gain in dB,
    from the cross spectrum of Hann-windowed, half-overlapping segments
    (the first 0.25 s, the stage filling up, left out)."""
    a = x[0, :x.shape[1] - latency].astype(np.float64)
    b = y[0, latency:].astype(np.float64)
    a, b = a[sr // 4:], b[sr // 4:]
    w = np.hanning(nfft)
    sxy = sxx = 0.0
    for s in range(0, a.size - nfft + 1, nfft // 2):
        A, B = np.fft.rfft(a[s:s + nfft] * w), np.fft.rfft(b[s:s + nfft] * w)
        sxy = sxy + B * np.conj(A)
        sxx = sxx + np.abs(A) ** 2
    h = sxy / sxx
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    k = np.array([int(np.argmin(np.abs(f - q))) for q in freqs])
    delay = -np.angle(h[k]) / (2 * np.pi * f[k]) * sr
    return delay, 20 * np.log10(np.abs(h[k]))


@pytest.mark.parametrize("sr", [44_100, 22_050, 32_000, 88_200, 11_025, 176_400])
def test_the_output_lands_on_the_declared_latency_at_every_frequency(sr):
    """The resampler pair used to leave a fraction of a frame in
    the output: 0.5125 frames early at 44.1 kHz, 0.5469 late at 22.05 kHz,
    0.3333 early at 32 kHz, 0.7125 early at 88.2 kHz, 0.3828 early at
    11.025 kHz, 1.725 late at 176.4 kHz, the same at every frequency (the
    pair is linear-phase)."""
    st = DenoiseStage("nr", sr, 1, model="dsp", strength=0.0)
    x = noise(sr)
    y = stream(st, x, sr // 100)
    freqs = [f for f in FREQS if f < 0.45 * sr]
    delay, gain = response(x, y, sr, st.latency, freqs)
    assert np.abs(delay).max() < 0.01, dict(zip(freqs, delay.round(4)))
    # and the passband is flat: within 0.003 dB from 22.05 to 96 kHz; pedalboard's resamplers ripple
    # more below (0.22 dB at 0.9 x Nyquist at 11.025 kHz) and at 176.4 kHz (0.09 dB at 19.4 kHz)
    flat = 0.01 if 22_050 <= sr <= 96_000 else 0.3
    assert np.abs(gain).max() < flat, dict(zip(freqs, gain.round(4)))
    assert st.resample_error == 0.0  # as the stage says


def test_a_wet_dry_mix_after_denoise_at_strength_0_is_flat():
    """``mix`` at wet 0.5 blends the stage's output with the chain input
    delayed by the declared latency: a fraction of a frame between them
    was a comb filter (-0.59 dB at 10 kHz, -2.3 dB at 19 kHz at 44.1 kHz,
    0.0008 dB or less now)."""
    sr = 44_100
    c = Chain([{"name": "nr", "type": "denoise", "model": "dsp", "strength": 0.0},
               {"name": "blend", "type": "mix", "wet": 0.5}])
    proc = c.processor(sr, 1)
    x = noise(sr)
    y = stream(proc, x, 256)
    freqs = FREQS + (0.9 * sr / 2,)
    _delay, gain = response(x, y, sr, proc.latency, freqs)
    assert np.abs(gain).max() < 0.01, dict(zip(freqs, gain.round(4)))


def test_a_bypass_toggle_at_strength_0_does_not_jump():
    """The stage's bypass is its input delayed by the declared latency; at
    strength 0 its output is the same signal, so switching bypass on and
    off must leave the delayed input (it was 0.2 of full scale off it on
    this 1 + 9 kHz pair of tones, the dry stretch half a frame later than the
    wet one; 2e-5 now)."""
    sr, block = 44_100, 441
    st = DenoiseStage("nr", sr, 1, model="dsp", strength=0.0)
    t = np.arange(sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * t) + 0.25 * np.sin(2 * np.pi * 9000 * t + 1.0))[None].astype(np.float32)
    out = []
    for i in range(0, x.shape[1], block):
        if i == 40 * block:
            st.set_param("bypass", True)
        elif i == 60 * block:
            st.set_param("bypass", False)
        out.append(st.process(x[:, i:i + block]))
    y = np.concatenate(out, axis=1)
    L = st.latency
    want = x[:, :x.shape[1] - L]
    got = y[:, L:]
    s = slice(20 * block - L, None)  # past the resamplers' start
    err = np.abs(got[:, s] - want[:, s]).max()
    assert err < 2e-3, err
    # the dry stretch is bit-exact
    np.testing.assert_array_equal(y[:, 41 * block:60 * block], x[:, 41 * block - L:60 * block - L])


def test_the_engines_background_stem_is_silent_when_nothing_is_removed():
    """The engine's background stem is the input, lined up by the
    suppressor's declared latency, minus the voice estimate. With the
    ``passthrough`` model (which removes nothing) it is silence; at 44.1 kHz
    it was the input's difference across half a frame (-2 dB of this noise
    against the voice stem; -88 dB now), and a ``background_db`` remix was a
    comb filter the same way. (The resamplers' passband ends at 0.92 x Nyquist:
    the noise stops at 0.9.)"""
    sr = 44_100
    eng = Engine([ChannelConfig(name="a", stems=True)], sr, model="passthrough")
    x = noise(sr, 1.0, top=0.9 * sr / 2)
    H = eng.hop
    y = np.concatenate([eng.process_hop(x[:, i:i + H]) for i in range(0, x.shape[1] - H + 1, H)], axis=1)
    voice, background = y[1], y[2]
    s = slice(sr // 4, None)
    rel_db = 10 * np.log10(np.mean(background[s] ** 2) / np.mean(voice[s] ** 2))
    assert rel_db < -60.0, rel_db


@pytest.mark.parametrize("to", [None, 22_050])
def test_a_file_processed_at_its_own_rate_is_aligned_with_it(tmp_path, to):
    """``quietcast process`` runs the chain at the file's rate (or at
    ``--sample-rate``'s) with the same stage, and trims the declared
    latency: at strength 0 a 44.1 kHz file comes back as itself (below the
    resamplers' band edge, 0.9 x Nyquist), not half a frame early (-2 dB of
    this noise then; -80 dB or better now)."""
    sr = 44_100
    x = noise(sr, 2.0, top=0.9 * (to or sr) / 2)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    with AudioFile(str(src), "w", sr, 1, bit_depth=32) as f:
        f.write(x)
    chain = Chain([{"name": "nr", "type": "denoise", "model": "dsp", "strength": 0.0}])
    r = process_file(chain, str(src), str(dst), sample_rate=to)
    assert r.ok, r.error
    with AudioFile(str(dst)) as f:
        y = f.read(f.frames)
    if to:  # the reference: the same file resampled and processed with nothing (the 'dry' chain)
        assert process_file(Chain.load("dry"), str(src), str(tmp_path / "ref.wav"), sample_rate=to).ok
        with AudioFile(str(tmp_path / "ref.wav")) as f:
            x = f.read(f.frames)
    assert y.shape == x.shape
    s = slice(sr // 4, -sr // 4)  # the file's two ends, where the stage fills and empties, left out
    rel_db = 10 * np.log10(np.mean((y[0, s] - x[0, s]) ** 2) / np.mean(x[0, s] ** 2))
    assert rel_db < -50.0, rel_db


def test_every_rate_lands_on_a_whole_frame():
    """The trim that lands the resampler pair on a whole frame, from the
    real resamplers' figures, at common and odd rates (exact: Fractions)."""
    from pedalboard.io import StreamResampler

    from quietcast.bridge.stages import resampled_offset, whole_frame_trim

    for sr in (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 37_800, 44_100, 44_101, 64_000, 88_200, 96_000,
               176_400, 192_000, 352_800, 384_000):
        a, b = StreamResampler(sr, 48_000, 1), StreamResampler(48_000, sr, 1)
        off = resampled_offset(sr, 48_000, a.input_latency, b.input_latency)
        m, k, err = whole_frame_trim(sr, 48_000, off, most_kept=960)
        assert err == 0 and off - m * Fraction(sr, 48_000) == k, sr
    off = resampled_offset(44_100, 48_000, 64.0, 64.0)
    assert off == Fraction(-82, 160)  # 0.5125 frames early
    assert whole_frame_trim(44_100, 48_000, off, most_kept=960) == (-6, 5, 0)  # 6 x 0.91875 = 5.5125
    # with no trim allowed either way it stays where it was
    assert whole_frame_trim(44_100, 48_000, off, most_kept=0, most=0) == (0, -1, Fraction(39, 80))
