"""The engine's hop without JACK: ``Engine.process_hop`` against the
formula of its docstring, computed here step by step, through steady hops
(where it skips the factors that are 1), parameter changes (ramped over
one hop), bypass, and its meters against direct sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quietcast.bridge.stages import DelayLine, DenoiseStage
from quietcast.daemon.config import ChannelConfig
from quietcast.daemon.engine import Engine

H = 480


def _lin(db):
    return 0.0 if db == -math.inf else 10.0 ** (db / 20.0)


@pytest.fixture
def signal(noisy_speechlike):
    x = noisy_speechlike[0][0, :H * 16]
    return np.stack([x, 0.5 * np.roll(x, 4801), 0.25 * np.roll(x, 9601)]).astype(np.float32)


def test_the_hop_is_the_documented_formula(signal):
    """Three channels through the ``dsp`` model: steady hops at 0 dB (the
    engine skips the unit gains there), then an input gain, an output
    gain, a strength and a background remix set at once (ramped over one
    hop, then held), then one channel bypassed (a crossfade, then that
    channel bit-exact dry). The reference runs its own denoise stage and
    delay lines and applies every factor explicitly. (Until session 24
    engaging bypass switched to the dry input at once, a click: the
    channel counted as fully bypassed when its ramp *ended* at 1.)"""
    eng = Engine([ChannelConfig(name=n) for n in ("a", "b", "c")], 48_000, model="dsp", max_attenuation_db=20.0)
    ref = DenoiseStage("nr", 48_000, 3, model="dsp", strength=1.0, max_attenuation_db=20.0, whole_hops=True)
    L = ref.latency
    align, dry_line = DelayLine(3, L), DelayLine(3, L)
    ramp = np.arange(1, H + 1, dtype=np.float32)[None, :] / H
    A, ga = 20.0, _lin(-20.0)
    keys = ("in", "r", "out", "byp")
    state = {"a": dict(input_gain_db=0.0, output_gain_db=0.0, strength=1.0, background_db=-math.inf, bypass=False),
             "b": {}, "c": {}}
    for n in "bc":
        state[n] = dict(state["a"])

    def factors():
        f = {k: [] for k in keys}
        for n in "abc":
            p = state[n]
            f["in"].append(_lin(p["input_gain_db"]))
            floor = _lin(-p["strength"] * A)
            f["r"].append(max((floor - ga) / (1.0 - ga), _lin(p["background_db"])))
            f["out"].append(_lin(p["output_gain_db"]))
            f["byp"].append(1.0 if p["bypass"] else 0.0)
        return {k: np.asarray(v, np.float32)[:, None] for k, v in f.items()}

    prev = factors()
    changes = {5: {"b": dict(input_gain_db=6.0, output_gain_db=-6.0), "c": dict(strength=0.25, background_db=-12.0)},
               10: {"a": dict(bypass=True)}}
    for k in range(signal.shape[1] // H):
        for n, ch in changes.get(k, {}).items():
            state[n].update(ch)
            eng.set_params(n, **ch)
        x = signal[:, k * H:(k + 1) * H]
        tgt = factors()
        g = {key: tgt[key] if np.array_equal(prev[key], tgt[key]) else prev[key] + (tgt[key] - prev[key]) * ramp
             for key in keys}
        xin = x * g["in"]
        v = ref.process(xin)
        xa = align.process(xin)
        main = v + g["r"] * (xa - v)
        dry = dry_line.process(x)
        main = main * (1.0 - g["byp"]) + dry * g["byp"]
        want = main * g["out"]
        got = eng.process_hop(x)
        np.testing.assert_allclose(got, want, atol=2e-7, err_msg=f"hop {k}")
        prev = tgt
        if k == 10:  # bypass engaging: the first sample is still the processed one, the last the dry one
            assert abs(got[0, 0] - dry[0, 0]) > 10 * abs(got[0, 0] - v[0, 0])
        if k >= 11:  # channel a fully bypassed: the input delayed, bit for bit
            np.testing.assert_array_equal(got[0], dry[0])
    assert float(np.abs(got[1:]).max()) > 0.01


def test_meters_are_the_last_five_hops(signal):
    """Peaks, RMS and the gain reduction published every 5 hops equal
    sums over those hops' samples computed here (to 0.01 dB); none before
    the fifth hop; a new snapshot each 5 hops."""
    eng = Engine([ChannelConfig(name=n) for n in ("a", "b", "c")], 48_000, model="dsp")
    ref = DenoiseStage("nr", 48_000, 3, model="dsp", strength=1.0, whole_hops=True)
    align = DelayLine(3, ref.latency)
    xs, vs, xas, outs = [], [], [], []
    for k in range(10):
        x = signal[:, (k + 3) * H:(k + 4) * H]
        out = eng.process_hop(x)
        v = ref.process(x)
        xs.append(x), vs.append(v), xas.append(align.process(x)), outs.append(out)
        if k < 4:
            assert eng.meters == {}
    x, v, xa, out = (np.concatenate(a[5:], axis=1).astype(np.float64) for a in (xs, vs, xas, outs))
    db = lambda e: 10 * np.log10(np.maximum(e, 1e-12))  # noqa: E731
    want = {"peak_in_db": db(np.abs(x).max(1) ** 2), "peak_out_db": db(np.abs(out).max(1) ** 2),
            "rms_in_db": db((x ** 2).mean(1)), "rms_out_db": db((out ** 2).mean(1)),
            "gain_reduction_db": np.minimum(0.0, db((v ** 2).mean(1)) - db((xa ** 2).mean(1)))}
    m = eng.meters
    assert list(m) == ["a", "b", "c"]
    for key, w in want.items():
        got = [m[n][key] for n in "abc"]
        assert all(isinstance(g, float) for g in got)
        np.testing.assert_allclose(got, w, atol=0.011, err_msg=key)
    assert min(m[n]["gain_reduction_db"] for n in "abc") < -1.0  # the dsp model did reduce
    assert m["b"]["peak_in_db"] == pytest.approx(m["a"]["peak_in_db"] - 6.02, abs=0.5)


@pytest.mark.parametrize("delay", [0, 1, 7, 480, 1000])
def test_a_delay_line_in_any_blocks_is_the_delayed_signal(delay):
    """Blocks of 0 to 1300 frames, shorter and longer than the delay."""
    rng = np.random.default_rng(delay)
    sig = rng.standard_normal((2, 6000)).astype(np.float32)
    line, outs, pos = DelayLine(2, delay), [], 0
    while pos < sig.shape[1]:
        n = min(int(rng.integers(0, 1300)), sig.shape[1] - pos)
        o = line.process(sig[:, pos:pos + n])
        assert o.shape == (2, n) and o.dtype == np.float32
        outs.append(o)
        pos += n
    want = np.concatenate([np.zeros((2, delay), np.float32), sig], axis=1)[:, :sig.shape[1]]
    np.testing.assert_array_equal(np.concatenate(outs, axis=1), want)
    line.reset()
    np.testing.assert_array_equal(line.process(sig[:, :delay + 5])[:, :delay], np.zeros((2, delay), np.float32))


def _chain(text):
    from quietcast.bridge import Chain

    return Chain.from_toml_string(text)


DELAYING = '[[stage]]\nname = "nr2"\ntype = "denoise"\nmodel = "dsp"\nstrength = 0.0\n'  # 960 frames, unchanged
GAIN = '[[stage]]\nname = "g"\ntype = "gain"\ngain_db = {db}\n'


def _impulse_lags(eng, n):
    x = np.zeros((n, 48_000), np.float32)
    x[:, 1000] = 0.5
    y = np.concatenate([eng.process_hop(x[:, k * H:(k + 1) * H]) for k in range(100)], axis=1)
    return [int(np.argmax(np.abs(y[i]))) - 1000 for i in range(n)]


def test_every_channel_has_the_declared_latency_whatever_its_chain():
    """Channels with a 960-frame chain, a 0-frame chain and none: each
    comes out after the engine's declared processing latency, also after
    every chain is swapped out. (Until session 24 a channel whose chain
    was shorter than the longest one was not padded: here 20 ms early,
    out of line with the others and with the latency told to JACK.)"""
    chs = [ChannelConfig(name="a", chain=_chain(DELAYING), strength=0.0),
           ChannelConfig(name="b", chain=_chain(GAIN.format(db=0.0)), strength=0.0),
           ChannelConfig(name="c", strength=0.0)]
    eng = Engine(chs, 48_000, model="passthrough")
    assert eng.processing_latency == eng.chain_budget == 960
    assert _impulse_lags(eng, 3) == [960, 960, 960]
    for i in range(3):
        eng.swap_chain(i, None)
    _impulse_lags(eng, 3)  # the swaps settle
    assert _impulse_lags(eng, 3) == [960, 960, 960]


@pytest.mark.parametrize("new", [GAIN.format(db=-6.0), DELAYING + GAIN.format(db=-6.0).replace('"g"', '"g2"'), None])
def test_a_live_chain_swap_has_no_gap_and_no_click(new):
    """A 220 Hz tone on a channel whose chain (no latency) is swapped
    mid-stream for one at -6 dB, one at -6 dB with 960 frames of latency,
    or none: the output never drops to silence and no sample steps more
    than the tone itself does; the old chain is heard until the new one is
    warm, then they crossfade; afterwards the level is the new chain's.
    (Until session 24 a swap started the new chain cold: its latency and
    pad came out as silence, and its level jumped in at once.) A second
    swap during the first keeps the chain being heard."""
    other = ChannelConfig(name="o", chain=_chain(DELAYING), strength=0.0)  # the engine's budget: 960
    eng = Engine([ChannelConfig(name="a", chain=_chain(GAIN.format(db=0.0)), strength=0.0), other], 48_000,
                 model="passthrough")
    t = np.arange(48_000 * 2) / 48_000
    x = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)]).astype(np.float32)
    out = []
    for k in range(x.shape[1] // H):
        if k == 60:
            eng.swap_chain(0, _chain(GAIN.format(db=3.0)).processor(48_000, 1))
        if k == 63:  # a swap during the swap: the first new chain is dropped unheard
            eng.swap_chain(0, _chain(new).processor(48_000, 1) if new else None)
        out.append(eng.process_hop(x[:, k * H:(k + 1) * H]))
    y = np.concatenate(out, axis=1)[0]
    step = float(np.abs(np.diff(y[30 * H:60 * H])).max())
    around = y[55 * H:100 * H]
    assert float(np.abs(np.diff(around)).max()) <= 1.05 * step
    env = np.abs(around).reshape(-1, H).max(axis=1)
    assert env.min() > 0.1  # never silent (a 0.3 tone, at most -6 dB)
    d = np.concatenate([np.zeros(960, np.float32), x[0]])[:x.shape[1]]  # the input at the declared latency
    W, F = eng.chain_warmup_hops, eng.chain_fade_hops
    np.testing.assert_allclose(y[30 * H:(63 + W) * H], d[30 * H:(63 + W) * H], atol=1e-6)  # the old chain, heard
    done = (63 + W + F) * H
    g = 1.0 if new is None else 10 ** (-6 / 20)
    np.testing.assert_allclose(y[done:done + 20 * H], g * d[done:done + 20 * H], atol=1e-6)  # then the new one
    assert not eng._chain_fades


def test_a_swap_during_the_crossfade_waits_for_its_end():
    """A second swap that arrives while the first is crossfading (its new
    chain already partly heard) starts when that crossfade ends: the
    output stays smooth, the first new chain is heard in full, then the
    second takes over the same way."""
    other = ChannelConfig(name="o", chain=_chain(DELAYING), strength=0.0)
    eng = Engine([ChannelConfig(name="a", chain=_chain(GAIN.format(db=0.0)), strength=0.0), other], 48_000,
                 model="passthrough")
    W, F = eng.chain_warmup_hops, eng.chain_fade_hops
    t = np.arange(48_000 * 3) / 48_000
    x = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)]).astype(np.float32)
    out = []
    for k in range(x.shape[1] // H):
        if k == 40:
            eng.swap_chain(0, _chain(GAIN.format(db=-6.0)).processor(48_000, 1))
        if k == 40 + W:  # in the crossfade
            last = _chain(GAIN.format(db=-12.0)).processor(48_000, 1)
            eng.swap_chain(0, last)
            assert eng._chain_fades[0][3] is not None
            # what the channel's chain parameters address is the newest chain, although not heard yet
            assert eng.chain(0) is last and eng.chain(1) is eng.chains[1]
        out.append(eng.process_hop(x[:, k * H:(k + 1) * H]))
    y = np.concatenate(out, axis=1)[0]
    d = np.concatenate([np.zeros(960, np.float32), x[0]])[:x.shape[1]]
    step = float(np.abs(np.diff(y[20 * H:40 * H])).max())
    assert float(np.abs(np.diff(y[35 * H:(40 + 2 * (W + F) + 5) * H])).max()) <= 1.05 * step
    a = (40 + W + F) * H  # the first new chain alone, all through the second's warm-up
    np.testing.assert_allclose(y[a:a + W * H], 10 ** (-6 / 20) * d[a:a + W * H], atol=1e-6)
    b = (40 + 2 * (W + F)) * H
    np.testing.assert_allclose(y[b:b + 20 * H], 10 ** (-12 / 20) * d[b:b + 20 * H], atol=1e-6)
    assert not eng._chain_fades


def test_a_swap_on_an_engine_without_chain_latency_completes():
    """One channel, a chain of no latency (the budget is 0), swapped for
    none: the crossfade runs to its end, smoothly, and nothing is left
    pending (the chains were skipped when the budget was 0 and no chain
    was left: the old chain was cut and the swap stayed pending)."""
    eng = Engine([ChannelConfig(name="a", chain=_chain(GAIN.format(db=-12.0)), strength=0.0)], 48_000,
                 model="passthrough")
    assert eng.chain_budget == 0
    t = np.arange(48_000) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]
    out = []
    for k in range(x.shape[1] // H):
        if k == 30:
            eng.swap_chain(0, None)
        out.append(eng.process_hop(x[:, k * H:(k + 1) * H]))
    y = np.concatenate(out, axis=1)[0]
    done = (30 + eng.chain_warmup_hops + eng.chain_fade_hops) * H
    assert not eng._chain_fades
    np.testing.assert_allclose(y[done:], x[0, done:], atol=1e-6)
    np.testing.assert_allclose(y[:30 * H], 10 ** (-12 / 20) * x[0, :30 * H], atol=1e-6)
    assert np.abs(np.diff(y)).max() <= 1.05 * np.abs(np.diff(x[0])).max()


def test_a_channel_runs_the_chain_processor_it_brings_and_a_misfit_is_refused():
    """The start-up check builds each chain once and the engine runs that
    build (``processor``) instead of building it again; one built for
    another rate, channel count or chain is refused, naming the channel
    and what the engine runs."""
    import types

    from quietcast.bridge import Chain

    chain = Chain([{"name": "g", "type": "gain", "gain_db": -6.0}])
    built = chain.processor(48_000, 1)
    eng = Engine([types.SimpleNamespace(name="a", chain=chain, processor=built),
                  types.SimpleNamespace(name="b", chain=chain)], 48_000, model="dsp")
    assert eng.chains[0] is built  # run, not built again
    assert eng.chains[1] is not built and eng.chains[1].chain is chain  # (none brought: built)
    for other, why in ((chain.processor(44_100, 1), "built for 1 channel(s) at 44100 Hz"),
                       (chain.processor(48_000, 2), "built for 2 channel(s) at 48000 Hz"),
                       (Chain(chain.stages).processor(48_000, 1), "built from another chain")):
        with pytest.raises(ValueError) as e:
            Engine([types.SimpleNamespace(name="a", chain=chain, processor=other)], 48_000, model="dsp")
        assert str(e.value) == (f"channel 'a': the chain processor it brings was {why}; the engine runs the "
                                "channel's chain mono at 48000 Hz")
