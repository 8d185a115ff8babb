"""The virtual-time cluster agrees with the real-time fleet on a tiny case (same arrivals, same routing).

Tolerances, from what the case measures on a shared 2-core machine: the real side's TTFT includes HTTP and
event-loop delays (a few wall ms, divided by the time scale), so virtual TTFT p50 / p90 must be within 25% of
the real ones; e2e p50 and output tokens/s within 5%; the prefix hit rate (a pure function of the routing
and the cache) is identical. `python -m frontier_bench.vt_agreement` runs the larger committed case.
"""

import pytest

from frontier_bench import vt_agreement


@pytest.mark.slow
async def test_virtual_and_real_time_agree_on_ttft_e2e_throughput_and_hit_rate(subnet):
    case = vt_agreement.Case(
        engines=2,
        qps=6.0,
        duration_s=4.0,
        time_scale=4.0,  # wall delays shrink by this factor in model time
        num_groups=2,
        prompts_per_group=6,
        base_address=f"{subnet}.1",
    )
    virtual = vt_agreement.run_virtual(case).summary()
    real = (await vt_agreement.run_real(case)).summary()
    assert virtual["prefix_hit_rate"] == real["prefix_hit_rate"] > 0.5
    for key in ("ttft_p50_s", "ttft_p90_s"):
        assert virtual[key] == pytest.approx(real[key], rel=0.25), key
    for key in ("e2e_p50_s", "output_tokens_per_s"):
        assert virtual[key] == pytest.approx(real[key], rel=0.05), key
