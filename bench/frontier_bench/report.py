"""The report of a sweep: a table (policy x load), the targets verdict, JSON, and the frontier plots.

A *row* is one run — one policy at one offered load on one workload — carrying the summary from
`stats.summarize`. The *frontier* plot draws, per policy, TTFT p90 against output tokens/s as the load rises:
a policy whose curve lies lower and further right serves more tokens at a lower latency. Goodput and prefix
hit rate against offered load are drawn beside it.

Targets compare the `frontier` profile with each baseline *at matched offered load* (the same schedule):
TTFT p90 reduction = 1 - frontier / baseline, and the goodput ratio frontier / baseline; peak goodput is the
best over the ladder.

Rows also name their *arrival shape* (`poisson`, or `gamma-cv3` for bursty arrivals) and the *Envoy mode* the
picker was called in (`cheap`, or `gie`: GIE's full-duplex configuration; `none` where no picker is called:
Envoy's own load balancing, sglang-router, virtual time). Comparisons are made within one workload and
arrival shape, the subject in one Envoy mode against every policy run in that mode or calling no picker.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from frontier_bench import stats, workloads

# The targets for the `frontier` profile per baseline (against the oracle: its prefix hit rate).
TARGETS: Final = {
    "round-robin": {"ttft_p90_reduction": 0.35, "peak_goodput_ratio": 2.0},
    "gie-default": {"ttft_p90_reduction": 0.20, "peak_goodput_ratio": 1.10},
    "sglang-cache-aware": {"ttft_p90_reduction": 0.20, "peak_goodput_ratio": 1.10},
    "oracle": {"hit_rate_fraction": 0.90},
}
SUBJECT: Final = "frontier"


@dataclasses.dataclass(slots=True, kw_only=True)
class Row:
    """One run: `policy` at offered load `qps` (model-time requests/s) on `workload`, arrival draw (or
    real-time round) `seed`, arrival shape `arrival`, the picker called in Envoy mode `envoy_mode`."""

    policy: str
    workload: str
    qps: float
    summary: dict[str, Any]
    seed: int = 0
    arrival: str = "poisson"
    envoy_mode: str = "none"
    load_average_1m: float | None = None  # the machine's, as the run ended (real-time runs)


NO_PICKER: Final = "none"  # the `envoy_mode` of a run whose front door calls no picker
Cell = tuple[str, str, str, str, float]  # workload, arrival, envoy mode, policy, load


def _fmt(value: Any, *, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}g}"
    return str(value)


def cell(row: Row) -> Cell:
    return (row.workload, row.arrival, row.envoy_mode, row.policy, row.qps)


def cells(rows: Sequence[Row]) -> dict[Cell, list[Row]]:
    """The runs of each (workload, arrival shape, Envoy mode, policy, load), one per arrival draw (or
    round), in sorted order."""
    out: dict[Cell, list[Row]] = {}
    for row in sorted(rows, key=lambda r: (*cell(r), r.seed)):
        out.setdefault(cell(row), []).append(row)
    return out


Summary = dict[str, Any]
Getter = Callable[[Summary], float | None]


def _medians(draws_per_load: Sequence[Sequence[Row]], get: Getter) -> list[float]:
    """Per load, the median of `get` over the draws (NaN where no draw has it: a gap in the plot)."""
    out = []
    for draws in draws_per_load:
        spread = _spread_of([get(r.summary) for r in draws])
        out.append(spread.median if spread else float("nan"))
    return out


def _spread_of(values: Sequence[float | None]) -> stats.Spread | None:
    present = [v for v in values if v is not None]
    return stats.spread(present) if present else None


def _cell(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
    """The median, and the min-max range when there are several draws."""
    spread = _spread_of(values)
    if spread is None:
        return "-"
    if spread.n == 1:
        return fmt(spread.median)
    return f"{fmt(spread.median)} ({fmt(spread.low)}-{fmt(spread.high)})"


def _ms(value: float) -> str:
    return _fmt(value, scale=1000)


def _columns() -> list[tuple[str, Getter, Callable[[float], str]]]:
    return [
        ("TTFT p50 ms", lambda s: s["ttft_s"]["p50"], _ms),
        ("TTFT p90 ms", lambda s: s["ttft_s"]["p90"], _ms),
        ("ITL p50 ms", lambda s: s["itl_s"]["p50"], _ms),
        ("TPOT p50 ms", lambda s: s["tpot_s"]["p50"], _ms),
        ("output tok/s", lambda s: s["output_tokens_per_s"], lambda v: f"{v:.0f}"),
        ("goodput req/s", lambda s: s["goodput_rps"], lambda v: f"{v:.3g}"),
        ("good %", lambda s: s["good_fraction"], lambda v: f"{100 * v:.0f}"),
        ("hit rate", lambda s: s["prefix_hit_rate"], lambda v: _fmt(v, digits=2)),
        ("imbalance", lambda s: s["imbalance"], lambda v: _fmt(v, digits=3)),
        ("failed", lambda s: s["failed"], lambda v: f"{v:g}"),
    ]


def table(rows: Sequence[Row]) -> str:
    """The markdown table: one line per (workload, policy, load), latencies in milliseconds of model time;
    over several arrival draws each figure is the median with the min-max range in brackets."""
    columns = _columns()
    header = (
        "| workload | arrivals | Envoy mode | policy | QPS | "
        + " | ".join(c[0] for c in columns)
        + " | draws |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (workload, arrival, mode, policy, qps), runs in cells(rows).items():
        figures = [_cell([get(r.summary) for r in runs], fmt) for _, get, fmt in columns]
        lines.append(
            f"| {workload} | {arrival} | {mode} | {policy} | {qps:.4g} | "
            + " | ".join(figures)
            + f" | {len(runs)} |"
        )
    return "\n".join(lines)


def verdict(mine: stats.Spread | None, theirs: stats.Spread | None, *, lower_is_better: bool) -> str:
    """`win`, `loss` or `tie` for the subject: a win or a loss only where the two ranges do not overlap."""
    if mine is None or theirs is None or mine.overlaps(theirs):
        return "tie"
    better = mine.high < theirs.low if lower_is_better else mine.low > theirs.high
    return "win" if better else "loss"


def _per_seed_ratio(
    mine: Sequence[Row],
    theirs: Sequence[Row],
    ratio: Callable[[dict[str, Any], dict[str, Any]], float | None],
) -> stats.Spread | None:
    by_seed = {r.seed: r for r in theirs}
    return _spread_of([ratio(r.summary, by_seed[r.seed].summary) for r in mine if r.seed in by_seed])


def _reduction(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    ta, tb = a["ttft_s"]["p90"], b["ttft_s"]["p90"]
    return (1 - ta / tb) if ta is not None and tb else None


def _goodput_ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return (a["goodput_rps"] / b["goodput_rps"]) if b["goodput_rps"] else None


def _hit_ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    ha, hb = a["prefix_hit_rate"], b["prefix_hit_rate"]
    return (ha / hb) if ha is not None and hb else None


def _median(spread: stats.Spread | None) -> float | None:
    return spread.median if spread else None


def _range(spread: stats.Spread | None) -> list[float] | None:
    return [spread.low, spread.high] if spread else None


def _peaks(rows: Sequence[Row]) -> dict[int, float]:
    """Per arrival draw, the best goodput over the loads run."""
    out: dict[int, float] = {}
    for r in rows:
        out[r.seed] = max(out.get(r.seed, 0.0), r.summary["goodput_rps"])
    return out


def comparisons(rows: Sequence[Row], *, subject: str = SUBJECT) -> list[dict[str, Any]]:
    """The subject policy against every other policy, per workload: matched-load ratios and peak goodput.

    Ratios are taken per arrival draw (the same arrivals on both sides) and reported as their median and
    range. `verdict` says win, loss or tie from the two policies' ranges over the draws (TTFT p90 at a load;
    peak goodput): a win only where the ranges do not overlap. `met` counts the loads of the ladder at which
    a per-load target holds ("2/4"), and says whether the peak goodput target holds (median ratio at target
    and a win); against the oracle the target is the prefix hit rate (a fraction of the oracle's).
    """
    out: list[dict[str, Any]] = []
    for workload, arrival, mode in sorted({cell(r)[:3] for r in rows if r.policy == subject}):
        present = [
            r
            for r in rows
            if (r.workload, r.arrival) == (workload, arrival) and r.envoy_mode in (mode, NO_PICKER)
        ]
        grouped = {(p, q): runs for (_, _, _, p, q), runs in cells(present).items()}
        mine = {q: runs for (p, q), runs in grouped.items() if p == subject}
        for other in sorted({r.policy for r in present} - {subject}):
            theirs = {q: runs for (p, q), runs in grouped.items() if p == other}
            matched = []
            for qps in sorted(set(mine) & set(theirs)):
                a, b = mine[qps], theirs[qps]
                reduction = _per_seed_ratio(a, b, _reduction)
                goodput = _per_seed_ratio(a, b, _goodput_ratio)
                hits = _per_seed_ratio(a, b, _hit_ratio)
                ttft_a = _spread_of([r.summary["ttft_s"]["p90"] for r in a])
                ttft_b = _spread_of([r.summary["ttft_s"]["p90"] for r in b])
                matched.append(
                    {
                        "qps": qps,
                        "ttft_p90_reduction": _median(reduction),
                        "ttft_p90_reduction_range": _range(reduction),
                        "goodput_ratio": _median(goodput),
                        "hit_rate_ratio": _median(hits),
                        "verdict": verdict(ttft_a, ttft_b, lower_is_better=True),
                    }
                )
            peaks_a = _peaks([r for runs in mine.values() for r in runs])
            peaks_b = _peaks([r for runs in theirs.values() for r in runs])
            seeds = sorted(set(peaks_a) & set(peaks_b))
            ratios = _spread_of([peaks_a[s] / peaks_b[s] if peaks_b[s] else None for s in seeds])
            peak_a, peak_b = stats.spread(list(peaks_a.values())), stats.spread(list(peaks_b.values()))
            entry: dict[str, Any] = {
                "workload": workload,
                "arrival": arrival,
                "envoy_mode": mode,
                "baseline": other,
                "matched": matched,
                "peak_goodput_rps": {subject: peak_a.median, other: peak_b.median},
                "peak_goodput_range": {subject: _range(peak_a), other: _range(peak_b)},
                "peak_goodput_ratio": _median(ratios),
                "peak_verdict": verdict(peak_a, peak_b, lower_is_better=False),
            }
            target = TARGETS.get(other)
            if target:
                entry["target"] = target
                entry["met"] = _met(target, matched, entry["peak_goodput_ratio"], entry["peak_verdict"])
            out.append(entry)
    return out


def _met(
    target: dict[str, float], matched: Sequence[dict[str, Any]], peak_ratio: float | None, peak_verdict: str
) -> dict[str, str]:
    met: dict[str, str] = {}
    for key, field in (("ttft_p90_reduction", "ttft_p90_reduction"), ("hit_rate_fraction", "hit_rate_ratio")):
        if key in target:
            values = [m[field] for m in matched if m[field] is not None]
            held = sum(1 for v in values if v >= target[key])
            met[key] = f"{held}/{len(matched)} loads"
    if "peak_goodput_ratio" in target:
        reached = peak_ratio is not None and peak_ratio >= target["peak_goodput_ratio"]
        # a ratio of 1.0 or less is no win to require; above it, the ranges must not overlap
        clear = peak_verdict == "win" or target["peak_goodput_ratio"] <= 1.0
        met["peak_goodput_ratio"] = "yes" if reached and clear else "NO"
    return met


def comparisons_markdown(entries: Sequence[dict[str, Any]], *, subject: str = SUBJECT) -> str:
    """The comparisons table: per load the median TTFT p90 reduction over the draws, its range, and the
    verdict from the two policies' ranges."""
    if not entries:
        return f"(no `{subject}` runs to compare)"
    lines = [
        f"| workload | arrivals | Envoy mode | {subject} vs "
        f"| TTFT p90 reduction per QPS (+: {subject} lower; range; verdict) "
        "| goodput ratio per QPS | hit rate ratio per QPS | peak goodput ratio (verdict) | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        reductions = ", ".join(
            f"{m['qps']:g}: {_pct(m['ttft_p90_reduction'])}{_pct_range(m.get('ttft_p90_reduction_range'))}"
            f" {m.get('verdict', '')}".rstrip()
            for m in e["matched"]
        )
        ratios = ", ".join(f"{m['qps']:g}: {_fmt(m['goodput_ratio'], digits=3)}" for m in e["matched"])
        hits = ", ".join(f"{m['qps']:g}: {_fmt(m['hit_rate_ratio'], digits=3)}" for m in e["matched"])
        target = e.get("target") or {}
        target_parts = []
        if "ttft_p90_reduction" in target:
            target_parts.append(f"TTFT p90 -{target['ttft_p90_reduction']:.0%}")
        if "peak_goodput_ratio" in target:
            target_parts.append(f"peak goodput x{target['peak_goodput_ratio']:g}")
        if "hit_rate_fraction" in target:
            target_parts.append(f"hit rate >= {target['hit_rate_fraction']:.0%} of it")
        met = e.get("met") or {}
        met_text = ", ".join(f"{k.split('_')[0]}: {v}" for k, v in met.items()) or "-"
        peak = f"{_fmt(e['peak_goodput_ratio'], digits=3)} ({e.get('peak_verdict', '-')})"
        lines.append(
            f"| {e['workload']} | {e.get('arrival', '-')} | {e.get('envoy_mode', '-')} | {e['baseline']} "
            f"| {reductions} | {ratios} | {hits} "
            f"| {peak} | {', '.join(target_parts) or '-'} | {met_text} |"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def _pct_range(bounds: Sequence[float] | None) -> str:
    if not bounds or bounds[0] == bounds[1]:
        return ""
    return f" [{bounds[0]:+.0%}, {bounds[1]:+.0%}]"


def _num(value: float) -> str:
    return f"{value:.3g}"


def knees_markdown(knees: Sequence[dict[str, Any]], *, subject: str = SUBJECT) -> str:
    """Per policy, the knee search over the draws: peak goodput and the knee's load (median and range),
    how many draws saturated, and the verdict on the peak against the subject's (ranges must not overlap)."""
    by_policy: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for k in knees:
        by_policy.setdefault((k["workload"], k["policy"]), []).append(k)
    lines = [
        f"| workload | policy | peak goodput req/s | at load | knee load req/s | first failed | saturated "
        f"| {subject}'s peak against it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (workload, policy), found in sorted(by_policy.items()):
        peak = stats.spread([k["peak_goodput_rps"] for k in found])
        mine = [k["peak_goodput_rps"] for k in by_policy.get((workload, subject), [])]
        against = verdict(stats.spread(mine), peak, lower_is_better=False) if mine else "-"
        lines.append(
            f"| {workload} | {policy} | {_cell([k['peak_goodput_rps'] for k in found], _num)} "
            f"| {_cell([k['peak_qps'] for k in found], _num)} "
            f"| {_cell([k['knee_qps'] for k in found], _num)} "
            f"| {_cell([k['first_failed_qps'] for k in found], _num)} "
            f"| {sum(k['saturated'] for k in found)}/{len(found)} | {against if policy != subject else ''} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Row], out_dir: Path, *, prefix: str = "") -> list[Path]:
    """Write the frontier, goodput and hit-rate plots (PNG) per workload; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figures = sorted({(r.workload, r.arrival) for r in rows})
    for workload, arrival in figures:
        mine = [r for r in rows if (r.workload, r.arrival) == (workload, arrival)]
        lines = sorted({(r.policy, r.envoy_mode) for r in mine})
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        for policy, mode in lines:
            # one point per load: the median over the arrival draws
            runs = [v for (_, _, m, p, _), v in cells(mine).items() if (p, m) == (policy, mode)]
            label = policy if mode == NO_PICKER else f"{policy} ({mode} Envoy)"
            style = {"marker": "o", "linewidth": 2.5 if policy == SUBJECT else 1.5, "label": label}

            def median(
                get: Callable[[dict[str, Any]], float | None], runs: list[list[Row]] = runs
            ) -> list[float]:
                return [
                    _median(_spread_of([get(r.summary) for r in draws])) or float("nan") for draws in runs
                ]

            qps = [draws[0].qps for draws in runs]
            ttft = _medians(runs, lambda s: s["ttft_s"]["p90"])
            axes[0].plot(_medians(runs, lambda s: s["output_tokens_per_s"]), ttft, **style)
            axes[1].plot(qps, _medians(runs, lambda s: s["goodput_rps"]), **style)
            axes[2].plot(qps, _medians(runs, lambda s: s["prefix_hit_rate"]), **style)
        axes[0].set(
            xlabel="output tokens/s",
            ylabel="TTFT p90 (s)",
            title=f"frontier: {workload}"
            + ("" if arrival == workloads.POISSON else f", {arrival}")
            + " (lower right is better)",
        )
        axes[0].set_yscale("log")
        axes[1].set(
            xlabel="offered load (req/s)", ylabel="goodput (req/s within SLO)", title="goodput vs load"
        )
        axes[2].set(xlabel="offered load (req/s)", ylabel="prefix hit rate", title="prefix hit rate vs load")
        axes[2].set_ylim(0, 1.02)
        for axis in axes:
            axis.grid(True, alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        # labels such as "shared-prefix@6 seed 1" name files without spaces
        slug = workload.replace(" ", "-") + ("" if arrival == workloads.POISSON else f"-{arrival}")
        path = out_dir / (f"{prefix}{slug}.png" if len(figures) > 1 else f"{prefix.rstrip('-')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if len(figures) > 1:
        # A file rewritten as a run goes on: the one-workload plot of its first write is stale now.
        (out_dir / f"{prefix.rstrip('-')}.png").unlink(missing_ok=True)
    return written


def write(
    rows: Sequence[Row], out_dir: Path, *, name: str, command: str, meta: dict[str, Any]
) -> dict[str, Path]:
    """Write `<name>.json` (raw), `<name>.md` (tables with the exact command) and `<name>.png` (plots; one
    `<name>-<workload>.png` per workload when there are several)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = comparisons(rows)
    data = {
        "command": command,
        **meta,
        "runs": [dataclasses.asdict(r) for r in rows],
        "comparisons": entries,
    }
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    pngs = plot(rows, out_dir, prefix=f"{name}-")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown(rows, command=command, meta=meta, entries=entries, pngs=pngs))
    return {"json": json_path, "md": md_path, **{p.stem: p for p in pngs}}


def markdown(
    rows: Sequence[Row],
    *,
    command: str,
    meta: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    pngs: Sequence[Path] = (),
) -> str:
    notes = meta.get("notes", [])
    parts = [
        f"# {meta.get('title', 'Benchmark results')}",
        "",
        f"Command: `{command}`",
        "",
        *(f"- {note}" for note in notes),
        "",
        "Latencies and rates are in model time (the fleet's clock), not wall time.",
        "",
        table(rows),
        "",
        f"## `{SUBJECT}` against the others (matched offered load)",
        "",
        comparisons_markdown(entries),
        "",
        *(
            [
                "## Peak goodput by search (per arrival draw; median and range)",
                "",
                knees_markdown(meta["knees"]),
                "",
            ]
            if meta.get("knees")
            else []
        ),
        *(f"![{p.stem}]({p.name})" for p in pngs),
        "",
    ]
    return "\n".join(parts)


def rewrite(json_path: Path) -> dict[str, Path]:
    """Re-render a results set (markdown, plots, comparisons) from its JSON, keeping its command and meta."""
    data = json.loads(json_path.read_text())
    rows = [Row(**run) for run in data.pop("runs")]
    data.pop("comparisons", None)
    command = data.pop("command")
    return write(rows, json_path.parent, name=json_path.stem, command=command, meta=data)
