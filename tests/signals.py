"""Synthetic test signals shared by fixtures and tests."""

from __future__ import annotations

import numpy as np


def harmonic_bursts(f0: float, rng, seconds: float = 3.0, sr: int = 48_000):
    """A speech-like signal: gated harmonic bursts (19 harmonics, pitch
    ``f0`` +- 30 Hz) in pink-ish noise. Returns ``(mix[1, N], speech[N],
    noise[N])``, float32."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 + 30 * np.sin(2 * np.pi * 0.7 * t)) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = (np.sin(2 * np.pi * 2.1 * t) > 0.2).astype(float)
    env = np.convolve(env, np.ones(480) / 480, mode="same")
    speech = 0.2 * voiced * env
    white = rng.standard_normal(t.size)
    pink = np.convolve(white, np.exp(-np.arange(64) / 16.0), mode="same")
    noise = 0.02 * pink / pink.std()
    return (speech + noise)[None, :].astype(np.float32), speech.astype(np.float32), noise.astype(np.float32)
