"""Synthetic test signals shared by fixtures and tests."""

from __future__ import annotations

import numpy as np


def _gated_pitch(f0: float, seconds: float, sr: int):
    """The time axis, the pitch contour ``f0`` +- 30 Hz (0.7 Hz), its
    phase and the gate (on about 2.1 times a second, 10 ms ramps) shared
    by :func:`harmonic_bursts` and :func:`vowel_bursts`."""
    t = np.arange(int(seconds * sr)) / sr
    f0t = f0 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0t) / sr
    env = (np.sin(2 * np.pi * 2.1 * t) > 0.2).astype(float)
    env = np.convolve(env, np.ones(480) / 480, mode="same")
    return t, f0t, phase, env


def _bursts(phase, env):
    """The speech of :func:`harmonic_bursts`: 19 harmonics at 1/k, gated."""
    return 0.2 * sum(np.sin(k * phase) / k for k in range(1, 20)) * env


def _pink(rng, n: int):
    """The noise of both signals: pink-ish, RMS 0.02."""
    white = rng.standard_normal(n)
    pink = np.convolve(white, np.exp(-np.arange(64) / 16.0), mode="same")
    return 0.02 * pink / pink.std()


def harmonic_bursts(f0: float, rng, seconds: float = 3.0, sr: int = 48_000):
    """A speech-like signal: gated harmonic bursts (19 harmonics, pitch
    ``f0`` +- 30 Hz) in pink-ish noise. Returns ``(mix[1, N], speech[N],
    noise[N])``, float32."""
    t, _f0t, phase, env = _gated_pitch(f0, seconds, sr)
    speech = _bursts(phase, env)
    noise = _pink(rng, t.size)
    return (speech + noise)[None, :].astype(np.float32), speech.astype(np.float32), noise.astype(np.float32)


#: formants (F1-F4, Hz) of five vowels of an adult woman (i, e, a, o, u;
#: after Peterson and Barney 1952), and their bandwidths
VOWEL_FORMANTS = np.array([[310, 2790, 3310, 4500], [560, 2320, 2950, 4300], [850, 1220, 2810, 4200],
                           [590, 920, 2710, 4100], [370, 950, 2670, 4000]], np.float64)
FORMANT_BANDWIDTHS = np.array([80, 110, 160, 250], np.float64)


def vowel_bursts(f0: float, rng, seconds: float = 3.0, sr: int = 48_000, formant_scale: float = 1.0):
    """:func:`harmonic_bursts` with a vocal tract: the same gated harmonic
    source (pitch ``f0`` +- 30 Hz, 1/k harmonics up to 9 kHz) through four
    formant resonances that glide from vowel to vowel every 0.24 s
    (:data:`VOWEL_FORMANTS` times ``formant_scale``: 1.15 for a child-like
    tract), in the same noise at the same SNR as :func:`harmonic_bursts`
    at that ``f0``. Returns ``(mix[1, N], speech[N], noise[N])``, float32."""
    t, f0t, phase, env = _gated_pitch(f0, seconds, sr)
    seq = rng.integers(0, len(VOWEL_FORMANTS), int(seconds / 0.24) + 2)
    pos = t / 0.24
    i0 = np.floor(pos).astype(int)
    glide = 0.5 - 0.5 * np.cos(np.pi * np.clip((pos - i0 - 0.6) / 0.4, 0.0, 1.0))  # last 40 % of each vowel
    F = (VOWEL_FORMANTS[seq[i0]] * (1 - glide[:, None]) + VOWEL_FORMANTS[seq[i0 + 1]] * glide[:, None]) * formant_scale
    voiced = np.zeros_like(t)
    for k in range(1, int(9000 // (f0 - 30)) + 1):
        fk = k * f0t
        h = np.ones_like(t)
        for j, bw in enumerate(FORMANT_BANDWIDTHS):  # two-pole resonance, 1 at 0 Hz
            fj = F[:, j]
            h *= (fj ** 2 + (bw / 2) ** 2) / np.sqrt((fj ** 2 - fk ** 2 + (bw / 2) ** 2) ** 2 + (bw * fk) ** 2)
        voiced += h / k * np.sin(k * phase)
    noise = _pink(rng, t.size).astype(np.float32)
    ref = _bursts(phase, env).astype(np.float32)  # the level of harmonic_bursts' speech: the same SNR
    speech = voiced * env
    speech *= np.sqrt(np.mean(ref.astype(np.float64) ** 2) / np.mean(speech ** 2))
    return (speech + noise)[None, :].astype(np.float32), speech.astype(np.float32), noise
