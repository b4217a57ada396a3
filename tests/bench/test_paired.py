"""bench/paired.py: per-mixture differences between the rows of one
quality run, with their standard errors; a wrong row is named."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _paired():
    spec = importlib.util.spec_from_file_location("bench_paired", ROOT / "bench" / "paired.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_differences_and_errors(tmp_path, capsys):
    P = _paired()
    base = [{"si_sdr": 10.0 + i, "pesq_wb": 2.0} for i in range(4)]
    arm = [{"si_sdr": 10.5 + i + (0.1 if i % 2 else -0.1), "pesq_wb": 2.0 + 0.01 * i} for i in range(4)]
    run = {"systems": {"a": {"per_mixture": base}, "b": {"per_mixture": arm},
                       "clean": {"per_mixture": base}}}
    res = P.paired(run, "a")
    assert list(res) == ["b"]
    assert res["b"]["si_sdr"]["mean"] == pytest.approx(0.5)
    # differences 0.4, 0.6, 0.4, 0.6: sd 0.11547, s.e. 0.057735
    assert res["b"]["si_sdr"]["se"] == pytest.approx(0.057735, rel=1e-4)
    assert res["b"]["pesq_wb"]["mean"] == pytest.approx(0.015) and "estoi" not in res["b"]
    f = tmp_path / "run.json"
    f.write_text(json.dumps(run))
    assert P.main([str(f), "--base", "a", "--out", str(tmp_path / "p.json")]) == 0
    assert "+0.500 +- 0.058" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["paired"]["b"]["si_sdr"]["n"] == 4
    with pytest.raises(SystemExit, match="'nope': not a row"):
        P.paired(run, "nope")
    with pytest.raises(SystemExit, match="'x' is not a row"):
        P.paired(run, "a", ["x"])
