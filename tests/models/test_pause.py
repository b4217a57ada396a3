"""The pause head and the pause gate (``pause_db``): off is bit-exact, the
C step equals the torch step and streaming equals offline with it on, the
stems stay a partition of the input, the gate's gain has no step, bad
values are refused, the shipped bundles' gate deepens the pauses of a
voice and spares the voice, ``train --fit-pause`` adds a head to a
bundle without touching its other weights, and ``train --pause-weight``
trains the head with the network."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from quietcast.models import train as T
from quietcast.models.bundle import load_bundle, save_bundle
from quietcast.models.neural import (_PAUSE_CLOSE_DB, _PAUSE_THRESHOLD, NeuralSuppressor, QCNet, _fused_step,
                                     _window, pause_gains)
from test_ckernel import _signal
from test_neural import DEMO, _random_net
from test_train import _args, data  # noqa: F401 - the synthetic data folder (a fixture)

H = 480


def _with_head(net: QCNet, seed: int = 3) -> QCNet:
    """``net`` with a random pause head whose bias puts the gate's
    threshold at the median of its logits over the test signal: it says
    "pause" in about half the frames, in runs."""
    torch.manual_seed(seed)
    out = QCNet(**dict(net.arch, pause_head=1)).eval()
    out.load_state_dict(net.state_dict(), strict=False)
    x = torch.from_numpy(_signal(np.random.default_rng(0), 3, 48_000 * 2))
    win = torch.from_numpy(_window(2 * H))
    with torch.no_grad():
        out.pause.weight.normal_(0.0, 0.3)
        out.pause.bias.zero_()
        lg = out(T._stft(x, win, H), silent=T._silent(x, win, H), pause=True)[2]
        q = _PAUSE_THRESHOLD  # half the frames below the threshold
        out.pause.bias.fill_(math.log(q / (1 - q)) - float(lg.median()))
    return out


@pytest.fixture(scope="module")
def head_bundles(tmp_path_factory):
    """A random C-step architecture with and without a pause head (same
    other weights), default ``pause_db`` 24."""
    root = tmp_path_factory.mktemp("pause")
    net = _random_net(5, fine_bins=48, harm_bins=40, floor_input=1, warm_start=1, hidden=72, enc_dim=40,
                      df_enc_dim=24)
    save_bundle(net, {"model": "neural", "arch": net.arch}, root / "plain")
    h = _with_head(net)
    save_bundle(h, {"model": "neural", "arch": h.arch, "defaults": {"pause_db": 24.0}}, root / "head")
    return root / "plain", root / "head"


def _blocks(sup: NeuralSuppressor, x: np.ndarray, changes=None) -> np.ndarray:
    """Stream ``x`` in uneven blocks; ``changes[i]``: params set before block i."""
    sizes = [1000, 480, 37, 4803]
    pos = i = 0
    out = []
    while pos < x.shape[1]:
        for k, v in (changes or {}).get(i, {}).items():
            sup.set_param(k, v)
        n = sizes[i % len(sizes)]
        r = sup._stream(x[:, pos:pos + n])
        out.append(r)
        pos += n
        i += 1
    return np.concatenate(out, axis=1)


def test_pause_db_zero_is_the_bundle_without_the_head(head_bundles, rng):
    """``pause_db`` 0: output and stems bit for bit those of the same
    network without the head, on both steps."""
    plain, head = head_bundles
    x = _signal(rng, 3, 48_000)
    for kernel in ("c", "torch"):
        a = NeuralSuppressor(3, bundle=plain, kernel=kernel)
        b = NeuralSuppressor(3, bundle=head, kernel=kernel, pause_db=0)
        assert "pause_db" not in a.PARAMS and b.PARAMS["pause_db"] == (0.0, 60.0, 24.0, "dB")
        np.testing.assert_array_equal(_blocks(a, x), _blocks(b, x))
        assert torch.all(b._pg[:, 0] == 0.0)


def test_the_gate_lowers_the_floor_and_leaves_the_stems(head_bundles, rng):
    """With the gate on, the voice and background stems are those without
    it (a partition of the input still); the output is lower, never
    higher than ``voice + floor * background``, and at most ``pause_db``
    lower; ``strength_db`` 0 is still the delayed input exactly."""
    _plain, head = head_bundles
    x = _signal(rng, 2, 48_000 * 2)
    C = 2
    off = _blocks(NeuralSuppressor(C, bundle=head, pause_db=0), x)
    on_sup = NeuralSuppressor(C, bundle=head, pause_db=24)
    on = _blocks(on_sup, x)
    np.testing.assert_array_equal(on[C:], off[C:])  # the stems
    floor = 10 ** (-on_sup.strength_db / 20)
    ungated = on[C:2 * C] + floor * on[2 * C:]
    np.testing.assert_allclose(off[:C], ungated, atol=1e-6)
    ratio = np.abs(on[:C]) / np.maximum(np.abs(ungated), 1e-9)
    loud = np.abs(ungated) > 1e-4
    assert np.all(ratio[loud] <= 1.0 + 1e-4)
    assert np.all(ratio[loud] >= 10 ** (-24 / 20) - 1e-4)
    assert float(np.mean(ratio[loud] < 0.7)) > 0.05  # it did close somewhere
    assert float(np.mean(ratio[loud] > 0.99)) > 0.2  # and was open somewhere
    dry = _blocks(NeuralSuppressor(C, bundle=head, pause_db=24, strength_db=0), x)
    np.testing.assert_array_equal(dry[:C, 960:], x[:, :-960])


@pytest.mark.parametrize("channels", [1, 11])
def test_c_step_equals_torch_step_with_the_gate(head_bundles, rng, channels):
    """Depth, threshold, strength and a remixed background changed
    mid-stream; the gate's state too."""
    _plain, head = head_bundles
    x = _signal(rng, channels, 48_000 * 2)
    changes = {3: {"pause_db": 40.0}, 5: {"pause_threshold": 0.7}, 6: {"strength_db": 12.0},
               9: {"background_db": -20.0, "pause_threshold": 0.02}, 12: {"pause_db": 0.0},
               14: {"pause_db": 10.0, "background_db": float("-inf"), "pause_threshold": 0.4}}
    a = NeuralSuppressor(channels, bundle=head, kernel="c")
    b = NeuralSuppressor(channels, bundle=head, kernel="torch")
    assert a._cstep is not None and b._cstep is None
    ya, yb = _blocks(a, x, changes), _blocks(b, x, changes)
    assert float(np.max(np.abs(ya - yb))) <= 1e-4
    assert torch.allclose(a._pg, b._pg, atol=1e-3)
    assert float(np.max(np.abs(ya[:channels]))) > 0.01


def test_streaming_equals_offline_with_the_gate(head_bundles, rng):
    _plain, head = head_bundles
    x = _signal(rng, 3, 48_000 * 2)
    for kw in ({"pause_db": 30.0}, {"pause_db": 30.0, "background_db": -12.0}):
        s = NeuralSuppressor(3, bundle=head, **kw)
        y = _blocks(s, x)[:3]
        o = NeuralSuppressor(3, bundle=head, **kw).process_offline(x)
        assert float(np.max(np.abs(y - o))) <= 1e-4
        assert float(np.max(np.abs(y - NeuralSuppressor(3, bundle=head, pause_db=0).process_offline(x)))) > 1e-3


@pytest.mark.parametrize("thr", [0.05, [0.02, 0.05, 0.5]])
def test_branchless_gate_equals_the_branching_one(head_bundles, rng, thr):
    """The CUDA graph's form (every decision a tensor op, the gate always
    run) on the CPU: the same output and gate state; one threshold, or
    one per channel (as the suppressor passes them)."""
    _plain, head = head_bundles
    thr = thr if isinstance(thr, float) else torch.tensor(thr)
    x = _signal(rng, 3, 480 * 60)
    res = []
    for branchless in (False, True):
        s = NeuralSuppressor(3, bundle=head, kernel="torch")
        fl, rm = 10 ** (-20 / 20), 10 ** (-35 / 20)
        mix = max(fl, rm)
        pause = ((torch.tensor(30.0), torch.tensor(fl), torch.tensor(rm), torch.as_tensor(thr)) if branchless
                 else (30.0, fl, rm, thr))
        o = []
        for i in range(0, x.shape[1], H):
            with torch.inference_mode():
                _fused_step(torch.from_numpy(x[:, i:i + H]), s._prev, s._win, s._fb_e, s._fb_i, s._m, s._u, s._fl,
                            s._fresh, s._h1, s._h2, s._xh, s._ola, s._pbuf, s._w, s.net.alpha,
                            torch.tensor(mix) if branchless else mix, s._out_t, branchless=branchless,
                            comb=torch.tensor(0.0) if branchless else 0.0, pg=s._pg, pause=pause)
            o.append(s._out_t.clone())
        res.append((torch.cat(o, dim=2), s._pg.clone()))
    assert torch.allclose(res[0][0], res[1][0], atol=1e-5, rtol=0)  # python vs tensor scalars: rounding
    assert torch.allclose(res[0][1], res[1][1], atol=1e-4, rtol=0)
    assert bool((res[0][1][:, 0] < -1.0).any())


def test_the_gate_gain_has_no_step():
    """Across a hop the gain moves linearly from the last hop's value (no
    click); it opens within one hop and closes ``_PAUSE_CLOSE_DB`` a hop,
    down to the depth; digital silence holds it."""
    logit = torch.tensor([[-40.0] * 30 + [9.0] + [-40.0] * 5])
    silent = torch.zeros_like(logit, dtype=torch.bool)
    silent[0, 33] = True
    ev = torch.full_like(logit, 1e-4) * (1.0 + 0.5 * torch.rand_like(logit))  # level: no onset
    g = pause_gains(logit, ev, silent, 30.0, H)[0]  # [T, H]
    db = 20 * torch.log10(g[:, -1])
    assert torch.allclose(db[:15], -_PAUSE_CLOSE_DB * torch.arange(1, 16.0), atol=1e-4)
    assert torch.allclose(db[15:30], torch.full((15,), -30.0), atol=1e-4)
    assert abs(float(db[30])) < 1e-5  # open at once
    assert torch.allclose(db[32], db[33]) and float(db[34]) < float(db[33])  # held on the silent frame
    flat = g.reshape(-1)
    assert float(torch.max(torch.abs(torch.diff(flat)))) <= (1 - 10 ** (-30 / 20)) / H + 1e-6


def test_an_onset_opens_the_gate_before_the_head_does():
    """The head still says "pause" but the voice estimate jumps 20 dB above
    its level in the pauses: the gate opens at once; a jump of 6 dB does
    not open it. If the head goes on saying "pause", the level catches up
    (a louder noise bed, not a voice) and the gate closes again. A fresh
    state has no pause level yet, so a loud first frame does not count as
    an onset."""
    T_ = 45
    logit = torch.full((2, T_), -40.0)
    ev = torch.full((2, T_), 1e-4)
    ev[:, 0] = 1e-3  # a louder first frame: no pause level to compare it with yet
    ev[0, 30:] = 1e-2  # +20 dB
    ev[1, 30:] = 4e-4  # +6 dB
    g = pause_gains(logit, ev, torch.zeros_like(logit, dtype=torch.bool), 30.0, H)
    db = 20 * torch.log10(g[:, :, -1])
    assert float(db[0, 1]) < -1.0 and float(db[1, 1]) < -1.0  # closing from the start
    assert torch.allclose(db[:, 29], torch.full((2,), -30.0), atol=1e-3)
    assert torch.all(db[0, 30:37].abs() < 1e-5)  # open
    assert float(db[0, 44]) < -5.0  # the pause level caught up: closing again
    assert float(db[1, 30]) < -29.0


def test_bad_pause_values_are_refused(head_bundles, tmp_path):
    plain, head = head_bundles
    s = NeuralSuppressor(1, bundle=head)
    assert s.pause_db == 24.0 and s.get_param("pause_db") == 24.0
    for bad in (-1.0, 61.0, float("nan"), "deep", True):
        with pytest.raises(ValueError, match=r"pause_db.*(out of range|not a number).*\[0, 60\]"):
            s.set_param("pause_db", bad)
    assert s.pause_db == 24.0
    p = NeuralSuppressor(1, bundle=plain)
    with pytest.raises(ValueError, match="unknown parameter 'pause_db'"):
        p.set_param("pause_db", 10.0)
    assert p.pause_db == 0.0
    with pytest.raises(ValueError, match="has no pause head"):
        NeuralSuppressor(1, bundle=plain, pause_db=10.0)
    assert s.pause_threshold == s.get_param("pause_threshold") == _PAUSE_THRESHOLD  # no default in the bundle
    for bad in (0.0, 0.005, 1.01, float("nan"), "high", None):
        with pytest.raises(ValueError, match=r"pause_threshold.*(out of range|not a number).*\[0.01, 1\]"):
            s.set_param("pause_threshold", bad)
    assert s.pause_threshold == _PAUSE_THRESHOLD and s.pause_threshold_per_channel.tolist() == pytest.approx([_PAUSE_THRESHOLD])
    with pytest.raises(ValueError, match=r"pause_threshold.*out of range"):
        NeuralSuppressor(1, bundle=head, pause_threshold=0.0)
    with pytest.raises(ValueError, match="unknown parameter 'pause_threshold'"):
        p.set_param("pause_threshold", 0.5)
    with pytest.raises(ValueError, match="pause_threshold 0.5: .*has no pause head"):
        NeuralSuppressor(1, bundle=plain, pause_threshold=0.5)
    cfg = json.loads((head / "config.json").read_text())
    cfg["defaults"]["pause_db"] = 90.0
    bad = tmp_path / "bad"
    save_bundle(load_bundle(head).build_model(), cfg, bad)
    with pytest.raises(ValueError, match=r"bad/config\.json: defaults\.pause_db: 90\.0 is out of range \[0, 60\]"):
        NeuralSuppressor(1, bundle=bad)
    cfg["defaults"].update(pause_db=20.0, pause_threshold=1.5)
    save_bundle(load_bundle(head).build_model(), cfg, tmp_path / "bad_t")
    with pytest.raises(ValueError, match=r"bad_t/config\.json: defaults\.pause_threshold: 1\.5 is out of range "
                                         r"\[0\.01, 1\]"):
        NeuralSuppressor(1, bundle=tmp_path / "bad_t")
    with pytest.raises(ValueError, match="pause_head 2 must be 0 or 1"):
        QCNet(pause_head=2)
    with pytest.raises(ValueError, match="no pause head"):
        load_bundle(plain).build_model()(torch.zeros(1, 3, 481, dtype=torch.complex64), pause=True)


@pytest.mark.parametrize("bundle", ["default", "clean"])
def test_shipped_gate_deepens_the_pauses_and_spares_the_voice(bundle):
    """The bundled demo clip (two LJ Speech sentences in a recorded noise
    bed at 5 dB SNR, a 1 s lead-in of noise alone): in the lead-in the
    shipped head closes the gate (the output falls well below ``voice +
    floor * background``); in the speech it stays open."""
    import soundfile as sf

    clean, _ = sf.read(DEMO / "clean.flac", dtype="float32")
    noise, _ = sf.read(DEMO / "noise.flac", dtype="float32")
    s = NeuralSuppressor(1, bundle=bundle, pause_db=30.0)
    r = s._stream((clean + noise)[None])
    d = s.latency
    out, ungated = r[0, d:], r[1, d:] + 10 ** (-s.strength_db / 20) * r[2, d:]
    n = len(out) // H
    ec = np.square(clean[:n * H]).reshape(n, H).sum(1)
    eo = np.square(out[:n * H]).reshape(n, H).sum(1)
    eu = np.square(ungated[:n * H]).reshape(n, H).sum(1)
    gate_db = 10 * np.log10((eo + 1e-20) / (eu + 1e-20))
    speech = ec > ec.max() * 10 ** -4.5
    lead = np.arange(n) < int(np.argmax(speech)) - 5  # the noise alone before the first word
    assert lead.sum() > 60
    assert float(np.median(gate_db[lead][30:])) < -10.0
    assert float(np.median(gate_db[speech])) > -0.5
    assert float(np.mean(gate_db[speech])) > -1.5


def test_fit_pause_adds_a_head_and_keeps_every_other_weight(tmp_path, monkeypatch, data):
    """``--fit-pause`` on a bundle: the same weights bit for bit plus a
    head that beats always saying "speech" on its own training frames, the
    arch, default depth and the record in config.json."""
    monkeypatch.setattr(T, "ASTERISK", tmp_path / "no-asterisk")
    monkeypatch.setattr(T, "FILLETS", tmp_path / "no-fillets")
    root = data
    net = _random_net(2, hidden=48, enc_dim=32, df_enc_dim=16)
    save_bundle(net, {"model": "neural", "arch": net.arch, "defaults": {"strength_db": 20.0},
                      "training": {"mix_version": 3}}, tmp_path / "init")
    out = tmp_path / "withhead"
    args = ["--fit-pause", "--init", str(tmp_path / "init"), "--out", str(out), "--seed", "4", "--batch", "4",
            "--seconds", "1.0", "--pause-batches", "6", "--pause-db", "18", "--data", str(root),
            "--cache", str(tmp_path / "cache")]
    assert T.main(args) == 0
    b = load_bundle(out)
    assert b.config["arch"] == dict(net.arch, pause_head=1)
    assert b.config["defaults"] == {"strength_db": 20.0, "pause_db": 18.0, "pause_threshold": 0.05}
    rec = b.config["training"]["pause_head"]
    assert rec["frames"] == 6 * 4 * 100 and rec["mix_version"] == 3 and rec["seed"] == 4
    assert rec["train_frame_accuracy"] > max(rec["speech_share"], 1 - rec["speech_share"])
    sd, old = b.build_model().state_dict(), net.state_dict()
    assert set(sd) - set(old) == {"pause.weight", "pause.bias"}
    for k, v in old.items():
        assert torch.equal(sd[k], v), k
    assert NeuralSuppressor(1, bundle=out).pause_db == 18.0
    with pytest.raises(SystemExit):  # refused with a clear message: the range
        T.main(args[:-4] + ["--pause-db", "75"])
    assert T.main(args) == 0 and load_bundle(out).config["weights"] == b.config["weights"]  # reproducible


def test_pause_weight_trains_the_head_with_the_network(tmp_path, monkeypatch, data):
    """``--pause-weight W``: the pause head's cross-entropy joins the loss,
    so the head learns (its cross-entropy on fresh mixtures falls) and the
    run records it; the gate's defaults carry over from the parent. With
    W = 0 the head stays bit for bit; a network without a head is refused,
    named."""
    monkeypatch.setattr(T, "ASTERISK", tmp_path / "no-asterisk")
    monkeypatch.setattr(T, "FILLETS", tmp_path / "no-fillets")
    net = _with_head(_random_net(2, hidden=48, enc_dim=32, df_enc_dim=16))
    init = tmp_path / "init"
    save_bundle(net, {"model": "neural", "arch": net.arch, "defaults": {"pause_db": 18.0, "pause_threshold": 0.3},
                      "training": {"mix_version": 3, "replay_command": "python -m quietcast.models.train"}}, init)
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.train_corpus(cache, 3)
    x, s = T.make_batch(np.random.default_rng(99), corpus, 48_000, 6, 3)
    win = torch.from_numpy(_window(2 * H))

    def bce(m):
        xt, st = torch.from_numpy(x), torch.from_numpy(s)
        with torch.no_grad():
            lg = m(T._stft(xt, win, H), silent=T._silent(xt, win, H), pause=True)[2]
        return float(torch.nn.functional.binary_cross_entropy_with_logits(lg, T.pause_labels(st, win, H)))

    out = T.train(_args(data, tmp_path, "joint", init=str(init), steps=60, pause_weight=1.0))
    b = load_bundle(out)
    tr = b.config["training"]
    assert tr["pause_weight"] == 1.0 and "--pause-weight 1" in tr["replay_command"]
    assert "pause head's binary cross-entropy" in tr["loss"]
    assert b.config["defaults"]["pause_db"] == 18.0 and b.config["defaults"]["pause_threshold"] == 0.3
    joint = b.build_model().eval()
    assert not torch.equal(joint.pause.weight, net.pause.weight)
    assert bce(joint) < 0.9 * bce(net), (bce(joint), bce(net))

    plain = load_bundle(T.train(_args(data, tmp_path, "plain", init=str(init), steps=30))).build_model()
    assert torch.equal(plain.pause.weight, net.pause.weight) and torch.equal(plain.pause.bias, net.pause.bias)
    assert not torch.equal(plain.gain.weight, net.gain.weight)  # the rest did train

    save_bundle(_random_net(2, hidden=48, enc_dim=32, df_enc_dim=16),
                {"model": "neural", "arch": dict(net.arch, pause_head=0), "training": {"mix_version": 3, "replay_command": "x"}},
                tmp_path / "nohead")
    with pytest.raises(SystemExit, match="no pause head"):
        T.train(_args(data, tmp_path, "x", init=str(tmp_path / "nohead"), steps=5, pause_weight=1.0))
    with pytest.raises(SystemExit):
        T.main(["--pause-weight", "-1"])


def test_fit_pause_needs_init(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--fit-pause needs --init"):
        T.fit_pause(argparse.Namespace(init=None, seed=0, threads=1))


def test_depth_per_channel(head_bundles, rng):
    """``set_channel_pause_db``: each channel its own depth, on both steps
    alike and offline; a channel at 0 is the ungated output; bad values
    change nothing and name the range."""
    _plain, head = head_bundles
    x = _signal(rng, 3, 48_000 * 2)
    depths = [0.0, 12.0, 45.0]
    outs = []
    for kernel in ("c", "torch"):
        s = NeuralSuppressor(3, bundle=head, kernel=kernel)
        s.set_channel_pause_db(depths)
        assert s.pause_db_per_channel.tolist() == depths
        outs.append(_blocks(s, x))
    assert float(np.max(np.abs(outs[0] - outs[1]))) <= 1e-4
    off = _blocks(NeuralSuppressor(3, bundle=head, pause_db=0), x)
    np.testing.assert_array_equal(outs[0][0], off[0])  # depth 0: as if there were no gate
    e = [float(np.sum(o ** 2)) for o in outs[0][:3]]
    e_off = [float(np.sum(o ** 2)) for o in off[:3]]
    assert e[1] < e_off[1] and e[2] < e_off[2]
    assert e[2] / e_off[2] < e[1] / e_off[1] or e_off[2] == 0.0
    s = NeuralSuppressor(3, bundle=head)
    s.set_channel_pause_db(depths)
    np.testing.assert_allclose(s.process_offline(x), outs[0][:3], atol=1e-4)
    for bad in ([1.0, 2.0], [0.0, 70.0, 1.0], [0.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match=r"pause_db|3 channels"):
            s.set_channel_pause_db(bad)
    assert s.pause_db_per_channel.tolist() == depths
    plain = NeuralSuppressor(3, bundle=_plain)
    with pytest.raises(ValueError, match="no pause head"):
        plain.set_channel_pause_db(depths)


def test_threshold_per_channel(head_bundles, rng):
    """``set_channel_pause_threshold``: each channel its own threshold, on
    both steps alike and offline: the same signal on three channels comes
    out of each as from a one-channel suppressor with that threshold, and
    differently on each; bad values change nothing and name the range.
    (That a higher threshold takes more out of a real voice's pauses is
    tested on the shipped bundle: test_chain's test_denoise_pause_threshold.)"""
    _plain, head = head_bundles
    x = np.repeat(_signal(rng, 1, 48_000 * 2), 3, axis=0)
    thr = [0.02, 0.3, 0.95]
    outs = []
    for kernel in ("c", "torch"):
        s = NeuralSuppressor(3, bundle=head, kernel=kernel, pause_db=30.0)
        s.set_channel_pause_threshold(thr)
        assert s.pause_threshold_per_channel.tolist() == pytest.approx(thr)
        outs.append(_blocks(s, x))
    assert float(np.max(np.abs(outs[0] - outs[1]))) <= 1e-4
    for i, t in enumerate(thr):
        one = _blocks(NeuralSuppressor(1, bundle=head, pause_db=30.0, pause_threshold=t), x[:1])
        np.testing.assert_allclose(outs[0][i], one[0], atol=1e-5)
    assert float(np.max(np.abs(outs[0][0] - outs[0][1]))) > 1e-3 and float(np.max(np.abs(outs[0][1] - outs[0][2]))) > 1e-3
    s = NeuralSuppressor(3, bundle=head, pause_db=30.0)
    s.set_channel_pause_threshold(thr)
    np.testing.assert_allclose(s.process_offline(x), outs[0][:3], atol=1e-4)
    for bad in ([0.5, 0.5], [0.5, 0.0, 0.5], [0.5, float("nan"), 0.5], [0.5, 2.0, 0.5]):
        with pytest.raises(ValueError, match=r"pause_threshold|3 channels"):
            s.set_channel_pause_threshold(bad)
    assert s.pause_threshold_per_channel.tolist() == pytest.approx(thr)
    with pytest.raises(ValueError, match="no pause head"):
        NeuralSuppressor(3, bundle=_plain).set_channel_pause_threshold(thr)
