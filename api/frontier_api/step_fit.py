"""The calibrated step-time fit the picker's cost model starts from, as data shared with the simulator.

    prefill chunk of N new tokens over C cached:  t = p0 + p1*N + p2*N*(C + N/2)
    decode step of B sequences over mean context C:  t = d0 + d1*B + d2*B*C

Measured on an H100 80GB running a Llama-3.1-8B-shaped decoder (bf16, PyTorch, one GPU); the raw
measurements and the fit live in `sim/frontier_sim/calibration/h100_llama8b.json`, and a test pins these
values to that fit. The picker cannot import the simulator, so the numbers are copied here, rounded to four
significant digits.
"""

import dataclasses
from typing import Final


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StepFit:
    """Prefill and decode step-time coefficients, in seconds."""

    p0: float  # s per prefill chunk
    p1: float  # s per uncached token
    p2: float  # s per uncached token x context token
    d0: float  # s per decode step
    d1: float  # s per sequence in the batch
    d2: float  # s per context token of the batch


H100_LLAMA8B: Final = StepFit(
    p0=0.005749, p1=2.7019e-05, p2=8.077e-10, d0=0.008217, d1=1.438e-05, d2=3.897e-08
)
