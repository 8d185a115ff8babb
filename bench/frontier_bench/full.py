"""`frontier-bench all`: every sweep whose results are committed under bench/results/.

Real-time sweeps (simulated engines, real Envoy, real picker, real sglang-router), one results set per
workload, each with the exact command in its files:
- `shared-prefix`: the llm-d study's shape scaled to the fleet, all six policies, a QPS ladder to saturation;
- `multi-turn-chat`, `long-documents`, `no-sharing`: the same policies over a shorter ladder.

Loads are in model-time requests/s for the fleet below; the ladders were chosen so the top rung saturates
round-robin on this fleet. `--quick` shortens every run (to try the pipeline, not to commit).
"""

import asyncio
import dataclasses
from pathlib import Path

from frontier_bench import frontdoors, harness, sweep, workloads

ENGINES = 6
TIME_SCALE = 8.0
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Suite:
    name: str
    title: str
    plan: sweep.Plan
    notes: tuple[str, ...] = ()


def suites(*, quick: bool) -> list[Suite]:
    duration = 20.0 if quick else 60.0
    policies = frontdoors.ALL_POLICIES
    shared = workloads.llmd_study(engines=ENGINES, seed=0)
    return [
        Suite(
            name="shared-prefix",
            title="Shared prefix (llm-d study shape, scaled to 6 engines): all policies through Envoy",
            plan=sweep.Plan(
                workload=shared, policies=policies, loads=(1.0, 2.0, 3.0, 4.0), duration_s=duration
            ),
            notes=(
                f"{ENGINES} simulated H100 engines (Llama-3.1-8B shape), time scale {TIME_SCALE:g}",
                f"{shared.params['num_groups']} groups x 5 prompts, 6,000-token system prompt, 1,200-token"
                " question, 1,000-token output",
            ),
        ),
        Suite(
            name="multi-turn-chat",
            title="Multi-turn chat: policies through Envoy",
            plan=sweep.Plan(
                workload=workloads.multi_turn_chat(
                    num_sessions=8 * ENGINES,
                    turns=5,
                    system_prompt_len=2000,
                    user_len=200,
                    output_len=200,
                    seed=0,
                ),
                policies=policies,
                loads=(4.0, 8.0, 12.0),
                duration_s=duration,
            ),
        ),
        Suite(
            name="long-documents",
            title="Long shared documents: policies through Envoy",
            plan=sweep.Plan(
                workload=workloads.long_documents(
                    num_documents=2 * ENGINES,
                    document_len=16000,
                    num_questions=2000,
                    question_len=100,
                    output_len=200,
                    seed=0,
                ),
                policies=policies,
                loads=(2.0, 4.0, 6.0),
                duration_s=duration,
            ),
        ),
        Suite(
            name="no-sharing",
            title="No sharing (control): policies through Envoy",
            plan=sweep.Plan(
                workload=workloads.no_sharing(num_prompts=2000, prompt_len=2000, output_len=200, seed=0),
                policies=policies,
                loads=(4.0, 8.0, 12.0),
                duration_s=duration,
            ),
        ),
    ]


def run(*, out: Path, command: str, quick: bool, only: tuple[str, ...] = ()) -> None:
    for suite in suites(quick=quick):
        if only and suite.name not in only:
            continue
        asyncio.run(
            harness.run_sweeps(
                [suite.plan],
                engines=ENGINES,
                time_scale=TIME_SCALE,
                model=MODEL,
                out=out,
                name=suite.name,
                command=command,
                title=suite.title,
                notes=suite.notes,
            )
        )
