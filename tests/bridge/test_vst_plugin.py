"""The real test VST3 plugin ("QC Test Gain", tests/plugins/qcgain) hosted by pedalboard.

What pedalboard (0.9.x, VST3 via JUCE) does with a plugin's declared latency;
the daemon's chain-latency accounting depends on it:

* ``plugin.reported_latency_samples`` is JUCE's view of the plugin's latency. A
  DPF plugin announces a change from inside its process call, so the value is
  stale (0 on a fresh plugin) until one block has been processed after the
  parameter change. Read it after a process call, never straight after setting.
* Per plugin, pedalboard counts the samples fed since the last reset
  (``samples_provided``) and, after every block, keeps only the last
  ``max(0, samples_provided - latency)`` samples of that block. So only the first
  ``latency`` samples after a reset are swallowed; it is a one-off alignment,
  not a continuous one.
* ``process(x, sr, reset=True)`` (the default): resets, then pads the input with
  ``latency`` zeros and drops the first ``latency`` output samples. The output
  has the input's length and is time-aligned with it: zero net latency.
* ``process(x, sr, reset=False)``: no padding. Right after a reset
  (``reset=True`` or ``plugin.reset()``) the first ``latency`` samples are
  swallowed, so the first chunks come back SHORT (blocks of 64, latency 100:
  0, 28, 64, 64, ...). Otherwise chunks are full length and carry the raw
  plugin delay. A freshly loaded plugin has already been fed ~5.6k samples by
  pedalboard's load-time probe (no reset afterwards), so its first
  ``reset=False`` stream is not trimmed, unless the latency exceeds that.
* Latency changes mid-stream are not compensated: the output simply shifts.
* A new latency reaches ``reported_latency_samples`` only on JUCE's message
  thread (see Threads): on another one it keeps its old value, however many
  blocks run (JUCE applies the plugin's kLatencyChanged restart there,
  asynchronously, and nothing runs that message loop). The live daemon
  therefore foresees a value's latency on its main thread
  (``PluginStage.foresee``).
* Continuing with ``reset=False`` after a ``reset=True`` call inserts
  ``latency`` zeros: the padding that flushed the ``reset=True`` call.
  Mixing the two on one live stream is a bug.
* For a fixed-hop live engine: after load/reset, feed exactly ``latency`` zeros
  with ``reset=False`` ("prime", gets 0 samples back). After that, every hop
  returns a full hop and the chain's latency is ``reported_latency_samples``.

Threads: JUCE's "message thread" is whichever thread first loads an external
plugin in the process. ``load_plugin`` (and a ``reset`` that has to
re-instantiate the plugin) raises "must be reloaded on the main thread" on any
other thread. ``process(..., reset=False)`` works from any thread. So load and
reload chains on the main thread; the engine thread only streams.

Parameter names: pedalboard names a parameter ``"<name> <unit label>"``,
lowercased, with runs of non-alphanumerics turned into "_" (a "dB" unit on
"gain_db" would give "gain_db_db"; the plugin declares no units for that reason).
DPF adds a read-only "Latency" parameter (unit "frames"), so the plugin shows
``latency_frames`` as well.

Setting a value by attribute (``plugin.gain_db = -6``) goes through
pedalboard's 1000-step scan of the parameter's text values: values off that grid
are snapped to it (-6 -> -5.988 dB, 100 -> 101 samples). ``set_exact`` asks the
plugin itself to parse the text instead, which is exact.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pedalboard = pytest.importorskip("pedalboard")

from plugins.build import build_qcgain  # noqa: E402  (tests/ is on sys.path via conftest)

SR = 48000
PARAMS = {"gain_db", "delay_samples", "fault"}


@pytest.fixture
def plugin(qcgain_vst3):
    return pedalboard.load_plugin(str(qcgain_vst3))


def set_exact(plugin, name: str, value: float) -> None:
    """Set a parameter to exactly ``value`` (the plugin parses the text itself)."""
    param = plugin.parameters[name]
    param.raw_value = param.get_raw_value_for_text(str(value))


def noise(channels: int = 2, n: int = 4800, seed: int = 0) -> np.ndarray:
    return (0.25 * np.random.default_rng(seed).standard_normal((channels, n))).astype(np.float32)


def impulse(at: int, channels: int = 2, n: int = 1000) -> np.ndarray:
    x = np.zeros((channels, n), np.float32)
    x[:, at] = 1.0
    return x


def stream(plugin, x: np.ndarray, block: int = 64) -> list[np.ndarray]:
    return [plugin.process(x[:, i:i + block], SR, reset=False) for i in range(0, x.shape[1], block)]


def test_loads_as_effect(plugin):
    assert plugin.name == "QC Test Gain"
    assert plugin.is_effect and not plugin.is_instrument
    assert plugin.reported_latency_samples == 0


def test_parameter_names_and_ranges(plugin):
    # DPF's internal read-only latency parameter shows up too.
    assert set(plugin.parameters) == PARAMS | {"latency_frames"}
    gain, delay, fault = (plugin.parameters[k] for k in ("gain_db", "delay_samples", "fault"))
    assert (gain.min_value, gain.max_value) == (-60.0, 24.0)
    assert (delay.min_value, delay.max_value) == (0.0, 4800.0)
    assert (fault.min_value, fault.max_value) == (0.0, 1.0)
    assert abs(plugin.gain_db) < 1e-3 and plugin.delay_samples == 0 and plugin.fault == 0


def test_gain_minus_6_db(plugin):
    set_exact(plugin, "gain_db", -6)
    assert plugin.gain_db == pytest.approx(-6, abs=1e-4)
    x = noise()
    y = plugin.process(x, SR)
    np.testing.assert_allclose(y, x * 10 ** (-6 / 20), atol=1e-4, rtol=0)


def test_attribute_setter_snaps_to_pedalboards_scan_grid(plugin):
    plugin.gain_db = -6          # lands on -5.988 (grid step 84 dB / 1000)
    assert plugin.gain_db == pytest.approx(-6, abs=84 / 1000 + 1e-6)
    plugin.delay_samples = 50    # on the grid: exact
    assert plugin.delay_samples == 50


def test_delay_reset_true_is_latency_compensated(plugin):
    set_exact(plugin, "delay_samples", 100)
    assert plugin.delay_samples == 100
    assert plugin.reported_latency_samples == 0      # stale until a block has run
    x = impulse(10)
    y = plugin.process(x, SR)                        # reset=True
    assert plugin.reported_latency_samples == 100
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, x)              # aligned: zero net latency


def test_delay_reset_false_carries_raw_delay(plugin):
    set_exact(plugin, "delay_samples", 100)
    x = impulse(10)
    y = plugin.process(x, SR, reset=False)           # fresh plugin: nothing trimmed
    assert y.shape == x.shape
    assert np.argmax(y[0]) == 110 and np.argmax(y[1]) == 110
    assert plugin.reported_latency_samples == 100


def test_reset_false_after_reset_swallows_latency_once(plugin):
    set_exact(plugin, "delay_samples", 100)
    plugin.reset()
    x = noise()
    chunks = stream(plugin, x)
    assert [c.shape[1] for c in chunks[:4]] == [0, 28, 64, 64]
    y = np.concatenate(chunks, axis=1)
    assert y.shape[1] == x.shape[1] - 100
    np.testing.assert_array_equal(y, x[:, : y.shape[1]])   # aligned, tail still inside


def test_reset_true_then_reset_false_inserts_padding(plugin):
    set_exact(plugin, "delay_samples", 100)
    x = noise()
    head = plugin.process(x[:, :64], SR, reset=True)
    np.testing.assert_array_equal(head, x[:, :64])
    y = np.concatenate(stream(plugin, x[:, 64:]), axis=1)
    assert y.shape[1] == x.shape[1] - 64
    np.testing.assert_array_equal(y[:, :100], 0)           # the flush padding
    np.testing.assert_array_equal(y[:, 100:], x[:, 64:-100])


@pytest.mark.parametrize("delay", [0, 100, 777])
def test_blocks_of_64_equal_one_call(qcgain_vst3, delay):
    x = noise(n=4800, seed=delay)
    one = pedalboard.load_plugin(str(qcgain_vst3))
    set_exact(one, "gain_db", -6)
    set_exact(one, "delay_samples", delay)
    big = one.process(x, SR)                      # reset=True: aligned
    np.testing.assert_allclose(big, x * 10 ** (-6 / 20), atol=1e-6, rtol=0)

    live = pedalboard.load_plugin(str(qcgain_vst3))
    set_exact(live, "gain_db", -6)
    set_exact(live, "delay_samples", delay)
    live.process(np.zeros((2, 64), np.float32), SR, reset=False)   # learn the latency
    latency = live.reported_latency_samples
    assert latency == delay
    live.reset()
    primed = live.process(np.zeros((2, latency), np.float32), SR, reset=False) if latency else None
    assert primed is None or primed.shape[1] == 0
    chunks = stream(live, x)
    assert all(c.shape[1] == 64 for c in chunks[:-1])     # fixed hop in, fixed hop out
    y = np.concatenate(chunks, axis=1)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[:, :latency], 0)
    np.testing.assert_array_equal(y[:, latency:], big[:, : x.shape[1] - latency])


def test_latency_change_mid_stream_is_not_compensated(plugin):
    x = noise()
    a = plugin.process(x[:, :2400], SR, reset=False)
    set_exact(plugin, "delay_samples", 50)
    b = plugin.process(x[:, 2400:], SR, reset=False)
    assert a.shape[1] == b.shape[1] == 2400
    assert plugin.reported_latency_samples == 50
    np.testing.assert_array_equal(b[:, 50:], x[:, 2400:-50])
    np.testing.assert_array_equal(b[:, :50], x[:, 2350:2400])  # 50 samples repeated


def test_a_new_latency_is_not_seen_off_the_message_thread(plugin):
    # this thread loaded the plugin (the fixture): it is JUCE's message thread
    set_exact(plugin, "delay_samples", 100)
    plugin.process(np.zeros((2, 64), np.float32), SR, reset=False)
    assert plugin.reported_latency_samples == 100
    seen = []

    def engine():
        for d in (300, 50):
            set_exact(plugin, "delay_samples", d)
            for _ in range(3):
                plugin.process(np.zeros((2, 64), np.float32), SR, reset=False)
            seen.append(plugin.reported_latency_samples)

    worker = threading.Thread(target=engine)
    worker.start()
    worker.join(30)
    assert seen == [100, 100]
    # (here it moves again at the plugin's next change)
    set_exact(plugin, "delay_samples", 20)
    plugin.process(np.zeros((2, 64), np.float32), SR, reset=False)
    assert plugin.reported_latency_samples == 20


def test_streaming_from_a_worker_thread(plugin):
    set_exact(plugin, "delay_samples", 100)
    x = noise()
    out: dict = {}

    def engine():
        out["y"] = np.concatenate(stream(plugin, x, block=480), axis=1)

    worker = threading.Thread(target=engine)
    worker.start()
    worker.join(30)
    y = out["y"]
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[:, 100:], x[:, :-100])


def test_fault_outputs_nan_and_recovers(plugin):
    x = noise()
    plugin.fault = True
    assert plugin.fault == 1
    assert np.isnan(plugin.process(x, SR)).all()
    plugin.fault = False
    y = plugin.process(x, SR)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, x)


def test_stereo_plugin_refuses_mono_input(plugin):
    with pytest.raises(ValueError, match="1-channel"):
        plugin.process(np.zeros((1, 64), np.float32), SR)


def test_mono_variant(qcgain_mono_vst3):
    bundle = qcgain_mono_vst3
    assert bundle.name == "qcgain_mono.vst3"
    mono = pedalboard.load_plugin(str(bundle))
    assert mono.name == "QC Test Gain Mono"
    assert set(mono.parameters) == PARAMS | {"latency_frames"}
    set_exact(mono, "gain_db", -6)
    x = noise(channels=1)
    np.testing.assert_allclose(mono.process(x, SR), x * 10 ** (-6 / 20), atol=1e-4, rtol=0)


def test_build_is_cached(qcgain_vst3):
    so = next(qcgain_vst3.glob("Contents/*-linux/qcgain.so"))
    before = so.stat().st_mtime_ns
    t0 = time.monotonic()
    assert build_qcgain(qcgain_vst3.parent) == qcgain_vst3
    assert time.monotonic() - t0 < 0.5
    assert so.stat().st_mtime_ns == before


def test_missing_dpf_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("QC_DPF_PATH", str(tmp_path / "no-dpf"))
    with pytest.raises(RuntimeError, match="dpf-source"):
        build_qcgain(tmp_path / "out")
