"""Shared fixtures. Tests mirror the package tree (bridge/, daemon/, models/).

The real VST3 test plugin (tests/plugins/qcgain, built with Debian's
dpf-source) is built once per session into a temporary folder. Where the
toolchain is missing the plugin tests are skipped on a developer machine,
but fail under CI (CI=true), which installs it: a skipped test is not a
passed one.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from plugins.build import ToolchainMissing, build_qcgain  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _build(tmp_path_factory, channels: int) -> pathlib.Path:
    try:
        return build_qcgain(tmp_path_factory.mktemp(f"qcgain{channels}"), channels=channels)
    except ToolchainMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the plugin toolchain: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def qcgain_vst3(tmp_path_factory) -> pathlib.Path:
    """Path of our stereo test plugin 'QC Test Gain' (.vst3 bundle):
    parameters gain_db [-60, 24], delay_samples [0, 4800] (declared as
    latency), fault (0/1: outputs NaN)."""
    return _build(tmp_path_factory, 2)


@pytest.fixture(scope="session")
def qcgain_mono_vst3(tmp_path_factory) -> pathlib.Path:
    return _build(tmp_path_factory, 1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def noisy_speechlike(rng):
    """3 s of a speech-like signal (gated harmonic bursts) in pink-ish noise,
    48 kHz, shape [1, frames]."""
    sr = 48_000
    t = np.arange(3 * sr) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = (np.sin(2 * np.pi * 2.1 * t) > 0.2).astype(float)
    env = np.convolve(env, np.ones(480) / 480, mode="same")
    speech = 0.2 * voiced * env
    white = rng.standard_normal(t.size)
    pink = np.convolve(white, np.exp(-np.arange(64) / 16.0), mode="same")
    noise = 0.02 * pink / pink.std()
    return (speech + noise)[None, :].astype(np.float32), speech.astype(np.float32), noise.astype(np.float32)
