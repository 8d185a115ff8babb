"""The report: the table, the matched-load comparisons against the targets, and the files it writes."""

import json

import pytest

from frontier_bench import report, standing, stats


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
    # TTFT p50 300 ms, p90 380 ms
    assert "| shared-prefix | poisson | none | frontier | 1 | 300 | 380 |" in text


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


def drawn(policy: str, seed: int, ttft: float) -> report.Row:
    r = row(policy, 1.0, ttft=[ttft] * 3)
    r.seed = seed
    return r


def test_table_shows_the_median_and_range_over_draws():
    text = report.table([drawn("frontier", s, t) for s, t in enumerate([0.2, 0.3, 0.6])])
    assert "| shared-prefix | poisson | none | frontier | 1 | 300 (200-600) | 300 (200-600) |" in text
    assert text.rstrip().endswith("| 3 |")  # three draws


def test_a_win_needs_ranges_that_do_not_overlap():
    clear = [drawn("frontier", s, t) for s, t in enumerate([0.2, 0.25, 0.3])]
    clear += [drawn("round-robin", s, t) for s, t in enumerate([0.4, 0.5, 0.6])]
    [entry] = report.comparisons(clear)
    assert entry["matched"][0]["verdict"] == "win"
    assert entry["matched"][0]["ttft_p90_reduction"] == pytest.approx(0.5)  # median of 1/2, 1/2, 1/2
    mixed = [drawn("frontier", s, t) for s, t in enumerate([0.2, 0.25, 0.45])]
    mixed += [drawn("round-robin", s, t) for s, t in enumerate([0.4, 0.5, 0.6])]
    [entry] = report.comparisons(mixed)
    assert entry["matched"][0]["verdict"] == "tie"  # 0.45 lies inside round-robin's 0.4-0.6
    assert report.verdict(stats.spread([3.0]), stats.spread([1.0, 2.0]), lower_is_better=True) == "loss"


def test_the_picker_in_each_envoy_mode_and_arrival_shape_meets_the_policies_that_call_no_picker():
    def run(policy: str, ttft: float, *, mode: str, arrival: str = "poisson") -> report.Row:
        r = row(policy, 1.0, ttft=[ttft] * 3)
        r.envoy_mode, r.arrival = mode, arrival
        return r

    runs = [
        run("round-robin", 0.5, mode=report.NO_PICKER),
        run("round-robin", 0.9, mode=report.NO_PICKER, arrival="gamma-cv3"),
        run("frontier", 0.2, mode="cheap"),
        run("gie-default", 0.3, mode="cheap"),
        run("frontier", 0.4, mode="gie"),
        run("gie-default", 0.45, mode="gie"),
        run("frontier", 0.6, mode="cheap", arrival="gamma-cv3"),
    ]
    entries = {(e["arrival"], e["envoy_mode"], e["baseline"]): e for e in report.comparisons(runs)}
    # the subject is compared within its Envoy mode only, and never across arrival shapes
    assert sorted(entries) == [
        ("gamma-cv3", "cheap", "round-robin"),
        ("poisson", "cheap", "gie-default"),
        ("poisson", "cheap", "round-robin"),
        ("poisson", "gie", "gie-default"),
        ("poisson", "gie", "round-robin"),
    ]
    assert entries[("poisson", "gie", "round-robin")]["matched"][0]["ttft_p90_reduction"] == pytest.approx(
        0.2
    )
    assert entries[("gamma-cv3", "cheap", "round-robin")]["matched"][0]["ttft_p90_reduction"] == (
        pytest.approx(1 - 0.6 / 0.9)
    )
    assert "| shared-prefix | gamma-cv3 | cheap | frontier | 1 |" in report.table(runs)


def test_knees_table_states_the_spread_and_the_verdict_on_the_peak():
    def found(policy: str, seed: int, peak: float) -> dict[str, object]:
        return {
            "policy": policy,
            "workload": "w",
            "seed": seed,
            "peak_goodput_rps": peak,
            "peak_qps": peak,
            "knee_qps": peak,
            "first_failed_qps": peak * 1.25,
            "saturated": True,
        }

    text = report.knees_markdown(
        [found("frontier", s, p) for s, p in enumerate([60.0, 62.0, 65.0])]
        + [found("round-robin", s, p) for s, p in enumerate([30.0, 32.0, 35.0])]
    )
    assert "| w | frontier | 62 (60-65) |" in text
    assert "| w | round-robin | 32 (30-35) |" in text and "| 3/3 | win |" in text


def test_the_standing_names_single_draw_verdicts_and_judges_rounds_by_their_ranges(tmp_path):
    report.write(rows(), tmp_path, name="one-draw", command="c", meta={})
    clear = [drawn("frontier", s, t) for s, t in enumerate([0.2, 0.25])]
    clear += [drawn("round-robin", s, t) for s, t in enumerate([0.4, 0.5])]
    report.write(clear, tmp_path, name="two-rounds", command="c", meta={})
    text = standing.markdown(sorted(tmp_path.glob("*.json")))
    assert "| one-draw | shared-prefix | poisson | none | round-robin | 1 | 1: win (1 draw) (+" in text
    assert "| two-rounds | shared-prefix | poisson | none | round-robin | 2 | 1: win (+50%) | tie: " in text
