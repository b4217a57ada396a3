"""Batches of files (``quietcast process``): each file judged on its own,
Ctrl-C and crashing workers with ``--jobs``, output paths for globs and
folders, output names and write errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pedalboard.io import AudioFile

from quietcast.bridge import Chain
from quietcast.bridge.offline import plan_jobs, process_files


def write(path, x, sr, **kw):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with AudioFile(str(path), "w", sr, x.shape[0], **kw) as f:
        f.write(x)


def read(path):
    with AudioFile(str(path)) as f:
        return f.read(f.frames), f.samplerate, f.file_dtype


def sig(ch, n, seed=0):
    return (np.random.default_rng(seed).standard_normal((ch, n)) * 0.1).astype(np.float32)


def leftovers(folder):
    return [f for _, _, fs in os.walk(folder) for f in fs if ".qc-tmp-" in f]


def test_a_nan_file_does_not_leave_its_warning_on_the_next_files(tmp_path):
    """The NaN/Inf count was kept from file to file by the processor reused
    for the batch: every clean file after one with NaN samples got its
    warning."""
    x = sig(1, 48_000)
    x[0, 100:200] = np.nan
    write(tmp_path / "in" / "a_nan.wav", x, 48_000, bit_depth=32)
    write(tmp_path / "in" / "b_clean.wav", sig(1, 48_000, 1), 48_000, bit_depth=32)
    write(tmp_path / "in" / "c_clean.wav", sig(1, 48_000, 2), 48_000, bit_depth=32)
    s = process_files(Chain.load("dry"), plan_jobs([str(tmp_path / "in")], str(tmp_path / "out")))
    assert not s.failed
    warned = {os.path.basename(r.src): r.warnings for r in s.results}
    assert warned == {"a_nan.wav": ["100 NaN/Inf input sample(s) were replaced by silence"],
                      "b_clean.wav": [], "c_clean.wav": []}


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_stage_fault_fails_only_its_own_file(tmp_path):
    """A stage fault (here: gains that overflow float32 on a file at
    +35 dBFS) left the reused processor's stage faulted: every later file
    of the same rate and channels failed "stage 'X' failed" too."""
    chain = Chain([{"name": f"g{i}", "type": "gain", "gain_db": 24.0} for i in range(32)]
                  + [{"name": "back", "type": "gain", "gain_db": -96.0}])
    hot = sig(1, 48_000)
    hot[0, 30_000] = 60.0  # finite, kept by the input clip (+-64), Inf after 768 dB
    write(tmp_path / "in" / "a_hot.wav", hot, 48_000, bit_depth=32)
    write(tmp_path / "in" / "b_ok.wav", sig(1, 48_000, 1) * 1e-3, 48_000, bit_depth=32)
    write(tmp_path / "in" / "c_ok.wav", sig(1, 48_000, 2) * 1e-3, 48_000, bit_depth=32)
    s = process_files(chain, plan_jobs([str(tmp_path / "in")], str(tmp_path / "out")))
    assert [os.path.basename(r.src) for r in s.failed] == ["a_hot.wav"]
    assert "stage 'g3" in s.failed[0].error and "NaN or Inf" in s.failed[0].error
    for name in ("b_ok.wav", "c_ok.wav"):
        y, _, _ = read(tmp_path / "out" / name)
        assert y.shape == (1, 48_000) and np.isfinite(y).all()
    assert not (tmp_path / "out" / "a_hot.wav").exists() and leftovers(tmp_path) == []
