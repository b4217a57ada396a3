"""Paired differences between the rows of one ``bench/quality.py`` run.

Every row of a quality run scores the same mixtures, so two systems are
best compared mixture by mixture: this prints, for each row against a base
row, the mean difference per metric with its standard error (mean +- s.e.
over the mixtures), and writes them as JSON.

    python bench/paired.py bench/out/quality.json --base quietcast-neural
    python bench/paired.py run.json --base quietcast-neural --rows 'quietcast-neural[arm]' --out paired.json

A difference beyond about two standard errors is unlikely to be noise of
the mixture draw (it says nothing about other voices or noises)."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

METRICS = ("si_sdr", "pesq_wb", "estoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "onset_db")


def paired(run: dict, base: str, rows=None) -> dict:
    """``{row: {metric: {"mean": d, "se": s, "n": n}}}``: per-mixture
    differences ``row - base`` (mixtures where either is missing skipped)."""
    systems = run["systems"]
    if base not in systems:
        raise SystemExit(f"--base {base!r}: not a row of this run (rows: {', '.join(systems)})")
    rows = rows or [r for r in systems if r not in (base, "clean") and systems[r].get("per_mixture")]
    for r in rows:
        if r not in systems:
            raise SystemExit(f"--rows: {r!r} is not a row of this run (rows: {', '.join(systems)})")
    b = systems[base]["per_mixture"]
    out = {}
    for r in rows:
        pm = systems[r]["per_mixture"]
        if len(pm) != len(b):
            raise SystemExit(f"{r!r} has {len(pm)} mixtures and {base!r} {len(b)}: not the same run")
        out[r] = {}
        for m in METRICS:
            d = [x[m] - y[m] for x, y in zip(pm, b)
                 if isinstance(x, dict) and isinstance(y, dict) and _num(x.get(m)) and _num(y.get(m))]
            if len(d) < 2:
                continue
            mu = sum(d) / len(d)
            sd = math.sqrt(sum((v - mu) ** 2 for v in d) / (len(d) - 1))
            out[r][m] = {"mean": mu, "se": sd / math.sqrt(len(d)), "n": len(d)}
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the JSON a bench/quality.py run wrote")
    p.add_argument("--base", default="quietcast-neural", help="the row the others are compared with")
    p.add_argument("--rows", default="", help="comma-separated rows (default: every row with per-mixture scores)")
    p.add_argument("--out", default=None, help="JSON path for the differences (default: none)")
    a = p.parse_args(argv)
    try:
        run = json.loads(pathlib.Path(a.run).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{a.run}: not a readable bench/quality.py JSON ({e})")
    res = paired(run, a.base, [r for r in a.rows.split(",") if r])
    print(f"paired against {a.base} ({len(run['systems'][a.base]['per_mixture'])} mixtures): mean +- s.e.")
    print("| row | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for r, ms in res.items():
        cells = [f"{ms[m]['mean']:+.3f} +- {ms[m]['se']:.3f}" if m in ms else "-" for m in METRICS]
        print(f"| {r} | " + " | ".join(cells) + " |")
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps({"base": a.base, "run": a.run, "paired": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
