"""Tier routing through a real Envoy: `model: auto` reaches the tier the picker chose with the body's model
rewritten to that tier's served name (a Hugging Face name, `/` and all), the response names the tier and
why, a model the pool does not serve is a 404 that says so, and a LoRA adapter's name reaches an endpoint
that declares the adapter."""

import json
from pathlib import Path

import aiohttp
import multidict
import pytest
import yaml

from frontier_api import names
from frontier_picker.scheduling import config

from . import stack

pytestmark = pytest.mark.envoy

SMALL = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "meta-llama/Llama-3.3-70B-Instruct"


def tier_config() -> str:
    tiers = [
        {"model": SMALL, "rank": 0, "relativeCost": 1, "fallback": True},
        {"model": LARGE, "rank": 1, "relativeCost": 8, "keywords": ["prove"]},
    ]
    text = yaml.safe_load(config.builtin_text("frontier"))
    text["plugins"].append({"type": "prompt-classifier"})
    for plugin in text["plugins"]:
        if plugin["type"] == "tier-router":
            plugin["parameters"] = {"virtualModels": {"auto": tiers}, "classifier": "prompt-classifier"}
    return yaml.safe_dump(text)


async def post(
    url: str, document: dict, headers: dict[str, str] | None = None
) -> tuple[int, bytes, multidict.CIMultiDict[str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps(document).encode(), headers=headers or {}) as response,
    ):
        return response.status, await response.read(), response.headers.copy()


@pytest.mark.parametrize("mode", ["gie", "buffered"])
async def test_auto_reaches_the_chosen_tier_with_its_served_name(tmp_path: Path, mode: str) -> None:
    labels = [{names.MODEL_LABEL: SMALL}, {names.MODEL_LABEL: SMALL}, {names.MODEL_LABEL: LARGE}]
    running = stack.start(tmp_path, mode=mode, backends=3, config_text=tier_config(), labels=labels)
    large = running.backends[2].key
    try:
        cases = [
            ("Write a Python function that reverses a linked list in place.", LARGE, "classifier"),
            ("Hi! How was your weekend? Did you do anything fun?", SMALL, "classifier"),
            ("Can you prove there are infinitely many primes?", LARGE, "rule"),
        ]
        for prompt, tier, reason in cases:
            document = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
            status, answer, headers = await post(running.url + "/v1/chat/completions", document)
            assert status == 200, answer
            assert (headers[names.TIER_HEADER], headers[names.TIER_REASON_HEADER]) == (tier, reason)
            served = headers["x-served-by"]
            assert (served == large) == (tier == LARGE)
            received = running.backend(served).received[-1]
            assert json.loads(received.body) == {**document, "model": tier}  # only the model changed

        status, answer, headers = await post(
            running.url + "/v1/chat/completions", {"model": SMALL, "prompt": "hello"}
        )
        assert status == 200 and names.TIER_HEADER not in headers  # a served name routes as named

        status, answer, _ = await post(running.url + "/v1/completions", {"model": "gpt-9", "prompt": "x"})
        message = json.loads(answer)["error"]["message"]
        assert status == 404 and "gpt-9" in message and "auto" in message
    finally:
        running.stop()


async def test_a_lora_adapter_name_reaches_an_endpoint_declaring_it(tmp_path: Path) -> None:
    labels = [{names.MODEL_LABEL: SMALL}] * 3
    adapters = [frozenset(), frozenset({"sql-lora"}), frozenset()]
    running = stack.start(tmp_path, backends=3, config_text=tier_config(), labels=labels, adapters=adapters)
    try:
        for i in range(3):
            document = {"model": "sql-lora", "prompt": f"list the top customers {i}"}
            status, answer, headers = await post(running.url + "/v1/completions", document)
            assert status == 200, answer
            assert headers["x-served-by"] == running.backends[1].key  # the only one serving the adapter
            assert json.loads(running.backends[1].received[-1].body)["model"] == "sql-lora"  # unchanged
    finally:
        running.stop()


async def test_the_model_list_through_the_gateway_is_the_whole_pools(tmp_path: Path) -> None:
    labels = [{names.MODEL_LABEL: SMALL}, {names.MODEL_LABEL: SMALL}, {names.MODEL_LABEL: LARGE}]
    adapters = [frozenset(), frozenset({"sql-lora"}), frozenset()]
    running = stack.start(tmp_path, backends=3, config_text=tier_config(), labels=labels, adapters=adapters)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(running.url + "/v1/models") as response,
        ):
            assert response.status == 200
            listing = await response.json()
        assert listing["object"] == "list"
        assert [model["id"] for model in listing["data"]] == sorted(["auto", SMALL, LARGE, "sql-lora"])
        assert all(not backend.received for backend in running.backends)  # no engine was asked
    finally:
        running.stop()
