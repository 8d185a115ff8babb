"""The metrics math on hand-built traces whose answers are known."""

import pytest

from frontier_bench import stats


def trace(sent, tokens, end, *, prompt=100, completion=None, cached=0, status=200, error=None):
    return stats.RequestTrace(
        sent=sent,
        token_times=list(tokens),
        end=end,
        status=status,
        error=error,
        prompt_tokens=prompt,
        completion_tokens=len(tokens) if completion is None else completion,
        cached_tokens=cached,
    )


def test_per_request_ttft_tpot_itl_e2e():
    t = trace(10.0, [10.5, 10.6, 10.8, 11.1], 11.1)
    assert t.ttft == pytest.approx(0.5)
    assert t.e2e == pytest.approx(1.1)
    assert t.tpot == pytest.approx(0.6 / 3)
    assert t.itls() == pytest.approx([0.1, 0.2, 0.3])


def test_tpot_uses_reported_completion_tokens_when_chunks_carry_several():
    t = trace(0.0, [1.0, 2.0], 2.0, completion=11)
    assert t.tpot == pytest.approx(0.1)
    assert trace(0.0, [1.0], 1.0).tpot is None


def test_percentiles_interpolate_linearly_and_handle_empty():
    assert stats.percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == pytest.approx(
        {"p50": 5.5, "p90": 9.1, "p99": 9.91}
    )
    assert stats.percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_summary_goodput_counts_only_requests_within_both_slo_bounds():
    traces = [
        trace(0.0, [0.5, 0.54, 0.58], 0.58),  # ttft 0.5, tpot 0.04: good
        trace(0.0, [1.5, 1.52], 1.52),  # ttft 1.5: bad
        trace(1.0, [1.2, 1.3, 1.4], 1.4),  # tpot 0.1: bad
        trace(2.0, [], None, status=503, error="no endpoint"),  # failed
        trace(3.0, [3.1, 3.12], 4.0),  # ttft 0.1, tpot 0.9... bad
        trace(3.0, [3.9, 3.92, 3.94, 3.96], 4.0),  # ttft 0.9 tpot ~0.033: good
    ]
    s = stats.summarize(traces, slo=stats.Slo(ttft_s=1.0, tpot_s=0.05))
    assert s["requests"] == 6 and s["succeeded"] == 5 and s["failed"] == 1
    assert s["good_requests"] == 2
    assert s["duration_s"] == pytest.approx(4.0)
    assert s["window_s"] == pytest.approx(3.0)  # sent from 0 s to 3 s
    assert s["goodput_rps"] == pytest.approx(2 / 3.0)
    assert stats.summarize(traces, window_s=4.0)["goodput_rps"] == pytest.approx(0.5)
    assert s["good_fraction"] == pytest.approx(2 / 6)
    assert s["output_tokens"] == 3 + 2 + 3 + 2 + 4
    assert s["output_tokens_per_s"] == pytest.approx(14 / 4.0)


def test_summary_prefix_hit_rate_is_token_weighted():
    traces = [trace(0, [1], 1, prompt=1000, cached=900), trace(0, [1], 1, prompt=100, cached=0)]
    s = stats.summarize(traces)
    assert s["prefix_hit_rate"] == pytest.approx(900 / 1100)
    assert s["prompt_tokens"] == 1100 and s["cached_tokens"] == 900


def test_time_scale_reports_model_time():
    # Measured on a clock running 10x slower than the model: 5 s measured TTFT is 0.5 s of model time.
    traces = [trace(0.0, [5.0, 5.4, 5.8], 5.8)]
    s = stats.summarize(traces, time_scale=10.0, slo=stats.Slo(ttft_s=1.0, tpot_s=0.05))
    assert s["ttft_s"]["p50"] == pytest.approx(0.5)
    assert s["itl_s"]["p50"] == pytest.approx(0.04)
    assert s["duration_s"] == pytest.approx(0.58)
    assert s["output_tokens_per_s"] == pytest.approx(3 / 0.58)
    assert s["good_requests"] == 1


def test_imbalance_is_max_over_mean():
    assert stats.imbalance({"a": 10, "b": 10}) == pytest.approx(1.0)
    assert stats.imbalance({"a": 30, "b": 10, "c": 20}) == pytest.approx(1.5)
    assert stats.imbalance({"a": 0}) is None
    assert stats.summarize([trace(0, [1], 1)], endpoint_work={"a": 4, "b": 0})["imbalance"] == pytest.approx(
        2.0
    )
