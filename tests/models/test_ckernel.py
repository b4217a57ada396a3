"""The compiled streaming step (models/qcstep.c, models/ckernel.py) against
the torch step it reimplements: the same output, stems, meter and state,
on the shipped bundles and on every architecture option the C step
supports; its FFT against numpy; which step runs and why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quietcast.models import ckernel
from quietcast.models.bundle import save_bundle
from quietcast.models.neural import NeuralSuppressor
from test_neural import _random_net  # varied gains, a non-zero refinement head

H = 480


def _signal(rng, channels: int, n: int) -> np.ndarray:
    """Noise, gated harmonic bursts at a different pitch per channel, a
    loud stretch, and digital silence at the start of one channel and in
    the middle of another (the state holds there)."""
    t = np.arange(n) / 48_000.0
    x = np.empty((channels, n), np.float32)
    for c in range(channels):
        f0 = 110.0 + 37.0 * c
        v = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12)) * (np.sin(2 * np.pi * 2.1 * t) > 0.2)
        x[c] = 0.1 * v + 0.03 * (c + 1) * rng.standard_normal(n)
    x[:, n // 2:n // 2 + 4800] *= 20.0  # loud: the clamps
    if channels > 1:
        x[1, :7 * H + 100] = 0.0  # starts late, mid-hop (warm start)
    x[0, 30 * H + 17:45 * H] = 0.0  # a muted stretch
    return x


def test_c_step_is_built():
    """CI has a C compiler: the install must have built the extension (an
    install without one runs the torch step, but not here)."""
    lib, where = ckernel.library()
    assert lib is not None, where
    assert where.endswith(".so")


def test_fft_matches_numpy(rng):
    s = NeuralSuppressor(1, kernel="c")
    for scale in (1e-6, 1.0, 30.0):
        x = (scale * rng.standard_normal(2 * H)).astype(np.float32)
        X = np.fft.rfft(x.astype(np.float64))
        Xc = s._cstep.rfft(x)
        assert Xc.shape == (H + 1,)
        assert np.max(np.abs(Xc - X)) <= 2e-6 * np.max(np.abs(X))
        assert Xc[0].imag == 0.0 and Xc[H].imag == 0.0
        y = s._cstep.irfft(X.astype(np.complex64))
        assert np.max(np.abs(y - x)) <= 2e-6 * np.max(np.abs(x))
    X = np.fft.rfft(rng.standard_normal(2 * H)).astype(np.complex64)
    X[0] += 5j  # pocketfft's c2r ignores the imaginary parts of DC and Nyquist; so must the C step
    X[H] -= 3j
    assert np.max(np.abs(s._cstep.irfft(X) - np.fft.irfft(X, n=2 * H))) <= 1e-6


def _compare(bundle, channels: int, rng, seconds: float = 2.0, pitch_filter=None, pitch_filter_later=None):
    """The C and torch steps side by side on the same blocks. Without the
    pitch filter every sample agrees within 1e-4. With it, the pitch
    search picks the lag that best matches the past: where two lags match
    almost equally (in noise), float rounding can make the two steps pick
    different ones, so the outputs are held to agree within 70 dB (they do
    within about 80 dB) and the meters within 0.5 dB."""
    x = _signal(rng, channels, int(seconds * 48_000))
    a = NeuralSuppressor(channels, bundle=bundle, kernel="c", pitch_filter=pitch_filter)
    b = NeuralSuppressor(channels, bundle=bundle, kernel="torch", pitch_filter=pitch_filter)
    assert a._cstep is not None and b._cstep is None
    on = a.pitch_filter > 0.0 or bool(pitch_filter_later)
    blocks = [1000, 480, 37, 4803]
    pos = i = 0
    outs = []
    while pos < x.shape[1]:
        n = blocks[i % len(blocks)]
        if i == 5:  # a strength change mid-stream
            a.set_param("strength_db", 9.0)
            b.set_param("strength_db", 9.0)
        if i == 9 and pitch_filter_later is not None:  # the pitch filter changed mid-stream
            a.set_param("pitch_filter", pitch_filter_later)
            b.set_param("pitch_filter", pitch_filter_later)
        outs.append(np.stack(a.process_stems(x[:, pos:pos + n]) + b.process_stems(x[:, pos:pos + n])))
        assert np.allclose(a.gain_reduction_db, b.gain_reduction_db, atol=0.5 if on else 1e-3)
        pos += n
        i += 1
    va, ga, vb, gb = np.concatenate(outs, axis=2)
    if on:
        for ea, eb in ((va, vb), (ga, gb)):
            err = np.sum((ea - eb) ** 2, axis=1)
            assert np.all(np.sum(eb ** 2, axis=1) >= 1e7 * err + 1e-12), err
    else:
        worst = max(float(np.max(np.abs(va - vb))), float(np.max(np.abs(ga - gb))))
        assert worst <= 1e-4, worst
    for name in ("_m", "_u", "_fl", "_h1", "_h2", "_prev", "_ola", "_pbuf"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert torch.allclose(ta, tb, atol=1e-4, rtol=1e-4), name
    assert torch.equal(a._fresh, b._fresh)
    # the suppressor really works on this signal: not a test of two silent outputs
    assert float(np.max(np.abs(va))) > 0.01


@pytest.mark.parametrize("bundle", ["default", "clean"])
@pytest.mark.parametrize("channels", [1, 3, 11])
def test_c_step_equals_torch_step_on_shipped_bundles(bundle, channels, rng):
    """1 channel; 3 (tiles of 2 and 1); 11 (a block of 8 and one of 3)."""
    _compare(bundle, channels, rng)


@pytest.mark.parametrize("fine_bins,harm_bins,floor_input,warm_start",
                         [(0, 0, 0, 0), (48, 0, 0, 0), (0, 40, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (64, 96, 1, 1)])
def test_c_step_equals_torch_step_every_option(tmp_path, rng, fine_bins, harm_bins, floor_input, warm_start):
    net = _random_net(3, fine_bins=fine_bins, harm_bins=harm_bins, floor_input=floor_input, warm_start=warm_start,
                      hidden=72, enc_dim=40, df_enc_dim=24)  # widths that are not multiples of the tiles
    save_bundle(net, {"model": "neural", "arch": net.arch}, tmp_path / "b")
    _compare(tmp_path / "b", 5, rng, seconds=1.5)


@pytest.mark.parametrize("pitch_filter,later", [(0.0, 0.7), (1.0, 0.0), (0.4, None)])
@pytest.mark.parametrize("channels", [1, 11])
def test_c_step_equals_torch_step_with_the_pitch_filter(rng, pitch_filter, later, channels):
    """The pitch filter on, off, and switched on or off mid-stream (the
    past-signal buffer is kept whether it is on or not)."""
    _compare("default", channels, rng, pitch_filter=pitch_filter, pitch_filter_later=later)


def test_c_step_pitch_search_finds_the_period_and_the_filter_acts(rng):
    """The C step's filter changes the output where the torch step's does,
    by as much: a voiced signal in noise, with the filter off and at full
    strength."""
    x = _signal(rng, 1, 48_000)
    outs = {}
    for k in (0.0, 1.0):
        for kernel in ("c", "torch"):
            outs[kernel, k] = NeuralSuppressor(1, kernel=kernel, pitch_filter=k).process(x)
    d_c = outs["c", 1.0] - outs["c", 0.0]
    d_t = outs["torch", 1.0] - outs["torch", 0.0]
    assert float(np.sqrt(np.mean(d_c ** 2))) > 0.05 * float(np.sqrt(np.mean(outs["c", 0.0] ** 2)))
    assert np.max(np.abs(d_c - d_t)) <= 1e-4


def test_c_step_strength_zero_is_the_delayed_input(rng):
    x = _signal(rng, 2, 48_000)
    y = NeuralSuppressor(2, kernel="c", strength_db=0.0).process(x)
    assert np.array_equal(y[:, 960:], x[:, :-960])


def test_c_step_reset_and_state(rng):
    x = _signal(rng, 2, 24_000)
    s = NeuralSuppressor(2, kernel="c")
    first = s.process(x)
    s.process(np.ones((2, 3000), np.float32))
    s.reset()
    assert s._cstep is not None
    assert np.array_equal(s.process(x), first)


def test_which_step_runs_and_why(tmp_path, rng):
    assert NeuralSuppressor(1).backend == "cpu"  # the shipped default: the C step
    assert NeuralSuppressor(1, kernel="torch").backend == "cpu [torch step: requested]"
    net = _random_net(1, pitch_input=1)
    save_bundle(net, {"model": "neural", "arch": net.arch}, tmp_path / "p")
    s = NeuralSuppressor(1, bundle=tmp_path / "p")
    assert s.backend == "cpu [torch step: the pitch input is torch-only]"
    assert np.max(np.abs(s.process(_signal(rng, 1, 9600)))) > 0.0
    with pytest.raises(ValueError, match="C step cannot run bundle .*pitch input is torch-only"):
        NeuralSuppressor(1, bundle=tmp_path / "p", kernel="c")
    with pytest.raises(ValueError, match="kernel 'fast': must be 'auto', 'c' or 'torch'"):
        NeuralSuppressor(1, kernel="fast")


def test_c_step_checks_the_hop(rng):
    s = NeuralSuppressor(2, kernel="c")
    with pytest.raises(ValueError, match=r"hop of shape \(1, 480\), expected \(2, 480\)"):
        s.process_hop(np.zeros((1, H), np.float32))
    y = s.process_hop(_signal(rng, 2, H).astype(np.float64))  # other dtypes are converted
    assert y.shape == (2, H) and y.dtype == np.float32


def test_without_the_extension_the_torch_step_runs_and_says_why(monkeypatch, rng):
    """An install without a C compiler has no _qcstep: the torch step runs,
    with the reason in ``backend``; ``kernel="c"`` refuses, naming it."""
    import importlib.util

    real = importlib.util.find_spec

    def without_extension():
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.endswith("._qcstep") else real(name, *a))
        monkeypatch.setattr(ckernel, "_lib", None)

    without_extension()
    s = NeuralSuppressor(1)
    assert s.backend == ("cpu [torch step: quietcast.models._qcstep is not built (models/qcstep.c is compiled when "
                         "quietcast is installed; install a C compiler and re-install)]")
    x = _signal(rng, 1, 9600)
    monkeypatch.undo()
    assert np.max(np.abs(s.process(x) - NeuralSuppressor(1).process(x))) <= 1e-5
    without_extension()
    with pytest.raises(ValueError, match="_qcstep is not built"):
        NeuralSuppressor(1, kernel="c")
    monkeypatch.undo()
    ckernel._lib = None  # the next caller loads it again
