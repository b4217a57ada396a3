"""Batches of files (``quietcast process``): each file judged on its own,
Ctrl-C and crashing workers with ``--jobs``, output paths for globs and
folders, output names and write errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from quietcast.bridge import Chain
from quietcast.bridge.errors import BridgeError
from quietcast.bridge.offline import plan_jobs, process_file, process_files

from test_offline import read, sig, write  # the same small file helpers




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


# --------------------------------------------------------------------------
# --jobs N: Ctrl-C and a worker that crashes


def _cli_env(extra_path=None):
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH")) if p)
    return env


def _outputs(folder):
    return sorted(f for f in os.listdir(folder) if not f.startswith(".")) if os.path.isdir(folder) else []


def test_ctrl_c_stops_a_parallel_batch_promptly_and_leaves_no_temporary_file(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) during
    ``--jobs 2``: the pool's exit waited for every queued file, so the
    whole batch was processed before "interrupted". Now no queued file is
    started, the running ones stop, no temporary output is left, exit 130."""
    import signal
    import subprocess
    import time

    from conftest import quietcast_exe, sigint_default

    for i in range(8):
        write(tmp_path / "in" / f"l{i}.wav", sig(1, 48_000 * 10, i), 48_000)
    (tmp_path / "nr.toml").write_text('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "dsp"\n')
    out = tmp_path / "out"
    p = subprocess.Popen([quietcast_exe(), "process", str(tmp_path / "nr.toml"), str(tmp_path / "in"), "-o", str(out),
                          "-j", "2", "-q"], start_new_session=True, stderr=subprocess.PIPE, text=True, env=_cli_env(),
                         preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 120
        while not _outputs(out) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.poll() is None, p.stderr.read()
        done_before = len(_outputs(out))
        os.killpg(p.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130 and "interrupted" in err, err
    assert len(_outputs(out)) <= done_before + 1, _outputs(out)  # (at most one finishing as the signal came)
    assert len(_outputs(out)) < 8 and took < 15
    assert leftovers(tmp_path) == []


def test_a_ctrl_c_that_reaches_only_the_workers_still_ends_the_batch_as_interrupted(tmp_path):
    """The workers install their own SIGINT handler; the parent keeps the
    SIGINT it inherited, which is ignored when it was started in the
    background by a non-interactive shell (``quietcast process ... &``).
    A SIGINT to the process group then stopped the workers only, and the
    batch ended with its files "interrupted" and exit 1, as if files had
    failed (seen in a test run started that way). Here only the workers
    get SIGINT: the batch still ends as interrupted (exit 130), with no
    temporary output left."""
    import signal
    import subprocess
    import time

    from conftest import quietcast_exe

    for i in range(8):
        write(tmp_path / "in" / f"l{i}.wav", sig(1, 48_000 * 10, i), 48_000)
    (tmp_path / "nr.toml").write_text('[[stage]]\nname = "nr"\ntype = "denoise"\nmodel = "dsp"\n')
    out = tmp_path / "out"
    p = subprocess.Popen([quietcast_exe(), "process", str(tmp_path / "nr.toml"), str(tmp_path / "in"), "-o", str(out),
                          "-j", "2", "-q"], start_new_session=True, stderr=subprocess.PIPE, text=True, env=_cli_env())
    try:
        deadline = time.monotonic() + 120
        while not _outputs(out) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.poll() is None, p.stderr.read()
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert kids
        for k in kids:  # (the pool's workers, and the resource tracker, which ignores SIGINT)
            try:
                os.kill(int(k), signal.SIGINT)
            except ProcessLookupError:
                pass
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130 and "quietcast: interrupted" in err, (p.returncode, err)
    assert len(_outputs(out)) < 8
    assert leftovers(tmp_path) == []


CRASH_SITE = '''
import os, resource, signal
from quietcast.bridge import offline
_process_file = offline.process_file
def process_file(chain, src, dst, **kw):  # a plugin that segfaults on one file
    if os.path.basename(src).startswith("crash"):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    return _process_file(chain, src, dst, **kw)
offline.process_file = process_file
'''


def test_a_file_that_crashes_its_worker_fails_alone(tmp_path):
    """A worker killed by a segfault broke the pool, and every file of the
    ``--jobs`` batch failed "worker failed: BrokenProcessPool", none named.
    Now the unfinished files run again one at a time: the one that crashes
    its worker again fails as such, the others are written."""
    import subprocess

    from conftest import quietcast_exe

    names = ["a.wav", "b.wav", "crash_c.wav", "d.wav", "e.wav", "f.wav"]
    for i, name in enumerate(names):
        write(tmp_path / "in" / name, sig(1, 48_000, i), 48_000)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH_SITE)  # in the workers only: the parent runs no file
    out = tmp_path / "out"
    r = subprocess.run([quietcast_exe(), "process", "dry", str(tmp_path / "in"), "-o", str(out), "-j", "2", "--json"],
                       capture_output=True, text=True, env=_cli_env(site), timeout=300)
    assert r.returncode == 1, r.stderr
    import json

    files = {os.path.basename(f["src"]): f for f in json.loads(r.stdout)["files"]}
    assert [n for n, f in files.items() if not f["ok"]] == ["crash_c.wav"]
    assert "crashed the worker" in files["crash_c.wav"]["error"]
    assert "FAILED: " + str(tmp_path / "in" / "crash_c.wav") + ": crashed the worker" in r.stderr
    assert "BrokenProcessPool" not in r.stderr
    assert _outputs(out) == sorted(n for n in names if n != "crash_c.wav")
    for n in _outputs(out):
        np.testing.assert_array_equal(read(out / n)[0], read(tmp_path / "in" / n)[0])
    assert leftovers(tmp_path) == []


LATE_SITE = '''
import os, resource, signal
from quietcast.bridge import offline
_process_file = offline.process_file
def process_file(chain, src, dst, **kw):  # ended (by another worker's crash) after its output was written
    r = _process_file(chain, src, dst, **kw)
    mark = dst + ".ended-once"
    if os.path.basename(src).startswith("late") and not os.path.exists(mark):
        open(mark, "w").close()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    return r
offline.process_file = process_file
'''


def test_a_file_whose_worker_ended_after_writing_it_is_not_failed_as_existing(tmp_path):
    """When a worker crashes the pool ends the others too: one may already
    have written its output (written aside, then renamed) without its
    result coming back. Its file runs again, and the output it wrote in
    this batch is no reason to refuse it (CI: 'a.wav' failed as existing
    beside the crashing file)."""
    import json
    import subprocess

    from conftest import quietcast_exe

    names = ["late_a.wav", "b.wav"]
    for i, name in enumerate(names):
        write(tmp_path / "in" / name, sig(1, 48_000, i), 48_000)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(LATE_SITE)
    out = tmp_path / "out"
    r = subprocess.run([quietcast_exe(), "process", "dry", str(tmp_path / "in"), "-o", str(out), "-j", "2", "--json"],
                       capture_output=True, text=True, env=_cli_env(site), timeout=300)
    assert r.returncode == 0, r.stderr
    files = {os.path.basename(f["src"]): f for f in json.loads(r.stdout)["files"]}
    assert all(f["ok"] for f in files.values()), files
    assert (out / "late_a.wav.ended-once").exists()  # its worker did end after writing it
    for n in names:
        np.testing.assert_array_equal(read(out / n)[0], read(tmp_path / "in" / n)[0])


# --------------------------------------------------------------------------
# where outputs go


def test_a_glob_keeps_the_folders_under_its_leading_folder(tmp_path, monkeypatch):
    """``'archive/**/*.wav'`` with two x.wav in different folders failed
    "would both be written" (a glob match kept only its file name). Now the
    path under the pattern's leading folder without wildcards is kept;
    ``'*.wav'`` still gives file names."""
    for rel in ("a/x.wav", "b/x.wav", "b/c/y.wav"):
        write(tmp_path / "archive" / rel, sig(1, 480), 48_000)
    out = tmp_path / "out"
    jobs = plan_jobs([str(tmp_path / "archive" / "**" / "*.wav")], str(out))
    j = os.path.join
    assert sorted(os.path.relpath(x.dst, out) for x in jobs) == [j("a", "x.wav"), j("b", "c", "y.wav"), j("b", "x.wav")]
    jobs = plan_jobs([str(tmp_path / "archive" / "*" / "x.wav")], str(out), fmt="flac")
    assert sorted(os.path.relpath(x.dst, out) for x in jobs) == [j("a", "x.flac"), j("b", "x.flac")]
    monkeypatch.chdir(tmp_path / "archive" / "b")
    assert [os.path.relpath(j.dst, out) for j in plan_jobs(["*.wav"], str(out))] == ["x.wav"]
    assert [os.path.relpath(j.dst, out) for j in plan_jobs(["c/*.wav"], str(out))] == ["y.wav"]
    s = process_files(Chain.load("dry"), plan_jobs([str(tmp_path / "archive" / "**" / "*.wav")], str(out)))
    assert not s.failed and (out / "a" / "x.wav").exists() and (out / "b" / "c" / "y.wav").exists()


def test_an_output_folder_inside_the_input_folder_is_not_an_input(tmp_path):
    """``rec/ -o rec/clean/`` then again with ``--skip-existing``: the
    walk of rec/ found the outputs in rec/clean/ and processed them again
    into rec/clean/clean/. The output folder is left out of the walk."""
    rec = tmp_path / "rec"
    write(rec / "a.wav", sig(1, 4800), 48_000)
    write(rec / "sub" / "b.wav", sig(1, 4800, 1), 48_000)
    out = rec / "clean"
    jobs = plan_jobs([str(rec)], str(out))
    assert sorted(os.path.relpath(j.dst, out) for j in jobs) == ["a.wav", os.path.join("sub", "b.wav")]
    assert not process_files(Chain.load("dry"), jobs).failed
    jobs = plan_jobs([str(rec)], str(out) + os.sep)  # (however the folder is written)
    assert sorted(os.path.relpath(j.src, rec) for j in jobs) == ["a.wav", os.path.join("sub", "b.wav")]
    s = process_files(Chain.load("dry"), jobs, skip_existing=True)
    assert len(s.skipped) == 2 and not s.failed and "0 of 2 file(s) processed, 2 skipped" in s.text()
    assert not (out / "clean").exists()
    # an input folder that is only under another input's output is still an input
    jobs = plan_jobs([str(out)], str(tmp_path / "again"))
    assert len(jobs) == 2
    # a glob over the same folder leaves the outputs out too (it made rec/clean/clean/ the same way)
    jobs = plan_jobs([str(rec / "**" / "*.wav")], str(out))
    assert sorted(os.path.relpath(j.src, rec) for j in jobs) == ["a.wav", os.path.join("sub", "b.wav")]


# --------------------------------------------------------------------------
# output names, write errors, rates


def test_an_output_file_name_that_cannot_be_written_is_refused(tmp_path):
    """``-o out/interview.clean.m4a`` (or ``.aif``) with one input silently
    made a folder of that name with a .wav in it. An audio extension that
    is not written is refused now, naming those that are; ``.aif`` is
    written (as AIFF); a trailing separator still means a folder."""
    write(tmp_path / "in" / "take.wav", sig(1, 4800), 48_000)
    write(tmp_path / "in" / "take2.wav", sig(1, 4800), 48_000)
    src = str(tmp_path / "in" / "take.wav")
    with pytest.raises(BridgeError, match=r"\.m4a files cannot be written; .*\.wav .*\.aiff \.aif"):
        plan_jobs([src], str(tmp_path / "out" / "interview.clean.m4a"))
    with pytest.raises(BridgeError, match="single file but there are 2 inputs"):
        plan_jobs([str(tmp_path / "in")], str(tmp_path / "out" / "all.m4a"))
    (job,) = plan_jobs([src], str(tmp_path / "out" / "take.m4a") + os.sep)
    assert job.dst == str(tmp_path / "out" / "take.m4a" / "take.wav")
    (job,) = plan_jobs([src], str(tmp_path / "out" / "take.aif"))
    assert job.dst == str(tmp_path / "out" / "take.aif")
    assert not process_files(Chain.load("dry"), [job]).failed
    assert (tmp_path / "out" / "take.aif").is_file() and (tmp_path / "out" / "take.aif").read_bytes()[8:12] == b"AIFF"
    np.testing.assert_array_equal(read(tmp_path / "out" / "take.aif")[0], read(src)[0])
    assert not os.path.exists(tmp_path / "out" / "interview.clean.m4a")


def test_an_empty_output_is_a_usage_error(tmp_path):
    """``-o ""`` wrote into the current folder."""
    import subprocess

    from conftest import quietcast_exe

    write(tmp_path / "a.wav", sig(1, 4800), 48_000)
    with pytest.raises(BridgeError, match="output is empty"):
        plan_jobs([str(tmp_path / "a.wav")], "")
    r = subprocess.run([quietcast_exe(), "process", "dry", "a.wav", "-o", ""], cwd=tmp_path, capture_output=True,
                       text=True, env=_cli_env())
    assert r.returncode == 2 and "quietcast: error: the output is empty" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.wav"]


def test_a_write_error_names_the_output_and_why(tmp_path):
    """A full disk gave "RuntimeError: Unable to write data to audio file."
    (pedalboard's words), naming no file and no reason. Now: the output
    file, and why the system refused the write. Here the file size limit
    (RLIMIT_FSIZE) stops the write; /dev/full stands for a full disk."""
    import resource
    import subprocess

    from conftest import quietcast_exe
    from quietcast.bridge.offline import write_problem

    assert write_problem("/dev/full", RuntimeError("Unable to write data to audio file.")) == "No space left on device"
    write(tmp_path / "in.wav", sig(2, 48_000 * 4), 48_000)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out" / "o.wav"
    r = subprocess.run([quietcast_exe(), "process", "dry", str(tmp_path / "in.wav"), "-o", str(out)],
                       capture_output=True, text=True, env=_cli_env(), preexec_fn=small_files)
    assert r.returncode == 1, r.stderr
    assert f"{out}: cannot be written (File too large); output not written" in r.stderr
    assert "RuntimeError" not in r.stderr and "Unable to write" not in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_file_whose_rate_a_chain_cannot_run_at_says_so(tmp_path):
    """A 400 kHz file failed "ValueError: sample_rate 400000 is out of
    range", as if an option were wrong. Now it is the file's rate, and
    --sample-rate is suggested (and works)."""
    import wave

    with wave.open(str(tmp_path / "hi.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(400_000), w.writeframes(bytes(2 * 40_000))
    r = process_file(Chain.load("dry"), str(tmp_path / "hi.wav"), str(tmp_path / "o.wav"))
    assert not r.ok and r.error == ("its sample rate, 400000 Hz, is out of the range a chain runs at "
                                    "[1000, 384000] Hz; resample it with --sample-rate HZ")
    r = process_file(Chain.load("dry"), str(tmp_path / "hi.wav"), str(tmp_path / "o.wav"), sample_rate=48_000)
    assert r.ok, r.error
