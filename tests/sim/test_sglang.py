"""`frontier-sim sglang`: the `sglang.launch_server` command line the operator renders for an
`engine.type: sglang` tier starts a simulated server whose /metrics the picker reads under SGLang's names."""

import aiohttp
import pytest

from frontier_api import modeltier, names
from frontier_operator import render_args
from frontier_picker import scraper
from frontier_sim import flags, server, timing

SPEC = {
    "poolRef": {"name": "chat"},
    "model": {"source": "sim/llama-8b", "servedName": "llama"},
    "tier": {"rank": 1, "relativeCost": 1.0},
    "engine": {
        "type": "sglang",
        "maxModelLen": 8192,
        "maxNumSeqs": 64,
        "gpuMemoryUtilization": 0.8,
        "quantization": "fp8",
        "kvCacheDtype": "fp8_e5m2",
        "prefixCaching": {"enabled": False},
    },
    "serving": {"parallelism": {"tensor": 2, "data": 2}},
}


def _rendered(port: int = 8000) -> list[str]:
    return render_args.sglang_args(modeltier.parse_spec(SPEC), role=names.ROLE_BOTH, port=port)


def test_the_argv_the_operator_renders_for_sglang_is_accepted_and_modelled():
    s = flags.parse_sglang(_rendered())
    assert (s.model, s.served_model_name, s.host, s.port) == ("sim/llama-8b", "llama", "0.0.0.0", 8000)
    assert (s.tensor_parallel_size, s.max_model_len, s.max_num_seqs) == (2, 8192, 64)
    assert (s.gpu_memory_utilization, s.quantization, s.kv_cache_dtype) == (0.8, "fp8", "fp8_e5m2")
    assert s.enable_prefix_caching is False and s.engine_type == "sglang"
    defaults = flags.parse_sglang(["--model-path", "m", "--tp", "4"])
    assert (defaults.port, defaults.tensor_parallel_size, defaults.enable_prefix_caching) == (30000, 4, True)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--model-path", "m", "--max-num-seqs", "8"], "--max-num-seqs"),
        (["--model-path", "m", "--kv-cache-dtype", "fp8"], "--kv-cache-dtype"),
        (["--model-path", "m", "--quantization", "fbgemm_fp8"], "--quantization"),
        (["--port", "1"], "--model-path"),
    ],
)
def test_flags_sglang_does_not_take_are_refused_naming_the_flag(argv, named):
    with pytest.raises(flags.FlagError, match=named):
        flags.parse_sglang(argv)


async def test_an_sglang_server_answers_and_reports_sglangs_metric_names_the_picker_reads(subnet):
    cfg = flags.parse_sglang([*_rendered(port=0), "--sim-params", str(timing.CALIBRATED_PARAMS)])
    cfg.host = f"{subnet}.1"
    async with server.serving(cfg) as srv, aiohttp.ClientSession() as session:
        url = f"http://{srv.address}:{srv.port}"
        async with session.get(f"{url}/health") as response:
            assert response.status == 200
        body = {"model": "llama", "prompt": "hello there", "max_tokens": 4}
        async with session.post(f"{url}/v1/completions", json=body) as response:
            assert response.status == 200
        async with session.get(f"{url}/metrics") as response:
            page = await response.read()
    assert b"vllm:" not in page
    assert b'sglang:generation_tokens_total{model_name="llama"} 4' in page
    assert b"sglang:time_to_first_token_seconds_count" in page
    found = scraper.parse(page, names.ENGINE_SGLANG, now=1.0)
    assert (found.running, found.waiting, found.kv_usage) == (0, 0, 0.0)
    assert found.num_gpu_blocks == srv.core.config.num_gpu_blocks
