"""The container image, run: the picker inside the image routes a real chat completion from a real Envoy to a
simulated engine, the image runs as a non-root user, carries no compiler and carries every entry point.

The image comes from `hack/image.sh build` (what `make image` runs), which reuses the tagged image when its
labels say it was built from the same build inputs and base: `dev.frontier.source-tree` is the git tree hash
of the files the build context lets in (.dockerignore's whitelist, working-tree content through a throwaway
index: tracked, untracked and uncommitted edits alike) and `dev.frontier.base` the base image's ID. Hashing
content costs well under a second and, unlike a commit id or timestamps, rebuilds exactly when a file that
goes into the wheel changed; what it cannot see is PyPI (dependencies are resolved again only on a rebuild).

Processes: the picker and the engine (`frontier-sim serve`) both run INSIDE the image, each in its own
working container (`buildah from`), through `buildah run --isolation=chroot --network=host` as the image's
user; Envoy is the venv's (.venv/bin/envoy), configured by `frontier_api.envoy_bootstrap`. The endpoints
file is bind-mounted read-only. Addresses: 127.8.0.1 Envoy and the picker, 127.8.0.2 the engine; ports from
the OS. Without buildah the tests skip, unless CI is set, where they fail; they also need root (debootstrap,
buildah's storage).
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontier_api import envoy_bootstrap

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]  # a cold build (debootstrap, PyPI) takes minutes

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
FRONT = "127.8.0.1"  # Envoy and the picker
ENGINE = "127.8.0.2"  # the simulated engine
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVED = "llama-8b"
COMPILER = re.compile(r"^(?:[\w.-]+-)?(?:cc|c\+\+|gcc|g\+\+|clang|clang\+\+|tcc)(?:-[\d.]+)?$")


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"buildah {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def image_script(command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`bash hack/image.sh COMMAND` (what `make image` runs), output captured, stderr folded in."""
    return subprocess.run(
        ["bash", str(ROOT / "hack" / "image.sh"), command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def image() -> str:
    """The tag `make image` builds, built now or reused when up to date."""
    ci = bool(os.environ.get("CI"))
    if shutil.which("buildah") is None:
        if ci:
            pytest.fail("CI is set and buildah is missing (.ci/run installs it with debootstrap)")
        pytest.skip("buildah is not installed (apt-get install buildah debootstrap; make image)")
    if os.geteuid() != 0 and not ci:
        pytest.skip("the image build needs root (debootstrap, buildah's storage); run it as root")
    build = image_script("build", timeout=1100)
    assert build.returncode == 0, f"hack/image.sh build exited {build.returncode}:\n{build.stdout[-5000:]}"
    print(build.stdout[-2000:])  # built or reused, and why
    assert image_script("fresh").returncode == 0, "the image is not labelled with the current source tree"
    return image_script("tag").stdout.strip()


@contextlib.contextmanager
def working_container(image: str, role: str) -> Iterator[str]:
    """A `buildah from` container of `image`, removed afterwards."""
    name = f"frontier-image-test-{os.getpid()}-{role}"
    subprocess.run(["buildah", "rm", name], capture_output=True, check=False)  # a leftover of a killed run
    buildah("from", "--name", name, image)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    with working_container(image, "inspect") as name:
        yield name


def run_in(container: str, *command: str, user: str | None = None) -> str:
    """`command`'s stdout, run inside `container` (as the image's user unless `user`)."""
    options = ["--user", user] if user is not None else []
    return buildah("run", "--isolation=chroot", "--network=host", *options, container, "--", *command)


@dataclasses.dataclass
class Process:
    """A process in its own session (the whole `buildah run` tree stops with it), logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, command: list[str], tmp: Path) -> "Process":
        log = tmp / f"{name}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, popen, log)

    def tail(self) -> str:
        return f"--- {self.name} (exit {self.popen.poll()}):\n{self.log.read_text(errors='replace')[-3000:]}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], processes: list[Process], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.popen.poll() is None, (
                f"{process.name} exited while waiting for {what}\n" + "\n".join(p.tail() for p in processes)
            )
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready after {timeout}s\n" + "\n".join(p.tail() for p in processes))


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def picker_ready(address: str, port: int) -> bool:
    with grpc.insecure_channel(f"{address}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=2
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def successes(metrics: str) -> float:
    """The engine's `vllm:request_success_total`, summed over finish reasons."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def test_image_runs_as_a_non_root_user(image: str, container: str) -> None:
    user = buildah("inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image).strip()
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user!r}: want a numeric non-root uid"
    assert run_in(container, "id", "-u").strip() == uid


def test_image_carries_no_compiler_nor_pip_cache(container: str) -> None:
    on_path = run_in(container, "sh", "-c", 'for d in $(echo "$PATH" | tr : " "); do ls -1 "$d"; done; true')
    assert "python3" in on_path.split()  # the listing works
    assert [name for name in on_path.split() if COMPILER.match(name)] == []
    cc1_glob = "/usr/lib/gcc/*/*/cc1* /usr/libexec/gcc/*/*/cc1*"
    cc1 = run_in(container, "sh", "-c", f"ls {cc1_glob} 2>/dev/null || true")
    assert cc1.split() == []  # gcc's compiler proper, wherever a driver would look for it
    leftovers = run_in(
        container, "sh", "-c", "ls -d /root/.cache /src /tmp/wheels 2>/dev/null; true", user="0:0"
    )
    assert leftovers.split() == []


def test_image_carries_every_entry_point(container: str) -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        scripts = sorted(tomllib.load(file)["project"]["scripts"])
    assert {"frontier-picker", "frontier-operator", "frontier-sim"} <= set(scripts)
    found = run_in(container, "sh", "-c", " ".join(f"command -v {script};" for script in scripts)).split()
    assert found == [f"/opt/frontier/bin/{script}" for script in scripts]
    assert "usage: frontier-picker" in run_in(container, "frontier-picker", "--help")


def test_a_chat_completion_through_envoy_to_the_picker_in_the_image(image: str, tmp_path: Path) -> None:
    engine_port = free_port(ENGINE)
    grpc_port, health_port, metrics_port = free_port(FRONT), free_port(FRONT), free_port(FRONT)
    listen_port, admin_port = free_port(FRONT), free_port(FRONT)
    config = tmp_path / "config"
    config.mkdir()
    endpoints = {"endpoints": [{"name": "engine-0", "address": ENGINE, "port": engine_port}]}
    (config / "endpoints.yaml").write_text(json.dumps(endpoints))
    (tmp_path / "envoy.json").write_text(
        json.dumps(
            envoy_bootstrap.bootstrap(
                listen_address=FRONT,
                listen_port=listen_port,
                pickers=[f"{FRONT}:{grpc_port}"],
                picker_tls=False,
                endpoints=[(ENGINE, engine_port)],
                admin_port=admin_port,
            )
        )
    )
    run = ["buildah", "run", "--isolation=chroot", "--network=host"]
    processes: list[Process] = []
    with working_container(image, "engine") as engine_ctr, working_container(image, "picker") as picker_ctr:
        try:
            processes.append(
                Process.start(
                    "engine",
                    [*run, engine_ctr, "--", "frontier-sim", "serve", MODEL, "--served-model-name", SERVED,
                     "--host", ENGINE, "--port", str(engine_port)],
                    tmp_path,
                )
            )  # fmt: skip
            processes.append(
                Process.start(
                    "picker",
                    [*run, "--volume", f"{config}:/config:ro", picker_ctr, "--", "frontier-picker",
                     "--endpoints-file", "/config/endpoints.yaml", "--secure-serving", "false",
                     "--address", FRONT, "--grpc-port", str(grpc_port),
                     "--grpc-health-port", str(health_port), "--metrics-port", str(metrics_port)],
                    tmp_path,
                )
            )  # fmt: skip
            processes.append(
                Process.start(
                    "envoy",
                    [str(ENVOY), "-c", str(tmp_path / "envoy.json"), "--disable-hot-restart",
                     "--concurrency", "1", "-l", "warning"],
                    tmp_path,
                )
            )  # fmt: skip
            engine_url = f"http://{ENGINE}:{engine_port}"
            wait_until("the engine", lambda: http_get(engine_url + "/health")[0] == 200, processes)
            wait_until("the picker", lambda: picker_ready(FRONT, health_port), processes)
            wait_until("envoy", lambda: http_get(f"http://{FRONT}:{admin_port}/ready")[0] == 200, processes)
            before = successes(http_get(engine_url + "/metrics")[1])

            body = {
                "model": SERVED,
                "messages": [{"role": "user", "content": "Hello, image!"}],
                "max_tokens": 8,
            }
            request = urllib.request.Request(
                f"http://{FRONT}:{listen_port}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, answer = response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                status, answer = error.code, error.read().decode()
            logs = "\n".join(process.tail() for process in processes)
            assert status == 200, f"{status} {answer}\n{logs}"
            completion = json.loads(answer)
            assert completion["model"] == SERVED and completion["object"] == "chat.completion"
            assert 0 < completion["usage"]["completion_tokens"] <= 8
            assert completion["choices"][0]["message"]["content"]
            # The engine itself counted the request it answered.
            assert successes(http_get(engine_url + "/metrics")[1]) == before + 1, logs
            # ... and the picker in the image routed it (GIE's request counter, by model).
            routed = [
                line
                for line in http_get(f"http://{FRONT}:{metrics_port}/metrics")[1].splitlines()
                if line.startswith("inference_objective_request_total{") and f'model_name="{SERVED}"' in line
            ]
            assert [float(line.rsplit(" ", 1)[1]) for line in routed] == [1.0], logs
        finally:
            for process in reversed(processes):
                process.stop()
