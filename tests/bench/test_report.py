"""The report: the table, the matched-load comparisons against the targets, and the files it writes."""

import json

import pytest

from frontier_bench import report, stats


def row(policy: str, qps: float, *, ttft: list[float], tokens: int = 10):
    traces = [
        stats.RequestTrace(
            sent=0.0,
            token_times=[t + 0.01 * i for i in range(tokens)],
            end=t + 0.01 * tokens,
            status=200,
            prompt_tokens=100,
            completion_tokens=tokens,
            cached_tokens=50,
        )
        for t in ttft
    ]
    return report.Row(
        policy=policy, workload="shared-prefix", qps=qps, summary=stats.summarize(traces, window_s=1.0)
    )


def rows():
    return [
        row("round-robin", 1.0, ttft=[0.5, 1.0, 2.0]),
        row("frontier", 1.0, ttft=[0.2, 0.3, 0.4]),
        row("round-robin", 2.0, ttft=[1.5, 2.0, 3.0]),
        row("frontier", 2.0, ttft=[0.5, 0.6, 0.9]),
    ]


def test_comparison_reports_matched_load_ttft_reduction_and_goodput_ratio():
    [entry] = report.comparisons(rows())
    assert entry["baseline"] == "round-robin"
    first = entry["matched"][0]
    rr, fr = rows()[0].summary, rows()[1].summary
    assert first["qps"] == 1.0
    assert first["ttft_p90_reduction"] == pytest.approx(1 - fr["ttft_s"]["p90"] / rr["ttft_s"]["p90"])
    # At 2 req/s round-robin has no request within TTFT <= 1 s: no ratio rather than a division by zero.
    assert entry["matched"][1]["goodput_ratio"] is None
    assert entry["met"]["ttft_p90_reduction"] == "2/2 loads"
    peak_frontier = max(r.summary["goodput_rps"] for r in rows() if r.policy == "frontier")
    peak_rr = max(r.summary["goodput_rps"] for r in rows() if r.policy == "round-robin")
    assert peak_frontier == pytest.approx(3 / 1.0)  # 3 good requests sent over a 1 s window
    assert entry["peak_goodput_ratio"] == pytest.approx(peak_frontier / peak_rr)


def test_table_has_one_line_per_run_in_milliseconds():
    text = report.table(rows())
    lines = text.splitlines()
    assert len(lines) == 2 + 4
    assert "| shared-prefix | frontier | 1 | 300 | 380 |" in text  # TTFT p50 300 ms, p90 380 ms


def test_write_produces_json_markdown_and_png_with_the_command(tmp_path):
    paths = report.write(
        rows(), tmp_path, name="demo", command="frontier-bench demo --out x", meta={"title": "T"}
    )
    data = json.loads(paths["json"].read_text())
    assert data["command"] == "frontier-bench demo --out x"
    assert len(data["runs"]) == 4 and data["comparisons"][0]["baseline"] == "round-robin"
    assert "`frontier-bench demo --out x`" in paths["md"].read_text()
    png = paths["demo"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths["md"].unlink()
    again = report.rewrite(paths["json"])
    assert "`frontier-bench demo --out x`" in again["md"].read_text()
    assert json.loads(again["json"].read_text())["runs"] == data["runs"]


def test_against_the_oracle_the_target_is_the_hit_rate_fraction():
    oracle = row("oracle", 1.0, ttft=[0.2, 0.3, 0.4])
    oracle.summary["prefix_hit_rate"] = 0.5
    [entry] = [e for e in report.comparisons([*rows(), oracle]) if e["baseline"] == "oracle"]
    assert entry["matched"][0]["hit_rate_ratio"] == pytest.approx(1.0)  # 50 of 100 cached tokens each
    assert entry["met"] == {"hit_rate_fraction": "1/1 loads"}
