"""The ``neural`` suppressor: a small causal recurrent network, 48 kHz full band.

Signal path per 10 ms hop (480 samples), every channel in one batch:

1. STFT analysis exactly as in :mod:`quietcast.models.dsp`: periodic
   sqrt-Hann window of 960 samples, hop 480, 960-point real FFT (481 bins,
   50 Hz apart). Synthesis with the same window and overlap-add.
2. Features (causal, per channel): the log power of 32 triangular ERB-like
   bands (band centres 2 bins = 100 Hz apart below 1.2 kHz, ERB-spaced
   above, up to 24 kHz) in two forms: relative to an exponential running
   mean (time constant 1 s) and absolute; and the complex spectrum of the
   lowest 64 bins (0-3.2 kHz, harmonics resolved) divided by the square
   root of a running mean of its power ("unit norm", as in DeepFilterNet).
   Optional (``harm_bins > 0``): the fine structure of the lowest
   ``harm_bins`` bins, their log power minus its mean over those bins (the
   harmonic comb of a voice, whatever its level and spectral tilt), fed to
   the band encoder as well (96 bins, 0-4.75 kHz, in the shipped bundle).
   Optional (``floor_input``, 0 or 1): each band's level above its noise
   floor, tracked per channel with a fast fall and a slow rise (it sits
   near the level of the band's quietest frames), also to the band encoder.
   Optional (``pitch_input``, 0 or 1): the periodicity of the signal, as
   in RNNoise's pitch features. Over a 40 ms buffer of the past signal
   (rebuilt by overlap-add of the last four windowed frames) the lag of
   50-500 Hz (96-960 samples) at which the windowed frame best matches
   the past is found by normalised cross-correlation (at half rate over
   every lag, by FFTs, then at full rate over the three lags around the
   best one: :func:`_pitch_search`); the
   features are that best correlation and, per band, the correlation of
   the frame's spectrum with the spectrum of the windowed past frame one
   period back (near 1 in a band that a voice's harmonics fill, near 0 in
   noise). 33 values, to the band encoder. It resolves periods that the
   20 ms window's 50 Hz bins cannot (voices below about 100 Hz), and
   shows periodicity in bands above the fine-structure input's 4.75 kHz.
   Not in a shipped bundle: it costs about 60 % more per hop at one
   channel, and its one trained arm was slow to cut a strongly periodic
   noise bed (the default bundle's model card, stage 14).
   ``warm_start`` (0 or 1): the two running means start from a channel's
   first sounding frame (1) or from fixed values (0: -30 dB and 1e-3).
   From fixed values a stream whose spectrum is far from them (a
   high-passed noise bed, say) is under-suppressed until the means have
   caught up, most of a second.
3. Network: two small linear encoders (band features -> 96, low-band
   complex -> 64, ReLU), two GRUs of 160 units (the second one residual),
   and a head of 32 band gains (sigmoid), interpolated to the 481 bins with
   the same triangular filterbank (RNNoise style): ``V = G * X``. 328,768
   parameters with the default hyper-parameters (:data:`DEFAULT_ARCH`);
   the shipped bundle adds the fine-structure input of 96 bins and has
   GRUs of 224 units (592,704; 337,984 with 160 units, up to stage 14), and
   since session 21 the pause head (592,929).
   Optional (``df_order > 0``; off in the shipped bundle): a causal complex
   "deep filter" of that order on the lowest 64 bins, added as a residual,
   ``V = G*X + sum_i C_i * X[t-i]`` (``|Re C|, |Im C| < 1``, zero at
   initialisation). In a one-CPU-hour training run it learnt a smoothing
   that cost more speech fidelity at high SNR than it removed noise at low
   SNR, so the default bundle does without it.
   Optional (``fine_bins > 0``): a per-bin refinement of the gains of the
   lowest ``fine_bins`` bins, where the 50 Hz bins resolve the harmonics
   of a voice and 100 Hz-wide bands cannot:
   ``G_k = sigmoid(logit(G_k) + q_k)``, ``q = Linear([GRU output, low-band
   encoder output])``, zero at initialisation (so a bundle fine-tuned with
   it starts from its parent's output exactly).
   Pitch filter (``pitch_filter``, 0..1, a runtime parameter; the shipped
   bundles' default is 0.5, 0 turns it off): RNNoise's comb filter between
   a voice's harmonics, applied to ``X`` before the gains (:func:`_comb`).
   The pitch search above finds the period; per band, where the frame is
   more periodic than its gain says the voice is, a share of the windowed
   past frame one period back is added (harmonics add up, the noise
   between them does not), and each band is scaled back to its power
   before the filter, so the gains still set the level. It needs no
   weights and adds no latency (it reads only the past).
4. Output: the voice estimate ``v`` (inverse STFT of ``V``); the background
   ``b = x_delayed - v``; the suppressor's output is ``v + a * b`` with
   ``a = max(10**(-strength_db/20), 10**(background_db/20))``: the
   background is never attenuated by more than ``strength_db`` (the same
   "maximum attenuation" meaning as the ``dsp`` suppressor), and
   ``background_db`` remixes it at a chosen level (``-inf``: only the
   ``strength_db`` floor remains). With ``a == 1`` (``strength_db=0`` or
   ``background_db=0``) the output is the input delayed, bit-exact.
5. Pause gate (optional, ``pause_head`` 1; a runtime parameter
   ``pause_db``, 0..60 dB, 0 = off and bit-exact with the same network
   without the head): a logistic unit on the GRU outputs gives each frame
   a probability ``p`` that a voice is present (fitted on the frozen
   network by ``train --fit-pause``). Below the threshold ``t``
   (``pause_threshold``, 0.01..1, the bundle's own by default; higher
   closes more eagerly) the floor falls a further
   ``pause_db * (t - p) / t``; the gate closes by at most 2 dB a hop,
   opens at once, and its gain is ramped linearly across each hop (no
   step). A frame whose voice estimate rises 12 dB above its level in the
   pauses opens it too (the head is often a frame or two late at a word's
   first syllable). ``pause_db`` and ``pause_threshold`` are live and can
   differ per channel (:meth:`NeuralSuppressor.set_channel_pause_db`,
   :meth:`NeuralSuppressor.set_channel_pause_threshold`). The output becomes
   ``s * v + max(s * floor, remix) * b`` (``s`` the gate's gain): it
   deepens the pauses below the ``strength_db``
   floor, where the network's gains leave noise a listener hears between
   words, and leaves a remixed background (``background_db``) at its
   level. The stems are not gated: voice + background is still the input.

Digital silence (a frame whose windowed mean square is below
:data:`SILENT_MS`, about -123 dBFS: a muted or not yet started source)
leaves every state as it was, so a channel that starts, or comes back,
mid-hop behaves as if the silence had not been there. (The pitch search's
40 ms signal buffer is the exception: it holds the signal, silence
included.)

Latency, exactly: algorithmic latency ``window - hop`` = 480 samples (10 ms;
the network itself is causal, no look-ahead frames), plus the 480-sample hop
buffer of :class:`~quietcast.models.base.HopSuppressor`: **960 samples =
20 ms at 48 kHz**, the same as the ``dsp`` suppressor.

torch is imported by this module (and only by it, bundle loading and
training): ``import quietcast.models`` stays light. Inference runs under
``torch.inference_mode`` on preallocated tensors; the number of threads is
the caller's business (``torch.set_num_threads``).

Streaming on the CPU, each hop of all channels is one call into the C step
(:mod:`quietcast.models.ckernel`, ``models/qcstep.c``): the same arithmetic
as :func:`_fused_step`, on the same state tensors, without the ~60 torch
operator dispatches a hop that cost the torch step about 0.3 ms (the C step
takes about 0.05 ms at one channel). The torch step is the reference and
runs where the C step cannot: an install without a C compiler, a bundle
with the deep filter or the pitch input, or ``kernel="torch"``;
:attr:`NeuralSuppressor.backend` says which and why.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from .base import HOP, SAMPLE_RATE, HopSuppressor, sanitize

__all__ = ["QCNet", "NeuralSuppressor", "DEFAULT_ARCH", "erb_filterbank", "resolve_device", "pause_gains"]

log = logging.getLogger("quietcast.models.neural")

#: architecture hyper-parameters (stored in a bundle's config.json "arch")
DEFAULT_ARCH = {
    "sample_rate": SAMPLE_RATE,
    "hop": HOP,
    "window": 2 * HOP,
    "n_bands": 32,
    "min_band_bins": 2,
    "df_bins": 64,
    "df_order": 0,
    "fine_bins": 0,
    "harm_bins": 0,
    "floor_input": 0,
    "enc_dim": 96,
    "df_enc_dim": 64,
    "hidden": 160,
    "norm_tau_s": 1.0,
    "warm_start": 0,
    "pitch_input": 0,
    "pause_head": 0,
}

_LE_EPS = 1e-10  # band power floor (-100 dB)
_LE_MAX = 80.0  # dB; clamps absurd inputs (the input is already clipped to +-64)
_M_INIT = -30.0  # running-mean initial value (dB)
_U_INIT = 1e-3  # unit-norm running power initial value
_XN_MAX = 8.0
#: the band noise-floor tracker (``floor_input``), in dB per frame: it
#: starts at ``_F_INIT``, falls towards a lower band level by ``_F_FALL``
#: of the gap (time constant 45 ms) and rises towards a higher one by
#: ``_F_RISE`` of the gap (5 s); the feature is the level above it,
#: clamped below at ``_F_MIN`` dB
_F_INIT = _LE_MAX
_F_FALL = 0.2
_F_RISE = 0.002
_F_MIN = -20.0
_G_MIN = 1e-6  # gain clamp before the logit of the per-bin refinement
#: a frame whose windowed mean square is below this (about -123 dBFS) is
#: "digital silence": it does not update any state (running means, GRUs)
SILENT_MS = 5e-13
#: pitch search (the pitch input, the pitch filter): shortest period
#: searched (96 samples: 500 Hz; the longest is two hops, 960 samples:
#: 50 Hz), and the floors under the products of energies that normalise
#: the correlations
_PITCH_MIN_T = 96
_PITCH_EPS = 1e-12
_PITCH_EPS_B = 1e-24
#: the pause gate (``pause_head`` 1, runtime parameter ``pause_db``): a hop
#: whose speech probability ``p`` (the pause head's sigmoid) is below the
#: threshold ``t`` (runtime parameter ``pause_threshold``; by default a
#: bundle's ``defaults.pause_threshold``, else ``_PAUSE_THRESHOLD``) is a pause, whose output falls a further
#: ``pause_db * (t - p) / t`` (all of ``pause_db`` at ``p = 0``); the gate
#: opens at once (within the hop) and closes ``_PAUSE_CLOSE_DB`` a hop
#: (30 dB in 150 ms)
_PAUSE_THRESHOLD = 0.05
_PAUSE_CLOSE_DB = 2.0
#: the gate's onset rule: a frame whose voice estimate (its energy, dB)
#: rises more than ``_PAUSE_ONSET_DB`` above the level the voice estimate
#: had in the pauses (a running mean over the pause frames, ``_PAUSE_PL_A``
#: of the gap a frame) opens the gate at once, whatever the head says:
#: the head is often a frame or two late at a word's first syllable
_PAUSE_ONSET_DB = 12.0
_PAUSE_PL_A = 0.05
_PAUSE_PL_NONE = 200.0  # "no pause level yet" (any frame's level is below 100 dB)
_DB_LN = math.log(10.0) / 20.0  # 10 ** (x / 20) = exp(x * _DB_LN)


def erb_filterbank(n_bands: int = 32, sample_rate: int = SAMPLE_RATE, window: int = 2 * HOP,
                   min_bins: int = 2) -> np.ndarray:
    """Triangular band filterbank ``[n_bands, window//2+1]``: each bin's
    weights over the bands sum to 1 (so ``gains @ fb`` interpolates band
    gains to bins). Centres ERB-spaced from 0 Hz to Nyquist, at least
    ``min_bins`` bins apart."""
    n_bins = window // 2 + 1
    df = sample_rate / window

    def erb(f):
        return 21.4 * np.log10(1.0 + 0.00437 * f)

    def ierb(e):
        return (10 ** (e / 21.4) - 1.0) / 0.00437

    c = np.round(ierb(np.linspace(0.0, erb(sample_rate / 2), n_bands)) / df).astype(np.int64)
    c[0] = 0
    for i in range(1, n_bands):
        c[i] = max(c[i], c[i - 1] + min_bins)
    if c[-1] > n_bins - 1:
        raise ValueError(f"{n_bands} bands of >= {min_bins} bins do not fit in {n_bins} bins")
    c[-1] = n_bins - 1
    fb = np.zeros((n_bands, n_bins), np.float64)
    for i in range(n_bands - 1):
        lo, hi = c[i], c[i + 1]
        k = np.arange(lo, hi + 1)
        w = (hi - k) / (hi - lo)
        fb[i, lo:hi + 1] += w
        fb[i + 1, lo:hi + 1] += 1.0 - w
    # a bin between two centres got w + (1 - w) = 1; an interior centre bin
    # was visited by the triangles on both sides (1 + 1): renormalise.
    fb /= fb.sum(axis=0, keepdims=True)
    return fb.astype(np.float32)


class QCNet(nn.Module):
    """The network. :meth:`forward` runs whole sequences (training, offline);
    the streaming path (:func:`_fused_step`, used by
    :class:`NeuralSuppressor`) runs one frame for many channels on the same
    weights. Both compute the same function (to float rounding: the tests
    hold them within 1e-6)."""

    def __init__(self, **arch):
        super().__init__()
        a = dict(DEFAULT_ARCH)
        unknown = set(arch) - set(a)
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        a.update(arch)
        self.arch = a
        self.n_bins = a["window"] // 2 + 1
        nb, kd, od, h = a["n_bands"], a["df_bins"], a["df_order"], a["hidden"]
        self.n_bands, self.df_bins, self.df_order, self.hidden = nb, kd, od, h
        fb = torch.from_numpy(erb_filterbank(nb, a["sample_rate"], a["window"], a["min_band_bins"]))
        self.register_buffer("fb_interp", fb, persistent=False)  # [nb, F], columns sum to 1
        fb_e = (fb / fb.sum(dim=1, keepdim=True)).t().contiguous()  # [F, nb]: mean power per band
        self.register_buffer("fb_energy", fb_e, persistent=False)
        self.alpha = float(math.exp(-a["hop"] / (a["sample_rate"] * a["norm_tau_s"])))
        hb = a["harm_bins"]
        if hb < 0 or hb > self.n_bins:
            raise ValueError(f"harm_bins {hb} out of range 0..{self.n_bins} (the STFT bins)")
        self.harm_bins = hb
        if a["floor_input"] not in (0, 1):
            raise ValueError(f"floor_input {a['floor_input']!r} must be 0 or 1")
        self.floor_input = int(a["floor_input"])
        if a["warm_start"] not in (0, 1):
            raise ValueError(f"warm_start {a['warm_start']!r} must be 0 or 1")
        self.warm_start = int(a["warm_start"])
        if a["pitch_input"] not in (0, 1):
            raise ValueError(f"pitch_input {a['pitch_input']!r} must be 0 or 1")
        self.pitch_input = int(a["pitch_input"])
        if self.pitch_input and a["window"] != 2 * a["hop"]:
            raise ValueError("pitch_input needs window = 2 * hop")
        self.enc = nn.Linear(2 * nb + hb + nb * self.floor_input + (nb + 1) * self.pitch_input, a["enc_dim"])
        self.df_enc = nn.Linear(2 * kd, a["df_enc_dim"])
        self.gru1 = nn.GRU(a["enc_dim"] + a["df_enc_dim"], h, batch_first=True)
        self.gru2 = nn.GRU(h, h, batch_first=True)
        self.gain = nn.Linear(h, nb)
        self.df = nn.Linear(h, od * kd * 2) if od > 0 else None
        nf = a["fine_bins"]
        if nf < 0 or nf > kd:
            raise ValueError(f"fine_bins {nf} out of range 0..df_bins ({kd})")
        self.fine_bins = nf
        self.fine = nn.Linear(h + a["df_enc_dim"], nf) if nf > 0 else None
        if a["pause_head"] not in (0, 1):
            raise ValueError(f"pause_head {a['pause_head']!r} must be 0 or 1")
        self.pause_head = int(a["pause_head"])
        # the pause head: the logit of "speech present" in this frame (the gate, not the gains, reads it)
        self.pause = nn.Linear(h, 1) if self.pause_head else None
        with torch.no_grad():
            for head in (self.df, self.fine):
                if head is not None:  # zero at initialisation: the band gains alone
                    head.weight.zero_()
                    head.bias.zero_()
            self.gain.bias.fill_(1.0)  # start near "let everything through"

    # ------------------------------------------------------------ features

    def _heads(self, y: torch.Tensor, X: torch.Tensor, Xl_hist: list[torch.Tensor], d: torch.Tensor, comb=None):
        g = torch.sigmoid(self.gain(y))
        G = g @ self.fb_interp
        if self.fine is not None:
            G = _refine(G, self.fine(torch.cat([y, d], dim=-1)))
        Xv = X
        if comb is not None:  # the pitch filter, between the gains and the spectrum they apply to
            Pr, Pb, k = comb
            eps = torch.full((self.n_bands,), _LE_EPS, dtype=Pb.dtype, device=Pb.device)
            # g detached: the filter is a fixed pre-filter for the gradient (its sqrt has no
            # derivative at 0); the gains learn what it leaves
            Xv = torch.view_as_complex(_comb(torch.view_as_real(X), Pr, Pb, g.detach(), self.fb_energy,
                                             self.fb_interp, eps, k).contiguous())
        if self.df is None:
            return Xv * G, g
        c = torch.tanh(self.df(y))
        c = c.unflatten(-1, (self.df_order, self.df_bins, 2))
        V = Xv * G
        kd = self.df_bins
        acc = None
        for i, xi in enumerate(Xl_hist):
            ci = torch.complex(c[..., i, :, 0], c[..., i, :, 1])
            term = ci * xi
            acc = term if acc is None else acc + term
        V = torch.cat([V[..., :kd] + acc, V[..., kd:]], dim=-1)
        return V, g

    def _ema(self, x: torch.Tensor, init: float, silent: torch.Tensor | None = None) -> torch.Tensor:
        """Exponential running mean over time of ``x[B, T, K]`` (time
        constant ``norm_tau_s``), held on ``silent`` frames; it starts from
        ``init``, or with ``warm_start`` from each row's first frame that
        is not silent."""
        a = self.alpha
        m = torch.full((x.shape[0], x.shape[2]), init, dtype=x.dtype, device=x.device)
        fresh = None
        if self.warm_start:
            if silent is None:
                m = x[:, 0]
            else:
                fresh = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        out = []
        for t in range(x.shape[1]):
            if silent is not None:
                st = silent[:, t, None]
                if fresh is not None:
                    m = torch.where(fresh & ~st, x[:, t], m)
                    fresh = fresh & st
                m = torch.where(st, m, a * m + (1.0 - a) * x[:, t])
            else:
                m = a * m + (1.0 - a) * x[:, t]
            out.append(m)
        return torch.stack(out, 1)

    def forward(self, X: torch.Tensor, silent: torch.Tensor | None = None, frames: torch.Tensor | None = None,
                pitch_filter: float = 0.0, pause: bool = False):
        """``X``: complex STFT ``[B, T, F]`` (frames as in the streaming
        path, starting from zero state). Returns the voice spectrum ``V``
        ``[B, T, F]`` and the band gains ``[B, T, n_bands]``; with
        ``pause`` (a bundle with the pause head only) also the pause head's
        logit of "speech present" per frame, ``[B, T]``.

        ``frames`` (``[B, T, window]``, optional, read only with the pitch
        input or the pitch filter): the windowed time frames whose FFT is
        ``X``; by default the inverse FFT of ``X`` (the same to float
        rounding).

        ``pitch_filter`` (0..1): the strength of the pitch filter
        (:func:`_comb`) applied to ``X`` before the gains; 0 (default)
        leaves it out.

        ``silent`` (bool ``[B, T]``, optional): frames of digital silence,
        which leave every state (running means, GRU states) as it was, as
        in the streaming path. Training passes None (the shipped bundle
        was trained so)."""
        B, T, F = X.shape
        P = X.real.square() + X.imag.square()
        Pb = P @ self.fb_energy + _LE_EPS  # band powers
        lE = (10.0 * torch.log10(Pb)).clamp_(max=_LE_MAX)
        kd = self.df_bins
        Pl = P[..., :kd]
        hold = silent is not None and bool(silent.any())
        lead = _leading(silent) if hold else None
        if lead is not None:
            # Silence only before each sequence starts (every training
            # example): run each one from its first sound, with the fused
            # GRU, and put the held initial states in front. The same
            # operations in the same order as the frame-by-frame hold.
            idx, back, keep = lead
            M = _unroll(self._ema(_roll(lE, idx), _M_INIT), back, keep, _M_INIT)
            U = _unroll(self._ema(_roll(Pl, idx), _U_INIT), back, keep, _U_INIT)
            Fl = _unroll(_floor(_roll(lE, idx)), back, keep, _F_INIT) if self.floor_input else None
        elif hold:
            M = self._ema(lE, _M_INIT, silent)
            U = self._ema(Pl, _U_INIT, silent)
            Fl = _floor(lE, silent) if self.floor_input else None
        else:
            M = self._ema(lE, _M_INIT)
            U = self._ema(Pl, _U_INIT)
            Fl = _floor(lE) if self.floor_input else None
        f = torch.cat([(lE - M) * 0.05, (lE + 30.0) * 0.025], dim=-1)
        if self.harm_bins:
            f = torch.cat([f, _harm(P[..., :self.harm_bins])], dim=-1)
        if Fl is not None:
            f = torch.cat([f, (lE - Fl).clamp(min=_F_MIN) * 0.05], dim=-1)
        Pr = None
        if self.pitch_input or pitch_filter:
            with torch.no_grad():
                Pr, best = self._pitch_frames(X, frames)
            if self.pitch_input:
                f = torch.cat([f, _pitch_features(torch.view_as_real(X), Pr, Pb, best, self.fb_energy)], dim=-1)
        Xl = X[..., :kd]
        xn = Xl * torch.rsqrt(U + _LE_EPS)
        xf = torch.cat([xn.real, xn.imag], dim=-1).clamp(-_XN_MAX, _XN_MAX)
        d = torch.relu(self.df_enc(xf))
        z = torch.cat([torch.relu(self.enc(f)), d], dim=-1)
        if lead is not None:
            h1r, _ = self.gru1(_roll(z, idx))
            h2r, _ = self.gru2(h1r)
            h1 = _unroll(h1r, back, keep, 0.0)
            h2 = _unroll(h2r, back, keep, 0.0)
        elif hold:
            h1 = _gru_held(self.gru1, z, silent)
            h2 = _gru_held(self.gru2, h1, silent)
        else:
            h1, _ = self.gru1(z)
            h2, _ = self.gru2(h1)
        y = h1 + h2
        hist = [Xl]
        for i in range(1, self.df_order):
            hist.append(torch.cat([Xl.new_zeros(B, i, kd), Xl[:, :T - i]], dim=1))
        V, g = self._heads(y, X, hist, d, None if not pitch_filter else (Pr, Pb, pitch_filter))
        if not pause:
            return V, g
        if self.pause is None:
            raise ValueError("pause=True: this network has no pause head (arch pause_head 0)")
        return V, g, self.pause(y).squeeze(-1)

    def _pitch_frames(self, X: torch.Tensor, frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pitch search (:func:`_pitch_search`) of every frame: the
        spectrum ``[B, T, F, 2]`` of the windowed past frame one period back
        and the best correlation ``[B, T]``, each from the overlap-added
        buffer of the frame and the three before it (zeros before the
        first), as the streaming path builds it."""
        B, T, F = X.shape
        W = self.arch["window"]
        H = W // 2
        win = torch.from_numpy(_window(W)).to(X.device)
        xw = torch.fft.irfft(X, n=W, dim=-1) if frames is None else frames
        A = xw * win  # what each frame adds to the overlap-added buffer
        pad = A.new_zeros(B, 3, W)
        Ap = torch.cat([pad, A], dim=1)  # frame t - k is Ap[:, t + 3 - k]
        zb = torch.cat([Ap[:, 0:T, H:] + Ap[:, 1:T + 1, :H], Ap[:, 1:T + 1, H:] + Ap[:, 2:T + 2, :H],
                        Ap[:, 2:T + 2, H:] + Ap[:, 3:, :H], Ap[:, 3:, H:]], dim=-1)
        w2c, ar = _pitch_consts(win)
        Pr, best = _pitch_search(xw.reshape(B * T, W), A.reshape(B * T, W), zb.reshape(B * T, 4 * H), win, w2c, ar)
        return Pr.reshape(B, T, F, 2), best.reshape(B, T)


def _pitch_consts(win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pitch search's constants: the conjugate FFT (``n = W``) of the
    squared window at half rate (the energy of the windowed past frame at
    every lag in one correlation, coarse stage) and the sample offsets of
    a frame."""
    W = win.shape[0]
    w2c = torch.fft.rfft(win.square()[0::2], n=W).conj().resolve_conj()
    return w2c, torch.arange(W, device=win.device).unsqueeze(0)


def _half(x: torch.Tensor) -> torch.Tensor:
    """``x[..., 2m]`` at half rate: ``(x[2i-1] + 2 x[2i] + x[2i+1]) / 4``
    (zeros outside), ``[..., m]``."""
    xp = torch.nn.functional.pad(x, (1, 1))
    m = x.shape[-1] // 2
    return 0.25 * xp[..., 0:2 * m:2] + 0.5 * xp[..., 1:2 * m + 1:2] + 0.25 * xp[..., 2:2 * m + 2:2]


def _pitch_search(xw: torch.Tensor, q: torch.Tensor, zb: torch.Tensor, win: torch.Tensor, w2c: torch.Tensor,
                  ar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pitch search of ``N`` frames: ``xw[N, W]`` the windowed frame,
    ``q = xw * win``, ``zb[N, 2W]`` the overlap-added past signal whose
    last ``W`` samples are this frame's. Returns the spectrum ``[N, F, 2]``
    (real view) of the windowed past frame one period back, the period
    being the lag of 96..W samples at which the frame best matches the
    past (normalised cross-correlation), and that best correlation
    ``[N]``.

    In two stages, as RNNoise's search: at half rate (both signals
    low-passed and decimated) every lag, by FFTs of ``W`` points; then at
    full rate the three lags around the best one, directly."""
    W = xw.shape[1]
    nl = zb.shape[1] - W - _PITCH_MIN_T + 1  # lag l compares with the frame l samples into zb: period W - l
    qd, zd = _half(q), _half(zb)
    nd = zd.shape[1] - qd.shape[1] - _PITCH_MIN_T // 2 + 1
    Q = torch.fft.rfft(qd, n=W, dim=-1)
    S = torch.fft.rfft(torch.stack((zd, zd.square()), 0), n=W, dim=-1)
    ce = torch.fft.irfft(torch.stack((Q.conj() * S[0], w2c * S[1]), 0), n=W, dim=-1)[..., :nd]
    coarse = (ce[0] * torch.rsqrt(ce[1].clamp(min=0.0) + _PITCH_EPS)).argmax(1)  # the frame's norm: a constant
    cand = (2 * coarse.unsqueeze(1) + torch.arange(-1, 2, device=zb.device)).clamp_(0, nl - 1)  # [N, 3]
    zc = zb.gather(1, (cand.unsqueeze(-1) + ar).reshape(zb.shape[0], -1)).reshape(zb.shape[0], 3, W)
    c0 = (zc * q.unsqueeze(1)).sum(-1)
    c1 = (zc.square() * win.square()).sum(-1)
    ncc = c0 * torch.rsqrt(xw.square().sum(1, keepdim=True) * c1 + _PITCH_EPS)
    best, k = ncc.max(1)
    lag = cand.gather(1, k.unsqueeze(1))
    Pr = torch.view_as_real(torch.fft.rfft(zb.gather(1, lag + ar) * win, dim=-1))
    return Pr, best


def _pitch_features(Xr: torch.Tensor, Pr: torch.Tensor, Pb: torch.Tensor, best: torch.Tensor,
                    fb_e: torch.Tensor) -> torch.Tensor:
    """``[..., nb + 1]``: per band the correlation of the spectrum ``Xr``
    with the past frame's ``Pr`` (``[..., F, 2]``), then ``best``."""
    num = (Xr * Pr).sum(-1) @ fb_e
    ep = Pr.square().sum(-1) @ fb_e
    corr = num * torch.rsqrt(Pb * ep + _PITCH_EPS_B)
    return torch.cat((corr, best.unsqueeze(-1)), -1)


def _comb(Xr: torch.Tensor, Pr: torch.Tensor, Pb: torch.Tensor, g: torch.Tensor, fb_e: torch.Tensor,
          fb_i: torch.Tensor, eps: torch.Tensor, k) -> torch.Tensor:
    """The pitch filter (RNNoise's ``pitch_filter``): ``Xr[..., F, 2]`` the
    frame's spectrum (real view), ``Pr`` that of the windowed past frame
    one period back (:func:`_pitch_search`), ``Pb[..., nb]`` the frame's
    band powers (``P @ fb_e + eps``), ``g[..., nb]`` the band gains,
    ``eps[nb]`` the power floor, ``k`` the strength (0..1: a float or a
    0-d tensor). Returns the filtered spectrum, to which the gains are
    then applied.

    Per band, with ``c`` the correlation (0..1) of the frame with the past
    frame, ``r = 1`` where ``c > g``, else ``sqrt(c^2 (1 - g^2) / (0.001 +
    g^2 (1 - c^2)))``: the more periodic the band is than its gain says
    the voice is, the more of the past period is added. ``X + k r sqrt(Pb
    / Pp) P`` (``r`` interpolated to the bins) reinforces what repeats at
    the period, a voice's harmonics, against the noise between them; each
    band is then scaled back to its power before the filter, so the gains
    still set the level. ``k = 0`` returns ``Xr`` unchanged."""
    Pp = torch.addmm(eps, Pr.square().sum(-1).reshape(-1, Pr.shape[-2]), fb_e).reshape(Pb.shape)
    c = ((Xr * Pr).sum(-1) @ fb_e).mul_(torch.rsqrt(Pb * Pp)).clamp_(0.0, 1.0)
    c2 = c.square()
    g2 = g.square()
    r = torch.where(c > g, torch.ones_like(c), (c2 * (1.0 - g2) / (0.001 + g2 * (1.0 - c2))).clamp_(0.0, 1.0).sqrt_())
    r = (r * torch.sqrt(Pb / Pp) * k) @ fb_i
    Xf = Xr + r.unsqueeze(-1) * Pr
    Pf = torch.addmm(eps, Xf.square().sum(-1).reshape(-1, Xf.shape[-2]), fb_e).reshape(Pb.shape)
    return Xf * (torch.sqrt(Pb / Pf) @ fb_i).unsqueeze(-1)


def _floor(lE: torch.Tensor, silent: torch.Tensor | None = None) -> torch.Tensor:
    """The band noise floors (dB) over time of the band levels ``lE[B, T,
    K]``: from ``_F_INIT``, each frame moves ``_F_FALL`` of the way down to
    a lower level and ``_F_RISE`` of the way up to a higher one (a fast
    fall and slow rise that sits near the level of the band's quietest
    frames: its noise); held on ``silent`` frames."""
    n = torch.full((lE.shape[0], lE.shape[2]), _F_INIT, dtype=lE.dtype, device=lE.device)
    out = []
    for t in range(lE.shape[1]):
        d = lE[:, t] - n
        nn_ = n + torch.where(d < 0, _F_FALL, _F_RISE) * d
        n = nn_ if silent is None else torch.where(silent[:, t, None], n, nn_)
        out.append(n)
    return torch.stack(out, 1)


def _harm(Ph: torch.Tensor) -> torch.Tensor:
    """The fine-structure features of the low-band powers ``Ph[..., K]``:
    per-bin log power (dB, -100..80) minus its mean over the ``K`` bins,
    scaled by 0.05 like the band features."""
    lp = torch.log10(Ph + _LE_EPS).mul(10.0).clamp(max=_LE_MAX)
    return (lp - lp.mean(-1, keepdim=True)) * 0.05


def _refine(G: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-bin refinement of the lowest ``q.shape[-1]`` bins of the
    interpolated gains ``G``: ``sigmoid(logit(G) + q)`` (``q = 0`` leaves
    ``G`` as it is; the result stays in 0..1)."""
    nf = q.shape[-1]
    gl = G[..., :nf].clamp(_G_MIN, 1.0 - _G_MIN)
    gl = torch.sigmoid(torch.log(gl) - torch.log1p(-gl) + q)
    return torch.cat([gl, G[..., nf:]], dim=-1)


def _leading(silent: torch.Tensor):
    """If every row of ``silent[B, T]`` is silent only in a run at its
    start: the gather indices that move each row's first sound to frame 0
    and back, and the frames after the run (``[B, T]`` each); else None."""
    B, T = silent.shape
    t = torch.arange(T, device=silent.device)
    k = torch.where(silent.all(1), T, (~silent).int().argmax(1))  # frames of leading silence
    keep = t[None] >= k[:, None]
    if not bool(torch.equal(~keep, silent)):
        return None
    return (t[None] + k[:, None]) % T, (t[None] - k[:, None]) % T, keep


def _roll(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))


def _unroll(x: torch.Tensor, back: torch.Tensor, keep: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(keep[..., None], _roll(x, back), torch.full_like(x[:, :1], fill))


def _gru_held(gru: nn.GRU, z: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
    """``gru`` over ``z[B, T, I]`` frame by frame, the state held on
    ``silent`` frames (whose output is the held state)."""
    h = z.new_zeros(z.shape[0], gru.hidden_size)
    out = []
    for t in range(z.shape[1]):
        hn = torch.gru_cell(z[:, t], h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
        h = torch.where(silent[:, t, None], h, hn)
        out.append(h)
    return torch.stack(out, 1)


def _fused_step(hop: torch.Tensor, prev: torch.Tensor, win: torch.Tensor, fb_e: torch.Tensor,
                fb_i: torch.Tensor, m: torch.Tensor, u: torch.Tensor, fl: torch.Tensor, fresh: torch.Tensor,
                h1: torch.Tensor, h2: torch.Tensor, xh: torch.Tensor, ola: torch.Tensor, pbuf: torch.Tensor,
                w: list[torch.Tensor], alpha: float, mix, out: torch.Tensor, branchless: bool = False,
                comb=0.0, pg: torch.Tensor | None = None, pause=None) -> None:
    """One streaming hop for all channels, on weights prepared by
    :func:`_prepare_weights` (encoder scalings folded in, GRU input split,
    low-band features interleaved). TorchScript-able.

    ``hop``: new input ``[C, H]``; ``prev``: the previous input hop (updated
    to ``hop``); ``m, u, fl, fresh, h1, h2, xh, ola, pbuf``: state, updated in
    place (``fl``, the band noise floors, only with the floor input;
    ``fresh``, bool ``[C]``, channels that have not sounded yet, only with
    ``warm_start``, else empty); ``out``:
    ``[3, C, H]`` receives (output, voice, background); ``pbuf``: the
    overlap-added past signal ``[C, 4H]`` that the pitch search reads
    (updated every hop, silent or not: it is the signal, not a running
    estimate). ``comb``: the pitch filter's strength (0..1; 0 leaves it
    out).

    ``branchless``: no host-side decision on tensor values (for CUDA graph
    capture): the digital-silence hold always goes through ``torch.where``,
    ``mix`` and ``comb`` are 0-d tensors (``mix >= 1`` gives the delayed
    input exactly) and the pitch filter always runs (at ``comb = 0`` it
    leaves the spectrum as it is). Same results as the branching form.

    ``pg`` and ``pause`` (a bundle with the pause head): the pause gate's
    state ``[C, 2]`` (:func:`pause_state`; updated in place) and
    ``(depth_db, floor, remix, threshold)``, the gate's depth
    (``pause_db``: a number, or ``[C]``, one per channel), the two
    parts of ``mix = max(floor, remix)`` (these three 0-d tensors when
    branchless) and the speech probability below which it closes
    (``pause_threshold``: a number, or ``[C]``). The output
    is then ``s * v + max(s * floor, remix) * background``, ``s`` the
    gate's gain ramped across the hop (:func:`_pause_gate`); the stems are
    not gated (they stay a partition of the input), nor is ``mix >= 1``.
    With the gate open and ``depth_db`` 0 the branching form skips it."""
    C = hop.shape[0]
    H = hop.shape[1]
    kd = u.shape[1]
    order = xh.shape[1]
    fr = torch.cat((prev, hop), dim=1)
    xw = fr * win
    silent = xw.square().mean(1) < SILENT_MS  # [C]: digital silence holds every state
    hold = True if branchless else bool(silent.any())
    sil = silent.unsqueeze(1)
    Xr = torch.view_as_real(torch.fft.rfft(xw, dim=1))  # [C, F, 2]
    P = Xr.square().sum(-1)
    Pb = torch.addmm(w[0], P, fb_e)
    lE = torch.log10(Pb).mul_(10.0).clamp_(max=_LE_MAX)
    if fresh.numel() > 0 and (branchless or bool(fresh.any())):  # warm start: from the first sounding frame
        st = (fresh & ~silent).unsqueeze(1)
        m.copy_(torch.where(st, lE, m))
        u.copy_(torch.where(st, P[:, :kd], u))
        fresh.logical_and_(silent)
    if hold:
        m.copy_(torch.where(sil, m, alpha * m + (1.0 - alpha) * lE))
        u.copy_(torch.where(sil, u, alpha * u + (1.0 - alpha) * P[:, :kd]))
    else:
        m.mul_(alpha).add_(lE, alpha=1.0 - alpha)
        u.mul_(alpha).add_(P[:, :kd], alpha=1.0 - alpha)
    e = torch.addmm(torch.addmm(w[3], lE, w[1]), m, w[2])
    if w[22].numel() > 0:  # fine structure of the lowest bins (scale and mean folded into w[22])
        lp = torch.log10(P[:, :w[22].shape[0]] + _LE_EPS).clamp_(max=_LE_MAX / 10.0)
        e = torch.addmm(e, lp, w[22])
    if w[23].numel() > 0:  # level above the band noise floor (x0.05 folded into w[23])
        dfl = lE - fl
        fln = fl + torch.where(dfl < 0, _F_FALL, _F_RISE) * dfl
        fl.copy_(torch.where(sil, fl, fln) if hold else fln)
        e = torch.addmm(e, (lE - fl).clamp_(min=_F_MIN), w[23])
    q = xw * win
    pbuf.copy_(torch.cat((pbuf[:, H:3 * H], pbuf[:, 3 * H:] + q[:, :H], q[:, H:]), 1))
    comb_on = branchless or comb > 0.0
    if w[24].numel() > 0 or comb_on:  # the pitch search: for the pitch input, the pitch filter
        Pr, best = _pitch_search(xw, q, pbuf, win, w[25], w[26])
    if w[24].numel() > 0:  # pitch input
        e = torch.addmm(e, _pitch_features(Xr, Pr, Pb, best, fb_e), w[24])
    e = torch.relu(e)
    xl = Xr[:, :kd]
    xf = (xl * torch.rsqrt(u + _LE_EPS).unsqueeze(-1)).reshape(C, 2 * kd).clamp_(-_XN_MAX, _XN_MAX)
    d = torch.relu(torch.addmm(w[5], xf, w[4]))
    # GRU 1 (input split into the two encoder outputs: no concatenation)
    gi = torch.addmm(torch.addmm(w[8], e, w[6]), d, w[7])
    gh = torch.addmm(w[10], h1, w[9])
    hh = h1.shape[1]
    rz = torch.sigmoid(gi[:, :2 * hh] + gh[:, :2 * hh])
    n = torch.tanh(gi[:, 2 * hh:] + rz[:, :hh] * gh[:, 2 * hh:])
    h1n = n + rz[:, hh:] * (h1 - n)
    gi = torch.addmm(w[12], h1n, w[11])
    gh = torch.addmm(w[14], h2, w[13])
    rz = torch.sigmoid(gi[:, :2 * hh] + gh[:, :2 * hh])
    n = torch.tanh(gi[:, 2 * hh:] + rz[:, :hh] * gh[:, 2 * hh:])
    h2n = n + rz[:, hh:] * (h2 - n)
    if hold:
        h1n = torch.where(sil, h1, h1n)
        h2n = torch.where(sil, h2, h2n)
    h1.copy_(h1n)
    h2.copy_(h2n)
    y = h1n + h2n
    g = torch.sigmoid(torch.addmm(w[16], y, w[15]))
    G = g.mm(fb_i)  # [C, F]
    if w[19].numel() > 0:  # per-bin refinement of the low band from [y, d]
        G = _refine(G, torch.addmm(torch.addmm(w[21], y, w[19]), d, w[20]))
    V = (_comb(Xr, Pr, Pb, g, fb_e, fb_i, w[0], comb) if comb_on else Xr) * G.unsqueeze(-1)
    if order > 0:  # deep filter on the low band; history newest first
        c = torch.tanh(torch.addmm(w[18], y, w[17])).view(C, order, kd, 2)
        if order > 1:
            xh[:, 1:] = xh[:, :-1].clone()
        xh[:, 0] = xl
        cr = c[..., 0]
        ci = c[..., 1]
        xr = xh[..., 0]
        xi = xh[..., 1]
        V[:, :kd, 0] += (cr * xr - ci * xi).sum(1)
        V[:, :kd, 1] += (cr * xi + ci * xr).sum(1)
    gated = pause is not None and (branchless or bool((torch.as_tensor(pause[0]) > 0.0).any())
                                   or bool((pg[:, 0] < 0.0).any()))
    if gated:  # the voice estimate's energy, for the gate's onset rule
        ev = V.square().sum((1, 2))
    yt = torch.fft.irfft(torch.view_as_complex(V), n=2 * H, dim=1).mul_(win)
    v = yt[:, :H] + ola
    ola.copy_(yt[:, H:])
    out[1].copy_(v)
    torch.sub(prev, v, out=out[2])
    if gated:
        s = _pause_gate(torch.addmm(w[28], y, w[27]).squeeze(1), ev, pg, silent, pause[0], pause[3], H)
        o = _gated_mix(s, v, out[2], pause[1], pause[2])
    if branchless:
        out[0].copy_(torch.where(mix >= 1.0, prev, o if gated else v + mix * out[2]))
    elif mix == 1.0:
        out[0].copy_(prev)
    elif gated:
        out[0].copy_(o)
    else:
        torch.add(v, out[2], alpha=mix, out=out[0])
    prev.copy_(hop)


def _gated_mix(s: torch.Tensor, v: torch.Tensor, bg: torch.Tensor, floor, remix) -> torch.Tensor:
    """The output with the pause gate's gain ``s``: ``s * v + max(s *
    floor, remix) * bg`` (the gate lowers the strength floor, not a
    remixed background). ``floor``, ``remix``: numbers or 0-d tensors."""
    return s * v + torch.maximum(s * floor, torch.as_tensor(remix, dtype=s.dtype, device=s.device)) * bg


def pause_state(channels: int, **kw) -> torch.Tensor:
    """A fresh pause-gate state ``[C, 2]``: the gate (0 dB, open) and the
    voice estimate's level in the pauses (none yet)."""
    pg = torch.zeros(channels, 2, **kw)
    pg[:, 1] = _PAUSE_PL_NONE
    return pg


def pause_gains(logit: torch.Tensor, ev: torch.Tensor, silent: torch.Tensor, depth: float, H: int,
                threshold=_PAUSE_THRESHOLD) -> torch.Tensor:
    """The pause gate over whole sequences, as the streaming step runs it
    hop by hop from a fresh state: ``logit[B, T]`` the pause head's
    output per frame, ``ev[B, T]`` the energy of each frame's voice
    spectrum, ``silent[B, T]`` digital silence, ``depth`` (dB) and
    ``threshold`` (each a number, or one per row ``[B]``). Returns
    the gain of every output sample, ``[B, T, H]``."""
    pg = pause_state(logit.shape[0], dtype=logit.dtype, device=logit.device)
    out = [_pause_gate(logit[:, t], ev[:, t], pg, silent[:, t], depth, threshold, H) for t in range(logit.shape[1])]
    return torch.stack(out, 1) if out else logit.new_zeros(logit.shape[0], 0, H)


def _pause_gate(logit: torch.Tensor, ev: torch.Tensor, pg: torch.Tensor, silent: torch.Tensor, depth,
                threshold, H: int) -> torch.Tensor:
    """One hop of the pause gate: ``logit[C]`` the pause head's output,
    ``ev[C]`` the energy of the frame's voice spectrum, ``pg[C, 2]`` the
    state (:func:`pause_state`, updated in place), ``silent[C]`` digital
    silence (which holds it), ``depth`` (dB, ``pause_db``) and
    ``threshold`` (``pause_threshold``), each a number or ``[C]``.

    The gate's target is ``-depth * (t - p) / t`` where the speech
    probability ``p`` is below the threshold ``t``, else 0 dB, and 0 dB
    too at an onset (``ev`` more than ``_PAUSE_ONSET_DB`` above the pause
    level, which follows ``ev`` in the frames the head calls pauses, onset
    or not: a louder noise bed opens the gate for some 10 frames, then the
    level has caught up). The
    gate falls towards a lower target by ``_PAUSE_CLOSE_DB`` a hop at most
    and rises to a higher one at once. Returns the gain ramp ``[C, H]``:
    linear from the last hop's gain to this one's (no step, no click)."""
    cur, pl = pg[:, 0], pg[:, 1]
    f = ((threshold - torch.sigmoid(logit)) / threshold).clamp_(0.0, 1.0)
    lv = torch.log10(ev + _LE_EPS).mul_(10.0)
    head = -torch.as_tensor(depth, dtype=pg.dtype, device=pg.device) * f
    tgt = torch.where(lv > pl + _PAUSE_ONSET_DB, torch.zeros_like(head), head)
    new = torch.where(tgt > cur, tgt, torch.maximum(tgt, cur - _PAUSE_CLOSE_DB))
    npl = torch.where(head < 0.0, torch.where(pl >= _PAUSE_PL_NONE, lv, pl + _PAUSE_PL_A * (lv - pl)), pl)
    new = torch.where(silent, cur, new)
    npl = torch.where(silent, pl, npl)
    g0 = torch.exp(cur * _DB_LN).unsqueeze(1)
    g1 = torch.exp(new * _DB_LN).unsqueeze(1)
    r = torch.arange(1, H + 1, dtype=pg.dtype, device=pg.device) / H
    pg.copy_(torch.stack((new, npl), 1))
    return g0 + (g1 - g0) * r


def _prepare_weights(net: QCNet) -> list[torch.Tensor]:
    """The weights of ``net`` rearranged for :func:`_fused_step` (all
    transposed for ``addmm(bias, x, W)``)."""
    nb, kd, h = net.n_bands, net.df_bins, net.hidden
    with torch.no_grad():
        We, be = net.enc.weight, net.enc.bias
        hb = net.harm_bins
        nfl = nb * net.floor_input
        W1, W2, Wh = We[:, :nb], We[:, nb:2 * nb], We[:, 2 * nb:2 * nb + hb]
        Wfl, Wp = We[:, 2 * nb + hb:2 * nb + hb + nfl], We[:, 2 * nb + hb + nfl:]
        A = 0.05 * W1 + 0.025 * W2  # f = [(lE - m) * 0.05, (lE + 30) * 0.025]
        Bm = -0.05 * W1
        be2 = be + 0.75 * W2.sum(dim=1)
        Wd = net.df_enc.weight  # columns: [re_0..re_kd-1, im_0..im_kd-1] -> interleaved
        Wd_il = torch.stack([Wd[:, :kd], Wd[:, kd:]], dim=-1).reshape(Wd.shape[0], 2 * kd)
        g1, g2 = net.gru1, net.gru2
        ed = net.enc.out_features
        w = [
            torch.full((nb,), _LE_EPS),  # 0
            A.t(), Bm.t(), be2,  # 1-3
            Wd_il.t(), net.df_enc.bias,  # 4-5
            g1.weight_ih_l0[:, :ed].t(), g1.weight_ih_l0[:, ed:].t(), g1.bias_ih_l0,  # 6-8
            g1.weight_hh_l0.t(), g1.bias_hh_l0,  # 9-10
            g2.weight_ih_l0.t(), g2.bias_ih_l0, g2.weight_hh_l0.t(), g2.bias_hh_l0,  # 11-14
            net.gain.weight.t(), net.gain.bias,  # 15-16
        ]
        w += [net.df.weight.t(), net.df.bias] if net.df is not None else [torch.zeros(0), torch.zeros(0)]  # 17-18
        if net.fine is not None:
            Wf = net.fine.weight
            w += [Wf[:, :h].t(), Wf[:, h:].t(), net.fine.bias]  # 19-21
        else:
            w += [torch.zeros(0), torch.zeros(0), torch.zeros(0)]
        # 22: fine-structure input ([0, enc_dim] without it): _harm's x10 dB,
        # x0.05 and mean removal folded in (the mean of log10 powers times
        # the weights' row sums), so a hop takes log10 and one addmm
        Wt = Wh.t()
        w += [0.5 * (Wt - Wt.mean(dim=0, keepdim=True))]
        w += [0.05 * Wfl.t()]  # 23: level above the noise floor ([0, enc_dim] without it)
        w += [Wp.t()]  # 24: pitch input ([0, enc_dim] without it)
        # 25-26: the pitch search's constants (the pitch input, the pitch filter)
        w += list(_pitch_consts(torch.from_numpy(_window(net.arch["window"]))))
        # 27-28: the pause head ([hh, 1], [1]; empty without it)
        w += [net.pause.weight.t(), net.pause.bias] if net.pause is not None else [torch.zeros(0), torch.zeros(0)]
    return [t.detach().contiguous().clone() for t in w]


def resolve_device(device) -> tuple[torch.device, str | None]:
    """``(device to use, reason for falling back to the CPU or None)``.

    ``device``: ``"auto"`` (the first CUDA device when there is one, else
    the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. A CUDA device that is
    not there gives the CPU and the reason; anything else is a ValueError
    naming the allowed values."""
    allowed = "allowed: auto, cpu, cuda, cuda:N"
    d = str(device).strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r} is not a device; {allowed}") from None
    if dev.type == "cpu":
        return dev, None
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: {dev.type} is not supported; {allowed}")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        return torch.device("cpu"), f"{device} requested but {why} (torch {torch.__version__})"
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        return torch.device("cpu"), f"{device} requested but only {n} CUDA device(s) exist"
    return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device()), None


def _window(n: int) -> np.ndarray:
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def overlap_add(V: torch.Tensor, win: torch.Tensor, hop: int) -> torch.Tensor:
    """Synthesis as the streaming path does it: ``V[B, T, F]`` (frames of
    ``2 * hop`` with one hop of zeros before the signal) -> ``[B, T * hop]``,
    delayed by one hop (the algorithmic latency). Used by
    :meth:`NeuralSuppressor.process_offline` and by training's held-out
    checks."""
    y = torch.fft.irfft(V, n=2 * hop, dim=-1) * win
    v = y[:, :, :hop].clone()
    v[:, 1:] += y[:, :-1, hop:]
    return v.reshape(V.shape[0], -1)


class NeuralSuppressor(HopSuppressor):
    """Streaming wrapper of :class:`QCNet` (48 kHz, 10 ms hop).

    Args:
        channels: channels per block, each with its own state (GRU hidden
            states, running means, overlap-add tail), all in one batch.
        bundle: a bundle name (``models/assets/<name>``), a folder, or a
            loaded :class:`~quietcast.models.bundle.Bundle`.
        strength_db: maximum attenuation of the background (0 = exact
            delay). Default: the bundle's ``defaults.strength_db`` (15 dB).
        background_db: level at which the background (input - voice) is
            mixed back; ``-inf`` (default) leaves only the strength floor.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``
            (CUDA when present). On CUDA every hop is one CUDA graph
            replay between pinned host buffers (eager CUDA if capture
            fails). CUDA that is missing or fails, at start or later, falls
            back to the CPU with the reason logged and kept in
            :attr:`backend` (after a failure mid-stream the state restarts).
        pitch_filter: strength of the pitch filter, 0..1 (0: off).
            Default: the bundle's ``defaults.pitch_filter`` (0 if it has
            none). A runtime parameter, like ``strength_db``.
        kernel: on the CPU, which streaming step runs each hop: ``"auto"``
            (default: the compiled C step, :mod:`quietcast.models.ckernel`,
            when it is built and supports the bundle's architecture, else
            the torch step, with the reason in :attr:`backend`), ``"c"``
            (the C step or a ``ValueError`` that says why not) or
            ``"torch"`` (the reference step, :func:`_fused_step`). Both
            give the same output to float rounding (tests hold them within
            1e-4 of full scale over seconds of audio).

    Attributes:
        latency: 960 samples (20 ms) = 480 (hop buffer) + 480 algorithmic
            (window 960 - hop 480; the network has no look-ahead).
        gain_reduction_db: ``float32[channels]``, last hop's output energy
            vs input energy in dB (>= 0 usually).
        backend: where it runs, in words: ``"cpu"`` (the C step),
            ``"cpu (fallback: REASON)"``, ``"cuda-graph (DEVICE NAME)"`` or
            ``"cuda (eager: REASON)"``; on the CPU, ``" [torch step:
            REASON]"`` follows when the torch step runs.
    """

    name = "neural"
    sample_rate = SAMPLE_RATE
    hop = HOP
    window = 2 * HOP
    algorithmic_latency = window - hop

    PARAMS: dict[str, tuple[float, float, float, str]] = {
        "strength_db": (0.0, 60.0, 15.0, "dB"),
        "background_db": (-math.inf, 0.0, -math.inf, "dB"),
        "pitch_filter": (0.0, 1.0, 0.0, ""),
    }
    #: ``pause_db``, in :attr:`PARAMS` of a bundle with the pause head
    PAUSE_PARAM = (0.0, 60.0, 0.0, "dB")
    #: ``pause_threshold``, in :attr:`PARAMS` of a bundle with the pause head
    #: (a speech probability; the default is the bundle's own)
    PAUSE_THRESHOLD_PARAM = (0.01, 1.0, _PAUSE_THRESHOLD, "")

    def __init__(self, channels: int = 1, bundle="default", strength_db: float | None = None,
                 background_db: float | None = None, device: str = "cpu", kernel: str = "auto",
                 pitch_filter: float | None = None, pause_db: float | None = None,
                 pause_threshold: float | None = None):
        from .bundle import Bundle, load_bundle

        channels = self.check_channels(channels)  # before the per-channel arrays below
        if kernel not in ("auto", "c", "torch"):
            raise ValueError(f"kernel {kernel!r}: must be 'auto', 'c' or 'torch'")
        self._kernel = kernel
        self._kernel_why = ""

        b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.bundle = b
        b.check_config()  # geometry, defaults in range (BundleError naming config.json)
        self.device, why = resolve_device(device)
        self._graph = None
        self._eager_why = ""
        self._fallback_why = why
        if why:
            log.warning("neural: %s; running on the CPU", why)
        net = b.build_model().eval()
        if self.device.type == "cuda":
            try:
                net = net.to(self.device)
            except RuntimeError as e:
                self._fall_back(f"moving the model to {self.device} failed: {e}")
                net = b.build_model().eval()  # a fresh copy: the move may have stopped half-way
        self.net = net
        defaults = b.config.get("defaults", {})
        lo, hi, own, unit = self.PARAMS["strength_db"]
        d_strength = float(defaults.get("strength_db", own))
        # this bundle's default strength is what callers read as the default
        lo_p, hi_p, own_p, _ = self.PARAMS["pitch_filter"]
        d_pitch = float(defaults.get("pitch_filter", own_p))
        if not lo_p <= d_pitch <= hi_p:
            raise ValueError(f"bundle {b.path}: defaults.pitch_filter {d_pitch} out of range {lo_p}..{hi_p}")
        self.PARAMS = dict(self.PARAMS, strength_db=(lo, hi, d_strength, unit),
                           pitch_filter=(lo_p, hi_p, d_pitch, ""))
        d_pause = 0.0
        lo_t, hi_t, d_thr, _ = self.PAUSE_THRESHOLD_PARAM
        if net.pause is not None:  # the pause gate: only a bundle with the pause head has it
            lo_g, hi_g, _, unit_g = self.PAUSE_PARAM
            d_pause = float(defaults.get("pause_db", 0.0))
            if not lo_g <= d_pause <= hi_g:
                raise ValueError(f"bundle {b.path}: defaults.pause_db {d_pause} out of range {lo_g}..{hi_g}")
            d_thr = float(defaults.get("pause_threshold", d_thr))
            if not lo_t <= d_thr <= hi_t:
                raise ValueError(f"bundle {b.path}: defaults.pause_threshold {d_thr} out of range {lo_t}..{hi_t}")
            self.PARAMS["pause_db"] = (lo_g, hi_g, d_pause, unit_g)
            self.PARAMS["pause_threshold"] = (lo_t, hi_t, d_thr, "")
        elif pause_db not in (None, 0, 0.0):  # 0 (off) is allowed: the output without a gate
            raise ValueError(f"pause_db {pause_db}: bundle {b.path} has no pause head (no pause gate)")
        elif pause_threshold is not None:
            raise ValueError(f"pause_threshold {pause_threshold}: bundle {b.path} has no pause head (no pause gate)")
        self._strength_db = 0.0
        self._background_db = -math.inf
        self._pitch_filter = d_pitch
        self._pause_db = d_pause
        self._pause_threshold = d_thr
        # the depth and the threshold per channel (set_channel_pause_db, set_channel_pause_threshold;
        # the C step and the torch step read these arrays)
        self._pause_c = np.full(max(int(channels), 0), d_pause, np.float32)
        self._pause_cpu = torch.from_numpy(self._pause_c)
        self._thr_c = np.full(max(int(channels), 0), d_thr, np.float32)
        self._thr_cpu = torch.from_numpy(self._thr_c)
        self._floor = self._remix = 0.0
        super().__init__(channels)
        self.reset_core()
        self.set_param("strength_db", d_strength if strength_db is None else strength_db)
        self.set_param("background_db", -math.inf if background_db is None else background_db)
        self.set_param("pitch_filter", d_pitch if pitch_filter is None else pitch_filter)
        if net.pause is not None:
            self.set_param("pause_db", d_pause if pause_db is None else pause_db)
            self.set_param("pause_threshold", d_thr if pause_threshold is None else pause_threshold)

    # ------------------------------------------------------------ params
    def set_param(self, name: str, value) -> None:
        """Set ``strength_db``, ``background_db``, ``pitch_filter`` or (a
        bundle with the pause head) ``pause_db`` or ``pause_threshold``
        (every channel); takes effect next hop."""
        v = self.check_param(name, value)
        if name == "pitch_filter":
            self._pitch_filter = v
            if self._cstep is not None:
                self._cstep.set_pitch_filter(v)
            if self.device.type == "cuda":
                self._comb_t.fill_(v)
            return
        if name in ("pause_db", "pause_threshold"):
            setattr(self, f"_{name}", v)
            self._put_gate(name, v)
            return
        if name == "strength_db":
            self._strength_db = v
        else:
            self._background_db = v
        was = getattr(self, "_mix", 1.0)
        self._floor = float(10.0 ** (-self._strength_db / 20.0))
        self._remix = 0.0 if self._background_db == -math.inf else float(10.0 ** (self._background_db / 20.0))
        self._mix = max(self._floor, self._remix)
        if was >= 1.0 > self._mix and getattr(self, "_pg", None) is not None and self._pg.numel():
            # at mix 1 (the delayed input, exact) the gate is not applied, whatever its state: it starts
            # open now and closes at its own pace, instead of cutting in at once (a click)
            with torch.inference_mode():
                self._pg[:, 0].fill_(0.0)
        if self._cstep is not None:
            self._cstep.set_mix(self._floor, self._remix)
        if self.device.type == "cuda":  # read by the captured graph on its next replay
            self._mix_t.fill_(self._mix)
            self._pause_t[1].fill_(self._floor)
            self._pause_t[2].fill_(self._remix)

    @property
    def pause_db(self) -> float:
        """The pause gate's depth (dB; 0 = off, and always 0 without the
        pause head), as last set for every channel."""
        return self._pause_db

    @property
    def pause_threshold(self) -> float:
        """The speech probability below which the pause gate closes, as
        last set for every channel (the bundle's
        ``defaults.pause_threshold`` unless set)."""
        return self._pause_threshold

    @property
    def pause_threshold_per_channel(self) -> np.ndarray:
        """The pause gate's threshold of each channel, a copy."""
        return self._thr_c.copy()

    def set_channel_pause_threshold(self, values) -> None:
        """The pause gate's threshold per channel (one speech probability
        per channel, each in the ``pause_threshold`` range); from the next
        hop. A ValueError (nothing changed) for a bundle without the pause
        head, a wrong length or a value out of range."""
        self._put_gate("pause_threshold", self._per_channel("pause_threshold", values))

    @property
    def pause_db_per_channel(self) -> np.ndarray:
        """The pause gate's depth of each channel (dB), a copy."""
        return self._pause_c.copy()

    def set_channel_pause_db(self, values) -> None:
        """The pause gate's depth per channel (``values``: one number per
        channel, dB, each in the ``pause_db`` range); from the next hop.
        A ValueError (nothing changed) for a bundle without the pause head,
        a wrong length or a value out of range."""
        self._put_gate("pause_db", self._per_channel("pause_db", values))

    def _put_gate(self, name: str, values) -> None:
        """The gate's depths or thresholds (checked) into the arrays the C
        and torch steps read, and on CUDA into the graph's device tensor."""
        arr, cpu, row = ((self._pause_c, self._pause_cpu, 0) if name == "pause_db"
                         else (self._thr_c, self._thr_cpu, 3))
        arr[:] = values
        if self.device.type == "cuda":
            self._pause_t[row].copy_(cpu)

    def _per_channel(self, name: str, values) -> list[float]:
        """``values`` checked as one ``name`` per channel (ValueError)."""
        if self.net.pause is None:
            raise ValueError(f"{self.name}: bundle {self.bundle.path} has no pause head (no pause gate)")
        if (isinstance(values, (str, bytes)) or not hasattr(values, "__iter__")
                or isinstance(values, np.ndarray) and values.ndim == 0):
            raise ValueError(f"{self.name}: expected one {name} value per channel ({self.channels}), got "
                             f"{values!r}; set_param({name!r}, value) sets every channel")
        vals = list(values)
        if len(vals) != self.channels:
            raise ValueError(f"{self.name}: {len(vals)} {name} values for {self.channels} channels")
        return [self.check_param(name, v) for v in vals]

    @property
    def pitch_filter(self) -> float:
        return self._pitch_filter

    @property
    def background_db(self) -> float:
        return self._background_db

    @background_db.setter
    def background_db(self, value) -> None:
        self.set_param("background_db", value)

    # ------------------------------------------------------------- state
    _stems = True

    def set_stems(self, on: bool = True) -> None:
        """Whether :meth:`process_stems` is wanted (default on). Off, the
        suppressor streams the output rows only: on CUDA a third of the
        results cross to the host each hop, and every block moves a
        third of the rows through the fifo (the live engine and chain
        stages need only the output; at 1024 channels the difference is
        several MB a hop, bench/engine_hop.py). State is reset."""
        self._stems = bool(on)
        self.reset()

    def _out_rows(self) -> int:
        # the output fifo holds [output; voice; background], C rows each, or the output only
        return 3 * self.channels if self._stems else self.channels

    def _hop_out(self, hop: np.ndarray) -> np.ndarray:
        self._core(hop)
        return self._hop_buf if self._stems else self._hop_buf[:self.channels]

    def reset_core(self) -> None:
        c, dev, net = self.channels, self.device, self.net
        H = self.hop
        if self._graph is not None:  # the captured graph keeps its tensors: reset them in place
            with torch.inference_mode():
                self._m.fill_(_M_INIT)
                self._u.fill_(_U_INIT)
                self._fl.fill_(_F_INIT)
                self._fresh.fill_(True)
                for t in (self._h1, self._h2, self._xh, self._prev, self._ola, self._pbuf):
                    t.zero_()
                self._pg.copy_(pause_state(self._pg.shape[0], device=dev))
            self.gain_reduction_db = np.zeros(c, np.float32)
            return
        z = dict(device=dev, dtype=torch.float32)
        self._m = torch.full((c, net.n_bands), _M_INIT, **z)
        self._u = torch.full((c, net.df_bins), _U_INIT, **z)
        self._fl = torch.full((c, net.n_bands * net.floor_input), _F_INIT, **z)  # band noise floors
        self._fresh = torch.ones(c * net.warm_start, dtype=torch.bool, device=dev)  # not sounded yet (warm start)
        self._h1 = torch.zeros(c, net.hidden, **z)
        self._h2 = torch.zeros(c, net.hidden, **z)
        self._xh = torch.zeros(c, net.df_order, net.df_bins, 2, **z)  # low-band history, newest first
        self._prev = torch.zeros(c, H, **z)  # previous input hop
        self._ola = torch.zeros(c, H, **z)  # overlap-add tail
        self._pbuf = torch.zeros(c, 4 * H, **z)  # past signal for the pitch search
        self._pg = pause_state(c if net.pause is not None else 0, **z)  # the pause gate (dB) and pause level
        self._win = torch.from_numpy(_window(self.window)).to(dev)
        self._w = [t.to(dev) for t in _prepare_weights(net)]
        self._fb_e = net.fb_energy.to(dev)
        self._fb_i = net.fb_interp.to(dev)
        self._out_t = torch.zeros(3, c, H, **z)
        self._hop_buf = np.zeros((3 * c, H), np.float32)
        self.gain_reduction_db = np.zeros(c, np.float32)
        self._cstep = None
        if self.device.type == "cuda":
            try:
                self._setup_cuda()
            except RuntimeError as e:
                self._fall_back(f"setting up CUDA failed: {e}")
                self.reset_core()
        else:
            self._setup_cstep()

    def _setup_cstep(self) -> None:
        """The C step on this suppressor's state tensors, or the reason the
        torch step runs (``kernel="c"``: a ``ValueError`` instead)."""
        from . import ckernel

        if self._kernel == "torch":
            self._kernel_why = "requested"
            return
        lib, where = ckernel.library()
        why = where if lib is None else ckernel.unsupported(self.net)
        if why is None:
            self._cstep = ckernel.CStep(lib, self, dict(
                le_eps=_LE_EPS, le_max=_LE_MAX, xn_max=_XN_MAX, f_fall=_F_FALL, f_rise=_F_RISE, f_min=_F_MIN,
                g_min=_G_MIN, silent_ms=SILENT_MS, pause_close=_PAUSE_CLOSE_DB,
                pause_onset=_PAUSE_ONSET_DB, pause_pl_a=_PAUSE_PL_A, pause_pl_none=_PAUSE_PL_NONE))
            self._cstep.set_mix(self._floor, self._remix)
            self._kernel_why = ""
            return
        if self._kernel == "c":
            raise ValueError(f"neural: the C step cannot run bundle {self.bundle.path}: {why}")
        if why != self._kernel_why:
            log.info("neural: running the torch step on the CPU: %s", why)
        self._kernel_why = why

    # -------------------------------------------------------------- CUDA
    @property
    def backend(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"cuda (eager: {self._eager_why})" if self._graph is None else f"cuda-graph ({name})"
        base = f"cpu (fallback: {self._fallback_why})" if self._fallback_why else "cpu"
        return f"{base} [torch step: {self._kernel_why}]" if self._cstep is None else base

    def _fall_back(self, why: str) -> None:
        log.warning("neural: %s; falling back to the CPU", why)
        self._fallback_why = why
        self.device = torch.device("cpu")
        self._graph = None
        if getattr(self, "net", None) is not None:  # rebuilt: a failed device may not give its weights back
            self.net = self.bundle.build_model().eval()

    def _setup_cuda(self) -> None:
        """Pinned host buffers, a static device input, the mix factor as a
        device scalar, and one hop captured as a CUDA graph (warmed up on
        a side stream; the state is restored afterwards). If capture
        fails the hop runs eagerly on CUDA with the reason kept."""
        c, H, dev = self.channels, self.hop, self.device
        self._device_buffers(dev)
        self._h_in = torch.zeros(c, H, pin_memory=True)
        self._h_in_np = self._h_in.numpy()
        self._h_out = torch.zeros(*self._d_res.shape, pin_memory=True)
        self._h_out_np = self._h_out.numpy()
        self._graph = None
        state = (self._m, self._u, self._fl, self._fresh, self._h1, self._h2, self._xh, self._prev, self._ola,
                 self._pbuf, self._pg)
        saved = [t.clone() for t in state]
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up: cuFFT plans, allocator
                self._cuda_step()
        torch.cuda.current_stream(dev).wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(g):
                self._cuda_step()
            self._graph = g
        except RuntimeError as e:  # eager CUDA still works
            self._eager_why = f"graph capture failed: {e}"
            log.warning("neural: %s; running eagerly on %s", self._eager_why, dev)
            torch.cuda.synchronize(dev)
        for t, v in zip(state, saved):
            t.copy_(v)
        torch.cuda.synchronize(dev)

    def _device_buffers(self, dev: torch.device) -> None:
        """The static tensors the captured hop reads and writes on ``dev``:
        the input ``[C, H]``; the results ``[3C + ceil(C / H), H]``: the
        output, each channel's gain reduction packed ``H`` to a row (so
        any channel count fits), then the voice and the background, so
        that without stems one copy of the first ``C + ceil(C / H)`` rows
        brings back all the host needs (:meth:`_res_rows`); the mix
        factor, the pitch filter's strength and the pause gate's depths,
        floor, remix and thresholds, which a set copies into before the
        next replay."""
        c, H = self.channels, self.hop
        self._d_in = torch.zeros(c, H, device=dev)
        self._d_res = torch.zeros(3 * c + self._gr_rows, H, device=dev)
        self._mix_t = torch.tensor(getattr(self, "_mix", 1.0), dtype=torch.float32, device=dev)
        self._comb_t = torch.tensor(self._pitch_filter, dtype=torch.float32, device=dev)
        self._pause_t = ([self._pause_cpu.to(dev)] + [torch.tensor(v, dtype=torch.float32, device=dev)
                                                      for v in (self._floor, self._remix)]
                         + [self._thr_cpu.to(dev)])

    def _cuda_step(self) -> None:
        """One hop on the device tensors (captured into the graph)."""
        _fused_step(self._d_in, self._prev, self._win, self._fb_e, self._fb_i, self._m, self._u, self._fl,
                    self._fresh, self._h1, self._h2, self._xh, self._ola, self._pbuf, self._w, self.net.alpha,
                    self._mix_t, self._out_t, branchless=True, comb=self._comb_t, pg=self._pg,
                    pause=tuple(self._pause_t) if self.net.pause is not None else None)
        C = self.channels
        g = self._gr_rows
        o = self._out_t
        self._d_res[:C].copy_(o[0])
        self._d_res[C + g:].copy_(o[1:].reshape(2 * C, self.hop))
        e_in = (o[1] + o[2]).square().sum(1)
        e_out = o[0].square().sum(1)
        self._d_res[C:C + g].view(-1)[:C].copy_(torch.log10((e_in + 1e-30) / (e_out + 1e-30)).mul_(10.0))

    def _res_rows(self) -> int:
        """Rows of the results the host needs after a hop: the output and
        the gain reduction; the stems too when :meth:`set_stems` is on."""
        C = self.channels
        return (3 * C if self._stems else C) + self._gr_rows

    @property
    def _gr_rows(self) -> int:
        """Rows of the results holding the gain reduction, ``H`` channels to a row."""
        return -(-self.channels // self.hop)

    def _unpack(self, res: np.ndarray) -> None:
        """The first :meth:`_res_rows` rows of the results, on the host,
        into ``_hop_buf`` (its stem rows only with stems) and
        :attr:`gain_reduction_db`."""
        C, g = self.channels, self._gr_rows
        np.copyto(self._hop_buf[:C], res[:C])
        self.gain_reduction_db = res[C:C + g].reshape(-1)[:C].copy()
        if self._stems:
            np.copyto(self._hop_buf[C:], res[C + g:3 * C + g])

    def _core_cuda(self, hop: np.ndarray) -> None:
        n = self._res_rows()
        self._h_in_np[:] = hop
        self._d_in.copy_(self._h_in, non_blocking=True)
        if self._graph is not None:
            self._graph.replay()
        else:
            self._cuda_step()
        self._h_out[:n].copy_(self._d_res[:n], non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        self._unpack(self._h_out_np[:n])

    # -------------------------------------------------------------- core
    @torch.inference_mode()
    def _core(self, hop: np.ndarray) -> None:
        """One hop ``[C, hop]``; writes [output; voice; background] into
        ``self._hop_buf`` (``[3C, hop]``)."""
        if self.device.type == "cuda":
            try:
                return self._core_cuda(hop)
            except RuntimeError as e:  # a lost device, out of memory, ...: carry on on the CPU
                self._fall_back(f"CUDA failed while running: {e}")
                self.reset_core()
        if self._cstep is not None:
            if hop.dtype != np.float32 or not hop.flags.c_contiguous:
                hop = np.ascontiguousarray(hop, np.float32)
            if hop.shape != self._prev.shape:  # the C step trusts the shape
                raise ValueError(f"neural: hop of shape {hop.shape}, expected {tuple(self._prev.shape)}")
            self._cstep.step(hop, self._mix)
            self.gain_reduction_db = self._cstep.gr.copy()
            return
        x = torch.from_numpy(hop)
        _fused_step(x, self._prev, self._win, self._fb_e, self._fb_i, self._m, self._u, self._fl, self._fresh,
                    self._h1, self._h2, self._xh, self._ola, self._pbuf, self._w, self.net.alpha, self._mix,
                    self._out_t, comb=self._pitch_filter, pg=self._pg,
                    pause=(self._pause_cpu, self._floor, self._remix, self._thr_cpu)
                    if self.net.pause is not None else None)
        C = self.channels
        np.copyto(self._hop_buf, self._out_t.reshape(3 * C, self.hop).numpy())
        # meter: this hop's input (delayed) vs output energy
        y = self._hop_buf[:C]
        xin = self._hop_buf[C:2 * C] + self._hop_buf[2 * C:]  # voice + background = delayed input
        e_in = np.einsum("ij,ij->i", xin, xin)
        e_out = np.einsum("ij,ij->i", y, y)
        self.gain_reduction_db = (10.0 * np.log10((e_in + 1e-30) / (e_out + 1e-30))).astype(np.float32)

    def process_hop(self, hop: np.ndarray) -> np.ndarray:
        self._core(hop)
        return self._hop_buf[:self.channels].copy()

    def process(self, block: np.ndarray) -> np.ndarray:
        """``block[C, N] -> [C, N]``: voice + background at the
        strength/background level, delayed by :attr:`latency`."""
        return self._stream(block)[:self.channels]

    def process_stems(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``block[C, N] -> (voice[C, N], background[C, N])``, both delayed
        by :attr:`latency`; ``voice + background`` is the delayed input (to
        float rounding). Shares state with :meth:`process`. Needs stems
        on (:meth:`set_stems`; the default)."""
        if not self._stems:
            raise ValueError(f"{self.name}: process_stems needs stems on (set_stems(True)); this one streams "
                             "the output only")
        r = self._stream(block)
        C = self.channels
        return r[C:2 * C], r[2 * C:]

    # ----------------------------------------------------------- offline
    @torch.inference_mode()
    def process_offline(self, x: np.ndarray) -> np.ndarray:
        """Whole-signal forward pass (:meth:`QCNet.forward`, batched over
        time): returns what :meth:`process` returns for ``x[C, N]`` on a
        fresh object (same latency, same length), to float rounding."""
        x, _ = sanitize(self._check_block(x))
        C, N = x.shape
        H, W = self.hop, self.window
        T = max(0, -(-(N - H) // H))  # complete hops that reach the output
        out = np.zeros((C, N), np.float32)
        if T == 0:
            return out
        xp = np.zeros((C, (T + 1) * H), np.float32)
        m = min(N, T * H)
        xp[:, H:H + m] = x[:, :m]
        xt = torch.from_numpy(xp).to(self.device)
        frames = xt.unfold(1, W, H) * self._win  # [C, T, W]
        X = torch.fft.rfft(frames, dim=-1)
        silent = frames.square().mean(-1) < SILENT_MS
        res = self.net(X, silent=silent, frames=frames, pitch_filter=self._pitch_filter,
                       pause=self.net.pause is not None)
        v = overlap_add(res[0], self._win, H)  # [C, T * H]
        prev = xt[:, :T * H]
        a = self._mix
        if a == 1.0:
            o = prev
        elif self.net.pause is not None and float(self._pause_c.max(initial=0.0)) > 0.0:
            V = res[0]
            ev = (V.real.square() + V.imag.square()).sum(-1)
            depth = self._pause_cpu.to(self.device)
            s = pause_gains(res[2], ev, silent, depth, H, self._thr_cpu.to(self.device)).reshape(C, T * H)
            o = _gated_mix(s, v, prev - v, self._floor, self._remix)
        else:
            o = v + a * (prev - v)
        out[:, H:] = o.cpu().numpy()[:, :N - H]
        return out
