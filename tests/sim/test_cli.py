"""The command line: operator-rendered vLLM flags run unchanged, unknown flags are refused, and the fleet
launcher starts engines on their own addresses, writes the endpoints file and shuts down cleanly."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from frontier_api import names, vllm_flags
from frontier_sim import flags, fleet

OPERATOR_ARGS = [
    "meta-llama/Llama-3.1-70B-Instruct",
    "--served-model-name", "llama-70b",
    "--tensor-parallel-size", "4",
    "--max-model-len", "32768",
    "--max-num-seqs", "128",
    "--max-num-batched-tokens", "4096",
    "--gpu-memory-utilization", "0.92",
    "--quantization", "fp8",
    "--kv-cache-dtype", "fp8",
    "--enable-prefix-caching",
    "--prefix-caching-hash-algo", "sha256_cbor",
    "--speculative-config", '{"method":"eagle3","num_speculative_tokens":3,"model":"org/eagle3-70b"}',
    "--enable-lora", "--max-loras", "4",
    "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_both"}',
    "--kv-events-config",
    '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","topic":"kv@$(POD_IP)@llama-70b"}',
    "--host", "0.0.0.0", "--port", "8000", "--dtype", "auto",
]  # fmt: skip


def test_every_flag_the_operator_renders_is_accepted_and_modelled():
    s = flags.parse_serve(OPERATOR_ARGS)
    assert s.served_model_name == "llama-70b" and s.tensor_parallel_size == 4
    assert s.model_params == pytest.approx(70e9)
    assert (s.max_model_len, s.max_num_seqs, s.max_num_batched_tokens) == (32768, 128, 4096)
    assert (s.quantization, s.kv_cache_dtype, s.num_speculative_tokens, s.max_loras) == ("fp8", "fp8", 3, 4)
    assert s.kv_events_enabled and s.kv_transfer_config == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
    }
    core = fleet.settings.build_engine(s)
    assert core.config.max_num_batched_tokens == 4096 and core.config.num_speculative_tokens == 3
    assert core.config.num_gpu_blocks > 10_000


@pytest.mark.parametrize(
    "argv",
    [
        ["m", "--bogus-flag", "1"],
        ["m", "--max-num-seq", "8"],  # abbreviations of real flags are typos, not shortcuts
        ["m", "--speculative-config", "{not json"],
        ["m", "--quantization", "q3_k"],
        # vLLM 0.11 refuses these values:
        ["m", "--quantization", "int8"],
        ["m", "--max-lora-rank", "24"],
        ["m", "--block-size", "24"],
        [
            "m",
            "--speculative-config",
            '{"method":"draft_model","model":"org/small","num_speculative_tokens":3}',
        ],
        [
            "m",
            "--speculative-config",
            '{"model":"org/small","num_speculative_tokens":3}',
        ],  # inferred draft_model
    ],
)
def test_unknown_or_invalid_flags_are_refused_with_the_flag_named(argv):
    with pytest.raises(ValueError, match=argv[1]) as caught:
        fleet.settings.build_engine(flags.parse_serve(argv))
    assert "--" in str(caught.value)


@pytest.mark.parametrize("argv", [["--model", "m"], ["--model=m"], ["m", "--model", "m"]])
def test_model_flag_is_refused_as_vllm_0_11_serve_refuses_it(argv):
    with pytest.raises(flags.FlagError, match="--model is refused") as caught:
        flags.parse_serve(argv)
    assert "positional" in str(caught.value)


def test_every_vllm_flag_the_simulator_accepts_is_one_vllm_0_11_serve_accepts():
    table = vllm_flags.table()
    accepted = [
        flag
        for action in flags.serve_parser()._actions
        for flag in action.option_strings
        if not flag.startswith("--sim-")
    ]
    assert "--model" not in accepted
    assert [flag for flag in accepted if table.option(flag) is None] == []


def test_speculative_method_is_inferred_from_the_draft_models_name_as_vllm_does():
    eagle3 = '{"model":"yuhuili/EAGLE3-LLaMA3.1-Instruct-8B","num_speculative_tokens":3}'
    s = flags.parse_serve(["m", "--speculative-config", eagle3, "--max-lora-rank", "64"])
    assert fleet.settings.speculative_method(s.speculative_config) == "eagle3"
    assert fleet.settings.build_engine(s).config.num_speculative_tokens == 3


def test_cli_exits_2_on_an_unknown_flag():
    done = subprocess.run(
        [sys.executable, "-m", "frontier_sim.main", "serve", "m", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


async def test_fleet_from_yaml_serves_each_engine_on_its_address_with_labels(subnet, tmp_path):
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "time_scale": 5,
                "base_address": f"{subnet}.10",
                "port": 0,
                "endpoints_file": str(tmp_path / "endpoints.yaml"),
                "engines": [
                    {"name": "small", "replicas": 2, "model": "org/Llama-3.2-1B", "tier": "small"},
                    {"name": "big", "model": "org/Llama-3.1-70B", "role": "decode", "tier": "large",
                     "args": ["--tensor-parallel-size", "4", "--max-num-seqs", "64"]},
                ],
            }
        )
    )  # fmt: skip
    spec = fleet.parse_args(["--config", str(spec_file)])
    async with fleet.run(spec) as running, aiohttp.ClientSession() as session:
        doc = yaml.safe_load(Path(spec.endpoints_file).read_text())
        for entry in doc["endpoints"]:
            async with session.get(f"http://{entry['address']}:{entry['port']}/v1/models") as response:
                assert (await response.json())["data"][0]["id"] == entry["labels"][names.MODEL_LABEL]
        assert running.engines[2].server.core.config.max_num_seqs == 64
    assert [e["name"] for e in doc["endpoints"]] == ["small-0", "small-1", "big"]
    assert [e["address"] for e in doc["endpoints"]] == [f"{subnet}.10", f"{subnet}.11", f"{subnet}.12"]
    assert doc["endpoints"][2]["labels"] == {
        names.ROLE_LABEL: "decode",
        names.MODEL_LABEL: "org/Llama-3.1-70B",
        names.TIER_LABEL: "large",
        names.ENGINE_TYPE_LABEL: "vllm",
    }


async def test_fleet_command_starts_logs_one_line_per_engine_and_stops_on_sigterm(subnet, tmp_path):
    endpoints = tmp_path / "endpoints.yaml"
    argv = [sys.executable, "-m", "frontier_sim.main", "fleet", "--engines", "3", "--prefill-engines", "1",
            "--address-prefix", subnet, "--port", "0", "--time-scale", "10", "--served-model-name", "m",
            "--endpoints-file", str(endpoints), "--max-num-seqs", "32"]  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        *argv, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        for _ in range(200):
            if endpoints.exists():
                break
            await asyncio.sleep(0.05)
        doc = yaml.safe_load(endpoints.read_text())
        roles = [e["labels"][names.ROLE_LABEL] for e in doc["endpoints"]]
        assert roles == ["prefill", "decode", "decode"]
        assert [e["address"] for e in doc["endpoints"]] == [f"{subnet}.1", f"{subnet}.2", f"{subnet}.3"]
        async with aiohttp.ClientSession() as session:
            e = doc["endpoints"][1]
            body = {"model": "m", "prompt": "hello", "max_tokens": 2}
            async with session.post(
                f"http://{e['address']}:{e['port']}/v1/completions", json=body
            ) as response:
                assert response.status == 200
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(child.communicate(), timeout=30)
    log = err.decode()
    assert child.returncode == 0, log
    assert log.count("event=engine_started") == 3
    assert log.count("event=engine_stopped") == 3
