"""Reading engine counters from vLLM metrics pages, and stretching schedules onto a slowed fleet."""

import numpy as np
import pytest

from frontier_bench import fleet, sweep, workloads

PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:generation_tokens_total{engine="0",model_name="m"} 1234.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 5.0
vllm:kv_cache_usage_perc 0.25
"""


def test_parse_metrics_reads_the_families_the_bench_needs():
    values = fleet.parse_metrics(PAGE)
    assert values["vllm:num_requests_running"] == 3.0
    assert values["vllm:num_requests_waiting"] == 1.0
    assert values["vllm:generation_tokens_total"] == 1234.0
    assert values["vllm:kv_cache_usage_perc"] == 0.25


def test_generated_tokens_is_the_counter_difference_per_engine():
    before = {"a": {"vllm:generation_tokens_total": 100.0}, "b": {}}
    after = {"a": {"vllm:generation_tokens_total": 350.0}, "b": {"vllm:generation_tokens_total": 50.0}}
    assert fleet.generated_tokens(before, after) == {"a": 250.0, "b": 50.0}


def test_stretched_schedule_keeps_the_order_and_scales_time():
    schedule = workloads.poisson_schedule(qps=10.0, duration_s=5.0, seed=1)
    wire = sweep.stretched(schedule, 4.0)
    np.testing.assert_allclose(wire.offsets_s, schedule.offsets_s * 4.0)
    assert wire.qps == pytest.approx(2.5)
