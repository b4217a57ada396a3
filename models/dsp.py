"""The ``dsp`` suppressor: a classic, weight-free streaming noise suppressor.

It is the always-available fallback and the baseline the neural model must
beat. Everything here is numpy (no scipy, no torch), so importing it costs
nothing and offline processing stays small.

Signal path, per 10 ms hop, every channel in one batch (channel axis 0):

1. STFT analysis: periodic sqrt-Hann window of 960 samples (20 ms), hop 480,
   960-point real FFT (481 bins, 50 Hz apart). The same window for synthesis;
   sqrt-Hann squared sums to exactly 1 at 50 % overlap, so with unit gain the
   output is the input delayed by ``window - hop`` = 480 samples (plus the
   480-sample hop buffer of :class:`HopSuppressor`: 960 samples = 20 ms in all).
2. Noise power spectrum: IMCRA (Cohen 2003, "improved minima controlled
   recursive averaging"). Periodogram smoothed over frequency and time;
   minimum statistics over ~1.3 s (8 sub-windows) in two iterations, the
   second one excluding bins that look like speech; a soft a-priori speech
   absence probability from the ratios to those minima; the noise estimate
   is a recursive average whose update rate is slowed down by the speech
   presence probability (bins with speech are not averaged in), with IMCRA's
   bias factor. Sustained vowels shorter than the minimum window are not
   learnt as noise; a rising noise floor is followed within ~1.3 s, a
   falling one within a few hops. Digital silence does not feed the minima
   (so unmuting into a noise bed does not look like speech for a second),
   and the minima start empty, so the estimate converges within the first
   ~0.2-0.5 s of a clip.
3. Gain: OM-LSA (Cohen & Berdugo 2001). Decision-directed a-priori SNR,
   MMSE log-spectral-amplitude gain ``G_H1`` (exponential integral from a
   table built at import, numpy only), combined with the speech presence
   probability ``p`` as ``G = G_H1**p * G_min**(1 - p)`` where ``G_min`` is
   the ``strength_db`` floor. There is no gate anywhere: attenuation is a
   continuous function of the per-bin SNR estimate, never more than
   ``strength_db``, and onsets open the gain in the same hop (the posterior
   SNR term reacts at once).
4. Anti-musical-noise: the gain is smoothed over frequency with a width of
   about a quarter of an ERB at low frequencies growing to ~1/2 ERB at high
   frequencies (1 bin below ~500 Hz, so harmonics stay resolved); the floor
   makes residual noise a scaled copy of the input noise, not chirps.

``strength_db`` (maximum attenuation) defaults to 15 dB: about the most that
keeps the residual bed natural and speech onsets and tails intact on live
speech (the same default as speexdsp's noise suppressor); 0 dB turns the
suppressor into an exact delay.
"""

from __future__ import annotations

import math

import numpy as np

from .base import HOP, SAMPLE_RATE, HopSuppressor

__all__ = ["DspSuppressor"]

_F32 = np.float32


def _expint_e1(x: np.ndarray) -> np.ndarray:
    """Exponential integral E1(x) for x > 0 (float64, numpy only; ~1e-12)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = x <= 1.0
    xs = x[small]
    if xs.size:  # power series: -gamma - ln x + sum (-1)^(n+1) x^n / (n n!)
        acc = np.zeros_like(xs)
        term = np.ones_like(xs)
        for n in range(1, 40):
            term = term * (-xs) / n
            acc -= term / n
        out[small] = -0.5772156649015329 - np.log(xs) + acc
    xl = x[~small]
    if xl.size:  # continued fraction, evaluated bottom-up
        t = xl + 2 * 80 + 1
        for i in range(80, 0, -1):
            t = xl + 2 * i - 1 - (i * i) / t
        out[~small] = np.exp(-xl) / t
    return out


# exp(0.5 * E1(v)) tabulated on a uniform grid of ln(v): the LSA gain factor.
_LSA_LNV = np.linspace(-12.0, 5.0, 1701)
_LSA_F = np.exp(0.5 * _expint_e1(np.exp(_LSA_LNV)))


class DspSuppressor(HopSuppressor):
    """Streaming IMCRA noise estimate + OM-LSA gain; 48 kHz, 10 ms hop.

    Args:
        channels: number of channels (rows of each block), each with its own
            state, all processed in one batch.
        strength_db: maximum attenuation in dB (0 = no effect); see
            :attr:`PARAMS` for the range. Can be changed while streaming with
            :meth:`set_param` or the :attr:`strength_db` property.

    Attributes:
        gain_reduction_db: ``float32[channels]``, the last hop's gain
            reduction in dB (>= 0): how much quieter the hop's output is than
            its input, energy-weighted over frequency (0 for silent input).
        gain: ``float32[channels, 481]``, the last hop's spectral gain.
        latency: 960 samples (20 ms): hop buffer 480 + ``algorithmic_latency``
            480 (window 960 - hop 480).
    """

    name = "dsp"
    sample_rate = SAMPLE_RATE
    hop = HOP
    window = 2 * HOP
    algorithmic_latency = window - hop
    n_bins = window // 2 + 1

    #: name -> (min, max, default, unit)
    PARAMS: dict[str, tuple[float, float, float, str]] = {
        "strength_db": (0.0, 60.0, 15.0, "dB"),
    }

    # --- IMCRA / OM-LSA constants (Cohen's values, time constants rescaled
    # from his 8 ms hop to our 10 ms hop) ---
    _ALPHA_S = 0.9 ** 1.25  # periodogram time smoothing
    _ALPHA_D = 0.85 ** 1.25  # noise recursive averaging (speech absent)
    _BETA = 1.47  # bias compensation of the noise estimate
    _B_MIN = 1.66  # bias of the minimum statistics
    _GAMMA0 = 4.6  # first-iteration posterior-SNR threshold
    _GAMMA1 = 3.0  # a-priori absence: soft region upper bound
    _ZETA0 = 1.67  # smoothed-SNR threshold
    _U = 8  # minimum sub-windows
    _V = 16  # hops per sub-window (8 x 16 x 10 ms = 1.28 s)
    _ALPHA_DD = 0.92  # decision-directed weight
    _XI_MIN = 10 ** (-25 / 10)  # a-priori SNR floor
    _SMOOTH_ERB = 0.25  # gain smoothing half-width, in ERBs
    _N_WARM = 8  # complete hops of running mean before minima are fed
    _SILENT = 1e-14  # mean |X|^2 per bin below this: digital silence
    _EPS = 1e-20

    def __init__(self, channels: int = 1, strength_db: float = 15.0):
        super().__init__(channels)
        self._strength_db = 0.0
        self._gmin = _F32(1.0)
        self.set_param("strength_db", strength_db)

        n, k = self.window, self.n_bins
        self._win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(_F32)
        # Frequency smoothing of the gain: boxcar over [lo, hi) bins, width
        # growing with the ERB (1 bin at low frequencies).
        f = np.arange(k) * (self.sample_rate / n)
        erb_bins = 24.7 * (4.37e-3 * f + 1.0) / (self.sample_rate / n)
        half = np.floor(self._SMOOTH_ERB * erb_bins).astype(np.int64)
        self._g_lo = np.clip(np.arange(k) - half, 0, k - 1)
        self._g_hi = np.clip(np.arange(k) + half + 1, 1, k)
        self._g_w = (self._g_hi - self._g_lo).astype(np.float64)
        self.reset_core()

    # ------------------------------------------------------------ parameters
    @classmethod
    def _check_param(cls, name: str, value) -> float:
        if name not in cls.PARAMS:
            raise ValueError(
                f"{cls.name}: unknown parameter {name!r}; known: {', '.join(cls.PARAMS)}"
            )
        lo, hi, _default, _unit = cls.PARAMS[name]
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} is not a number (range [{lo:g}, {hi:g}])") from None
        if not (lo <= v <= hi):  # also refuses NaN
            raise ValueError(f"{name}={value!r} is out of range [{lo:g}, {hi:g}]")
        return v

    def set_param(self, name: str, value) -> None:
        """Set a parameter listed in :attr:`PARAMS`; takes effect next hop.

        Raises ValueError (with the allowed range) for an unknown name or a
        value out of range."""
        v = self._check_param(name, value)
        if name == "strength_db":
            self._strength_db = v
            self._gmin = _F32(10.0 ** (-v / 20.0))

    def get_param(self, name: str) -> float:
        if name not in self.PARAMS:
            self._check_param(name, 0)  # raises the unknown-name error
        return getattr(self, name)

    @property
    def strength_db(self) -> float:
        """Maximum attenuation in dB (0 = bypass-equivalent delay)."""
        return self._strength_db

    @strength_db.setter
    def strength_db(self, value) -> None:
        self.set_param("strength_db", value)

    # ----------------------------------------------------------------- state
    def reset_core(self) -> None:
        c, n, k = self.channels, self.window, self.n_bins
        self._frame = np.zeros((c, n), _F32)  # last two hops of input
        self._ola = np.zeros((c, self.hop), _F32)  # overlap-add tail
        self._prev_silent = np.ones((c, 1), bool)  # the pre-roll hop is zeros
        self._live = np.zeros((c, 1), bool)
        self._sw_data = np.zeros((c, 1), bool)
        self._age = np.zeros((c, 1), _F32)  # complete frames since (re)start
        self._warm = False
        self.gain = np.ones((c, k), _F32)
        self.gain_reduction_db = np.zeros(c, _F32)
        big = _F32(3e38)
        self._S = np.zeros((c, k), _F32)  # smoothed periodogram
        self._St = np.zeros((c, k), _F32)  # same, speech bins excluded
        self._smin = np.full((c, k), big, _F32)  # minima (1st iteration)
        self._smin_sw = np.full((c, k), big, _F32)
        self._stmin = np.full((c, k), big, _F32)  # minima (2nd iteration)
        self._stmin_sw = np.full((c, k), big, _F32)
        self._ring = np.full((self._U, c, k), big, _F32)
        self._ring_t = np.full((self._U, c, k), big, _F32)
        self._ring_i = 0
        self._sw_n = 0
        self._lam_t = np.zeros((c, k), _F32)  # noise PSD before bias factor
        self._lam = np.zeros((c, k), _F32)
        self._gh1_g = np.ones((c, k), _F32)  # G_H1^2 * gamma of last hop

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _fsmooth(x: np.ndarray) -> np.ndarray:
        """[0.25, 0.5, 0.25] over frequency (edges mirrored)."""
        y = x * _F32(0.5)
        q = x * _F32(0.25)
        y[:, 1:] += q[:, :-1]
        y[:, :-1] += q[:, 1:]
        y[:, 0] += q[:, 1]
        y[:, -1] += q[:, -2]
        return y

    # ------------------------------------------------------------------ core
    def process_hop(self, hop: np.ndarray) -> np.ndarray:
        H = self.hop
        fr = self._frame
        fr[:, :H] = fr[:, H:]
        fr[:, H:] = hop
        X = np.fft.rfft(fr * self._win, axis=1)
        P = X.real * X.real
        P += X.imag * X.imag

        # A frame is "complete" when neither of its hops is digital silence
        # (stream start, muted input). Incomplete frames feed neither the
        # minima nor the noise estimate; the first complete frame of a
        # channel (re)initialises its smoothed spectra and noise estimate,
        # and the smoothing runs as a running mean for the first hops (fast,
        # low-variance start) before the minima are fed.
        hop_silent = (hop * hop).mean(axis=1, keepdims=True) < _F32(self._SILENT)
        complete = ~(hop_silent | self._prev_silent)
        self._prev_silent = hop_silent
        new = complete & ~self._live
        if new.any():
            self._live |= new
            self._age[new] = 0
            self._warm = True
            np.copyto(self._lam_t, Sf_ := self._fsmooth(P), where=new)
            np.copyto(self._lam, Sf_ * _F32(self._BETA), where=new)
        Sf = self._fsmooth(P)
        if self._warm:
            age = self._age
            a_s = np.minimum(_F32(self._ALPHA_S), age / (age + _F32(1.0))).astype(_F32)
            b_s = _F32(1.0) - a_s
            feed = complete & (age >= self._N_WARM)
            self._age = age + complete
            self._warm = bool((self._age < self._N_WARM + 1).any())
        else:
            a_s = _F32(self._ALPHA_S)
            b_s = _F32(1.0 - self._ALPHA_S)
            feed = complete
        all_fed = bool(feed.all())
        S = self._S
        S *= a_s
        S += b_s * Sf
        self._sw_data |= feed
        big = _F32(3e38)
        s_in = S if all_fed else np.where(feed, S, big)
        np.minimum(self._smin, s_in, out=self._smin)
        np.minimum(self._smin_sw, s_in, out=self._smin_sw)
        all_complete = bool(complete.all())

        # first iteration: rough speech-absence indicator
        inv = _F32(1.0 / self._B_MIN) / (self._smin + _F32(self._EPS))
        ind = ((P * inv) < _F32(self._GAMMA0)) & ((S * inv) < _F32(self._ZETA0))
        indf = ind.astype(_F32)
        num = self._fsmooth(indf * P)
        den = self._fsmooth(indf)
        St = self._St
        Stf = np.where(den > 0, num / (den + _F32(self._EPS)), St)
        St *= a_s
        St += b_s * Stf
        st_in = St if all_fed else np.where(feed, St, big)
        np.minimum(self._stmin, st_in, out=self._stmin)
        np.minimum(self._stmin_sw, st_in, out=self._stmin_sw)

        # second iteration: soft a-priori speech absence probability q
        inv2 = _F32(1.0 / self._B_MIN) / (self._stmin + _F32(self._EPS))
        g1 = _F32(self._GAMMA1)
        q = (g1 - P * inv2) * _F32(1.0 / (self._GAMMA1 - 1.0))
        np.clip(q, 0.0, 1.0, out=q)
        q[(S * inv2) >= _F32(self._ZETA0)] = 0.0

        # sub-window bookkeeping of the minimum statistics
        self._sw_n += 1
        if self._sw_n == self._V:
            self._sw_n = 0
            i = self._ring_i
            # a sub-window without any complete frame keeps the old minimum
            d = self._sw_data
            np.copyto(self._ring[i], self._smin_sw, where=d)
            np.copyto(self._ring_t[i], self._stmin_sw, where=d)
            d[:] = False
            self._ring_i = (i + 1) % self._U
            np.minimum.reduce(self._ring, axis=0, out=self._smin)
            np.minimum.reduce(self._ring_t, axis=0, out=self._stmin)
            self._smin_sw[:] = s_in
            self._stmin_sw[:] = st_in

        # posterior / a-priori SNR (decision directed), speech presence prob.
        gamma = P / (self._lam + _F32(self._EPS))
        np.minimum(gamma, _F32(1e8), out=gamma)
        a_dd = _F32(self._ALPHA_DD)
        xi = np.maximum(gamma - _F32(1.0), _F32(0.0))
        xi *= _F32(1.0 - self._ALPHA_DD)
        xi += a_dd * self._gh1_g
        np.clip(xi, _F32(self._XI_MIN), _F32(1e6), out=xi)
        wr = xi / (xi + _F32(1.0))  # Wiener gain
        v = gamma * wr
        p = _F32(1.0) - q
        p /= p + q * (xi + _F32(1.0)) * np.exp(-v) + _F32(1e-30)

        # noise update, slowed down where speech is present
        a_d = _F32(self._ALPHA_D)
        ad = a_d + _F32(1.0 - self._ALPHA_D) * p
        if not all_complete:
            ad[~complete[:, 0]] = 1.0
        lt = self._lam_t
        lt -= P
        lt *= ad
        lt += P  # ad * lt + (1 - ad) * P
        np.multiply(lt, _F32(self._BETA), out=self._lam)

        # OM-LSA gain
        lnv = np.log(np.maximum(v, _F32(1e-30)))
        gh1 = wr * np.interp(lnv, _LSA_LNV, _LSA_F).astype(_F32)
        gmin = self._gmin
        np.clip(gh1, gmin, _F32(1.0), out=gh1)
        self._gh1_g = gh1 * gh1 * gamma
        lg = np.log(gh1)
        lgmin = _F32(math.log(gmin))
        lg -= lgmin
        lg *= p
        lg += lgmin
        G = np.exp(lg)

        # smoothing over frequency (ERB-scaled boxcar)
        cs = np.zeros((G.shape[0], G.shape[1] + 1), np.float64)
        np.cumsum(G, axis=1, out=cs[:, 1:])
        G = ((cs[:, self._g_hi] - cs[:, self._g_lo]) / self._g_w).astype(_F32)
        np.clip(G, gmin, _F32(1.0), out=G)
        # DC and Nyquist bins are real (chi-square with 1 degree of
        # freedom: twice the variance): they follow their neighbours.
        G[:, 0] = G[:, 1]
        G[:, -1] = G[:, -2]
        self.gain = G

        # meter: energy-weighted reduction of this hop
        e_in = P.sum(axis=1)
        e_out = (P * (G * G)).sum(axis=1)
        self.gain_reduction_db = (
            _F32(10.0) * np.log10((e_in + _F32(1e-30)) / (e_out + _F32(1e-30)))
        ).astype(_F32)

        y = np.fft.irfft(X * G, n=self.window, axis=1).astype(_F32, copy=False)
        y *= self._win
        out = y[:, :H] + self._ola
        self._ola[:] = y[:, H:]
        return out
