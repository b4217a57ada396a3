"""Chains: spec errors (all at once, with hints), streaming invariants across
block sizes, bypass bit-exactness, NaN safety, latency accounting, faults,
and a chain hosting our real VST3 plugin."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from quietcast.bridge import Chain, ChainSpecError, ParameterError

SR = 48_000
BLOCKS = (1, 64, 65, 256, 8193)


def stream(proc, x, block):
    return np.concatenate([proc.process(x[:, i:i + block]) for i in range(0, x.shape[1], block)], axis=1)


def spec_problems(text: str) -> list[str]:
    with pytest.raises(ChainSpecError) as ei:
        Chain.from_toml_string(text, source="t.toml")
    assert isinstance(ei.value, ValueError)  # the builtin is inherited too
    return [str(p) for p in ei.value.problems]


# --------------------------------------------------------------------------
# spec errors


def test_every_problem_is_reported_at_once():
    probs = spec_problems('''
nmae = "x"
[[stage]]
name = "hp"
type = "higpass"
[[stage]]
name = "nr"
type = "denoise"
strenght = 0.5
[[stage]]
name = "nr"
type = "compressor"
ratio = 0.2
[[stage]]
type = "gain"
gain_db = "loud"
''')
    text = "\n".join(probs)
    assert len(probs) == 7, text
    assert "'nmae' (did you mean 'name'?)" in text
    assert "unknown type 'higpass' (did you mean 'highpass'" in text
    assert "unknown parameter 'strenght' for type 'denoise' (did you mean 'strength'?)" in text
    assert "name 'nr' is used by an earlier stage" in text
    assert "ratio: value 0.2 is out of range [1, 100]" in text
    assert "missing 'name'" in text
    # the bad value of the nameless stage is reported too
    assert "stage 4: gain_db: value 'loud' is not a number" in text


def test_bad_value_names_parameter_value_and_range():
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\nstrength = 1.5\n')
    assert probs == ["stage 'nr': strength: value 1.5 is out of range [0, 1]"]


def test_non_number_value():
    probs = spec_problems('[[stage]]\nname = "g"\ntype = "gain"\ngain_db = "loud"\n')
    assert "gain_db: value 'loud' is not a number; allowed range [-96, 24] or -inf dB" in probs[0]


def test_invalid_toml_is_one_clear_problem():
    probs = spec_problems('[[stage]\nname = "x"')
    assert len(probs) == 1 and probs[0].startswith("not valid TOML")


def test_stage_must_be_array_of_tables():
    probs = spec_problems('[stage]\nname = "x"\ntype = "gain"\n')
    assert "array of tables" in probs[0]


def test_unknown_model_suggests():
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "dps"\n')
    assert "model 'dps' is unknown (did you mean 'dsp'?)" in probs[0]


def test_denoise_model_from_a_bundle_folder(tmp_path):
    """A denoise stage's model can be a neural bundle folder, relative to
    the chain file (as engine.model can be); it runs the same network as
    the registered name. A missing or broken folder is named."""
    import shutil

    from quietcast.models.bundle import ASSETS

    shutil.copytree(ASSETS / "default", tmp_path / "mine")
    (tmp_path / "c.toml").write_text('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "./mine"\nstrength = 0.5\n')
    chain = Chain.from_toml(tmp_path / "c.toml")
    assert chain.stages[0].values["model"] == str(tmp_path / "mine")
    ref = Chain.from_toml_string('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "neural"\nstrength = 0.5\n')
    x = (np.random.default_rng(3).standard_normal((1, 9600)) * 0.1).astype(np.float32)
    a, b = chain.processor(48_000, 1), ref.processor(48_000, 1)
    assert a.latency == b.latency
    np.testing.assert_allclose(a.process(x), b.process(x), atol=1e-6)
    (tmp_path / "mine" / "weights.safetensors").write_bytes(b"broken")
    with pytest.raises(ChainSpecError) as ei:
        Chain.from_toml(tmp_path / "c.toml")
    assert "model './mine'" in str(ei.value) and "sha256" in str(ei.value)
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "/nowhere/bundle"\n')
    assert "model '/nowhere/bundle': no model bundle at /nowhere/bundle" in probs[0]


def test_missing_plugin_path_is_named(tmp_path):
    (tmp_path / "c.toml").write_text('[[stage]]\nname = "v"\ntype = "plugin"\npath = "nope.vst3"\n')
    with pytest.raises(ChainSpecError) as ei:
        Chain.from_toml(tmp_path / "c.toml")
    # relative paths resolve against the chain file's folder
    assert f"plugin path '{tmp_path / 'nope.vst3'}' does not exist" in str(ei.value)


def test_an_impulse_response_is_relative_to_the_chain_file_and_checked(tmp_path, monkeypatch):
    """A convolution stage's impulse_response_filename was opened relative
    to the current folder (a chain that worked from its own folder failed
    elsewhere with "RuntimeError: Unable to load impulse response: ir.wav"),
    and a missing one was named only when the chain was built."""
    from pedalboard.io import AudioFile

    room = tmp_path / "chains"
    room.mkdir()
    ir = np.zeros((1, 480), np.float32)
    ir[0, 0], ir[0, 100] = 0.5, 0.25
    with AudioFile(str(room / "ir.wav"), "w", SR, 1, bit_depth=32) as f:
        f.write(ir)
    (room / "room.toml").write_text('[[stage]]\nname = "c"\ntype = "convolution"\nimpulse_response_filename = "ir.wav"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    chain = Chain.load(str(room / "room.toml"))
    assert chain.stages[0].values["impulse_response_filename"] == str(room / "ir.wav")
    x = np.zeros((1, 2000), np.float32)
    x[0, 10] = 1.0
    y = chain.process_array(x, SR)  # it convolves: the impulse comes out as the response
    assert np.argmax(np.abs(y[0])) == 10 and abs(y[0, 110]) > 0.3 * abs(y[0, 10])  # (JUCE normalises the response)
    # a missing file is a problem of the chain, named by its full path, when the file is loaded
    (room / "gone.toml").write_text('[[stage]]\nname = "c"\ntype = "convolution"\nimpulse_response_filename = "no.wav"\n')
    with pytest.raises(ChainSpecError) as ei:
        Chain.load(str(room / "gone.toml"))
    assert [str(p) for p in ei.value.problems] == [f"stage 'c': impulse response {str(room / 'no.wav')!r} does not exist"]
    # a file pedalboard cannot read (it would pass the audio through unchanged) is refused when built
    (room / "junk.wav").write_bytes(bytes(range(256)) * 8)
    (room / "junk.toml").write_text('[[stage]]\nname = "c"\ntype = "convolution"\nimpulse_response_filename = "junk.wav"\n')
    junk = Chain.load(str(room / "junk.toml"))
    with pytest.raises(ChainSpecError) as ei:
        junk.check()
    assert str(ei.value.problems[0]).startswith(f"stage 'c': impulse response {str(room / 'junk.wav')!r} is not an "
                                                "audio file that can be read")


def test_plugin_without_path():
    probs = spec_problems('[[stage]]\nname = "v"\ntype = "plugin"\n')
    assert "needs path" in probs[0]


def test_bad_stage_names():
    probs = spec_problems('[[stage]]\nname = "Bad Name"\ntype = "gain"\n')
    assert "name 'Bad Name' is not allowed" in probs[0]


@pytest.mark.parametrize("kind", ["pitch_shift", "gsm_compressor", "gsm_full_rate_compressor"])
def test_unsupported_builtin_says_why(kind):
    """Built-ins that pedalboard cannot stream are refused by name, and not
    listed. (The GSM compressor was accepted until session 24: live, in
    480-frame hops, it turned a channel to near silence, -66 dBFS for a
    -13 dBFS input.)"""
    from quietcast.bridge.stages import all_types

    probs = spec_problems(f'[[stage]]\nname = "p"\ntype = "{kind}"\n')
    assert "not supported" in probs[0] and "stream" in probs[0]
    assert "gsm_compressor" not in all_types() and "pitch_shift" not in all_types()


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ChainSpecError, match="cannot read chain file"):
        Chain.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ChainSpecError, match="not UTF-8"):
        Chain.from_toml(bad)


def test_unknown_bundled_chain_suggests():
    with pytest.raises(ChainSpecError, match="did you mean 'default'"):
        Chain.load("defualt")


def test_the_readme_describes_the_bundled_default_chain():
    """The README listed highpass -> denoise -> compressor -> limiter: no
    make-up gain stage, and not that the limiter is a true-peak brickwall."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    text = " ".join(readme.split("- **`default`**:", 1)[1].split("\n- ", 1)[0].split())
    words = {"highpass": "highpass", "denoise": "denoise", "compressor": "compressor", "gain": "make-up gain",
             "brickwall_limiter": "true-peak brickwall limiter"}
    stages = Chain.default().stages
    at = [text.index(words[st.type]) for st in stages]
    assert at == sorted(at), text  # in the chain's order
    values = {st.type: st.values for st in stages}
    assert values["brickwall_limiter"]["true_peak"] is True
    assert f"ceiling {values['brickwall_limiter']['ceiling_db']:g} dB" in text
    assert f"+{values['gain']['gain_db']:g} dB" in text and f"highpass {values['highpass']['cutoff_frequency_hz']:g} Hz" in text


def test_python_api_uses_the_same_names():
    c = Chain([{"name": "hp", "type": "highpass", "cutoff_frequency_hz": 80},
               {"name": "nr", "type": "denoise", "strength": 0.5}])
    assert [s.name for s in c.stages] == ["hp", "nr"]
    assert Chain.from_dict(c.to_dict()).to_dict() == c.to_dict()
    with pytest.raises(ChainSpecError, match="cutof_frequency_hz"):
        Chain([{"name": "hp", "type": "highpass", "cutof_frequency_hz": 80}])


# --------------------------------------------------------------------------
# streaming invariants


@pytest.mark.parametrize("sr", [48_000, 44_100])
def test_streaming_equals_whole_for_every_block_size(noisy_speechlike, sr):
    x = np.repeat(noisy_speechlike[0][:, : sr * 2], 2, axis=0)
    x[1] *= 0.5
    proc = Chain.default().processor(sr, 2)
    whole = proc.process(x)
    for b in BLOCKS:
        proc.reset()
        y = stream(proc, x, b)
        if sr == 48_000:  # no resampler: bit-exact
            np.testing.assert_array_equal(y, whole, err_msg=f"block size {b}")
        else:  # the resampler's SIMD paths round differently per chunk size
            np.testing.assert_allclose(y, whole, rtol=0, atol=1e-7, err_msg=f"block size {b}")


def test_process_array_is_latency_aligned():
    # a linear chain: gain then the passthrough suppressor, impulse in
    c = Chain([{"name": "g", "type": "gain", "gain_db": -6.0},
               {"name": "nr", "type": "denoise", "model": "passthrough"}])
    x = np.zeros(4800, np.float32)
    x[1000] = 1.0
    y = c.process_array(x, SR)
    assert y.shape == x.shape
    assert int(np.argmax(np.abs(y))) == 1000
    assert y[1000] == pytest.approx(10 ** (-6 / 20), rel=1e-6)


def test_latency_is_declared_and_exact_through_resampling():
    """Through the resamplers (any rate but 48 kHz) an impulse comes out
    with its peak on the declared latency and, below 48 kHz (where the
    round trip keeps the whole band), as the pair's symmetric
    (linear-phase) response centred there. It used to be centred
    a fraction of a frame off (0.51 early at 44.1 kHz, 0.33 late at 16 kHz),
    and the peak could land a frame either side. (Above 48 kHz an impulse
    loses its band above 24 kHz, and what is left depends on where it
    falls between two frames at 48 kHz: tests/bridge/test_denoise_rates.py
    measures the delay there.)"""
    c = Chain([{"name": "nr", "type": "denoise", "model": "passthrough"}])
    for sr in (48_000, 44_100, 22_050, 16_000, 88_200):
        proc = c.processor(sr, 1)
        x = np.zeros((1, sr // 2), np.float32)
        x[0, 2000] = 1.0
        y = stream(proc, x, 256)
        at = 2000 + proc.latency
        assert int(np.argmax(np.abs(y[0]))) == at, (sr, int(np.argmax(np.abs(y[0]))), proc.latency)
        if sr < 48_000:
            before, after = y[0, at - 8:at][::-1], y[0, at + 1:at + 9]
            np.testing.assert_allclose(before, after, rtol=0, atol=2e-3 * y[0, at], err_msg=str(sr))


# --------------------------------------------------------------------------
# bypass, NaN, faults, live parameter changes


def test_bypassed_chain_is_bit_exact_delayed(noisy_speechlike):
    x = noisy_speechlike[0]
    c = Chain([{"name": "hp", "type": "highpass", "cutoff_frequency_hz": 200, "bypass": True},
               {"name": "nr", "type": "denoise", "model": "dsp", "bypass": True},
               {"name": "comp", "type": "compressor", "threshold_db": -30, "ratio": 4, "bypass": True}])
    proc = c.processor(SR, 1)
    assert proc.latency > 0
    y = stream(proc, x, 256)
    L = proc.latency
    np.testing.assert_array_equal(y[:, L:], x[:, :-L])
    assert not y[:, :L].any()


def test_empty_chain_is_identity():
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    proc = Chain.load("dry").processor(SR, 2)
    assert proc.latency == 0
    np.testing.assert_array_equal(proc.process(x), x)


def test_live_bypass_toggle_crossfades_without_a_jump(noisy_speechlike):
    x = noisy_speechlike[0]
    c = Chain([{"name": "g", "type": "gain", "gain_db": -20.0}])
    proc = c.processor(SR, 1)
    a = proc.process(x[:, :4800])
    proc.set_param("g.bypass", True)
    b = proc.process(x[:, 4800:9600])
    # the first sample after the switch continues from the wet signal; the
    # block ends fully dry; no step bigger than the signal's own
    assert b[0, 0] == pytest.approx(x[0, 4800] * 0.1, abs=1e-6)
    assert b[0, -1] == pytest.approx(x[0, 9599], abs=1e-6)
    steps = np.abs(np.diff(np.concatenate([a, b], axis=1)[0]))
    assert steps.max() <= np.abs(np.diff(x[0, :9600])).max() + 1e-6


@pytest.mark.parametrize("how", ["raises", "nan"])
def test_a_stage_fault_falls_back_to_dry_without_a_step(how):
    """A stage that fails mid-stream (a plugin that raises, or returns NaN)
    is dropped for the dry path from that block on; the first dry block
    starts where the stage's output left off and falls onto the dry
    signal within 10 ms. (Until session 24 it switched in one sample: a
    click on air, up to the full difference between wet and dry.)"""
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 157 * t + 1.0) + 0.1 * np.sin(2 * np.pi * 731 * t)).astype(np.float32)[None]
    proc = Chain([{"name": "g", "type": "gain", "gain_db": -20.0}]).processor(SR, 1)
    st = proc.stage("g")
    f = 30 + int(np.argmax(np.abs(x[0, 480 * 30:480 * 60:480])))  # the fault at a loud sample
    blocks = []
    for k in range(0, SR, 480):
        if k == 480 * f:
            real = st._process
            st._process = (lambda blk: (_ for _ in ()).throw(RuntimeError("plugin crashed"))) if how == "raises" \
                else (lambda blk: real(blk) * np.float32("nan"))
        blocks.append(proc.process(x[:, k:k + 480]))
    y = np.concatenate(blocks, axis=1)[0]
    assert proc.faults == {"g": "raised RuntimeError: plugin crashed" if how == "raises" else "returned NaN or Inf samples"}
    own = np.abs(np.diff(x[0])).max()  # the dry signal's own largest step
    assert abs(x[0, 480 * f]) > 0.25  # without the fade: a step of about 0.9 times that
    assert np.abs(np.diff(y[480 * (f - 2):480 * (f + 3)])).max() <= 1.05 * own
    np.testing.assert_array_equal(y[480 * (f + 1):], x[0, 480 * (f + 1):])  # dry, bit for bit, after the fade
    assert np.isfinite(y).all()


def _hops(proc, ref, x: np.ndarray, changes: dict[int, list[tuple[str, object]]]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``proc`` and ``ref`` over ``x`` in 10 ms hops (480 frames), as the
    live engine does, setting ``changes[k]`` (``(address, value)`` pairs)
    on ``proc`` before hop ``k``; both outputs, ``[channels, frames]``."""
    ys, rs = [], []
    for k in range(x.shape[1] // 480):
        for address, value in changes.get(k, ()):
            proc.set_param(address, value)
        blk = x[:, k * 480:(k + 1) * 480]
        ys.append(proc.process(blk))
        rs.append(ref.process(blk))
    return np.concatenate(ys, axis=1), np.concatenate(rs, axis=1)


@pytest.mark.parametrize("stage,param,before,after", [
    ({"type": "high_shelf", "cutoff_frequency_hz": 1000.0}, "gain_db", 0.0, 12.0),
    ({"type": "peak", "cutoff_frequency_hz": 220.0, "q": 2.0}, "gain_db", 0.0, 12.0),
    ({"type": "lowpass"}, "cutoff_frequency_hz", 18_000.0, 500.0),
    ({"type": "compressor", "ratio": 8.0}, "threshold_db", 0.0, -30.0),
    ({"type": "noise_gate"}, "threshold_db", -100.0, -3.0),
    ({"type": "brickwall_limiter"}, "ceiling_db", -1.0, -20.0),
    # (not a whole number of the tones' common 50 ms period: the new delay sounds otherwise)
    ({"type": "delay", "mix": 0.5}, "delay_seconds", 0.25, 0.2625),
    ({"type": "delay", "mix": 0.5, "feedback": 0.5}, "delay_seconds", 0.25, 0.2625),
    # (a still LFO: the new instance's starts afresh, and a chorus built with the value can only match a still one)
    ({"type": "chorus", "rate_hz": 0.0, "depth": 0.5}, "centre_delay_ms", 7.0, 20.0),
])
def test_a_live_change_of_a_builtin_does_not_click(stage, param, before, after):
    """pedalboard applies a new value at once, and its shelves and peak
    filter also clear their state: a MIDI fader on an EQ or a compressor
    ticked (a second difference 8-24 times the signal's own, up to 0.077).
    A change is now crossfaded from the running instance to a new one
    pre-rolled on the recent input: the output stays as smooth as the
    signal, and then is what the new value gives. A delay's time and a
    chorus's centre delay were ramped in 8 steps, each moving the delay
    line's read position at once (a second difference 75 and 110 times
    the signal's own); they are crossfaded too, the new delay pre-rolled
    on as much input as its echoes reach back."""
    t = np.arange(4 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 100 * t) + 0.2 * np.sin(2 * np.pi * 220 * t)
         + 0.1 * np.sin(2 * np.pi * 1300 * t)).astype(np.float32)[None]
    spec = {"name": "s", **stage, param: before}
    proc = Chain([spec]).processor(SR, 1)
    ref = Chain([{**spec, param: after}]).processor(SR, 1)  # the new value from the start
    k0 = 200  # the change, at a hop boundary 2 s in
    y, r = (a[0] for a in _hops(proc, ref, x, {k0: [(f"s.{param}", after)]}))
    d2 = lambda a: np.abs(np.diff(a, 2)).max()  # noqa: E731
    steady = max(d2(y[(k0 - 40) * 480:k0 * 480]), d2(r[(k0 + 20) * 480:(k0 + 60) * 480]))
    # (the crossfade: in the next block, or up to 4 later with feedback, its 2 s pre-roll spread out)
    assert d2(y[(k0 - 2) * 480:(k0 + 8) * 480]) <= 1.3 * steady
    late = slice((k0 + 40) * 480, (k0 + 80) * 480)  # settled: the new value's sound
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))  # noqa: E731
    assert rms(y[late] - r[late]) <= 0.05 * rms(r[late])
    assert rms(y[late] - y[(k0 - 40) * 480:k0 * 480]) > 0.1 * rms(r[late])  # and it did change


def test_a_delay_time_change_keeps_the_echoes_of_what_came_before():
    """The new delay instance is pre-rolled on the input its echoes reach
    back to, including blocks in which another parameter (``mix``) was
    ramping: from the block after the change on, the output is exactly
    that of a delay built with the new values (as if it had run with them
    all along)."""
    x = np.random.default_rng(5).standard_normal((1, 2 * SR)).astype(np.float32) * 0.1
    spec = {"name": "d", "type": "delay", "delay_seconds": 0.25, "mix": 0.5}
    proc = Chain([spec]).processor(SR, 1)
    ref = Chain([{**spec, "delay_seconds": 0.31, "mix": 0.6}]).processor(SR, 1)
    k0 = 150
    y, r = _hops(proc, ref, x, {k0 - 3: [("d.mix", 0.6)], k0: [("d.delay_seconds", 0.31)]})
    np.testing.assert_allclose(y[:, (k0 + 1) * 480:], r[:, (k0 + 1) * 480:], atol=1e-6)


def test_a_long_delay_pre_roll_is_spread_over_blocks_and_lands_exactly():
    """A new delay time on 8 channels with feedback pre-rolls the new
    instance on 2 s of input: run in one block that was 35 ms of work in a
    10 ms hop (the live engine's deadline missed: its dry fallback). It is
    now run a step a block while the old delay plays on unchanged; then the
    new one is crossfaded in, exactly as a delay built with the new
    values, and no block runs more than a step of it."""
    from quietcast.bridge import stages

    ch = 8
    x = np.random.default_rng(9).standard_normal((ch, 3 * SR)).astype(np.float32) * 0.1
    spec = {"name": "d", "type": "delay", "delay_seconds": 0.25, "feedback": 0.5, "mix": 0.5}
    proc = Chain([spec]).processor(SR, ch)
    old = Chain([spec]).processor(SR, ch)
    new = Chain([{**spec, "delay_seconds": 0.31}]).processor(SR, ch)
    st = proc.stage("d")
    frames, plain = [0], st._plain
    st._plain = lambda plugin, blk: frames.__setitem__(0, frames[0] + blk.shape[1]) or plain(plugin, blk)
    k0, ys, most = 150, [], 0
    for k in range(x.shape[1] // 480):
        if k == k0:
            proc.set_param("d.delay_seconds", 0.31)
        frames[0] = 0
        ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))
        most = max(most, frames[0])
    y = np.concatenate(ys, axis=1)
    step = max(stages._PREROLL, math.ceil(stages._PREROLL_STEP_S * SR / ch))
    assert most <= step + 2 * 480, most  # (was the whole 2 s pre-roll, 100,096 frames, in one block)
    ro, rn = old.process(x), new.process(x)  # (one call each: a delay's output does not depend on blocks)
    # the old delay until the crossfade, the new one from the block after it on, to float rounding
    diff_old = np.abs(y - ro).max(axis=0).reshape(-1, 480).max(axis=1)
    diff_new = np.abs(y - rn).max(axis=0).reshape(-1, 480).max(axis=1)
    swap = k0 + int(np.argmax(diff_old[k0:] > 1e-6))
    blocks = math.ceil((2 * SR + stages._PREROLL) / step)
    assert k0 < swap <= k0 + blocks, (swap, blocks)
    after = (swap + 1) * 480 + proc.latency  # (8 channels: the stage's 8 frames of latency, _ShapeGuard's)
    assert diff_old[:swap].max() <= 1e-6 and np.abs(y[:, after:] - rn[:, after:]).max() <= 1e-6


def test_a_knob_sweeping_the_delay_time_makes_one_swap_per_gap_and_ends_on_its_last_value():
    """A MIDI knob on ``delay_seconds`` sends a value every 10 ms block: each
    crossfade pre-rolls a new delay on up to seconds of input on the engine
    thread, so they are made at most one per ``_SWAP_GAP_S`` (50 ms), the
    values in between taken together, the first at once and the last within
    the gap."""
    from quietcast.bridge import stages

    x = np.random.default_rng(6).standard_normal((1, 480)).astype(np.float32) * 0.1
    proc = Chain([{"name": "d", "type": "delay", "delay_seconds": 0.5, "mix": 0.5}]).processor(SR, 1)
    st = proc.stage("d")
    made = []
    new_instance = st._new_instance
    st._new_instance = lambda: made.append(1) or new_instance()
    proc.process(x)
    proc.set_param("d.delay_seconds", 0.51)
    proc.process(x)
    proc.process(x)  # (its 0.6 s pre-roll is run over two blocks: see the test below)
    assert len(made) == 1 and st.plugin.delay_seconds == pytest.approx(0.51)  # the first: at once
    for k in range(40):  # 400 ms of a knob moving
        proc.set_param("d.delay_seconds", 0.52 + k * 0.005)
        proc.process(x)
    gap_blocks = math.ceil(stages._SWAP_GAP_S * SR / 480)
    assert len(made) <= 1 + math.ceil(40 / gap_blocks) + 1, len(made)
    for _ in range(gap_blocks + 1):
        proc.process(x)
    assert st.plugin.delay_seconds == pytest.approx(0.52 + 39 * 0.005)  # the last value, within the gap


def test_a_value_set_back_within_a_block_and_a_reset_keep_the_stage_at_its_value():
    """Two sets before the next block, the second back to the start (a
    MIDI fader sends values faster than 10 ms): the plugin runs the last
    value, not the ramp's end; a reset right after a filter change makes
    the change (it was dropped: the stage said 12 dB and ran 0)."""
    proc = Chain([{"name": "c", "type": "chorus", "mix": 0.5},
                  {"name": "hs", "type": "high_shelf", "cutoff_frequency_hz": 1000.0}]).processor(SR, 1)
    x = np.random.default_rng(1).standard_normal((1, 480)).astype(np.float32) * 0.1
    proc.process(x)
    proc.set_param("c.mix", 0.8)
    proc.set_param("c.mix", 0.5)
    proc.process(x)
    assert proc.stage("c").plugin.mix == pytest.approx(0.5)
    proc.set_param("hs.gain_db", 12.0)
    proc.reset()
    assert proc.stage("hs").plugin.gain_db == pytest.approx(12.0)


def test_a_strength_change_while_the_gate_opens_ramps_on():
    """A new strength while the neural stage's gate is opening (the last
    step of a ramp to 0) ramps from where the floor is (it jumped from
    0.97 to the new floor at once) and puts the gate's depth back."""
    t = np.arange(3 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)[None]
    proc = Chain([{"name": "nr", "type": "denoise", "model": "default", "strength": 1.0}]).processor(SR, 1)
    st = proc.stage("nr")
    ys, k, changed = [], 0, None
    while k < x.shape[1] // 480:
        if k == 100:
            proc.set_param("nr.strength", 0.0)
        if changed is None and getattr(st, "_opening", False):
            changed = k
            proc.set_param("nr.strength", 1.0)
            assert not st._opening and st.suppressor.get_param("pause_db") == st.values["pause_db"] > 0
        ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))
        k += 1
    assert changed is not None
    y = np.concatenate(ys, axis=1)[0]
    own = np.abs(np.diff(y[50 * 480:100 * 480])).max()
    # the ramp's own steps (a twentieth of the floor's range, once a block) reach about 1.5 times this pure
    # low tone's largest step; the jump at once was about 40 times it
    assert np.abs(np.diff(y[(changed - 2) * 480:(changed + 30) * 480])).max() <= 2.0 * max(own, np.abs(np.diff(x[0])).max())


@pytest.mark.parametrize("model", ["default", "dsp"])
@pytest.mark.parametrize("start,end", [(1.0, 0.0), (0.0, 1.0), (1.0, 0.4)])
def test_a_live_strength_change_of_a_denoise_stage_does_not_click(model, start, end):
    """A denoise stage's ``strength`` moved live (tones over a 100 Hz hum
    and a little noise): the floor moves there over 0.2 s in 10 ms steps,
    and the neural model's pause gate opens before the output becomes the
    input (strength 0, where the gate is not applied) and starts open when
    it leaves it. Nothing steps more than the signal itself; then the
    output is that of a stage built with the new strength. (Until session
    24 the neural model jumped between two samples: 7 times the signal's
    own largest step.)"""
    t = np.arange(4 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1300 * t) + 0.3 * np.sin(2 * np.pi * 100 * t)
         + 0.003 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)[None]
    spec = {"name": "nr", "type": "denoise", "model": model, "strength": start}
    proc = Chain([spec]).processor(SR, 1)
    ref = Chain([{**spec, "strength": end}]).processor(SR, 1)
    k0 = 200
    y, r = (a[0] for a in _hops(proc, ref, x, {k0: [("nr.strength", end)]}))
    own = max(np.abs(np.diff(y[(k0 - 60) * 480:k0 * 480])).max(), np.abs(np.diff(r[(k0 + 60) * 480:(k0 + 120) * 480])).max())
    assert np.abs(np.diff(y[(k0 - 2) * 480:(k0 + 40) * 480])).max() <= 1.05 * own
    late = slice((k0 + 60) * 480, (k0 + 120) * 480)
    np.testing.assert_allclose(y[late], r[late], atol=1e-3 * max(1.0, float(np.abs(r[late]).max())))
    if end == 0.0:  # strength 0: the delayed input, exactly
        L = proc.latency
        np.testing.assert_array_equal(y[late], x[0, late.start - L:late.stop - L])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e-39, 1e30])
def test_nan_inf_denormal_never_come_out(bad, noisy_speechlike):
    x = noisy_speechlike[0][:, :SR].copy()
    x[0, ::97] = bad
    proc = Chain.default().processor(SR, 1)
    y = stream(proc, x, 480)
    assert np.isfinite(y).all()
    assert not proc.faults
    if not np.isfinite(bad):
        assert proc.bad_samples == len(range(0, SR, 97))


def test_set_param_checks_range_and_names():
    proc = Chain.default().processor(SR, 1)
    assert proc.set_param("nr.strength", 0.5) == 0.5
    with pytest.raises(ParameterError, match=r"nr.strength: value 2 is out of range \[0, 1\]"):
        proc.set_param("nr.strength", 2)
    with pytest.raises(ParameterError, match="did you mean 'comp'"):
        proc.set_param("cmop.ratio", 2)
    with pytest.raises(ParameterError, match="did you mean 'threshold_db'"):
        proc.set_param("comp.treshold_db", -10)
    with pytest.raises(ParameterError, match="NaN"):
        proc.set_param("comp.threshold_db", math.nan)


def test_gain_change_ramps(noisy_speechlike):
    proc = Chain([{"name": "g", "type": "gain"}]).processor(SR, 1)
    ones = np.ones((1, 480), np.float32)
    proc.process(ones)
    proc.set_param("g.gain_db", -math.inf)
    y = proc.process(ones)[0]
    assert y[0] == pytest.approx(1.0) and y[-1] == 0.0
    assert np.all(np.diff(y) <= 0)


def test_mix_blends_with_aligned_input():
    c = Chain([{"name": "nr", "type": "denoise", "model": "passthrough"},
               {"name": "g", "type": "gain", "gain_db": -math.inf},
               {"name": "m", "type": "mix", "wet": 0.25}])
    x = np.random.default_rng(3).standard_normal((1, 9600)).astype(np.float32)
    y = c.process_array(x, SR)
    # wet is silence, so the output is 75 % of the input, aligned
    np.testing.assert_allclose(y, 0.75 * x, atol=1e-6)


# --------------------------------------------------------------------------
# the real plugin inside a chain


def plugin_chain(path, **params):
    return Chain([{"name": "hp", "type": "highpass", "cutoff_frequency_hz": 20},
                  {"name": "v", "type": "plugin", "path": str(path), "params": params}])


@pytest.mark.plugin
@pytest.mark.parametrize("channels", [1, 2])
def test_plugin_stage_gain_and_latency(qcgain_vst3, channels):
    proc = plugin_chain(qcgain_vst3, gain_db=-6.0, delay_samples=100).processor(SR, channels)
    # 100 samples of plugin delay, plus at most a few samples that let the
    # stage take blocks as small as one frame
    assert 100 <= proc.latency <= 104
    x = np.zeros((channels, 4800), np.float32)
    x[:, 10] = 1.0
    for b in (1, 64, 4096):
        proc.reset()
        y = stream(proc, x, b)
        assert int(np.argmax(np.abs(y[0]))) == 10 + proc.latency, b
    proc.reset()
    x = np.random.default_rng(0).standard_normal((channels, 9600)).astype(np.float32) * 0.1
    y = proc.process(x)
    L = proc.latency
    ref = Chain([{"name": "hp", "type": "highpass", "cutoff_frequency_hz": 20}]).process_array(x, SR)
    np.testing.assert_allclose(y[:, L:], ref[:, :-L] * 10 ** (-6 / 20), atol=1e-5)


@pytest.mark.plugin
def test_plugin_parameter_set_live_is_exact(qcgain_vst3):
    """A live value reaches the plugin exactly (not on pedalboard's scan
    grid): a continuous one at the end of the next block's ramp, or at once
    on a reset."""
    proc = plugin_chain(qcgain_vst3).processor(SR, 2)
    proc.set_param("v.gain_db", -6.0)
    proc.process(np.zeros((2, 480), np.float32))
    assert proc.stage("v").plugin.instances[0].gain_db == pytest.approx(-6.0, abs=1e-4)
    proc.set_param("v.gain_db", -7.5)
    proc.reset()
    assert proc.stage("v").plugin.instances[0].gain_db == pytest.approx(-7.5, abs=1e-4)
    with pytest.raises(ParameterError, match=r"gain_db: value 30 is out of range \[-60, 24\]"):
        proc.set_param("v.gain_db", 30)


def plugin_only(path, live=False, **params):
    """A chain of one plugin stage (``live``: with ``live_latency = true``)."""
    return Chain([{"name": "v", "type": "plugin", "path": str(path), "params": params, "live_latency": live}])


def _tones(seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * 100 * t + 1.0) + 0.2 * np.sin(2 * np.pi * 220 * t + 0.3)
         + 0.1 * np.sin(2 * np.pi * 1300 * t)).astype(np.float32)
    return np.repeat(x[None], channels, axis=0)


@pytest.mark.plugin
@pytest.mark.parametrize("before,after", [(0.0, -20.0), (-20.0, 6.0)])
def test_a_live_change_of_a_plugin_gain_does_not_click(qcgain_vst3, before, after):
    """Our test plugin applies a new gain at once, as many plugins do, and
    a hosted plugin's value used to be set at once: 0 to -20 dB stepped 10
    times as far as the tones' own largest step (a second difference 90
    times theirs). A continuous plugin parameter now ramps across the next
    block in 32 steps and ends on the exact value."""
    x = _tones(2.0, 2)
    spec = lambda g: plugin_only(qcgain_vst3, gain_db=g)  # noqa: E731
    proc, ref = spec(before).processor(SR, 2), spec(after).processor(SR, 2)
    k0 = 101  # the change, at a hop boundary where the tones are loud
    y, r = (a[0] for a in _hops(proc, ref, x, {k0: [("v.gain_db", after)]}))
    assert abs(x[0, k0 * 480]) > 0.3  # loud where the change lands
    d1 = lambda a: np.abs(np.diff(a)).max()  # noqa: E731
    own = max(d1(y[(k0 - 40) * 480:k0 * 480]), d1(r[(k0 + 20) * 480:(k0 + 60) * 480]))
    assert d1(y[(k0 - 2) * 480:(k0 + 3) * 480]) <= 2.0 * own  # 1.4 times here; 10 times set at once
    np.testing.assert_allclose(y[(k0 + 2) * 480:], r[(k0 + 2) * 480:], atol=1e-6)  # then exactly the new gain


@pytest.mark.plugin
def test_a_discrete_plugin_parameter_is_set_at_once(qcgain_vst3):
    """``delay_samples`` (a whole number of samples, declared as the
    plugin's latency) and ``fault`` (a switch) are not ramped: the next
    block runs the new value from its first sample, never the values in
    between (a walk through 32 delays would be 32 steps). A plugin stage
    without ``live_latency``: its output shifts with the plugin's latency
    (see test_a_plugin_latency_moved_live_stays_on_the_declared_latency)."""
    proc = plugin_only(qcgain_vst3).processor(SR, 2)
    st = proc.stage("v")
    assert st._continuous == {"gain_db"}
    x = _tones(0.2, 2)
    proc.process(x[:, :4800])
    proc.set_param("v.delay_samples", 100)
    assert not st._ramps
    y = proc.process(x[:, 4800:5280])
    L = proc.latency  # (the first L samples of the block came out of the plugin before the change)
    np.testing.assert_allclose(y[:, L:], x[:, 4800 - 100:5280 - L - 100], atol=1e-6)
    proc.set_param("v.fault", True)
    assert not st._ramps and st._instances[0].fault


@pytest.mark.plugin
def test_a_ramp_that_moves_a_plugins_latency_stops_there(qcgain_vst3):
    """A continuous parameter that turns out to move the plugin's latency
    (the chain does not follow a latency live) does not walk through the
    latencies in between: once the plugin reports another latency during a
    ramp, the value jumps to its end, and it is set at once from then on.
    (Our plugin's ``delay_samples`` is discrete; here it is taken for a
    continuous one to see it.)"""
    proc = plugin_only(qcgain_vst3).processor(SR, 2)
    st = proc.stage("v")
    st._continuous = st._continuous | {"delay_samples"}
    x = np.zeros((2, 480), np.float32)
    x[:, ::48] = 1.0  # a click every 48 samples: where it comes out says the delay
    proc.process(x)
    proc.set_param("v.delay_samples", 96)
    assert "delay_samples" in st._ramps
    proc.process(x)
    assert "delay_samples" in st._at_once and st._instances[0].reported_latency_samples == 96
    y = proc.process(x)[0]  # all at the end value
    L = proc.latency
    np.testing.assert_allclose(y[L:], x[0, :480 - L], atol=1e-6)  # (96 is two click periods)
    proc.set_param("v.delay_samples", 0)
    assert not st._ramps  # set at once now


@pytest.mark.plugin
def test_a_discrete_plugin_parameter_is_set_at_once_in_a_live_latency_stage(qcgain_vst3):
    """``delay_samples`` (a whole number of samples, declared as the
    plugin's latency) and ``fault`` (a switch) are not ramped: the plugin
    that runs after the next block has the new value, never the values in
    between (a walk through 32 delays would be 32 steps). (A new latency
    comes with its crossfade: see
    test_a_plugin_latency_moved_live_stays_on_the_declared_latency.)"""
    proc = plugin_only(qcgain_vst3, live=True).processor(SR, 2)
    st = proc.stage("v")
    assert st._continuous == {"gain_db"}
    x = _tones(0.2, 2)
    proc.process(x[:, :4800])
    proc.set_param("v.delay_samples", 100)
    assert not st._ramps
    proc.process(x[:, 4800:5280])
    assert st._instances[0].delay_samples == 100 and st._plug_lat == 100
    y = proc.process(x[:, 5280:5760])
    L = proc.latency
    np.testing.assert_allclose(y, x[:, 5280 - L:5760 - L], atol=1e-6)
    proc.set_param("v.fault", True)
    assert not st._ramps and st._instances[0].fault


@pytest.mark.plugin
def test_a_plugin_that_moves_its_latency_by_itself_is_put_back_in_a_live_latency_stage(qcgain_vst3):
    """A move of the plugin's latency that no value foresaw (a plugin that
    changes it by itself; here its running instances are set behind the
    stage's back) shifts the output for one block; from the next block a
    ``live_latency`` stage puts it back at its latency, or lengthens its
    latency to the plugin's new one (a chain that may grow)."""
    proc = plugin_only(qcgain_vst3, live=True).processor(SR, 2)
    st = proc.stage("v")
    x = np.zeros((2, 480), np.float32)
    x[:, ::48] = 1.0  # a click every 48 samples: where it comes out says the delay
    proc.process(x)
    for inst in st._instances:
        inst.delay_samples = 96
    proc.process(x)
    y = proc.process(x)[0]
    L = proc.latency
    assert st.unforeseen_latency_moves == 1 and L == 96 + st._slack
    np.testing.assert_allclose(y[L:], x[0, :480 - L], atol=1e-6)


@pytest.mark.plugin
def test_unknown_plugin_parameter_lists_the_real_ones(qcgain_vst3):
    with pytest.raises(ChainSpecError) as ei:
        plugin_chain(qcgain_vst3, gain=-6.0).processor(SR, 2)
    msg = str(ei.value)
    assert "unknown parameter (did you mean 'gain_db'?)" in msg
    assert "gain_db, delay_samples, fault" in msg


@pytest.mark.plugin
def test_plugin_that_is_not_a_plugin(tmp_path):
    fake = tmp_path / "fake.vst3"
    fake.mkdir()
    with pytest.raises(ChainSpecError, match=r"plugin '.*fake.vst3': could not be loaded"):
        Chain([{"name": "v", "type": "plugin", "path": str(fake)}]).processor(SR, 1)


@pytest.mark.plugin
def test_faulty_plugin_is_isolated_to_its_stage(qcgain_vst3):
    proc = plugin_chain(qcgain_vst3).processor(SR, 2)
    x = np.random.default_rng(1).standard_normal((2, 4800)).astype(np.float32) * 0.1
    proc.process(x)
    proc.set_param("v.fault", True)  # the plugin now outputs NaN
    y = proc.process(x)
    assert np.isfinite(y).all()
    assert "v" in proc.faults and "NaN" in proc.faults["v"]
    # from then on the stage passes its input through at the same latency
    y2 = proc.process(x)
    assert np.isfinite(y2).all() and np.abs(y2).max() > 0


@pytest.mark.plugin
def test_mono_plugin_on_a_stereo_chain_runs_per_channel(qcgain_mono_vst3):
    c = Chain([{"name": "v", "type": "plugin", "path": str(qcgain_mono_vst3), "params": {"gain_db": -12.0}}])
    x = np.random.default_rng(2).standard_normal((2, 4800)).astype(np.float32) * 0.1
    y = c.process_array(x, SR)
    np.testing.assert_allclose(y, x * 10 ** (-12 / 20), atol=1e-5)


def test_denoise_pitch_filter(tmp_path):
    """A denoise stage's ``pitch_filter``: left out, the model's own (the
    default bundle's 0.5); set, it changes the output; a model without a
    pitch filter refuses it, naming the stage and parameter."""
    def run(extra: str, model: str = "neural"):
        chain = Chain.from_toml_string(f'[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "{model}"\n{extra}')
        p = chain.processor(48_000, 1)
        return p.process(x.copy())

    x = (np.random.default_rng(4).standard_normal((1, 19_200)) * 0.1).astype(np.float32)
    x[0] += 0.2 * np.sign(np.sin(2 * np.pi * 150 * np.arange(19_200) / 48_000))  # a buzz with a pitch
    own, half, off = run(""), run("pitch_filter = 0.5\n"), run("pitch_filter = 0\n")
    np.testing.assert_array_equal(own, half)
    assert float(np.max(np.abs(own - off))) > 1e-4  # 4.5e-4 here (the buzz is mostly cut)
    with pytest.raises((ChainSpecError, ParameterError), match=r"nr\.pitch_filter: model 'dsp' has no pitch filter"):
        run("pitch_filter = 0.5\n", model="dsp")
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\npitch_filter = 3\n')
    assert "pitch_filter: value 3 is out of range [0, 1]" in probs[0]


def test_denoise_pause_db(tmp_path):
    """A denoise stage's ``pause_db``: left out, the model's own (the
    shipped bundle's); 0 is the output without the gate; a deeper gate
    takes more out of the pauses (the demo clip's first 4 s: 1 s of noise,
    then a sentence); a model without a
    pause head refuses it, naming the stage and parameter; out of range
    names the range."""
    from quietcast.models import create_suppressor

    def run(extra: str, model: str = "neural"):
        chain = Chain.from_toml_string(f'[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "{model}"\n{extra}')
        p = chain.processor(48_000, 1)
        return p.process(x.copy())

    import soundfile as sf

    demo = pathlib.Path(__file__).resolve().parents[2] / "daemon" / "assets" / "demo"
    x = sum(sf.read(demo / f, dtype="float32")[0][:4 * 48_000] for f in ("clean.flac", "noise.flac"))[None]
    own_db = create_suppressor("neural", 1).PARAMS["pause_db"][2]
    own, same, off, deep = run(""), run(f"pause_db = {own_db:g}\n"), run("pause_db = 0\n"), run("pause_db = 50\n")
    np.testing.assert_array_equal(own, same)
    lead = slice(19_200, 48_000)  # the noise alone (before the latency brings the sentence in)
    e_off, e_deep = float(np.sum(off[:, lead] ** 2)), float(np.sum(deep[:, lead] ** 2))
    assert e_deep < e_off * 0.5  # the pause, 3 dB quieter or more (6 dB here: the gate closes 2 dB a hop)
    with pytest.raises((ChainSpecError, ParameterError), match=r"nr\.pause_db: model 'dsp' has no pause head"):
        run("pause_db = 10\n", model="dsp")
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\npause_db = 70\n')
    assert "pause_db: value 70 is out of range [0, 60]" in probs[0]


def test_denoise_pause_threshold(tmp_path):
    """A denoise stage's ``pause_threshold``: left out, the model's own;
    given, the suppressor's (a higher one closes the gate in more of the
    demo clip's pauses, so less comes out); live: set on a running stage
    from the next hop, the same output from there on as a stage built
    with it that ran the same audio; a model without a pause head refuses
    it; out of range names the range and changes nothing."""
    import soundfile as sf

    from quietcast.models import create_suppressor

    demo = pathlib.Path(__file__).resolve().parents[2] / "daemon" / "assets" / "demo"
    x = sum(sf.read(demo / f, dtype="float32")[0][:6 * 48_000] for f in ("clean.flac", "noise.flac"))[None]

    def chain(extra: str, model: str = "neural"):
        return Chain.from_toml_string(f'[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "{model}"\n{extra}'
                                      ).processor(48_000, 1)

    own = create_suppressor("neural", 1).pause_threshold
    p = chain("")
    assert p.stage("nr").values["pause_threshold"] == own == 0.3
    lo, hi = chain("pause_threshold = 0.05\n"), chain("pause_threshold = 0.9\n")
    assert hi.stage("nr").suppressor.pause_threshold == 0.9 and hi.stage("nr").values["pause_threshold"] == 0.9
    e_lo, e_hi = float(np.sum(lo.process(x.copy()) ** 2)), float(np.sum(hi.process(x.copy()) ** 2))
    assert e_hi < e_lo
    # live: a stage at 0.05 moved to 0.9 a quarter second in (before the noise alone reaches the output)
    # takes the noise in the lead as far down as the stage built with 0.9, and far below the one left at 0.05
    k, lead = 12_000, slice(19_200, 48_000)
    a, b, c = chain("pause_threshold = 0.05\n"), chain("pause_threshold = 0.05\n"), chain("pause_threshold = 0.9\n")
    ya, yb, yc = ([s.process(x[:, :k].copy())] for s in (a, b, c))
    assert a.stage("nr").set_param("pause_threshold", 0.9) == 0.9
    assert a.stage("nr").values["pause_threshold"] == 0.9 and a.stage("nr").suppressor.pause_threshold == 0.9
    for y, s in ((ya, a), (yb, b), (yc, c)):
        y.append(s.process(x[:, k:].copy()))
    ya, yb, yc = (np.concatenate(y, axis=1) for y in (ya, yb, yc))
    e_a, e_b, e_c = (float(np.sum(y[:, lead] ** 2)) for y in (ya, yb, yc))
    assert e_a == pytest.approx(e_c, rel=1e-3) and e_a < 0.1 * e_b
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ParameterError, match=r"nr\.pause_threshold.*\[0\.01, 1\]"):
            a.stage("nr").set_param("pause_threshold", bad)
    assert a.stage("nr").suppressor.pause_threshold == 0.9
    with pytest.raises((ChainSpecError, ParameterError), match=r"nr\.pause_threshold: model 'dsp' has no pause head"):
        chain("pause_threshold = 0.5\n", model="dsp")
    with pytest.raises(ParameterError, match=r"nr\.pause_threshold: model 'dsp' has no pause head"):
        chain("", model="dsp").stage("nr").set_param("pause_threshold", 0.5)
    probs = spec_problems('[[stage]]\nname = "nr"\ntype = "denoise"\npause_threshold = 0\n')
    assert "pause_threshold: value 0 is out of range [0.01, 1]" in probs[0]


def _impulse_lags(y: np.ndarray, x: np.ndarray) -> list[tuple[int, int, float]]:
    """(where, how far after its input impulse, how high) for each output
    peak; ``x`` has an impulse every 960 frames."""
    ins = np.nonzero(x[0])[0]
    out = []
    for p in np.nonzero(np.abs(y[0]) > 0.2)[0]:
        lag = [int(p - i) for i in ins if 0 <= p - i < 960]
        out.append((int(p), lag[0] if lag else -1, float(y[0, p])))
    return out


@pytest.mark.plugin
@pytest.mark.parametrize("mix", [False, True])
@pytest.mark.parametrize("before,after", [(0, 300), (300, 100), (100, 300)])
def test_a_plugin_latency_moved_live_stays_on_the_declared_latency(qcgain_vst3, before, after, mix):
    """``delay_samples`` is our plugin's latency. Set live, it used to
    shift the stage's output off the declared latency (0 -> 300: 300
    samples late, with the declared latency still 2); a mix after it then
    played two copies 300 samples apart, and a bypass afterwards jumped back.
    Now, with ``live_latency``, a shorter latency is padded (the chain's
    timing stays), a longer one lengthens the stage's latency, and the
    output, the mix's dry path and the bypass path are at the declared
    latency before and after."""
    stages = [{"name": "v", "type": "plugin", "path": str(qcgain_vst3), "params": {"delay_samples": before},
               "live_latency": True}]
    if mix:
        stages.append({"name": "m", "type": "mix", "wet": 0.5})
    proc = Chain(stages).processor(SR, 2)
    L0 = proc.latency
    assert before <= L0 <= before + 4
    x = np.zeros((2, 480 * 40), np.float32)
    x[:, 7::960] = 1.0
    ys, lats = [], []
    for k in range(40):
        if k == 10:
            proc.set_param("v.delay_samples", after)
            assert proc.latency == max(L0, after + L0 - before)  # declared at once, before the next block
        if k == 25:
            proc.set_param("v.bypass", True)
        ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))
        lats.append(proc.latency)
    y = np.concatenate(ys, axis=1)
    L1 = proc.latency
    assert L1 == max(L0, after + L0 - before) and set(lats[10:]) == {L1}
    peaks = _impulse_lags(y, x)
    # every impulse comes out once, whole (wet and dry of the mix on the same sample), at the declared
    # latency: before the change, after it (the block of the crossfade aside) and after the bypass
    before_peaks = [p for p in peaks if p[0] < 4800]
    after_peaks = [p for p in peaks if p[0] >= 5280 + L1]
    assert before_peaks and all(lag == L0 and abs(v - 1.0) < 1e-4 for _, lag, v in before_peaks), before_peaks
    assert len(after_peaks) >= 13 and all(lag == L1 and abs(v - 1.0) < 1e-4 for _, lag, v in after_peaks), after_peaks
    assert all(lag in (L0, L1) for _, lag, _ in peaks), peaks  # (in the crossfade's block: both, in part)


@pytest.mark.plugin
@pytest.mark.parametrize("before,after", [(0, 300), (300, 0)])
def test_a_plugin_latency_moved_live_does_not_click(qcgain_vst3, before, after):
    """The running plugin jumps its delay line at once (0 -> 300 played 300
    samples twice, 300 -> 0 skipped 300). The spare instances, pre-rolled
    on the recent input, take over crossfaded across one block: the
    largest second difference around the change stays that of the tones,
    and afterwards the output is the tones at the declared latency."""
    x = _tones(1.5, 2)
    proc = plugin_only(qcgain_vst3, live=True, delay_samples=before).processor(SR, 2)
    k0 = 101
    y, _ = (a[0] for a in _hops(proc, plugin_only(qcgain_vst3).processor(SR, 2), x,
                                {k0: [("v.delay_samples", after)]}))
    L = proc.latency
    d2 = lambda a: np.abs(np.diff(a, 2)).max()  # noqa: E731
    own = d2(x[0, 20 * 480:60 * 480])
    assert d2(y[(k0 - 2) * 480:(k0 + 3) * 480]) <= 1.5 * own
    np.testing.assert_allclose(y[(k0 + 1) * 480:], x[0, (k0 + 1) * 480 - L:x.shape[1] - L], atol=1e-6)


@pytest.mark.plugin
@pytest.mark.parametrize("before,after", [(0, 300), (300, 100)])
def test_a_plugin_latency_foreseen_here_and_set_on_another_thread(qcgain_vst3, before, after):
    """As the live daemon does it: the value is foreseen on this thread
    (JUCE's message thread: the one that loaded the first plugin) and set
    and streamed on another (the engine's), where pedalboard's reported
    latency and the latency it trims after a reset are stale (measured: a
    plugin's new latency reads 0 there). The spare comes in aligned all the
    same (without checking pedalboard's trimming, an impulse came out 300
    samples late after 0 -> 300), and so does a reset there."""
    import threading

    proc = Chain([{"name": "v", "type": "plugin", "path": str(qcgain_vst3), "live_latency": True,
                   "params": {"delay_samples": before}}]).processor(SR, 1)
    L0 = proc.latency
    assert proc.stage("v").foresee({"delay_samples": after}) == after
    x = np.zeros((1, 480 * 40), np.float32)
    x[:, 7::960] = 1.0
    out: dict = {}

    def engine():
        ys = []
        for k in range(40):
            if k == 10:
                proc.set_param("v.delay_samples", after)
            if k == 25:
                proc.reset()
            ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))
        out["y"] = np.concatenate(ys, axis=1)

    th = threading.Thread(target=engine)
    th.start()
    th.join(60)
    L1 = proc.latency
    assert L1 == max(L0, after + L0 - before)
    peaks = _impulse_lags(out["y"], x)
    assert {lag for p, lag, _ in peaks if p < 4800} == {L0}
    late = [(lag, v) for p, lag, v in peaks if p >= 5280 + L1]
    assert len(late) >= 14 and all(lag == L1 and abs(v - 1.0) < 1e-4 for lag, v in late), late


@pytest.mark.plugin
def test_min_latency_declares_room_for_a_plugin_latency_to_grow_where_the_chain_may_not(qcgain_vst3):
    """Where the chain's latency may not move (the live daemon:
    ``fix_latency``), a plugin stage's ``min_latency`` declares room ahead:
    a longer plugin latency up to it is taken live, padded, at the same
    declared latency; beyond it the value is refused, naming what to give."""
    spec = lambda **kw: Chain([{"name": "v", "type": "plugin", "path": str(qcgain_vst3),  # noqa: E731
                                "live_latency": True, **kw}])
    assert spec().processor(SR, 1).latency <= 4
    proc = spec(min_latency=600).processor(SR, 1)
    assert proc.latency == 600
    proc.fix_latency()
    x = np.zeros((1, 480 * 20), np.float32)
    x[:, 7::960] = 1.0
    ys = []
    for k in range(20):
        if k == 5:
            proc.set_param("v.delay_samples", 500)
        ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))
    assert proc.latency == 600 and proc.stage("v")._plug_lat == 500
    assert {lag for _, lag, _ in _impulse_lags(np.concatenate(ys, axis=1), x)} == {600}
    with pytest.raises(ParameterError, match=r"v\.delay_samples: value 900(\.0)? would make the plugin's latency "
                                             r"900 samples, more than the \d+ .*min_latency = 9\d\d or more"):
        proc.set_param("v.delay_samples", 900)
    assert proc.latency == 600 and proc.stage("v").values["delay_samples"] == 500
    with pytest.raises(ChainSpecError, match=r"min_latency.*out of range \[0, 480000\]"):
        spec(min_latency=-1)
    with pytest.raises(ChainSpecError, match=r"v\.min_latency: is room for a plugin latency moved live: give the "
                                             r"stage live_latency = true too"):
        Chain([{"name": "v", "type": "plugin", "path": str(qcgain_vst3), "min_latency": 600}]).processor(SR, 1)


@pytest.mark.plugin
def test_the_first_latency_swap_fits_in_a_live_hop(qcgain_vst3):
    """A spare instance's first block, and the first value set after it,
    cost ~25 ms with our plugin (JUCE and the plugin prepare): the first
    swap's hop took 24 ms, past the 10 ms a live hop has (a missed
    deadline: the dry fallback). They are warmed up when the stage is
    built; the first swap's hop now takes well under a millisecond."""
    import time

    took = []
    for _ in range(3):  # (the quickest of three: a loaded machine slows any one)
        proc = plugin_only(qcgain_vst3, live=True).processor(SR, 2)
        x = np.zeros((2, 480), np.float32)
        proc.process(x)
        t0 = time.perf_counter()
        proc.stage("v").foresee({"delay_samples": 300})
        proc.set_param("v.delay_samples", 300)
        proc.process(x)
        took.append(time.perf_counter() - t0)
        assert proc.stage("v")._plug_lat == 300
    assert min(took) < 0.005, took


@pytest.mark.plugin
def test_only_a_live_latency_plugin_stage_loads_the_plugin_more_than_once(qcgain_vst3, qcgain_mono_vst3,
                                                                           monkeypatch):
    """A plugin stage loads its plugin once per instance it runs (a stereo
    plugin on a stereo chain: once; a mono one: once a channel), as it did
    before live latency was followed; only ``live_latency = true`` loads
    the spare instances and the prober too (three times as many, plus one)."""
    from quietcast.bridge import stages

    loads = []
    real = stages.load_vst3
    monkeypatch.setattr(stages, "load_vst3", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    for path, live, n in ((qcgain_vst3, False, 1), (qcgain_mono_vst3, False, 2),
                          (qcgain_vst3, True, 3), (qcgain_mono_vst3, True, 5)):
        loads.clear()
        st = plugin_only(path, live=live).processor(SR, 2).stage("v")
        assert len(loads) == n, (path, live, loads)
        assert (st._prober is None) == (not live) and st.needs_foresight("delay_samples") == live


def _lookahead_only(path, ms, **kw):
    return Chain([{"name": "v", "type": "plugin", "path": str(path), "live_latency": True,
                   "params": {"lookahead_ms": ms}, **kw}])


@pytest.mark.plugin
@pytest.mark.parametrize("room", [0, 480])
@pytest.mark.parametrize("before,after", [(5.0, 2.0), (5.0, 8.0)])
def test_a_continuous_lookahead_moved_live_stays_on_the_declared_latency(qcgain_la_vst3, before, after, room):
    """A look-ahead exposed as a continuous parameter (``lookahead_ms`` of
    QC Test Lookahead, as real look-ahead limiters have it) in a
    ``live_latency`` stage is foreseen like a discrete one: ramped, it
    walked the plugin's latency (5 -> 2 ms: the output 144 samples early),
    now the spares take it and every impulse comes out whole at the
    declared latency before and after (padded when shorter; a longer one
    lengthens the chain's, or fits in ``min_latency``, the chain's latency
    fixed). As the live daemon does it: foreseen on this thread (JUCE's
    message thread), set and streamed on another, where pedalboard's
    reported latency does not move (nothing there sees the latency move)."""
    import threading

    kw = {"min_latency": room} if room else {}
    proc = _lookahead_only(qcgain_la_vst3, before, **kw).processor(SR, 1)
    if room:
        proc.fix_latency()
    L0 = proc.latency
    x = np.zeros((1, 480 * 30), np.float32)
    x[:, 7::960] = 1.0
    proc.stage("v").foresee({"lookahead_ms": after})
    ys = []

    def engine():
        for k in range(30):
            if k == 10:
                proc.set_param("v.lookahead_ms", after)
            ys.append(proc.process(x[:, k * 480:(k + 1) * 480]))

    th = threading.Thread(target=engine)
    th.start()
    th.join(60)
    L1 = proc.latency
    shift = round(after * SR / 1000) - round(before * SR / 1000)
    peaks = _impulse_lags(np.concatenate(ys, axis=1), x)
    assert {lag for p, lag, _ in peaks if p < 4800} == {L0}
    late = [(lag, v) for p, lag, v in peaks if p >= 5280 + L1]
    assert len(late) >= 8 and all(lag == L1 and abs(v - 1.0) < 1e-4 for lag, v in late), late
    assert L1 == (L0 if room or shift < 0 else L0 + shift) and proc.stage("v")._plug_lat == round(after * SR / 1000)


@pytest.mark.plugin
@pytest.mark.parametrize("before,after", [(5.0, 2.0), (2.0, 8.0)])
def test_a_continuous_lookahead_moved_live_does_not_click(qcgain_la_vst3, before, after):
    """Ramped across a block, a look-ahead moved the plugin's delay line
    through every latency in between (a second difference 42 to 167 times
    the tones' own); taken by the crossfaded spares, the largest second
    difference around the change stays that of the tones, and afterwards
    the output is the tones at the declared latency."""
    x = _tones(1.5, 2)
    proc = _lookahead_only(qcgain_la_vst3, before).processor(SR, 2)
    k0 = 101
    y, _ = (a[0] for a in _hops(proc, plugin_only(qcgain_la_vst3).processor(SR, 2), x,
                                {k0: [("v.lookahead_ms", after)]}))
    L = proc.latency
    assert proc.stage("v").unforeseen_latency_moves == 0
    d2 = lambda a: np.abs(np.diff(a, 2)).max()  # noqa: E731
    own = d2(x[0, 20 * 480:60 * 480])
    assert d2(y[(k0 - 2) * 480:(k0 + 3) * 480]) <= 1.5 * own
    np.testing.assert_allclose(y[(k0 + 1) * 480:], x[0, (k0 + 1) * 480 - L:x.shape[1] - L], atol=1e-6)
