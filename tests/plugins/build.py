"""Build quietcast's test VST3 plugin ("QC Test Gain", tests/plugins/qcgain/; also
"QC Test Lookahead", the same with a continuous ``lookahead_ms``).

    from plugins.build import build_qcgain      # with tests/ on sys.path
    bundle = build_qcgain(tmp_dir)               # -> tmp_dir/qcgain.vst3
    plugin = pedalboard.load_plugin(str(bundle))

Needs Debian's ``dpf-source`` (DISTRHO Plugin Framework, /usr/share/dpf), ``make``
and ``g++``. Only the VST3 target is built (no JACK/LV2/UI), in about 2 s. Nothing
is written outside ``build_dir``, so the repository may be read-only. The bundle
is reused while it is newer than every source file; a file lock makes concurrent
builds into one ``build_dir`` (e.g. pytest-xdist workers) safe.

Set ``QC_DPF_PATH`` to use a DPF checkout other than /usr/share/dpf.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import subprocess

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "qcgain"
DEFAULT_DPF_PATH = pathlib.Path("/usr/share/dpf")


class ToolchainMissing(RuntimeError):
    """dpf-source, make or the C++ compiler is not installed (tests may skip on this)."""


def _dpf_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("QC_DPF_PATH", DEFAULT_DPF_PATH))


def _check_toolchain(dpf: pathlib.Path) -> None:
    missing = []
    if not (dpf / "Makefile.plugins.mk").is_file():
        missing.append(
            f"DPF sources ({dpf}/Makefile.plugins.mk): apt-get install dpf-source,"
            " or point QC_DPF_PATH at a DPF checkout"
        )
    if shutil.which("make") is None:
        missing.append("make: apt-get install make")
    cxx = os.environ.get("CXX", "g++").split()[0]
    if shutil.which(cxx) is None:
        missing.append(f"C++ compiler {cxx!r}: apt-get install g++")
    if missing:
        raise ToolchainMissing(
            "cannot build the QC Test Gain VST3 plugin; missing: " + "; ".join(missing)
        )


def _newest_source_mtime() -> float:
    return max(p.stat().st_mtime for p in SOURCE_DIR.iterdir() if p.is_file())


def build_qcgain(build_dir: pathlib.Path, channels: int = 2, lookahead: bool = False) -> pathlib.Path:
    """Compile QC Test Gain into ``build_dir`` and return the ``.vst3`` bundle path.

    ``channels=2`` (default) gives "QC Test Gain" (qcgain.vst3, 2 in / 2 out);
    ``channels=1`` gives "QC Test Gain Mono" (qcgain_mono.vst3, 1 in / 1 out).
    DPF's VST3 wrapper accepts only the declared bus layout, hence two builds.
    ``lookahead=True`` (stereo only) gives "QC Test Lookahead" (qcgain_la.vst3):
    one more, continuous, parameter ``lookahead_ms`` [0, 50] that adds
    round(lookahead_ms * rate / 1000) samples to the delay and the latency.
    Raises ToolchainMissing (a RuntimeError) naming what is missing when the
    toolchain is absent, or RuntimeError with make's output when the build fails.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels!r}")
    if lookahead and channels != 2:
        raise ValueError("the look-ahead variant is stereo only")
    name = "qcgain_la" if lookahead else "qcgain" if channels == 2 else "qcgain_mono"
    build_dir = pathlib.Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_dir / f"{name}.vst3"
    binary = bundle / "Contents" / f"{os.uname().machine}-linux" / f"{name}.so"

    with open(build_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file() and binary.stat().st_mtime > _newest_source_mtime():
            return bundle
        dpf = _dpf_path()
        _check_toolchain(dpf)
        # Stale or half-built: start clean (make does not track Makefile edits).
        obj_dir = build_dir / f"obj-{name}"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(obj_dir, ignore_errors=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        cmd = [
            "make", "-C", str(SOURCE_DIR), "-j2", "vst3",
            f"CHANNELS={channels}",
            f"LOOKAHEAD={int(lookahead)}",
            f"DPF_PATH={dpf}",
            f"DPF_TARGET_DIR={build_dir}",
            f"DPF_BUILD_DIR={obj_dir}",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not binary.is_file():
            raise RuntimeError(
                f"building {name}.vst3 failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return bundle
