"""`frontier-bench`: the demo, the full sweeps, and single sweeps, all through a real Envoy.

- `frontier-bench demo --out DIR`: a 6-engine simulated fleet, the picker and Envoy; a shared-prefix workload
  at three loads through plain round-robin and through the picker's `frontier` profile; the table printed,
  the frontier plot (PNG) and raw results (JSON) written; everything stopped. About three minutes.
- `frontier-bench sweep ...`: one sweep with every knob on the command line.
- `frontier-bench all --out DIR`: every sweep the benchmark commits under bench/results/.

Every results file carries the exact command line that produced it.
"""

import argparse
import asyncio
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from frontier_bench import frontdoors, full, harness, report, stats, sweep, workloads

log = logging.getLogger("frontier_bench")

DEMO_ENGINES = 6


def build_workload(args: argparse.Namespace, *, engines: int) -> workloads.Workload:
    name = args.workload
    if name == "shared-prefix":
        return workloads.shared_prefix(
            num_groups=args.num_groups or workloads.llmd_groups(engines),
            num_prompts_per_group=args.num_prompts_per_group,
            system_prompt_len=args.system_prompt_len,
            question_len=args.question_len,
            output_len=args.output_len,
            seed=args.seed,
        )
    if name == "llmd-study":
        return workloads.llmd_study(engines=engines, output_len=args.output_len, seed=args.seed)
    if name == "multi-turn-chat":
        return workloads.multi_turn_chat(
            num_sessions=args.num_groups or 8 * engines,
            turns=5,
            system_prompt_len=args.system_prompt_len,
            user_len=args.question_len,
            output_len=args.output_len,
            seed=args.seed,
        )
    if name == "long-documents":
        return workloads.long_documents(
            num_documents=args.num_groups or 2 * engines,
            document_len=args.system_prompt_len,
            question_len=args.question_len,
            output_len=args.output_len,
            seed=args.seed,
        )
    if name == "no-sharing":
        return workloads.no_sharing(
            prompt_len=args.system_prompt_len + args.question_len,
            output_len=args.output_len,
            seed=args.seed,
        )
    if name == "mixed-lengths":
        return workloads.mixed_lengths(
            median_prompt_len=args.question_len,
            median_output_len=args.output_len,
            seed=args.seed,
        )
    raise ValueError(f"unknown workload {name!r}")


def _command() -> str:
    return shlex.join(["frontier-bench", *sys.argv[1:]])


def cmd_demo(args: argparse.Namespace) -> None:
    engines = DEMO_ENGINES
    workload = workloads.shared_prefix(
        num_groups=workloads.llmd_groups(engines),
        num_prompts_per_group=5,
        system_prompt_len=6000,
        question_len=1200,
        output_len=args.output_len,
        seed=0,
    )
    plan = sweep.Plan(
        workload=workload,
        policies=("round-robin", "frontier"),
        loads=tuple(args.loads),
        duration_s=args.duration,
        warmup_s=args.warmup,
        drain_timeout_s=60.0,
    )
    asyncio.run(
        harness.run_sweeps(
            [plan],
            engines=engines,
            time_scale=args.time_scale,
            model=args.model,
            out=Path(args.out),
            name="demo",
            command=_command(),
            title="Frontier demo: round-robin vs the picker's frontier profile through Envoy",
            notes=[
                f"{engines} simulated H100 engines (Llama-3.1-8B shape), time scale {args.time_scale:g}",
                "workload: llm-d study's shared-prefix shape scaled to the fleet "
                f"({workload.params['num_groups']} groups x 5, 6,000 + 1,200 tokens in), "
                f"output shortened to {args.output_len} tokens so the demo fits in minutes",
            ],
        )
    )


def cmd_sweep(args: argparse.Namespace) -> None:
    workload = build_workload(args, engines=args.engines)
    plans = [
        sweep.Plan(
            workload=workload,
            policies=tuple(args.policies),
            loads=tuple(args.loads),
            duration_s=args.duration,
            warmup_s=args.warmup,
            seed=args.seed,
            slo=stats.Slo(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot),
            envoy_modes=tuple(args.envoy_modes),
            arrival_cv=cv,
            rounds=args.rounds,
        )
        for cv in args.arrival_cvs
    ]
    asyncio.run(
        harness.run_sweeps(
            plans,
            engines=args.engines,
            time_scale=args.time_scale,
            model=args.model,
            out=Path(args.out),
            name=args.name or f"sweep-{workload.name}",
            command=_command(),
            title=f"Sweep: {workload.name}",
        )
    )


def cmd_all(args: argparse.Namespace) -> None:
    real_time = full.RealTime(
        envoy_modes=tuple(args.envoy_modes),
        arrival_cvs=tuple(args.arrival_cvs),
        rounds=args.rounds,
        loads=tuple(args.loads),
        duration_s=args.duration,
        warmup_s=args.warmup,
    )
    full.run(
        out=Path(args.out), command=_command(), quick=args.quick, only=tuple(args.only), real_time=real_time
    )


def cmd_report(args: argparse.Namespace) -> None:
    for path in args.results:
        for kind, written in report.rewrite(Path(path)).items():
            print(f"{kind}: {written}")


def add_real_time_options(command: argparse.ArgumentParser, defaults: full.RealTime) -> None:
    """How real-time runs go: the pickers' Envoy modes, the arrival shapes, the interleaved rounds."""
    command.add_argument(
        "--envoy-modes",
        nargs="+",
        choices=frontdoors.ENVOY_MODES,
        default=list(defaults.envoy_modes),
        help="the Envoy modes the pickers are called in (cheap: Frontier's; gie: GIE's full-duplex one)",
    )
    command.add_argument(
        "--arrival-cvs",
        nargs="+",
        type=float,
        default=list(defaults.arrival_cvs),
        help="arrival shapes, as the CV of Gamma gaps between arrivals (1: Poisson; 3: bursty)",
    )
    command.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="interleaved rounds, each its own arrival draw (tables show median and range)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="frontier-bench", description=__doc__.split("\n\n")[0])
    top.add_argument("--log-level", default="WARNING")
    sub = top.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the three-minute demo: round-robin vs the picker through Envoy")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per model second")
    demo.add_argument("--loads", type=float, nargs="+", default=[10.0, 20.0, 30.0], help="model-time req/s")
    demo.add_argument(
        "--duration", type=float, default=15.0, help="model seconds of measured arrivals per run"
    )
    demo.add_argument("--warmup", type=float, default=5.0, help="model seconds of arrivals before measuring")
    demo.add_argument("--output-len", type=int, default=64)
    demo.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    demo.set_defaults(func=cmd_demo)

    one = sub.add_parser("sweep", help="one sweep: policies x loads on one workload")
    one.add_argument("--out", default="out/sweep")
    one.add_argument("--name", default="")
    one.add_argument(
        "--workload",
        default="shared-prefix",
        choices=[
            "shared-prefix",
            "llmd-study",
            "multi-turn-chat",
            "long-documents",
            "no-sharing",
            "mixed-lengths",
        ],
        help="mixed-lengths: unique prompts, log-normal lengths with medians --question-len and --output-len",
    )
    one.add_argument(
        "--policies", nargs="+", default=list(frontdoors.ALL_POLICIES), choices=frontdoors.CHOICES
    )
    one.add_argument("--loads", type=float, nargs="+", required=True, help="model-time req/s")
    one.add_argument(
        "--duration", type=float, default=30.0, help="model seconds of measured arrivals per run"
    )
    one.add_argument("--warmup", type=float, default=10.0, help="model seconds of arrivals before measuring")
    one.add_argument("--engines", type=int, default=DEMO_ENGINES)
    one.add_argument("--time-scale", type=float, default=4.0)
    one.add_argument("--num-groups", type=int, default=0, help="0: scaled to the fleet")
    one.add_argument("--num-prompts-per-group", type=int, default=5)
    one.add_argument("--system-prompt-len", type=int, default=6000)
    one.add_argument("--question-len", type=int, default=1200)
    one.add_argument("--output-len", type=int, default=1000)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--slo-ttft", type=float, default=1.0)
    one.add_argument("--slo-tpot", type=float, default=0.05)
    one.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    add_real_time_options(one, full.RealTime(envoy_modes=("cheap",), arrival_cvs=(1.0,), rounds=1))
    one.set_defaults(func=cmd_sweep)

    everything = sub.add_parser("all", help="every committed sweep, written under --out")
    everything.add_argument("--out", default="bench/results")
    everything.add_argument("--quick", action="store_true", help="shorter runs (for trying the pipeline)")
    everything.add_argument("--only", nargs="*", default=[], help="run only these suites (by name)")
    add_real_time_options(everything, full.RealTime())
    everything.add_argument(
        "--loads", type=float, nargs="*", default=[], help="real-time suites: these model-time req/s instead"
    )
    everything.add_argument(
        "--duration", type=float, help="real-time suites: model seconds of measured arrivals per run instead"
    )
    everything.add_argument(
        "--warmup", type=float, help="real-time suites: model seconds of arrivals left out instead"
    )
    everything.set_defaults(func=cmd_all)
    rerender = sub.add_parser("report", help="re-render results (markdown, plots) from their JSON")
    rerender.add_argument("results", nargs="+", help="results JSON files")
    rerender.set_defaults(func=cmd_report)
    return top


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Raised inside the running sweep, so the process group's context manager stops every child on the way.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    args.func(args)


if __name__ == "__main__":
    main()
