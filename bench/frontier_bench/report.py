"""The report of a sweep: a table (policy x load), the targets verdict, JSON, and the frontier plots.

A *row* is one run — one policy at one offered load on one workload — carrying the summary from
`stats.summarize`. The *frontier* plot draws, per policy, TTFT p90 against output tokens/s as the load rises:
a policy whose curve lies lower and further right serves more tokens at a lower latency. Goodput and prefix
hit rate against offered load are drawn beside it.

Targets compare the `frontier` profile with each baseline *at matched offered load* (the same schedule):
TTFT p90 reduction = 1 - frontier / baseline, and the goodput ratio frontier / baseline; peak goodput is the
best over the ladder.
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

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
    """One run: `policy` at offered load `qps` (model-time requests/s) on `workload`."""

    policy: str
    workload: str
    qps: float
    summary: dict[str, Any]


def _fmt(value: Any, *, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}g}"
    return str(value)


def table(rows: Sequence[Row]) -> str:
    """The markdown table: one line per run, latencies in milliseconds of model time."""
    header = (
        "| workload | policy | QPS | TTFT p50 ms | TTFT p90 ms | ITL p50 ms | TPOT p50 ms | output tok/s "
        "| goodput req/s | good % | hit rate | imbalance | failed |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        s = row.summary
        lines.append(
            "| "
            + " | ".join(
                [
                    row.workload,
                    row.policy,
                    f"{row.qps:g}",
                    _fmt(s["ttft_s"]["p50"], scale=1000),
                    _fmt(s["ttft_s"]["p90"], scale=1000),
                    _fmt(s["itl_s"]["p50"], scale=1000),
                    _fmt(s["tpot_s"]["p50"], scale=1000),
                    f"{s['output_tokens_per_s']:.0f}",
                    f"{s['goodput_rps']:.3g}",
                    f"{100 * s['good_fraction']:.0f}",
                    _fmt(s["prefix_hit_rate"], digits=2),
                    _fmt(s["imbalance"], digits=3),
                    str(s["failed"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def comparisons(rows: Sequence[Row], *, subject: str = SUBJECT) -> list[dict[str, Any]]:
    """The subject policy against every other policy, per workload: matched-load ratios and peak goodput.

    `met` counts the loads of the ladder at which a per-load target holds ("2/4"), and says whether the peak
    goodput target holds; against the oracle the target is the prefix hit rate (a fraction of the oracle's).
    """
    out: list[dict[str, Any]] = []
    for workload in sorted({r.workload for r in rows}):
        mine = {r.qps: r for r in rows if r.workload == workload and r.policy == subject}
        if not mine:
            continue
        for other in sorted({r.policy for r in rows if r.workload == workload} - {subject}):
            theirs = {r.qps: r for r in rows if r.workload == workload and r.policy == other}
            matched = []
            for qps in sorted(set(mine) & set(theirs)):
                a, b = mine[qps].summary, theirs[qps].summary
                ta, tb = a["ttft_s"]["p90"], b["ttft_s"]["p90"]
                ha, hb = a["prefix_hit_rate"], b["prefix_hit_rate"]
                matched.append(
                    {
                        "qps": qps,
                        "ttft_p90_reduction": (1 - ta / tb) if ta is not None and tb else None,
                        "goodput_ratio": (a["goodput_rps"] / b["goodput_rps"]) if b["goodput_rps"] else None,
                        "hit_rate_ratio": (ha / hb) if ha is not None and hb else None,
                    }
                )
            peak_a = max(r.summary["goodput_rps"] for r in mine.values())
            peak_b = max(r.summary["goodput_rps"] for r in theirs.values())
            entry: dict[str, Any] = {
                "workload": workload,
                "baseline": other,
                "matched": matched,
                "peak_goodput_rps": {subject: peak_a, other: peak_b},
                "peak_goodput_ratio": peak_a / peak_b if peak_b else None,
            }
            target = TARGETS.get(other)
            if target:
                entry["target"] = target
                entry["met"] = _met(target, matched, entry["peak_goodput_ratio"])
            out.append(entry)
    return out


def _met(
    target: dict[str, float], matched: Sequence[dict[str, Any]], peak_ratio: float | None
) -> dict[str, str]:
    met: dict[str, str] = {}
    for key, field in (("ttft_p90_reduction", "ttft_p90_reduction"), ("hit_rate_fraction", "hit_rate_ratio")):
        if key in target:
            values = [m[field] for m in matched if m[field] is not None]
            held = sum(1 for v in values if v >= target[key])
            met[key] = f"{held}/{len(matched)} loads"
    if "peak_goodput_ratio" in target:
        met["peak_goodput_ratio"] = (
            "yes" if peak_ratio is not None and peak_ratio >= target["peak_goodput_ratio"] else "NO"
        )
    return met


def comparisons_markdown(entries: Sequence[dict[str, Any]], *, subject: str = SUBJECT) -> str:
    if not entries:
        return f"(no `{subject}` runs to compare)"
    lines = [
        f"| workload | {subject} vs | TTFT p90 reduction per QPS (+: {subject} lower) "
        "| goodput ratio per QPS | hit rate ratio per QPS | peak goodput ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        reductions = ", ".join(f"{m['qps']:g}: {_pct(m['ttft_p90_reduction'])}" for m in e["matched"])
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
        lines.append(
            f"| {e['workload']} | {e['baseline']} | {reductions} | {ratios} | {hits} "
            f"| {_fmt(e['peak_goodput_ratio'], digits=3)} | {', '.join(target_parts) or '-'} | {met_text} |"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def plot(rows: Sequence[Row], out_dir: Path, *, prefix: str = "") -> list[Path]:
    """Write the frontier, goodput and hit-rate plots (PNG) per workload; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    workloads = sorted({r.workload for r in rows})
    for workload in workloads:
        mine = [r for r in rows if r.workload == workload]
        policies = sorted({r.policy for r in mine})
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        for policy in policies:
            runs = sorted((r for r in mine if r.policy == policy), key=lambda r: r.qps)
            style = {"marker": "o", "linewidth": 2.5 if policy == SUBJECT else 1.5, "label": policy}
            ttft = [r.summary["ttft_s"]["p90"] for r in runs]
            axes[0].plot([r.summary["output_tokens_per_s"] for r in runs], ttft, **style)
            axes[1].plot([r.qps for r in runs], [r.summary["goodput_rps"] for r in runs], **style)
            axes[2].plot(
                [r.qps for r in runs],
                [
                    r.summary["prefix_hit_rate"] if r.summary["prefix_hit_rate"] is not None else float("nan")
                    for r in runs
                ],
                **style,
            )
        axes[0].set(
            xlabel="output tokens/s",
            ylabel="TTFT p90 (s)",
            title=f"frontier: {workload} (lower right is better)",
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
        slug = workload.replace(" ", "-")  # labels such as "shared-prefix@6 seed 1" name files without spaces
        path = out_dir / (f"{prefix}{slug}.png" if len(workloads) > 1 else f"{prefix.rstrip('-')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
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
