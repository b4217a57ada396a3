"""Training (models/train.py) end to end on a small data folder of our own:
real FLAC files read with soundfile, the 48 kHz cache, mixing (version 3,
slowed voices included), the mixing worker process, the loss, the bundle
written and loaded back."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from quietcast.models import train as T
from quietcast.models.bundle import load_bundle
from quietcast.models.neural import NeuralSuppressor, QCNet

pytestmark = pytest.mark.slow
sf = pytest.importorskip("soundfile", reason="the training extra: pip install -e .[train]")
pytest.importorskip("scipy", reason="the training extra: pip install -e .[train]")


def _voice(rng, seconds: float, f0: float) -> np.ndarray:
    """Voiced syllables: harmonics of a gliding f0 under a 4 Hz envelope."""
    t = np.arange(int(seconds * 48_000)) / 48_000
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    ph = 2 * np.pi * np.cumsum(f) / 48_000
    x = sum(np.sin(k * ph) / k for k in range(1, 30) if k * f0 < 20_000)
    env = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    return (0.3 * x * env / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(autouse=True)
def _no_system_voices(monkeypatch, tmp_path):
    """Only the data folder below: not the asterisk prompts, the
    fillets-ng dialogue or the 0 A.D. sounds a training machine may have
    installed."""
    monkeypatch.setattr(T, "ASTERISK", tmp_path / "no-asterisk")
    monkeypatch.setattr(T, "FILLETS", tmp_path / "no-fillets")
    monkeypatch.setattr(T, "ZAD", tmp_path / "no-0ad.zip")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """speech/ljspeech (LJ001-0006 and -0012 are held out: numbers that
    divide by 6), noise/misc (noise1.flac is held out) and one music bed."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "speech" / "ljspeech").mkdir(parents=True)
    for i in range(1, 13):
        sf.write(root / "speech" / "ljspeech" / f"LJ001-{i:04d}.flac", _voice(rng, 1.5, 160 + 10 * i), 48_000)
    (root / "noise" / "misc").mkdir(parents=True)
    for name in ("noise1.flac", "noise2.flac", "noise3.flac"):
        w = rng.standard_normal(48_000 * 2).astype(np.float32)
        sf.write(root / "noise" / "misc" / name, 0.1 * np.cumsum(w) / np.sqrt(np.arange(1, w.size + 1)), 48_000)
    (root / "music").mkdir()
    t = np.arange(48_000 * 2) / 48_000
    sf.write(root / "music" / "bed.ogg", (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 48_000)
    return root


def _args(data, tmp_path, name: str, **kw) -> argparse.Namespace:
    a = dict(out=str(tmp_path / name), minutes=5.0, max_wall_minutes=5.0, steps=125, stage=0, schedule=None,
             seed=7, batch=2, seconds=0.5, lr=2e-3, threads=1, workers=0, data=str(data), init=None,
             train_only="", fine_bins=0, hidden=0, harm_bins=0, noise_floor=False, warm_start=False, pitch_input=False, gain_weight=0.5, keep_weight=1.0,
             mix_version=3, snr_range=T.SNR_RANGE, exclude="", noise_weights="", cache=str(tmp_path / "cache"),
             ckpt=str(tmp_path / f"{name}.pt"), resume=False, ckpt_every=60.0, eval_every=60.0, log=None,
             strength_db=None, ema=0.0, raw_out=None, pitch_filter=None, device="cpu", pause_weight=0.0)
    a.update(kw)
    return argparse.Namespace(**a)


def test_cache_and_heldout_without_the_asterisk_voices(data, tmp_path):
    """The cache resamples nothing here (48 kHz sources) and keeps the
    held-out files apart; held-out mixtures work with LJ Speech alone
    (a machine without the asterisk packages)."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    index = json.loads((cache / "index.json").read_text())
    held = sorted(s["name"] for s in index if s["split"] == "heldout")
    assert held == ["ljspeech/LJ001-0006.flac", "ljspeech/LJ001-0012.flac", "misc/noise1.flac"]
    mixes = T.heldout_mixtures(cache, n=4, seconds=2.0)
    assert {m["group"] for m in mixes} == {"ljspeech"}
    assert all(m["noise_name"] == "misc/noise1.flac" for m in mixes)
    for m in mixes:
        assert np.allclose(m["noisy"], m["clean"] + m["noise"], atol=1e-6)
    # voices with a reference of their own (bench/quality.py --voices room-early): the same input
    # mixtures, with the reference, scaled alike, as "clean"
    rng = np.random.default_rng(3)
    speech = [(f"v{i}", rng.standard_normal(48_000).astype(np.float32) * 0.1) for i in range(3)]
    plain = T.heldout_mixtures(cache, n=4, seconds=2.0, voices={"v": speech})
    withref = T.heldout_mixtures(cache, n=4, seconds=2.0, voices={"v": [(n, a, 0.5 * a) for n, a in speech]})
    for p, r in zip(plain, withref):
        np.testing.assert_array_equal(p["noisy"], r["noisy"])
        np.testing.assert_allclose(r["clean"], 0.5 * p["clean"], atol=1e-7)
        assert float(np.max(np.abs(p["clean"]))) > 0.0


def test_fillets_voices_only_from_mix_versions_4_and_6(data, tmp_path, monkeypatch):
    """The fillets-ng dialogue: only the two main characters (``-v-`` and
    ``-m-`` in the name; not the other characters or the sound effects),
    in the training split but for the scenes that hash into 1/6 (held
    out); mix versions 1-3 do not draw them, so
    they replay exactly what they drew before (the same batches as a
    cache without them), version 4 does, and version 6 the Dutch ones."""
    rng = np.random.default_rng(1)
    fil = tmp_path / "fillets"
    for lang in ("cs", "nl"):
        (fil / "cave" / lang).mkdir(parents=True)
        for stem, f0 in (("cave-v-hello", 110), ("cave-m-hi", 230), ("cave-x-splash", 300), ("enter0", 200)):
            sf.write(fil / "cave" / lang / f"{stem}.ogg", _voice(rng, 1.0, f0), 22_050)
    (fil / "wc" / "nl").mkdir(parents=True)  # a held-out scene: crc32("wc") % 6 == 0
    sf.write(fil / "wc" / "nl" / "wc-v-bye.ogg", _voice(rng, 1.0, 120), 22_050)
    monkeypatch.setattr(T, "FILLETS", fil)
    src = [s for s in T.list_sources(data) if s["group"].startswith("fillets")]
    held = [s for s in src if s["split"] == "heldout"]
    assert [s["name"] for s in held] == ["fillets/wc/nl/wc-v-bye.ogg"]
    src = [s for s in src if s["split"] == "train"]
    assert sorted(s["name"] for s in src) == [f"fillets/cave/{lang}/cave-{k}.ogg" for lang in ("cs", "nl")
                                              for k in ("m-hi", "v-hello")]
    assert {s["split"] for s in src} == {"train"} and {s["group"] for s in src} == {"fillets-cs", "fillets-nl"}
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    v3, v4 = T.train_corpus(cache, 3), T.train_corpus(cache, 4)
    assert not any(s["group"].startswith("fillets") for s in v3.items["speech"])
    assert len(v4.items["speech"]) == len(v3.items["speech"]) + 4
    assert set(v4.speech_bw[-4:]) == {11_025.0}  # 22.05 kHz sources: band replication above 11 kHz

    monkeypatch.setattr(T, "FILLETS", tmp_path / "no-fillets")
    plain = T.train_corpus(T.build_cache(tmp_path / "cache-plain", data, log=lambda m: None), 3)
    a = T.make_batch(np.random.default_rng(5), v3, 24_000, 3, 3)
    b = T.make_batch(np.random.default_rng(5), plain, 24_000, 3, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = T.make_batch(np.random.default_rng(5), v4, 24_000, 3, 4)
    assert not np.array_equal(a[1], c[1])
    assert len(T.train_corpus(cache, 5).items["speech"]) == len(v3.items["speech"])  # version 5 builds on 3
    assert [s["name"] for s in T.Corpus(cache, "heldout").items["speech"] if s["group"].startswith("fillets")] \
        == ["fillets/wc/nl/wc-v-bye.ogg"]  # bench/quality.py --voices dutch
    v6 = T.train_corpus(cache, 6)  # version 5 plus the Dutch dubbing only (the Czech lines carry hiss)
    assert len(v6.items["speech"]) == len(v3.items["speech"]) + 2
    assert {s["group"] for s in v6.items["speech"][-2:]} == {"fillets-nl"}
    d = T.make_batch(np.random.default_rng(5), v6, 24_000, 3, 6)
    assert not np.array_equal(T.make_batch(np.random.default_rng(5), T.train_corpus(cache, 5), 24_000, 3, 5)[1], d[1])


def test_the_0ad_sounds_only_from_mix_version_15(data, tmp_path, monkeypatch):
    """The 0 A.D. sounds (Debian 0ad-data), read from the package's zip
    archive: only the folders of sound effects and ambiences (not its
    voices, human sounds, interface sounds or music), all in the
    training split, listed after every other source; mix versions up to
    14 do not draw them, so they replay exactly what they drew before
    (the same batches as a cache without them); version 15 mixes as
    version 10 with them, and its record names the source and licence."""
    import io
    import zipfile

    rng = np.random.default_rng(4)
    zpath = tmp_path / "public.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for member in ("audio/ambient/weather/rain_1.ogg", "audio/resource/mining/pick_2.ogg",
                       "audio/voice/latin/civ/citizen_1.ogg", "audio/actor/human/death/grunt_1.ogg",
                       "audio/interface/alarm/alarm_1.ogg", "audio/music/Theme.ogg",
                       "audio/ambient/weather/rain.xml"):
            buf = io.BytesIO()
            if member.endswith(".ogg"):
                sf.write(buf, (0.2 * rng.standard_normal(44_100)).astype(np.float32), 44_100, format="OGG")
            z.writestr(member, buf.getvalue())
    monkeypatch.setattr(T, "ZAD", zpath)
    src = T.list_sources(data)
    zad = [s for s in src if s["group"] == "0ad"]
    assert [s["name"] for s in zad] == ["0ad/ambient/weather/rain_1.ogg", "0ad/resource/mining/pick_2.ogg"]
    assert {s["split"] for s in zad} == {"train"} and src[-2:] == zad
    x, rate = T.read_audio(zad[0]["path"])
    assert rate == 44_100 and x.shape == (44_100,) and 0.1 < float(np.std(x)) < 0.3
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    v10, v15 = T.train_corpus(cache, 10), T.train_corpus(cache, 15)
    assert not any(s["group"] == "0ad" for s in v10.items["noise"])
    assert [s["group"] for s in v15.items["noise"][-2:]] == ["0ad", "0ad"]
    assert v15.noise_share["0ad"] == pytest.approx(0.3 / (0.3 + 0.13 + 0.12))
    assert T.Corpus(cache, "heldout").items["noise"] == T.Corpus(
        T.build_cache(tmp_path / "cache-plain", data, log=lambda m: None), "heldout").items["noise"]

    monkeypatch.setattr(T, "ZAD", tmp_path / "no-0ad.zip")
    plain = T.train_corpus(T.build_cache(tmp_path / "cache-plain", data, log=lambda m: None), 10)
    a = T.make_batch(np.random.default_rng(5), v10, 24_000, 3, 10)
    b = T.make_batch(np.random.default_rng(5), plain, 24_000, 3, 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    drawn = []
    get = v15.get
    monkeypatch.setattr(v15, "get", lambda kind, i: drawn.append((kind, v15.items[kind][i]["group"])) or get(kind, i))
    T.make_batch(np.random.default_rng(5), v15, 24_000, 12, 15)
    assert ("noise", "0ad") in drawn
    rec = T._train_sources(v15, ("urbansound8k",), 15)
    assert any("0 A.D." in t and "CC BY-SA 3.0" in t and t.endswith(": 2 files") for t in rec["noise"])
    assert any("mix version 10" in t for t in rec["noise"])
    assert T.weights_licence({s["group"] for s in v15.items["noise"]})["commercial_use"] is True


def test_mix_version_16_leaves_out_the_voiced_0ad_sounds(data, tmp_path, monkeypatch):
    """Version 16 is version 15 without the 0 A.D. sounds a voice could be
    taken for: a harmonic series at 140 Hz (an animal's call, a cry) is
    periodic at a voice's f0 in all its sounding frames and is left out; a
    burst of noise (rain, an impact) in none and stays. The shares are
    computed once and kept in the cache; the record names what was left
    out."""
    import io
    import zipfile

    rng = np.random.default_rng(6)
    t = np.arange(44_100) / 44_100
    call = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12)).astype(np.float32) * 0.1
    zpath = tmp_path / "public.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for member, x in (("audio/actor/fauna/animal/goat_1.ogg", call),
                          ("audio/ambient/weather/rain_1.ogg", (0.2 * rng.standard_normal(44_100)).astype(np.float32))):
            buf = io.BytesIO()
            sf.write(buf, x, 44_100, format="OGG")
            z.writestr(member, buf.getvalue())
    monkeypatch.setattr(T, "ZAD", zpath)
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    shares = T.voiced_shares(cache, "0ad")
    assert shares["0ad/actor/fauna/animal/goat_1.ogg"] > 0.9 and shares["0ad/ambient/weather/rain_1.ogg"] < 0.05
    assert (cache / "voiced-0ad.json").exists()
    v15, v16 = T.train_corpus(cache, 15), T.train_corpus(cache, 16)
    assert [s["name"] for s in v15.items["noise"] if s["group"] == "0ad"] == [
        "0ad/actor/fauna/animal/goat_1.ogg", "0ad/ambient/weather/rain_1.ogg"]
    assert [s["name"] for s in v16.items["noise"] if s["group"] == "0ad"] == ["0ad/ambient/weather/rain_1.ogg"]
    assert v16.screened == ["0ad/actor/fauna/animal/goat_1.ogg"] and v15.screened == []
    rec = T._train_sources(v16, (), 16)
    assert rec["screened"] == v16.screened and any("left out as voiced" in t for t in rec["noise"])
    assert T.train_corpus(cache, 10).screened == []


def test_mix_version_12_reads_the_denoised_czech_voices(data, tmp_path, monkeypatch):
    """``--denoise-speech fillets-cs`` runs DeepFilterNet3 over that group's
    items (both splits) into the cache, with their offsets and the energy
    it took off; mix version 12 then reads the Czech lines from that copy,
    in about a quarter of the utterances. Without the copy it names the
    command; an unknown group is named with the ones there are; a cache
    without the group mixes exactly as version 9 (no synthetic scenes)."""
    rng = np.random.default_rng(2)
    fil = tmp_path / "fillets"
    (fil / "cave" / "cs").mkdir(parents=True)
    for stem, f0 in (("cave-v-hello", 110), ("cave-m-hi", 230)):
        x = _voice(rng, 1.2, f0) + 0.03 * rng.standard_normal(int(1.2 * 48_000)).astype(np.float32)
        sf.write(fil / "cave" / "cs" / f"{stem}.ogg", x, 48_000)
    monkeypatch.setattr(T, "FILLETS", fil)
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="--denoise-speech fillets-cs"):
        T.train_corpus(cache, 12)
    assert T.main(["--cache", str(tmp_path / "cache"), "--data", str(data), "--denoise-speech", "fillets-cs"]) == 0
    meta = json.loads((cache / "denoised" / "fillets-cs.json").read_text())
    assert meta["items"] == 2 and meta["removed_db"] < -3.0 and "DeepFilterNet3" in meta["tool"]
    with pytest.raises(SystemExit, match=r"no such speech group in .* \(it has fillets-cs, ljspeech\)"):
        T.main(["--cache", str(tmp_path / "cache"), "--data", str(data), "--denoise-speech", "nope"])

    c12 = T.train_corpus(cache, 12)
    assert [c12.items["speech"][k]["group"] for k in c12.denoised_idx] == ["fillets-cs"] * 2
    for k in c12.denoised_idx:
        s = c12.items["speech"][k]
        raw = c12.audio["speech"][s["start"]:s["start"] + s["length"]].astype(np.float64)
        den = c12.get("speech", int(k)).astype(np.float64)
        assert den.shape == raw.shape and np.sum(den ** 2) < 0.9 * np.sum(raw ** 2)
    drawn = []
    get = c12.get
    monkeypatch.setattr(c12, "get", lambda kind, i: (drawn.append(i), get(kind, i))[1])
    r = np.random.default_rng(0)
    for _ in range(600):
        T._speech_segment(r, c12, 48_000, 12)
    share = np.isin(drawn, c12.denoised_idx).mean()
    assert len(drawn) > 500 and 0.19 < share < 0.31
    src = T._train_sources(c12, version=12)["speech"]
    assert any("read from a denoised copy, 25 % of the utterances: DeepFilterNet3" in t and t.startswith("fillets-ng-data-cs") for t in src)

    monkeypatch.setattr(T, "FILLETS", tmp_path / "no-fillets")
    plain = T.build_cache(tmp_path / "cache-plain", data, log=lambda m: None)
    a = T.make_batch(np.random.default_rng(5), T.train_corpus(plain, 12), 24_000, 3, 12)
    b = T.make_batch(np.random.default_rng(5), T.train_corpus(plain, 9), 24_000, 3, 9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_mix_version_5_adds_higher_voices(data, tmp_path):
    """Version 5 plays some utterances faster (a higher voice, its band
    wider by the same factor); versions 3 and below draw as before."""
    u = np.sin(2 * np.pi * 200 * np.arange(48_000) / 48_000).astype(np.float32)
    for seed in range(5):
        v, f = T._respeed(np.random.default_rng(seed), u, T.HIGHER_RANGE)
        assert 1.1 <= f <= 1.45 and abs(v.size - u.size / f) <= 2
        spec = np.abs(np.fft.rfft(v))
        assert abs(np.argmax(spec) * 48_000 / v.size - 200 * f) < 3  # pitch up by the factor
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.train_corpus(cache, 5)
    a = T.make_batch(np.random.default_rng(5), corpus, 48_000, 4, 3)
    b = T.make_batch(np.random.default_rng(5), corpus, 48_000, 4, 5)
    assert not np.array_equal(a[1], b[1])


def test_snr_range_changes_the_snr_only(data, tmp_path):
    """``--snr-range``: the same generator state draws the same speech and
    noise at the new SNRs (the worker included); the default draws as
    before."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.Corpus(cache, "train")
    assert T.SNR_RANGE == (-5.0, 25.0)
    a = T.make_batch(np.random.default_rng(8), corpus, 48_000, 6, 5)
    b = T.make_batch(np.random.default_rng(8), corpus, 48_000, 6, 5, T.SNR_RANGE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    seen = 0
    for seed in range(12):
        mixes = {}
        for snr in (-10.0, 20.0):
            x, s = T.make_mixture(np.random.default_rng(seed), corpus, 48_000, snr_range=(snr, snr), augment=False,
                                  version=5)
            mixes[snr] = (x.astype(np.float64), s.astype(np.float64))
        (xl, sl), (xh, sh) = mixes[-10.0], mixes[20.0]
        nl, nh = xl - sl, xh - sh
        if not (np.any(sl) and np.any(nl)):
            continue  # noise-only draws
        if np.dot(nl, nl) < 1e-6 * np.dot(xl, xl):
            continue  # "clean speech" examples: noise 40-60 dB down whatever the range
        seen += 1
        # the same speech and noise, only their ratio differs: 30 dB
        assert np.corrcoef(sl, sh)[0, 1] > 0.9999 and np.corrcoef(nl, nh)[0, 1] > 0.9999
        ratio = 10 * np.log10(np.dot(sh, sh) / np.dot(nh, nh)) - 10 * np.log10(np.dot(sl, sl) / np.dot(nl, nl))
        assert abs(ratio - 30.0) < 0.01
    assert seen >= 6
    here = T.Batches(np.random.default_rng(3), corpus, 24_000, 3, 5, workers=0, snr_range=(-10.0, 20.0))
    ahead = T.Batches(np.random.default_rng(3), corpus, 24_000, 3, 5, workers=1, snr_range=(-10.0, 20.0))
    try:
        (x0, s0), (x1, s1) = here.next(), ahead.next()
        assert np.array_equal(x0, x1) and np.array_equal(s0, s1)
        x2, _ = T.make_batch(np.random.default_rng(3), corpus, 24_000, 3, 5)
        assert not np.array_equal(x0, x2)
    finally:
        here.close()
        ahead.close()


def _cli_refuses(capsys, flag: str, bads, expected: str) -> None:
    """``main([flag=bad])`` exits with code 2 for each of ``bads``, and its
    message names ``flag bad`` and then ``expected``."""
    for bad in bads:
        with pytest.raises(SystemExit) as e:
            T.main([f"{flag}={bad}"])
        assert e.value.code == 2
        assert f"{flag} {bad}: {expected}" in capsys.readouterr().err


def test_cli_names_a_bad_snr_range(capsys):
    _cli_refuses(capsys, "--snr-range", ("5,1", "-40,0", "low,high", "1,2,3"),
                 "expected LO,HI in dB with -30 <= LO <= HI <= 60")


def test_default_pitch_filter_follows_the_parent_unless_trained_with(capsys):
    """A bundle's default pitch_filter: the strength it trained with
    (--pitch-filter), else its --init parent's, else none (0); out of 0..1
    the CLI names the range."""
    ns = argparse.Namespace
    assert T._default_pitch_filter(ns(pitch_filter=None), None) == 0.0
    assert T._default_pitch_filter(ns(pitch_filter=None), {"defaults": {"strength_db": 25.0}}) == 0.0
    assert T._default_pitch_filter(ns(pitch_filter=None), {"defaults": {"pitch_filter": 0.5}}) == 0.5
    assert T._default_pitch_filter(ns(pitch_filter=0.3), {"defaults": {"pitch_filter": 0.5}}) == 0.3
    _cli_refuses(capsys, "--pitch-filter", ("1.5", "-0.1", "nan", "on"), "expected a strength from 0 to 1")


def test_training_with_the_pitch_filter_in_the_loop(data, tmp_path):
    """--pitch-filter K: the filter runs in the training forward pass (the
    run differs from one without it, from the same seed, and stays
    finite), the bundle's default and the config say K, and the replay
    command has it."""
    plain = load_bundle(T.train(_args(data, tmp_path, "plain", steps=110)))
    pf = load_bundle(T.train(_args(data, tmp_path, "pf", steps=110, pitch_filter=0.5)))
    assert all(torch.isfinite(v).all() for v in pf.state_dict.values())
    assert not torch.equal(plain.state_dict["gain.weight"], pf.state_dict["gain.weight"])
    assert pf.config["defaults"]["pitch_filter"] == 0.5 and plain.config["defaults"]["pitch_filter"] == 0.0
    tr = pf.config["training"]
    assert tr["pitch_filter"] == 0.5 and "--pitch-filter 0.5" in tr["replay_command"]
    assert plain.config["training"]["pitch_filter"] == 0.0


def test_default_strength_follows_the_parent_unless_given(capsys):
    """A bundle's default strength_db: --strength-db, else its --init
    parent's, else 15 dB; out of 0..60 the CLI names the range."""
    ns = argparse.Namespace
    assert T._default_strength(ns(strength_db=None), None) == 15.0
    assert T._default_strength(ns(strength_db=None), {"defaults": {"strength_db": 25.0}}) == 25.0
    assert T._default_strength(ns(strength_db=None), {"arch": {}}) == 15.0
    assert T._default_strength(ns(strength_db=0.0), {"defaults": {"strength_db": 25.0}}) == 0.0
    _cli_refuses(capsys, "--strength-db", ("61", "-1", "nan", "loud"), "expected a number of dB from 0 to 60")


def test_worker_makes_the_same_batches(data, tmp_path):
    """The mixing worker hands out exactly the batches the training thread
    would make, and the generator state after each (what a checkpoint
    keeps)."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.Corpus(cache, "train")
    here = T.Batches(np.random.default_rng(3), corpus, 24_000, 3, 3, workers=0)
    ahead = T.Batches(np.random.default_rng(3), corpus, 24_000, 3, 3, workers=1)
    try:
        for _ in range(4):
            (x0, s0), (x1, s1) = here.next(), ahead.next()
            assert np.array_equal(x0, x1) and np.array_equal(s0, s1)
            assert here.state == ahead.state
        assert x0.shape == (3, 24_000) and x0.dtype == np.float32
        assert np.abs(x0).max() > 0 and not np.array_equal(x0, s0)
        assert ahead.rng.bit_generator.state == here.rng.bit_generator.state
    finally:
        here.close()
        ahead.close()
    assert ahead._proc is None


@pytest.mark.parametrize("workers,batch,match", [(1, 2, "mixing worker failed: ValueError"),
                                                   (2, 4, "a mixing worker failed: ValueError")])
def test_worker_failure_is_raised_with_its_reason(data, tmp_path, workers, batch, match):
    """The mixing worker (``workers=1``) and a pool (2 or more) raise a
    mixing process's error here, with its reason."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.Corpus(cache, "train")
    corpus.items["speech"] = []  # nothing to draw from: every mixing process fails on its first batch
    rng, seed = (np.random.default_rng(0), None) if workers == 1 else (None, 0)
    b = T.Batches(rng, corpus, 24_000, batch, 3, workers=workers, seed=seed)
    try:
        with pytest.raises(RuntimeError, match=match):
            b.next()
    finally:
        b.close()


def test_pool_makes_the_same_batches_for_any_size(data, tmp_path):
    """A pool of mixing processes (``--workers`` 2 or more) hands out the
    same batches whatever its size and however a batch is split: each
    mixture is drawn from its own stream (seed, batch, place); a pool
    started at batch k (a resumed run) hands out batch k first; and these
    are not the single stream's batches (``--workers`` 0 or 1)."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.Corpus(cache, "train")
    two = T.Batches(None, corpus, 24_000, 5, 3, workers=2, seed=4)
    three = T.Batches(None, corpus, 24_000, 5, 3, workers=3, seed=4, ahead=1)
    late = T.Batches(None, corpus, 24_000, 5, 3, workers=2, seed=4, start=2)
    try:
        got2 = [two.next() for _ in range(3)]
        got3 = [three.next() for _ in range(3)]
        first_late = late.next()
    finally:
        for b in (two, three, late):
            b.close()
    for step, ((x2, s2), (x3, s3)) in enumerate(zip(got2, got3)):
        assert x2.shape == (5, 24_000) and x2.dtype == np.float32 and np.abs(x2).max() > 0
        assert np.array_equal(x2, x3) and np.array_equal(s2, s3)
        x, s = T.make_mixtures(corpus, 24_000, 3, 4, step, 0, 5)  # made here, in one piece
        assert np.array_equal(x, x2) and np.array_equal(s, s2)
    assert not np.array_equal(got2[0][0], got2[1][0])
    assert np.array_equal(first_late[0], got2[2][0])
    single = T.make_batch(np.random.default_rng(4), corpus, 24_000, 5, 3)
    assert not np.array_equal(single[0], got2[0][0])
    assert two._pool is None
    with pytest.raises(ValueError, match="give seed"):
        T.Batches(None, corpus, 24_000, 5, 3, workers=2)


def test_training_with_a_pool_is_the_same_for_any_size(data, tmp_path):
    """Two runs with pools of 2 and 3 mixing processes give the same
    weights bit for bit, record the per-mixture streams, and replay with
    a pool."""
    out2 = T.train(_args(data, tmp_path, "p2", workers=2, device="cpu"))
    out3 = T.train(_args(data, tmp_path, "p3", workers=3, device="cpu"))
    b2, b3 = load_bundle(out2), load_bundle(out3)
    assert b2.config["weights"]["sha256"] == b3.config["weights"]["sha256"]
    tr = b2.config["training"]
    assert tr["workers"] == 2 and tr["mixing_streams"].startswith("per mixture") and tr["device"] == "cpu"
    assert "--workers 2 --mix-version 3 --seed 7" in tr["replay_command"]
    assert tr["history"][-1]["val_si_sdr_imp_db"] > 1.0


def test_device_choice_names_what_is_wrong(capsys):
    """``--device``: auto picks CUDA when torch sees it, else the CPU; an
    unknown name, or CUDA where there is none, stops with the reason."""
    assert T.train_device("cpu") == torch.device("cpu")
    auto = T.train_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit, match="--device tpu: expected auto, cpu, cuda or cuda:N"):
        T.train_device("tpu")
    if torch.cuda.is_available():
        assert T.train_device("cuda") == torch.device("cuda")
        with pytest.raises(SystemExit, match="there are CUDA devices 0.."):
            T.train_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(SystemExit, match="--device cuda: CUDA is not available here"):
            T.train_device("cuda")
    _cli_refuses(capsys, "--workers", ("-1", "257", "two", "1.5"),
                 "expected a whole number of processes from 0 to 256")


def test_synthetic_cache_trains_without_the_data(tmp_path):
    """The generated cache (for timing on a machine without the data,
    e.g. a GPU machine) loads as a training corpus, gives held-out
    mixtures from its own held-out items, and a run on it needs no data
    folder: the held-out lists come from the cache's index and the
    sources are named as generated."""
    cache = T.synthetic_cache(tmp_path / "syn", files=6, seconds=1.5)
    corpus = T.train_corpus(cache, 9)
    assert len(corpus.items["speech"]) == 5 and len(corpus.items["noise"]) == 5
    mixes = T.heldout_mixtures(cache, n=2, seconds=1.0)
    assert {m["group"] for m in mixes} == {"synthetic"} and np.abs(mixes[0]["noisy"]).max() > 0
    out = T.train(_args(tmp_path / "no-data", tmp_path, "syn_run", cache=str(tmp_path / "syn"), steps=100,
                        batch=2, workers=2, device="cpu", mix_version=9))
    cfg = load_bundle(out).config
    assert cfg["data"]["heldout"]["speech"] == ["synthetic/speech005"]
    assert cfg["data"]["train"]["speech"][0].startswith("generated harmonic tones")
    assert cfg["training"]["steps"] == 100


def test_training_writes_a_bundle_that_loads_and_runs(data, tmp_path):
    """A short run (125 steps: 100 warm-up, one block) with and without the worker: the same
    weights bit for bit; the bundle loads, records its run, and its
    training data allows commercial use (no non-commercial group here)."""
    out0 = T.train(_args(data, tmp_path, "w0", workers=0, noise_weights="music=0.05"))
    out1 = T.train(_args(data, tmp_path, "w1", workers=1, noise_weights="music=0.05"))
    b0, b1 = load_bundle(out0), load_bundle(out1)
    assert b0.state_dict.keys() == b1.state_dict.keys()
    for k in b0.state_dict:
        assert torch.equal(b0.state_dict[k], b1.state_dict[k]), k
    assert b0.config["weights"]["sha256"] == b1.config["weights"]["sha256"]
    tr = b1.config["training"]
    assert tr["steps"] == 125 and tr["workers"] == 1 and tr["mix_version"] == 3
    assert len(tr["lr_blocks"]) == 1 and tr["history"][-1]["step"] == 125
    assert tr["history"][-1]["val_si_sdr_imp_db"] > 1.0  # it learnt to take the noise off these voices
    assert b1.config["licence"]["commercial_use"] is True
    assert b1.config["data"]["train"]["noise_share"] == pytest.approx({"misc": 0.13 / 0.18, "music": 0.05 / 0.18},
                                                                      abs=1e-4)
    assert "--noise-weights music=0.05 --mix-version 3 --seed 7" in tr["replay_command"]
    assert tr["gain_weight"] == 0.5 and "--gain-weight" not in tr["replay_command"]
    assert "ljspeech/LJ001-0006.flac" in b1.config["data"]["heldout"]["speech"]
    assert tr["stage"] == 1 and "lineage" not in b1.config
    sup = NeuralSuppressor(channels=1, bundle=out1)
    y = sup.process(np.random.default_rng(1).standard_normal((1, 4800)).astype(np.float32) * 0.1)
    assert y.shape == (1, 4800) and np.isfinite(y).all()
    # the trained weights moved away from the initialisation
    torch.manual_seed(7)
    fresh = QCNet(**b1.config["arch"])
    assert not torch.equal(fresh.gain.weight, b1.state_dict["gain.weight"])
    # a second stage, widened to 192 GRU units: recorded for its replay
    b2 = load_bundle(T.train(_args(data, tmp_path, "wide", init=str(out1), hidden=192)))
    assert b2.config["arch"]["hidden"] == 192 and b2.state_dict["gain.weight"].shape == (32, 192)
    assert "--hidden 192" in b2.config["training"]["replay_command"] and b2.config["training"]["stage"] == 2
    with pytest.raises(SystemExit, match="can only be widened"):
        T.train(_args(data, tmp_path, "narrow", init=str(out1), hidden=96))
    # a third stage with the fine-structure input of the lowest 96 bins
    b3 = load_bundle(T.train(_args(data, tmp_path, "harm", init=str(b2.path), harm_bins=96, steps=50)))
    assert b3.config["arch"]["harm_bins"] == 96 and b3.state_dict["enc.weight"].shape == (96, 64 + 96)
    assert b3.config["arch"]["hidden"] == 192 and "--harm-bins 96" in b3.config["training"]["replay_command"]
    assert float(b3.state_dict["enc.weight"][:, 64:].abs().sum()) > 0  # the new input's weights learnt
    with pytest.raises(SystemExit, match="already reads 96 bins"):
        T.train(_args(data, tmp_path, "harm2", init=str(b3.path), harm_bins=64))
    # another third stage, from the second, with the noise-floor input of the 32 bands
    b4 = load_bundle(T.train(_args(data, tmp_path, "floor", init=str(b2.path), noise_floor=True, steps=50,
                                   snr_range=(-10.0, 20.0))))
    assert b4.config["arch"]["floor_input"] == 1 and b4.state_dict["enc.weight"].shape == (96, 64 + 32)
    assert "--noise-floor" in b4.config["training"]["replay_command"]
    assert "--snr-range" not in tr["replay_command"] and b4.config["data"]["mixing"].startswith("SNR U(-10, 20) dB")
    assert "--snr-range=-10,20 " in b4.config["training"]["replay_command"]  # the form argparse takes
    assert float(b4.state_dict["enc.weight"][:, 64:].abs().sum()) > 0
    with pytest.raises(SystemExit, match="already has the noise-floor input"):  # its columns come last
        T.train(_args(data, tmp_path, "harm3", init=str(b4.path), harm_bins=96))
    # a fifth, warm-started running means: the same weights, kept by its children
    b5 = load_bundle(T.train(_args(data, tmp_path, "warm", init=str(b4.path), warm_start=True, steps=10)))
    assert b5.config["arch"]["warm_start"] == 1 and b4.config["arch"]["warm_start"] == 0
    assert "--warm-start" in b5.config["training"]["replay_command"]
    assert b5.state_dict["enc.weight"].shape == b4.state_dict["enc.weight"].shape
    b6 = load_bundle(T.train(_args(data, tmp_path, "warm2", init=str(b5.path), steps=10)))
    assert b6.config["arch"]["warm_start"] == 1
    # a seventh with the pitch input (33 more encoder inputs, after the floor's)
    b7 = load_bundle(T.train(_args(data, tmp_path, "pitch", init=str(b6.path), pitch_input=True, steps=30)))
    assert b7.config["arch"]["pitch_input"] == 1 and b7.state_dict["enc.weight"].shape == (96, 64 + 32 + 33)
    assert "--pitch-input" in b7.config["training"]["replay_command"]
    assert float(b7.state_dict["enc.weight"][:, 96:].abs().sum()) > 0  # the new input's weights learnt
    with pytest.raises(SystemExit, match="already has the pitch input"):
        T.train(_args(data, tmp_path, "floor2", init=str(b7.path), harm_bins=96))


def test_weight_average_is_the_bundle_and_leaves_the_training_alone(data, tmp_path):
    """--ema: the same run's last weights (--raw-out) equal a run without
    the average bit for bit; the bundle holds the average, which differs
    from them, and its config says so and replays with --ema."""
    plain = load_bundle(T.train(_args(data, tmp_path, "plain", steps=110)))
    avg = load_bundle(T.train(_args(data, tmp_path, "avg", steps=110, ema=0.95, raw_out=str(tmp_path / "raw"))))
    raw = load_bundle(tmp_path / "raw")
    for k in plain.state_dict:
        assert torch.equal(plain.state_dict[k], raw.state_dict[k]), k
    st = torch.load(tmp_path / "avg.pt", weights_only=True)  # --resume goes on from the last weights
    assert all(torch.equal(st["net"][k], raw.state_dict[k]) for k in raw.state_dict) and st["ema"]["decay"] == 0.95
    assert json.loads(st["hist"]) == avg.config["training"]["history"]  # with the final record
    moved = [k for k in plain.state_dict if not torch.equal(plain.state_dict[k], avg.state_dict[k])]
    assert "gain.weight" in moved and len(moved) >= len(plain.state_dict) - 2
    tr = avg.config["training"]
    assert tr["ema"] == 0.95 and "moving average" in tr["weights"] and "--ema 0.95" in tr["replay_command"]
    assert raw.config["training"]["weights"].startswith("the last step's") and raw.config["name"] == "raw"
    assert plain.config["training"]["weights"] == "the last step's"
    with pytest.raises(SystemExit):
        T.main(["--raw-out", str(tmp_path / "r2")])


def test_ema_follows_its_formula():
    """Ema: avg <- avg + (1 - d) (w - avg) per update, from the first weights."""
    net = torch.nn.Linear(3, 2)
    w0 = net.weight.detach().double().clone()
    e = T.Ema(net, 0.9)
    want = w0.clone()
    for i in range(5):
        with torch.no_grad():
            net.weight.add_(float(i + 1))
        e.update(net)
        want = want + 0.1 * (net.weight.detach().double() - want)
    assert torch.allclose(e.avg["weight"], want, atol=1e-12)
    m = e.model(net)
    assert torch.allclose(m.weight.double(), want, atol=1e-6) and not torch.equal(m.weight, net.weight)
    e2 = T.Ema(torch.nn.Linear(3, 2), 0.9)
    e2.load_state_dict(e.state_dict())
    assert torch.equal(e2.avg["weight"], e.avg["weight"])


@pytest.mark.parametrize("bad", ["0.5", "1", "x", "-0.99"])
def test_cli_names_a_bad_ema(capsys, bad):
    with pytest.raises(SystemExit):
        T.main(["--ema", bad])
    err = capsys.readouterr().err
    assert f"--ema {bad}" in err and "0.9 to 0.99999" in err


def test_noise_weights_set_each_groups_share(data, tmp_path):
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    assert T.Corpus(cache, "train").noise_share == pytest.approx({"misc": 0.13 / 0.25, "music": 0.12 / 0.25})
    less = T.Corpus(cache, "train", noise_weights=T.parse_noise_weights("music=0.02"))
    assert less.noise_share == pytest.approx({"misc": 0.13 / 0.15, "music": 0.02 / 0.15})
    assert less.noise_p.sum() == pytest.approx(1.0) and less.noise_p.size == 3  # two misc files share 0.13
    assert T.Corpus(cache, "train", noise_weights={"music": 0.0}).noise_share["music"] == 0.0
    with pytest.raises(ValueError, match="no noise file"):
        T.Corpus(cache, "train", noise_weights={"music": 0.0, "misc": 0.0})
    for bad, msg in (("musik=1", "GROUP one of urbansound8k"), ("music", "GROUP=WEIGHT"),
                     ("music=-1", ">= 0"), ("music=loud", ">= 0"), ("music=nan", ">= 0")):
        with pytest.raises(ValueError, match=msg):
            T.parse_noise_weights(bad)


def test_cli_names_a_bad_noise_weight(capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--noise-weights", "music=2,hum=1"])
    assert e.value.code == 2
    assert "--noise-weights 'hum=1'" in capsys.readouterr().err
    _cli_refuses(capsys, "--hidden", ("-5", "4", "wide"), "expected 0 (the default) or 8..4096 GRU units")
    _cli_refuses(capsys, "--harm-bins", ("4", "482", "all"), "expected 0 (none) or 8..481 bins")


def test_gain_and_keep_weights_shape_the_band_gain_term_only(data, tmp_path):
    """``--gain-weight`` weighs the band-gain term against the two spectral
    terms (which keep weight 1), ``--keep-weight`` the gains below their
    ideal value within it; a run records both for its replay."""
    from quietcast.models.neural import _window

    corpus = T.Corpus(T.build_cache(tmp_path / "cache", data), "train")
    xb, sb = T.make_batch(np.random.default_rng(3), corpus, 4800, 2, 3)
    net = QCNet()
    win = torch.from_numpy(_window(960))
    x, s = torch.from_numpy(xb), torch.from_numpy(sb)
    X, S = T._stft(x, win, 480), T._stft(s, win, 480)
    with torch.no_grad():
        V, g = net(X)
        (l1, p1), (l4, p4) = T._loss(net, V, S, X, g, 0.5), T._loss(net, V, S, X, g, 4.0)
    assert p1 == p4 and p1[2] > 0
    assert float(l1) == pytest.approx(p1[0] + p1[1] + 0.5 * p1[2], rel=1e-5)
    assert float(l4) == pytest.approx(p1[0] + p1[1] + 4.0 * p1[2], rel=1e-5)
    # --keep-weight: a gain below the ideal (voice removed) counts k times, one above it once
    gt = torch.sqrt((S.abs().square() @ net.fb_energy) / (X.abs().square() @ net.fb_energy + 1e-12)).clamp(0, 1)
    d = g.sqrt() - gt.sqrt()
    below, above = float(d.clamp(max=0).square().mean()), float(d.clamp(min=0).square().mean())
    assert below > 0 and above > 0
    with torch.no_grad():
        _l, pk = T._loss(net, V, S, X, g, 0.5, 3.0)
    assert pk[:2] == p1[:2] and pk[2] == pytest.approx(3.0 * below + above, rel=1e-4)
    out = T.train(_args(data, tmp_path, "gw", steps=101, gain_weight=4.0, keep_weight=2.0))
    tr = load_bundle(out).config["training"]
    assert tr["gain_weight"] == 4.0 and tr["keep_weight"] == 2.0
    assert "--gain-weight 4 --keep-weight 2 " in tr["replay_command"]
    assert "4 * band sqrt-gain MSE (gains below the ideal weighted 2x)" in tr["loss"]


def test_widen_keeps_the_function_and_the_new_units_learn():
    """``--hidden`` with ``--init``: a network widened from 24 to 40 GRU
    units gives its parent's output exactly (every head, the fine head's
    two inputs included), and the new units' weights get gradients."""
    from quietcast.models.neural import DEFAULT_ARCH

    arch = dict(DEFAULT_ARCH, df_order=1, fine_bins=16)
    torch.manual_seed(3)
    small = QCNet(**dict(arch, hidden=24))
    with torch.no_grad():
        for head in (small.gain, small.df, small.fine):
            head.weight.normal_(0.0, 0.2)
            head.bias.normal_(0.0, 0.5)
    big = QCNet(**dict(arch, hidden=40))
    grown = T.widen(big, small.state_dict())
    assert {"gru1.weight_hh_l0", "gru2.weight_ih_l0", "gain.weight", "df.weight", "fine.weight"} <= set(grown)
    X = torch.randn(2, 60, 481, dtype=torch.complex64) * torch.logspace(0, -3, 481)
    with torch.no_grad():
        V0, g0 = small(X)
    V1, g1 = big(X)
    assert torch.allclose(g1, g0, atol=1e-6) and torch.allclose(V1, V0, atol=1e-5)
    V1.abs().pow(0.3).mean().backward()
    assert float(big.gain.weight.grad[:, 24:].abs().sum()) > 0  # the heads start reading the new units
    assert float(big.fine.weight.grad[:, 24:40].abs().sum()) > 0
    with pytest.raises(ValueError, match="cannot widen"):
        T.widen(QCNet(**dict(arch, hidden=40, n_bands=24)), small.state_dict())


def test_fine_structure_input_starts_at_the_parents_output_and_learns():
    """``--harm-bins`` with ``--init``: the band encoder reads the new input
    through zero weights, so the output is the parent's exactly, and those
    weights get gradients at once (the input carries signal)."""
    from quietcast.models.neural import DEFAULT_ARCH

    torch.manual_seed(4)
    small = QCNet(**dict(DEFAULT_ARCH, hidden=24))
    with torch.no_grad():
        small.gain.weight.normal_(0.0, 0.2)
    big = QCNet(**dict(DEFAULT_ARCH, hidden=24, harm_bins=96))
    assert T.widen(big, small.state_dict()) == ["enc.weight"]
    X = torch.randn(2, 60, 481, dtype=torch.complex64) * torch.logspace(0, -3, 481)
    with torch.no_grad():
        V0, g0 = small(X)
    V1, g1 = big(X)
    assert torch.equal(g1, g0) and torch.equal(V1, V0)
    V1.abs().pow(0.3).mean().backward()
    assert float(big.enc.weight.grad[:, 64:].abs().sum()) > 0
    with pytest.raises(ValueError, match="harm_bins 500 out of range 0..481"):
        QCNet(harm_bins=500)
    # the noise-floor input the same way, after the fine structure
    both = QCNet(**dict(DEFAULT_ARCH, hidden=24, harm_bins=96, floor_input=1))
    assert T.widen(both, big.state_dict()) == ["enc.weight"]
    V2, g2 = both(X)
    assert torch.equal(g2, g1) and torch.equal(V2, V1)
    V2.abs().pow(0.3).mean().backward()
    assert float(both.enc.weight.grad[:, 160:].abs().sum()) > 0
    with pytest.raises(ValueError, match="floor_input 2 must be 0 or 1"):
        QCNet(floor_input=2)
    # and the pitch input, last of all
    pitched = QCNet(**dict(DEFAULT_ARCH, hidden=24, harm_bins=96, floor_input=1, pitch_input=1))
    assert T.widen(pitched, both.state_dict()) == ["enc.weight"]
    V3, g3 = pitched(X)
    assert torch.equal(g3, g2) and torch.equal(V3, V2)
    V3.abs().pow(0.3).mean().backward()
    assert float(pitched.enc.weight.grad[:, 192:].abs().sum()) > 0
    with pytest.raises(ValueError, match="pitch_input 2 must be 0 or 1"):
        QCNet(pitch_input=2)


def test_higher_voice_versions():
    """The share of the utterances not slowed that are played faster, and
    the range of the factor, per mix version (7: up to 1.6x; 8: more of
    them; 9: up to 1.75x)."""
    assert T.higher_voices(5) == (0.5, (1.1, 1.45))
    assert T.higher_voices(7) == (0.5, (1.1, 1.6))
    assert T.higher_voices(8) == (0.7, (1.1, 1.6))
    assert T.higher_voices(9) == (0.5, (1.1, 1.75))
    u = np.sin(2 * np.pi * 200 * np.arange(48_000) / 48_000).astype(np.float32)
    fs = [T._respeed(np.random.default_rng(s), u, T.higher_voices(9)[1])[1] for s in range(40)]
    assert 1.1 <= min(fs) and max(fs) <= 1.75 and max(fs) > 1.6


def _peak_hz(x: np.ndarray, lo: float = 0.0, hi: float = 24_000.0) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    f = np.fft.rfftfreq(x.size, 1 / 48_000)
    band = (f >= lo) & (f <= hi)
    return float(f[band][np.argmax(spec[band])])


def test_scene_noise_kinds():
    """Mix version 10's synthetic scenes: unit RMS, finite, and each the
    thing it stands for: a machine's fundamental holds its pitch (no voice
    holds one for seconds), impacts are impulsive, a siren or beep sits at
    400-4000 Hz, wind is dark and gusty."""
    n = 96_000
    for seed in range(8):
        for kind in T.SCENE_KINDS:
            x = T._scene_noise(np.random.default_rng(seed), n, kind)
            assert x.dtype == np.float32 and x.size == n and np.isfinite(x).all()
            assert abs(T._rms(x) - 1.0) < 1e-3, (kind, seed)
        machine = T._scene_noise(np.random.default_rng(seed), n, "machine")
        a, b = _peak_hz(machine[:n // 2], 20, 400), _peak_hz(machine[n // 2:], 20, 400)
        assert abs(a - b) <= max(0.04 * a, 4.0), (seed, a, b)  # 2 Hz bins: the pitch drifts under 2 %
        impacts = T._scene_noise(np.random.default_rng(seed), n, "impacts")
        z = impacts.astype(np.float64)
        assert np.mean(z ** 4) / np.mean(z ** 2) ** 2 > 3.5, seed  # heavier peaks than Gaussian noise (3): bursts
        siren = T._scene_noise(np.random.default_rng(seed), n, "siren")
        assert 380 <= _peak_hz(siren) <= 4_100, seed
        wind = T._scene_noise(np.random.default_rng(seed), n, "wind")
        spec = np.abs(np.fft.rfft(wind)) ** 2
        f = np.fft.rfftfreq(n, 1 / 48_000)
        assert (spec * f).sum() / spec.sum() < 3_000, seed
    with pytest.raises(ValueError, match="scene kind 'rain': expected one of machine, impacts, siren, wind"):
        T._scene_noise(np.random.default_rng(0), n, "rain")


def _envelope_depth(x: np.ndarray, hop: int = 480) -> float:
    """How deeply the 10 ms energy of ``x`` swings: the spread (std) of
    its level in dB over frames that are not silent."""
    e = np.square(x[: x.size // hop * hop].astype(np.float64)).reshape(-1, hop).mean(axis=1)
    db = 10 * np.log10(e + 1e-12)
    return float(np.std(db[db > db.max() - 60]))


def test_scene_noise_kinds_v13(data, tmp_path):
    """Mix version 13's four more kinds: unit RMS and finite, and each
    the thing it stands for. Babble is voices (its level swings like
    speech's) but a crowd of them (it swings less than one voice), made
    of the training split only; dogs' barks and birds' chirps come and go
    and sit above 300 Hz; horns, bells and telephones are tonal (one
    spectral peak far above the floor around it); music has notes."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.train_corpus(cache, 13)
    n = 96_000
    seen = []
    get = corpus.get
    corpus.get = lambda kind, i: seen.append((kind, i)) or get(kind, i)
    for seed in range(8):
        for kind in T.SCENE_KINDS_V13:
            x = T._scene_noise(np.random.default_rng(seed), n, kind, kinds=T.SCENE_KINDS_V13, corpus=corpus)
            assert x.dtype == np.float32 and x.size == n and np.isfinite(x).all(), (kind, seed)
            assert abs(T._rms(x) - 1.0) < 1e-3, (kind, seed)
        babble = T._scene_noise(np.random.default_rng(seed), n, "babble", corpus=corpus)
        one = T._speech_segment(np.random.default_rng(seed), corpus, n, 9)[0]
        assert 1.0 < _envelope_depth(babble) < _envelope_depth(one), seed
        animal = T._scene_noise(np.random.default_rng(seed), n, "animal")
        spec = np.abs(np.fft.rfft(animal)) ** 2
        f = np.fft.rfftfreq(n, 1 / 48_000)
        assert spec[f > 300].sum() > 0.9 * spec.sum(), seed
        assert _envelope_depth(animal) > 5.0, seed  # calls with quiet between them
        for kind in ("horn", "music"):
            y = T._scene_noise(np.random.default_rng(seed), n, kind)
            sp = np.abs(np.fft.rfft(y * np.hanning(n)))
            k = int(np.argmax(sp))
            around = np.median(sp[max(0, k - 200):k + 200])
            assert sp[k] > 10 * around, (kind, seed)  # white noise: about 3
    assert seen and {k for k, _ in seen} == {"speech"}
    assert {i for _, i in seen} <= set(range(len(corpus.items["speech"])))
    assert all(s["split"] == "train" for s in corpus.items["speech"])
    with pytest.raises(ValueError, match="scene kind 'babble' needs the training corpus"):
        T._scene_noise(np.random.default_rng(0), n, "babble")
    with pytest.raises(ValueError, match="scene kind 'rain': expected one of machine, impacts, siren, wind, "
                                         "babble, animal, horn, music"):
        T._scene_noise(np.random.default_rng(0), n, "rain")


def test_mix_version_13_draws_every_kind(data, tmp_path, monkeypatch):
    """Version 13 puts a scene into about half the backgrounds, as version
    10, drawing from all eight kinds; version 14 from all but the babble;
    version 10's draws stay the four kinds it had; the training record
    names the new scenes."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.train_corpus(cache, 13)
    n = 24_000
    drawn = []
    real = T._scene_noise

    def spy(rng, n, kind=None, kinds=T.SCENE_KINDS, corpus=None):  # draws the kind as _scene_noise does
        kind = kind or kinds[int(rng.integers(len(kinds)))]
        drawn.append(kind)
        return real(rng, n, kind, corpus=corpus)

    monkeypatch.setattr(T, "_scene_noise", spy)
    for seed in range(160):
        v13 = T._noise_segment(np.random.default_rng(seed), corpus, n, 13)
        assert np.isfinite(v13).all() and v13.shape == (n,)
    assert 55 <= len(drawn) <= 105, len(drawn)
    assert set(drawn) == set(T.SCENE_KINDS_V13), sorted(set(drawn))
    drawn.clear()
    for seed in range(80):
        T._noise_segment(np.random.default_rng(seed), corpus, n, 10)
    assert drawn and set(drawn) <= set(T.SCENE_KINDS)
    drawn.clear()
    for seed in range(160):  # version 14: version 13 without the babble
        T._noise_segment(np.random.default_rng(seed), corpus, n, 14)
    assert set(drawn) == set(T.SCENE_KINDS_V14) == set(T.SCENE_KINDS_V13) - {"babble"}, sorted(set(drawn))
    for version in (13, 14):
        x, s = T.make_batch(np.random.default_rng(4), corpus, n, 6, version)
        assert np.isfinite(x).all() and x.shape == s.shape == (6, n)
    src = T._train_sources(corpus, (), 13)
    assert any("mix version 13" in line and "babble" in line for line in src["noise"])
    src = T._train_sources(corpus, (), 14)
    assert any("mix version 14" in line and "babble" not in line for line in src["noise"])


def test_mix_version_10_adds_scenes(data, tmp_path, monkeypatch):
    """Version 10 puts a synthetic scene into about half the backgrounds
    (version 11: 80 %); versions up to 9 draw exactly what they did; the
    version-10 batches are finite and differ from version 9's."""
    cache = T.build_cache(tmp_path / "cache", data, log=lambda m: None)
    corpus = T.train_corpus(cache, 10)
    n = 24_000
    scenes = []
    real = T._scene_noise
    monkeypatch.setattr(T, "_scene_noise", lambda rng, n, kind=None, **kw: scenes.append(n) or real(rng, n, kind, **kw))
    for seed in range(40):
        old = T._noise_segment(np.random.default_rng(seed), corpus, n)
        v9 = T._noise_segment(np.random.default_rng(seed), corpus, n, 9)
        assert np.array_equal(old, v9) and not scenes
    for seed in range(40):
        v10 = T._noise_segment(np.random.default_rng(seed), corpus, n, 10)
        assert np.isfinite(v10).all() and v10.shape == (n,)
    assert 10 <= len(scenes) <= 30, len(scenes)
    scenes.clear()
    for seed in range(40):  # version 11: a scene in 80 % of them
        T._noise_segment(np.random.default_rng(seed), corpus, n, 11)
    assert 26 <= len(scenes) <= 38, len(scenes)
    x, s = T.make_batch(np.random.default_rng(4), corpus, n, 6, 10)
    assert np.isfinite(x).all() and x.shape == s.shape == (6, n)
    a = T.make_batch(np.random.default_rng(4), corpus, n, 6, 9)
    assert not np.array_equal(a[0], x)


def test_cli_refuses_bad_numbers(capsys):
    """Each of these used to fail deep in training (a traceback), run on
    (--steps -5 trained 100 steps, --minutes -5 never stopped) or run out
    of memory (--seconds 1e9); now argparse names the flag and the range."""
    _cli_refuses(capsys, "--batch", ("0", "-3", "x", "1.5", "5000"), "expected a whole number of examples per step")
    _cli_refuses(capsys, "--steps", ("0", "-5", "2.5"), "expected a whole number of steps >= 1")
    _cli_refuses(capsys, "--threads", ("0", "-2"), "expected a whole number of threads from 1 to 1024")
    _cli_refuses(capsys, "--seconds", ("0", "-1", "1e9", "nan", "inf", "0.05"),
                 "expected a segment length in seconds from 0.1 to 60")
    _cli_refuses(capsys, "--lr", ("nan", "-1", "0", "inf", "fast"), "expected a learning rate, a finite number > 0")
    _cli_refuses(capsys, "--minutes", ("0", "-5", "nan"), "expected a number of minutes > 0")
    _cli_refuses(capsys, "--max-wall-minutes", ("0", "-1"), "expected a number of minutes > 0")
    _cli_refuses(capsys, "--seed", ("-1", "x", str(2 ** 32)), "expected a whole number from 0 to 4294967295")
    _cli_refuses(capsys, "--fine-bins", ("-1", "65", "999"), "expected a whole number of bins from 0")


def _main_error(capsys, args) -> str:
    """``main(args)`` exits with code 2 and one line of error (no traceback)."""
    with pytest.raises(SystemExit) as e:
        T.main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: ")
    return err.strip().splitlines()[-1]


def test_cli_checks_paths_before_training(tmp_path, capsys):
    """--data, --out, --raw-out and --init are checked before anything is
    read or trained; a missing file met later (--schedule) is one line."""
    from quietcast.models.bundle import ASSETS

    (tmp_path / "afile").write_text("x")
    assert _main_error(capsys, ["--data", tmp_path / "nowhere"]) == (
        f"python -m quietcast.models.train: error: --data {tmp_path / 'nowhere'}: no such folder")
    assert _main_error(capsys, ["--data", tmp_path / "afile"]).endswith(f"--data {tmp_path / 'afile'}: no such folder")
    assert _main_error(capsys, ["--out", tmp_path / "afile"]).endswith(
        f"--out {tmp_path / 'afile'}: exists and is not a folder")
    assert _main_error(capsys, ["--out", tmp_path / "afile" / "b"]).endswith(f"{tmp_path / 'afile'} is not a folder")
    assert _main_error(capsys, ["--out", tmp_path / "o", "--ema", "0.99", "--raw-out", tmp_path / "afile"]).endswith(
        f"--raw-out {tmp_path / 'afile'}: exists and is not a folder")
    assert _main_error(capsys, ["--out", tmp_path / "o", "--init", tmp_path / "nowhere"]).endswith(
        f"error: no model bundle at {tmp_path / 'nowhere'} (missing config.json)")
    bad = tmp_path / "bad"
    shutil.copytree(ASSETS / "clean", bad)
    (bad / "config.json").write_text("[]")
    for extra in ([], ["--fit-pause"]):
        assert _main_error(capsys, ["--out", tmp_path / "o", "--init", bad] + extra).endswith(
            f"error: {bad}/config.json: not a quietcast-bundle config: the file holds a JSON list, not an object")
    T.synthetic_cache(tmp_path / "syn", files=6, seconds=1.5)
    # met once training has begun: a failure (exit 1, one line), not a usage error
    assert T.main([str(a) for a in ["--cache", tmp_path / "syn", "--out", tmp_path / "o",
                                    "--ckpt", tmp_path / "c.pt", "--workers", "0", "--device", "cpu",
                                    "--schedule", tmp_path / "nowhere.json"]]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not err.startswith("usage: ")
    assert err.strip().splitlines()[-1].endswith(f"error: {tmp_path / 'nowhere.json'}: No such file or directory")
    assert not (tmp_path / "o").exists()


def test_steps_are_honoured_and_a_diverging_run_stops_without_a_bundle(tmp_path):
    """--steps 3 trains 3 steps (it trained 100, the learning rate's
    warm-up, whatever --steps said below that). A run whose loss stops
    being finite (here a learning rate of 1e30) stops at once with an
    error and writes no bundle (it wrote a NaN bundle and exited 0)."""
    T.synthetic_cache(tmp_path / "syn", files=6, seconds=1.5)
    common = ["--cache", tmp_path / "syn", "--workers", "0", "--device", "cpu", "--batch", "1", "--seconds", "0.5"]
    assert T.main([str(a) for a in common + ["--out", tmp_path / "three", "--ckpt", tmp_path / "3.pt",
                                             "--steps", "3"]]) == 0
    tr = load_bundle(tmp_path / "three").config["training"]
    assert tr["steps"] == 3 and tr["history"][-1]["step"] == 3
    with pytest.raises(SystemExit) as e:
        T.main([str(a) for a in common + ["--out", tmp_path / "nan", "--ckpt", tmp_path / "nan.pt",
                                          "--steps", "60", "--lr", "1e30"]])
    assert e.value.code not in (0, None)
    assert "training diverged" in str(e.value) and "no bundle written" in str(e.value)
    assert not (tmp_path / "nan").exists()
