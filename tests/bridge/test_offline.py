"""Offline processing of files and folders: layout kept, latency aligned,
no data lost (temp + rename, no overwrite, corrupt inputs skipped)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pedalboard.io import AudioFile

from quietcast.bridge import Chain
from quietcast.bridge.errors import BridgeError
from quietcast.bridge.offline import plan_jobs, process_file, process_files


def write(path, x, sr, **kw):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with AudioFile(str(path), "w", sr, x.shape[0], **kw) as f:
        f.write(x)


def read(path):
    with AudioFile(str(path)) as f:
        return f.read(f.frames), f.samplerate, f.file_dtype


def sig(ch, n, seed=0):
    return (np.random.default_rng(seed).standard_normal((ch, n)) * 0.1).astype(np.float32)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "in"
    write(src / "a.wav", sig(2, 44_100 * 2), 44_100)
    write(src / "sub" / "b.flac", sig(1, 48_000 * 3, 1), 48_000)
    (src / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk junk junk" * 40)
    (src / "notes.txt").write_text("not audio, ignored")
    return src


def leftovers(folder):
    return [f for _, _, fs in os.walk(folder) for f in fs if ".qc-tmp-" in f]


def test_folder_with_a_corrupt_file(tree, tmp_path):
    out = tmp_path / "out"
    jobs = plan_jobs([str(tree)], str(out))
    assert sorted(os.path.relpath(j.dst, out) for j in jobs) == ["a.wav", "broken.wav", os.path.join("sub", "b.flac")]
    s = process_files(Chain.default(), jobs)
    assert len(s.failed) == 1 and s.failed[0].src.endswith("broken.wav")
    assert "cannot be read as audio" in s.failed[0].error
    assert (out / "a.wav").exists() and (out / "sub" / "b.flac").exists()
    assert not (out / "broken.wav").exists()
    assert leftovers(out) == []
    assert "1 failed" in s.text() and "FAILED" in s.text()


def test_layout_rate_length_and_depth_are_kept(tree, tmp_path):
    dst = tmp_path / "a_out.wav"
    r = process_file(Chain.default(), str(tree / "a.wav"), str(dst))
    assert r.ok, r.error
    y, sr, dtype = read(dst)
    x, sr_in, dtype_in = read(tree / "a.wav")
    assert (sr, y.shape, dtype) == (sr_in, x.shape, dtype_in)
    assert r.seconds == pytest.approx(2.0)


def test_output_is_latency_aligned_and_equals_in_memory(tmp_path):
    x = np.zeros((1, 48_000), np.float32)
    x[0, 5000] = 0.5
    write(tmp_path / "imp.wav", x, 48_000, bit_depth=32)
    chain = Chain([{"name": "g", "type": "gain", "gain_db": -6.0},
                   {"name": "nr", "type": "denoise", "model": "passthrough"}])
    r = process_file(chain, str(tmp_path / "imp.wav"), str(tmp_path / "o.wav"), block=1000)
    assert r.ok, r.error
    y, _, _ = read(tmp_path / "o.wav")
    assert y.shape == x.shape and int(np.argmax(np.abs(y))) == 5000
    np.testing.assert_allclose(y, chain.process_array(x, 48_000), atol=1e-7)


def test_refuses_to_overwrite_without_flag(tree, tmp_path):
    dst = tmp_path / "o.wav"
    dst.write_bytes(b"precious")
    r = process_file(Chain.load("dry"), str(tree / "a.wav"), str(dst))
    assert not r.ok and "--overwrite" in r.error
    assert dst.read_bytes() == b"precious"
    r = process_file(Chain.load("dry"), str(tree / "a.wav"), str(dst), overwrite=True)
    assert r.ok and read(dst)[0].shape == (2, 88_200)


def test_failure_midway_leaves_no_partial_output(tmp_path, qcgain_vst3):
    x = sig(2, 48_000 * 2)
    write(tmp_path / "in.wav", x, 48_000)
    chain = Chain([{"name": "v", "type": "plugin", "path": str(qcgain_vst3)}])
    dst = tmp_path / "o.wav"
    calls = {"n": 0}

    def turn_faulty(_sec):
        calls["n"] += 1
        if calls["n"] == 2:  # after the second block the plugin starts emitting NaN
            from quietcast.bridge.offline import _PROC_CACHE

            for proc in _PROC_CACHE.values():
                if proc.chain is chain:
                    proc.set_param("v.fault", True)

    r = process_file(chain, str(tmp_path / "in.wav"), str(dst), block=4800, on_progress=turn_faulty)
    assert not r.ok and "stage 'v' failed" in r.error and "NaN" in r.error
    assert not dst.exists() and leftovers(tmp_path) == []


def _gains(n: int = 32) -> list[dict]:
    """Thirty-two +24 dB gains (x 2.5e38 in all): a sample of 2 becomes Inf
    in the last one (inputs are clipped to +-64 first), silence stays 0."""
    return [{"name": f"g{i}", "type": "gain", "gain_db": 24.0} for i in range(n)]


@pytest.mark.parametrize("block,hot_at,block_start", [(65_536, 0.02, 0.0), (4_800, 0.73, 0.7)])
def test_a_stage_fault_names_its_block_and_first_bad_sample(tmp_path, block, hot_at, block_start):
    """A stage that outputs Inf at 0.02 s was reported "failed at 1.00 s":
    the time of the end of the block (64k frames, the whole 1 s file)."""
    x = np.zeros((1, 48_000), np.float32)
    x[0, int(hot_at * 48_000)] = 2.0
    write(tmp_path / "hot.wav", x, 48_000, bit_depth=32)
    r = process_file(Chain(_gains()), str(tmp_path / "hot.wav"), str(tmp_path / "o.wav"), block=block)
    assert not r.ok and r.error == (f"stage 'g31' failed in the block starting at {block_start:.2f} s (returned NaN or "
                                    f"Inf samples, the first at {hot_at:.2f} s); output not written")
    assert not (tmp_path / "o.wav").exists()


def test_the_first_bad_sample_is_placed_in_the_latency_aligned_output():
    """Behind a stage with latency (denoise, 480 samples) the bad sample of
    a later stage lands where the aligned output has it, not where the
    block has it."""
    from quietcast.bridge.chain import ChainProcessor

    chain = Chain([{"name": "nr", "type": "denoise", "model": "dsp"}, *_gains()])
    proc = chain.processor(48_000, 1)
    assert isinstance(proc, ChainProcessor) and proc.latency > 0
    x = np.zeros((1, 9600), np.float32)
    x[0, 6000:6100] = 64.0  # (the suppressor passes a burst on: its output is far over 1.4)
    for i in range(0, 9600, 4800):
        proc.process(x[:, i:i + 4800])
        if proc.faults:
            break
    assert "g31" in proc.faults and proc.fault_at["g31"][0] == 4800
    first = proc.fault_at["g31"][1]
    assert first is not None and 6000 <= first < 6100, first  # in the input's (and the aligned output's) time
    assert proc.fault_text("g31").startswith("in the block starting at 0.10 s (returned NaN or Inf samples, the first at 0.1")
    proc.reset()
    assert proc.frames == 0 and proc.fault_at == {}


def test_nan_samples_in_a_float_file_are_reported_and_cleaned(tmp_path):
    x = sig(1, 48_000)
    x[0, 100:200] = np.nan
    write(tmp_path / "nan.wav", x, 48_000, bit_depth=32)
    r = process_file(Chain.default(), str(tmp_path / "nan.wav"), str(tmp_path / "o.wav"))
    assert r.ok
    assert any("100 NaN/Inf" in w for w in r.warnings)
    y, _, _ = read(tmp_path / "o.wav")
    assert np.isfinite(y).all()


def test_resample_and_downmix_when_told(tree, tmp_path):
    r = process_file(Chain.default(), str(tree / "a.wav"), str(tmp_path / "o.flac"), sample_rate=16_000, channels=1)
    assert r.ok, r.error
    y, sr, _ = read(tmp_path / "o.flac")
    assert sr == 16_000 and y.shape[0] == 1 and y.shape[1] == 32_000


RATE_PAIRS = [(r, 48_000) for r in (44_100, 22_050, 32_000, 88_200, 96_000, 8_000)] + \
             [(48_000, r) for r in (44_100, 22_050, 32_000, 88_200, 96_000, 8_000)]


@pytest.mark.parametrize("rate,to", RATE_PAIRS)
def test_a_resampled_output_is_exactly_as_long_as_the_input(tmp_path, rate, to):
    """``--sample-rate``: the output lasts what the input lasts, to the
    nearest frame at the new rate, for lengths that pedalboard's resampled
    reader made 1 or 2 frames short (12345 frames at 48 kHz to 32 kHz came
    out 8229 long, not 8230: the resampler's last frames need input past
    the end, which it never got). Up to there the samples are that
    reader's, bit for bit; the frames it lacked carry the signal too."""
    sf = pytest.importorskip("soundfile")
    for n in (12_345, 96_001, 88_201, 100_003, 1):
        src = tmp_path / f"in{n}.wav"
        t = np.arange(n) / rate
        sf.write(str(src), (0.5 * np.sin(2 * np.pi * 1000 * t))[:, None], rate, subtype="FLOAT")
        r = process_file(Chain.load("dry"), str(src), str(tmp_path / f"out{n}.wav"), sample_rate=to)
        assert r.ok, r.error
        y, sr, _ = read(tmp_path / f"out{n}.wav")
        assert sr == to and y.shape[1] == max(1, (2 * n * to + rate) // (2 * rate)), n  # nearest, half up
        with AudioFile(str(src)) as f:
            old = f.resampled_to(to).read(10 ** 7)
        np.testing.assert_array_equal(y[:, :old.shape[1]], old)
        if n > 1000:  # the last frames are the sine's, not silence
            assert np.abs(y[0, -4:]).max() > 0.01


def test_parallel_jobs_give_the_same_bytes(tree, tmp_path):
    a, b = tmp_path / "one", tmp_path / "two"
    s1 = process_files(Chain.default(), plan_jobs([str(tree)], str(a)), workers=1)
    s2 = process_files(Chain.default(), plan_jobs([str(tree)], str(b)), workers=2)
    assert len(s1.failed) == len(s2.failed) == 1
    for rel in ("a.wav", os.path.join("sub", "b.flac")):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_plan_errors(tree, tmp_path):
    with pytest.raises(BridgeError, match="no such file or folder"):
        plan_jobs([str(tmp_path / "nope.wav")], str(tmp_path / "o"))
    with pytest.raises(BridgeError, match="pattern matches no file"):
        plan_jobs([str(tmp_path / "*.ogg")], str(tmp_path / "o"))
    with pytest.raises(BridgeError, match="single file but there are 3 inputs"):
        plan_jobs([str(tree)], str(tmp_path / "o.wav"))
    with pytest.raises(BridgeError, match="output format '.xyz' is not supported"):
        plan_jobs([str(tree)], str(tmp_path / "o"), fmt="xyz")
    jobs = plan_jobs([str(tree / "*.wav")], str(tmp_path / "o"), fmt="flac")
    assert sorted(os.path.basename(j.dst) for j in jobs) == ["a.flac", "broken.flac"]


def test_empty_audio_file_is_reported(tmp_path):
    write(tmp_path / "empty.wav", np.zeros((1, 0), np.float32), 48_000)
    r = process_file(Chain.default(), str(tmp_path / "empty.wav"), str(tmp_path / "o.wav"))
    assert not r.ok and "no audio frames" in r.error
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("ext,depth", [(".wav", 16), (".wav", 24), (".flac", 16), (".flac", 24), (".aiff", 16),
                                       (".aiff", 24), (".wav", 32), (".wav", 8), (".aiff", 8)])
def test_the_dry_chain_is_bit_exact(tmp_path, ext, depth):
    """``dry`` passes audio through unchanged, to the bit, in every integer
    format and float. (pedalboard reads an integer sample as k/(2^(b-1)-1)
    and writes floor(x*2^(b-1)): until session 24 every negative sample
    came back one step lower.)"""
    x = sig(2, 30_000, 4)
    x[:, :4] = [[-1.0, -1 / 32767, 1 / 32767, 0.999], [-0.5, 0.5, -2e-5, 2e-5]]
    src = tmp_path / f"in{ext}"
    write(src, x, 48_000, bit_depth=depth)
    dst = tmp_path / f"out{ext}"
    r = process_file(Chain.load("dry"), str(src), str(dst))
    assert r.ok, r.error
    a, _, da = read(src)
    b, _, db = read(dst)
    assert da == db and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
    if ext == ".wav" and depth in (8, 16):  # the very bytes
        import wave

        with wave.open(str(src)) as w1, wave.open(str(dst)) as w2:
            assert w1.readframes(10**6) == w2.readframes(10**6)


def test_every_8_bit_value_comes_back_and_an_8_bit_source_can_be_flac(tmp_path):
    """8-bit WAV (unsigned) was not rounded like 16/24-bit: through ``dry``
    about half of the samples came back one step lower. And FLAC, which
    pedalboard writes at 16 or 24 bits only, failed for an 8-bit source;
    then it became 16-bit FLAC. Now (libsndfile) it is 8-bit FLAC, signed
    as FLAC has it, every value bit for bit."""
    import wave

    data = np.tile(np.arange(256, dtype=np.uint8), 8).tobytes()
    with wave.open(str(tmp_path / "u8.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(1), w.setframerate(8000), w.writeframes(data)
    r = process_file(Chain.load("dry"), str(tmp_path / "u8.wav"), str(tmp_path / "o.wav"))
    assert r.ok, r.error
    with wave.open(str(tmp_path / "o.wav")) as w:
        assert w.getsampwidth() == 1 and w.readframes(10**6) == data
    r = process_file(Chain.load("dry"), str(tmp_path / "u8.wav"), str(tmp_path / "o.flac"))
    assert r.ok, r.error
    assert r.format == "FLAC PCM_S8" and r.warnings == []
    y, _, dtype = read(tmp_path / "o.flac")
    assert str(dtype) == "int8"
    np.testing.assert_array_equal(y, read(tmp_path / "u8.wav")[0])


def test_any_source_can_be_written_as_aiff_and_square_blocks_are_written(tmp_path):
    """A float source to AIFF is written as float (AIFF-C ``fl32``: AIFF
    holds it; pedalboard wrote no 32-bit AIFF, it failed, then it was
    24-bit); a file of 2 frames and 2 channels (a block as square as
    pedalboard cannot tell apart: it failed) comes out whole, also from
    pedalboard's own encoders (Ogg)."""
    write(tmp_path / "f.wav", sig(2, 4800), 48_000, bit_depth=32)
    r = process_file(Chain.load("dry"), str(tmp_path / "f.wav"), str(tmp_path / "f.aiff"))
    assert r.ok, r.error
    assert r.format == "AIFF FLOAT" and r.warnings == []
    y, _, dtype = read(tmp_path / "f.aiff")
    assert str(dtype) == "float32" and y.shape == (2, 4800)
    np.testing.assert_array_equal(y, read(tmp_path / "f.wav")[0])
    sq = np.array([[0.25, -0.25], [0.5, -0.5]], np.float32)
    with AudioFile(str(tmp_path / "sq.wav"), "w", 48_000, 2, bit_depth=32) as f:  # the test's own writer has it too
        for j in range(2):
            f.write(sq[:, j:j + 1])
    for chain, ext in (("dry", ".wav"), ("default", ".wav"), ("dry", ".ogg")):
        r = process_file(Chain.load(chain), str(tmp_path / "sq.wav"), str(tmp_path / f"sq_{chain}{ext}"))
        assert r.ok, (chain, r.error)
        assert read(tmp_path / f"sq_{chain}{ext}")[0].shape[0] == 2
    assert read(tmp_path / "sq_dry.wav")[0].shape == read(tmp_path / "sq_default.wav")[0].shape == (2, 2)
    np.testing.assert_array_equal(read(tmp_path / "sq_dry.wav")[0], sq)


def _id3v2(payload: bytes) -> bytes:
    n = len(payload)
    size = bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])
    return b"ID3\x03\x00\x00" + size + payload


@pytest.mark.parametrize("sr,ch,tag", [(44_100, 1, False), (48_000, 2, True), (22_050, 2, False)])
def test_mp3_input_is_gapless(tmp_path, sr, ch, tag):
    """An MP3 carries its encoder's delay and padding in its LAME/Info tag;
    pedalboard decodes them as audio (plus 529 samples of decoder delay),
    so until session 24 every processed MP3 came out 1105 samples late and
    longer, more with each pass. Now the output lines up with the signal
    that was encoded and has its length, MP3 to WAV and MP3 to MP3, also
    after an ID3v2 tag, and resampled."""
    from quietcast.bridge.audiocheck import mp3_gapless

    n = int(sr * 2.5) + 123
    x = np.zeros((ch, n), np.float32)
    t = np.arange(n) / sr
    x[:] = 0.3 * np.sin(2 * np.pi * 330 * t) * np.exp(-((t - 1.2) ** 2) / 0.02)
    x[:, 9000] = 0.8  # a click to line up on
    src = tmp_path / "in.mp3"
    write(src, x, sr, quality="V2")
    if tag:
        src.write_bytes(_id3v2(b"TIT2" + (20).to_bytes(4, "big") + b"\x00\x00\x00" + b"a podcast episode  " + b"\x00" * 64)
                        + src.read_bytes())
    delay, pad = mp3_gapless(str(src))
    assert 0 < delay < 4096 and 0 <= pad < 4096
    chain = Chain([{"name": "g", "type": "gain", "gain_db": 0.0}])
    for ext in (".wav", ".mp3"):
        dst = tmp_path / f"out{ext}"
        r = process_file(chain, str(src), str(dst))
        assert r.ok, r.error
        y, sr_out, _ = read(dst)
        if ext == ".mp3":  # read back gapless too: through the same reader
            from quietcast.bridge.offline import _open_input

            raw, reader = _open_input(str(dst), None)
            y = reader.read(reader.frames)
            raw.close()
        assert y.shape == x.shape, ext
        assert int(np.argmax(np.abs(y[0]))) == 9000, ext
        assert np.corrcoef(y[0], x[0])[0, 1] > 0.99, ext
    r = process_file(chain, str(src), str(tmp_path / "r.wav"), sample_rate=sr * 2)
    assert r.ok, r.error
    y, _, _ = read(tmp_path / "r.wav")
    assert y.shape[1] == 2 * n and abs(int(np.argmax(np.abs(y[0]))) - 18_000) <= 1


def test_mp3_gapless_reads_only_a_real_tag(tmp_path):
    from quietcast.bridge.audiocheck import mp3_gapless

    assert mp3_gapless(str(tmp_path / "none.mp3")) is None
    (tmp_path / "junk.mp3").write_bytes(b"\xff\xfb" + b"\x00" * 500)
    assert mp3_gapless(str(tmp_path / "junk.mp3")) is None
    write(tmp_path / "w.wav", sig(1, 4800), 48_000)
    assert mp3_gapless(str(tmp_path / "w.wav")) is None


@pytest.mark.parametrize("depth", [16, 24])
def test_a_damaged_flac_is_refused_by_its_md5(tmp_path, depth):
    """A FLAC file with bytes damaged mid-stream (not cut short): pedalboard
    decodes it without an error, with frames silenced or skipped (the rest
    early). Until session 24 it was processed and reported fine. Now the
    decoded audio is checked against the MD5 signature in its header: the
    file fails with that reason and no output, in the single pass and in
    the scan that plans a Ray split; the undamaged file passes both."""
    from quietcast.bridge.audiocheck import flac_signature
    from quietcast.bridge.cluster import find_gaps

    src = tmp_path / "good.flac"
    write(src, sig(2, 200_000, 5), 48_000, bit_depth=depth)
    assert flac_signature(str(src))[1:] == (depth, 2)
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 2000] = bytes(b ^ 0x5A for b in data[mid:mid + 2000])
    bad = tmp_path / "bad.flac"
    bad.write_bytes(bytes(data))
    chain = Chain([{"name": "g", "type": "gain", "gain_db": 0.0}])
    assert process_file(chain, str(src), str(tmp_path / "g.flac")).ok
    r = process_file(chain, str(bad), str(tmp_path / "b.flac"))
    assert not r.ok and "MD5" in r.error and "damaged" in r.error
    assert not (tmp_path / "b.flac").exists() and leftovers(tmp_path) == []
    assert find_gaps(str(src), 4800)[0] == 200_000
    with pytest.raises(BridgeError, match="MD5"):
        find_gaps(str(bad), 4800)
    r = process_file(chain, str(bad), str(tmp_path / "b44.flac"), sample_rate=44_100)  # resampled: checked first
    assert not r.ok and "MD5" in r.error
    assert process_file(chain, str(src), str(tmp_path / "g44.flac"), sample_rate=44_100).ok


def test_skip_existing_resumes_a_batch_and_the_input_is_never_the_output(tree, tmp_path):
    """``--skip-existing`` leaves the outputs that exist and does the rest
    (an interrupted batch goes on; before session 24 every existing output
    was a failure, exit 1); it excludes ``--overwrite``. An output that is
    the input file itself is refused even with ``--overwrite`` (the
    original would have been replaced)."""
    import subprocess

    from conftest import quietcast_exe

    out = tmp_path / "out"
    jobs = plan_jobs([str(tree)], str(out))
    first = process_files(Chain.load("dry"), [j for j in jobs if j.src.endswith("a.wav")])
    assert not first.failed
    (out / "a.wav").write_bytes((out / "a.wav").read_bytes())  # the finished one, kept as it is
    stamp = os.stat(out / "a.wav").st_mtime_ns
    s = process_files(Chain.load("dry"), jobs, skip_existing=True)
    assert [r.src.endswith("a.wav") for r in s.skipped] == [True]
    assert os.stat(out / "a.wav").st_mtime_ns == stamp and (out / "sub" / "b.flac").exists()
    assert "processed, 1 skipped (output exists), 1 failed" in s.text()  # broken.wav still fails
    exe = quietcast_exe()
    r = subprocess.run([exe, "process", "dry", str(tree), "-o", str(out), "--skip-existing", "--json", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and json.loads(r.stdout)["skipped"] == 2  # a.wav and b.flac; broken.wav fails
    r = subprocess.run([exe, "process", "dry", str(tree), "-o", str(out), "--skip-existing", "--overwrite"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not allowed with" in r.stderr
    with pytest.raises(BridgeError, match="the input file itself"):  # a folder onto itself: planned, refused
        plan_jobs([str(tree)], str(tree))
    src = tree / "a.wav"
    before = src.read_bytes()
    r1 = process_file(Chain.load("default"), str(src), str(src), overwrite=True)
    assert not r1.ok and "the input file itself" in r1.error and src.read_bytes() == before


def test_an_aif_input_stays_aiff(tmp_path):
    write(tmp_path / "in" / "take.aif", sig(1, 4800), 48_000)
    (job,) = plan_jobs([str(tmp_path / "in")], str(tmp_path / "out"))
    assert job.dst.endswith("take.aiff")  # it became take.wav until session 24


def test_a_default_model_that_fell_back_to_dsp_is_a_warning(tmp_path, monkeypatch):
    """A denoise stage asked for `default` and got `dsp` (the shipped
    bundle is damaged; here a copy of it): the file is processed, and its
    result says so, with the reason. A chain that names its model gets no
    such warning."""
    import shutil

    from quietcast.models import bundle

    shutil.copytree(bundle.ASSETS, tmp_path / "assets")
    monkeypatch.setattr(bundle, "ASSETS", tmp_path / "assets")
    w = tmp_path / "assets" / "default" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    write(tmp_path / "a.wav", sig(1, 48_000), 48_000)
    r = process_file(Chain.default(), str(tmp_path / "a.wav"), str(tmp_path / "o.wav"))
    assert r.ok, r.error
    assert r.warnings == [f"model 'default' ran as 'dsp' (no neural suppression): {w}: sha256 mismatch "
                          + r.warnings[0].split(": sha256 mismatch ", 1)[1]]
    chain = Chain([{"name": "nr", "type": "denoise", "model": "dsp"}])
    r = process_file(chain, str(tmp_path / "a.wav"), str(tmp_path / "o2.wav"))
    assert r.ok and r.warnings == []
