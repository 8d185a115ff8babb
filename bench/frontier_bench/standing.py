"""The standing: `frontier` against every other policy, per workload, read from committed results files.

For a sweep's results (`report.write`: rows and comparisons) one line per (file, workload, arrival shape,
Envoy mode, other policy): the verdict on TTFT p90 at each matched load and on peak goodput (the best over
the loads run, or the knee search's peak), with the median ratio and the number of arrival draws (or
real-time rounds) behind it. For a `gie_mode` results file one line per (load, policy) against the real GIE
EPP: TTFT p90 and goodput verdicts from the ranges over rounds, and the per-round ratios.

A verdict is `win` or `loss` only where the two ranges do not overlap (`report.verdict`); from a single draw
a range is one value, so a single draw's verdict is marked as such: it states no spread and is no claim.

    python -m frontier_bench.standing bench/results/*.json > standing.md
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frontier_bench import report, stats


def _draws(data: dict[str, Any], entry: dict[str, Any]) -> int:
    """How many arrival draws (or rounds) the subject ran in the entry's setting."""
    seeds = {
        run.get("seed", 0)
        for run in data["runs"]
        if run["policy"] == report.SUBJECT
        and run["workload"] == entry["workload"]
        and run.get("arrival", "poisson") == entry.get("arrival", "poisson")
        and run.get("envoy_mode", report.NO_PICKER) == entry.get("envoy_mode", report.NO_PICKER)
    }
    return len(seeds)


def _signed(value: float | None, *, above: float) -> str:
    """The verdict of a file written before verdicts were recorded (one draw): the sign of the difference."""
    if value is None or value == above:
        return "tie"
    return "win" if value > above else "loss"


def _mark(verdict: str, draws: int) -> str:
    return verdict if draws > 1 or verdict == "tie" else f"{verdict} (1 draw)"


def sweep_lines(path: Path, data: dict[str, Any]) -> list[str]:
    """One markdown line per comparison of a sweep's results file."""
    lines = []
    for entry in data.get("comparisons", []):
        draws = _draws(data, entry)
        matched = ", ".join(
            f"{m['qps']:g}: {_mark(m.get('verdict') or _signed(m['ttft_p90_reduction'], above=0.0), draws)}"
            + (f" ({m['ttft_p90_reduction']:+.0%})" if m["ttft_p90_reduction"] is not None else "")
            for m in entry["matched"]
        )
        peaks = entry["peak_goodput_rps"]
        ratio = entry["peak_goodput_ratio"]
        peak = (
            f"{_mark(entry.get('peak_verdict') or _signed(ratio, above=1.0), draws)}:"
            f" {peaks[report.SUBJECT]:.3g} vs"
            f" {peaks[entry['baseline']]:.3g} req/s" + (f" ({ratio:.2f}x)" if ratio is not None else "")
        )
        lines.append(
            f"| {path.stem} | {entry['workload']} | {entry.get('arrival', 'poisson')} "
            f"| {entry.get('envoy_mode', report.NO_PICKER)} | {entry['baseline']} | {draws} | {matched} "
            f"| {peak} |"
        )
    return lines


def _spread(by_round: dict[int, dict[str, Any]], rounds: Sequence[int], field: str) -> stats.Spread | None:
    values = [by_round[r][field] for r in rounds if by_round[r][field] is not None]
    return stats.spread(values) if values else None


def gie_mode_lines(path: Path, data: dict[str, Any]) -> list[str]:
    """One markdown line per (load, policy) of a gie_mode results file, against the real EPP."""
    rows = data["rows"]
    epp = next(row["policy"] for row in rows if row["policy"].startswith("gie-epp"))
    lines = []
    for qps in sorted({row["offered_rps"] for row in rows}):
        at = [row for row in rows if row["offered_rps"] == qps]
        theirs = {row["round"]: row for row in at if row["policy"] == epp}
        for policy in sorted({row["policy"] for row in at} - {epp}):
            mine = {row["round"]: row for row in at if row["policy"] == policy}
            rounds = sorted(set(mine) & set(theirs))
            ttft = report.verdict(
                _spread(mine, rounds, "ttft_p90_s"),
                _spread(theirs, rounds, "ttft_p90_s"),
                lower_is_better=True,
            )
            goodput = report.verdict(
                _spread(mine, rounds, "goodput_rps"),
                _spread(theirs, rounds, "goodput_rps"),
                lower_is_better=False,
            )
            ratios = ", ".join(
                f"{mine[r]['ttft_p90_s'] / theirs[r]['ttft_p90_s']:.2f}x"
                for r in rounds
                if mine[r]["ttft_p90_s"] is not None and theirs[r]["ttft_p90_s"]
            )
            lines.append(
                f"| {path.stem} | {rows[0].get('arrival', 'poisson')} | {rows[0]['envoy_mode']} | {qps:g} "
                f"| {policy} | {len(rounds)} | {_mark(ttft, len(rounds))} ({ratios}) "
                f"| {_mark(goodput, len(rounds))} |"
            )
    return lines


def markdown(paths: Sequence[Path]) -> str:
    """The standing tables of every results file in `paths` that holds sweeps or a gie-mode comparison."""
    sweeps, epp = [], []
    for path in sorted(paths):
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            continue
        if "comparisons" in data and "runs" in data:
            sweeps += sweep_lines(path, data)
        elif isinstance(data.get("rows"), list) and any(
            str(r.get("policy", "")).startswith("gie-epp") for r in data["rows"]
        ):
            epp += gie_mode_lines(path, data)
    return "\n".join(
        [
            f"| file | workload | arrivals | Envoy mode | {report.SUBJECT} vs | draws "
            "| TTFT p90 at matched load (verdict, reduction) | peak goodput (verdict, ratio) |",
            "|---|---|---|---|---|---|---|---|",
            *sweeps,
            "",
            "| file | arrivals | Envoy mode | load req/s | policy | rounds "
            "| TTFT p90 against the real EPP (verdict; per-round ratio) | goodput against the EPP |",
            "|---|---|---|---|---|---|---|---|",
            *epp,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m frontier_bench.standing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", nargs="+", type=Path, help="results JSON files")
    args = parser.parse_args(argv)
    print(markdown(args.results))


if __name__ == "__main__":
    main()
