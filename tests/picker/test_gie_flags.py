"""Drop-in for GIE's EPP: every flag of the GIE v1.5.0 endpoint picker is accepted (same meaning, mapped or
ignored) or refused with a message naming its replacement. Argument parsing only; no server starts."""

import logging
import os
import re
from pathlib import Path

import pytest

from frontier_picker import gie_flags, main, server

GIE_MODULE = "sigs.k8s.io/gateway-api-inference-extension@v1.5.0"
# A flag definition on a pflag or Go flag set: fs.IntVar(&opts.X, "name", ...), fs.Var(&v, "name", ...).
FLAG_DEFINITION = re.compile(r'\bfs\.\w*Var[P]?\(\s*&[\w.]+,\s*"([\w-]+)"')


def module_cache() -> Path:
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    return Path(os.environ.get("GOPATH", str(Path.home() / "go"))).joinpath("pkg", "mod")


def gie_source_flags() -> set[str]:
    """The flag names GIE v1.5.0's EPP defines, read from the Go module cache (hack/build.sh downloads it)."""
    gie = module_cache() / GIE_MODULE
    if not gie.is_dir():
        pytest.skip(f"{gie} is absent (hack/build.sh downloads it)")
    sources = [gie / "pkg/epp/server/options.go", gie / "pkg/common/observability/logging/options.go"]
    runner = (gie / "cmd/epp/runner/runner.go").read_text()
    assert "opts.AddFlags(pflag.CommandLine)" in runner  # the EPP's flags are exactly these AddFlags
    # Go's own flag set is never added, so controller-runtime's --kubeconfig is no EPP flag.
    assert not re.search(r"AddGoFlagSet\(\s*\w*flag\.CommandLine", runner)
    # The zap flags come from the controller-runtime GIE requires; their names are the same in every release.
    required = re.search(r"sigs\.k8s\.io/controller-runtime (v\S+)", (gie / "go.mod").read_text())
    assert required is not None
    runtimes = [module_cache() / f"sigs.k8s.io/controller-runtime@{required.group(1)}"]
    runtimes += sorted((module_cache() / "sigs.k8s.io").glob("controller-runtime@*"))
    runtime = next((path for path in runtimes if path.is_dir()), None)
    if runtime is None:
        pytest.skip("no controller-runtime in the Go module cache")
    sources.append(runtime / "pkg/log/zap/zap.go")
    return {name for source in sources for name in FLAG_DEFINITION.findall(source.read_text())}


def test_every_gie_flag_is_in_the_table() -> None:
    flags = gie_source_flags()
    assert "grpc-port" in flags and "zap-encoder" in flags and "v" in flags  # the regex reads all three files
    assert sorted(flags - set(gie_flags.FLAGS)) == []
    assert sorted(set(gie_flags.FLAGS) - flags) == []  # nothing made up either


def test_the_table_is_complete_without_the_go_cache() -> None:
    # 31 flags of options.go, -v and the five zap flags: the product keeps its own list.
    assert len(gie_flags.FLAGS) == 37
    counts = dict.fromkeys(gie_flags.Handling, 0)
    for flag in gie_flags.FLAGS.values():
        counts[flag.handling] += 1
    # picker/README.md ("Running it") quotes these counts.
    assert [counts[handling] for handling in gie_flags.Handling] == [11, 2, 10, 14]
    own = {option for action in main.parser()._actions for option in action.option_strings}
    for name, flag in gie_flags.FLAGS.items():
        assert f"--{name}" in own, name
        if flag.handling is gie_flags.Handling.REFUSED:
            assert flag.note, name  # a refusal names what to use instead
        if flag.harmless:
            assert flag.handling is gie_flags.Handling.REFUSED, name


def parse(*argv: str) -> server.Options:
    return main.options(main.parser().parse_args(list(argv)))


def test_a_helm_rendered_gie_command_line_starts(tmp_path: Path) -> None:
    config = tmp_path / "default-plugins.yaml"
    config.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n")
    # GIE v1.5.0's inferencepool chart with its default values, plus the ports and TLS spelled out.
    options = parse(
        "--pool-name",
        "chat",
        "--pool-namespace",
        "serving",
        "--pool-group",
        "inference.networking.k8s.io",
        "--zap-encoder",
        "json",
        "--config-file",
        str(config),
        "--v",
        "3",
        "--tracing=false",
        "--grpc-port",
        "9002",
        "--grpc-health-port",
        "9003",
        "--metrics-port",
        "9090",
        "--secure-serving",
        "true",
        "--metrics-endpoint-auth=false",
        "--ha-enable-leader-election=false",
        "--refresh-metrics-interval",
        "50ms",
        "--enable-pprof",
        "false",
    )
    assert (options.grpc_port, options.grpc_health_port, options.metrics_port) == (9002, 9003, 9090)
    assert (options.pool_name, options.pool_namespace, options.secure_serving) == ("chat", "serving", True)
    assert options.config_text == config.read_text()
    assert options.refresh_metrics_interval_s == pytest.approx(0.05)
    assert options.metrics_auth is False  # the chart turned it off


@pytest.mark.parametrize(
    ("argv", "secure"),
    [
        (["--secure-serving"], True),  # a GIE boolean given bare
        (["--secure-serving=false"], False),
        (["--secure-serving", "false"], False),
        (["--secure-serving=F"], False),  # Go's strconv.ParseBool spellings
        ([], True),
    ],
)
def test_booleans_parse_as_pflag_does(argv: list[str], secure: bool) -> None:
    assert parse("--pool-name", "chat", *argv).secure_serving is secure


def test_bare_gie_booleans_parse() -> None:
    arguments = main.parser().parse_args(
        ["--tracing", "--health-checking", "--zap-devel", "--pool-name", "a"]
    )
    assert getattr(arguments, gie_flags.dest("tracing")) is True
    assert getattr(arguments, gie_flags.dest("zap-devel")) is True
    with pytest.raises(SystemExit, match=r"--ha-enable-leader-election is not supported: .*active-active"):
        main.options(main.parser().parse_args(["--pool-name", "a", "--ha-enable-leader-election"]))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("2s", 2.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("0", 0.0),
        ("0.25", 0.25),
    ],
)
def test_durations_are_go_durations_or_seconds(text: str, seconds: float) -> None:
    assert gie_flags.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1s", "1d", "ms", "1.5.0s", "nan", "inf"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(SystemExit):
        main.parser().parse_args(["--refresh-metrics-interval", text])


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        ([], "INFO"),
        (["--v", "1"], "INFO"),
        (["-v", "3"], "INFO"),
        (["-v=4"], "DEBUG"),
        (["--v=5"], "DEBUG"),
        (["--zap-log-level", "error"], "ERROR"),
        (["--zap-log-level", "panic"], "CRITICAL"),
        (["--zap-log-level=debug", "--v", "1"], "DEBUG"),  # zap-log-level wins over -v, as in GIE
        (["--zap-log-level", "2", "--v", "5"], "INFO"),
        (["--log-level", "WARNING", "--v", "5"], "WARNING"),  # Frontier's own flag wins
    ],
)
def test_verbosity_maps_onto_the_log_level(argv: list[str], level: str) -> None:
    assert main.log_level(main.parser().parse_args(argv)) == level


def test_a_bad_zap_level_is_refused() -> None:
    with pytest.raises(SystemExit):
        main.parser().parse_args(["--zap-log-level", "verbose"])


def test_ignored_flags_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=gie_flags.__name__):
        parse(
            "--pool-name", "a", "--tracing=true", "--zap-encoder", "json", "--metrics-staleness-threshold=2s"
        )
    lines = [record.getMessage() for record in caplog.records]
    ignored = [line for line in lines if "event=gie_flag_ignored" in line]
    assert len(ignored) == 3
    assert any("flag=--tracing value=True" in line for line in ignored)


REPLACEMENTS = {
    "endpoint-selector": ("app=vllm", "--endpoints-file"),
    "endpoint-target-ports": ("8000,8001", "--endpoints-file"),
    "total-queued-requests-metric": ("sglang:num_queue_reqs", "engine-type"),
    "total-running-requests-metric": ("sglang:num_running_reqs", "engine-type"),
    "kv-cache-usage-percentage-metric": ("sglang:token_usage", "engine-type"),
    "lora-info-metric": ("", "engine-type"),
    "cache-info-metric": ("sglang:cache_config_info", "engine-type"),
    "ha-enable-leader-election": ("true", "active-active"),
    "pool-group": ("inference.networking.x-k8s.io", "inference.networking.k8s.io"),
    "disable-endpoint-subset-filter": ("true", "x-gateway-destination-endpoint-subset"),
    "model-server-metrics-scheme": ("https", "http"),
    "model-server-metrics-path": ("/prometheus/metrics", "/metrics"),
    "model-server-metrics-port": ("8080", "target"),
    "enable-cert-reload": ("true", "restart"),
}


def test_every_refused_flag_has_a_case() -> None:
    refused = {name for name, flag in gie_flags.FLAGS.items() if flag.handling is gie_flags.Handling.REFUSED}
    assert refused == set(REPLACEMENTS)


@pytest.mark.parametrize("name", sorted(REPLACEMENTS))
def test_refused_flags_exit_naming_the_replacement(name: str) -> None:
    value, replacement = REPLACEMENTS[name]
    with pytest.raises(SystemExit) as refusal:
        parse("--pool-name", "a", f"--{name}={value}")
    message = str(refusal.value.code)
    assert message.startswith(f"frontier-picker: --{name} is not supported: ")
    assert replacement in message


@pytest.mark.parametrize(
    "argv",
    [
        ["--pool-group", "inference.networking.k8s.io"],
        ["--ha-enable-leader-election=false"],
        ["--disable-endpoint-subset-filter", "false"],
        ["--model-server-metrics-scheme=http", "--model-server-metrics-path=/metrics"],
        ["--model-server-metrics-port", "0"],
        ["--enable-cert-reload=false"],
    ],
)
def test_refused_flags_asking_for_what_frontier_does_are_accepted(argv: list[str]) -> None:
    parse("--pool-name", "a", *argv)


def test_all_refusals_are_named_at_once() -> None:
    with pytest.raises(SystemExit) as refusal:
        parse("--pool-name", "a", "--endpoint-selector", "app=x", "--enable-cert-reload")
    lines = str(refusal.value.code).splitlines()
    assert [line.split(" is ")[0] for line in lines] == [
        "frontier-picker: --endpoint-selector",
        "frontier-picker: --enable-cert-reload",
    ]


def test_unknown_and_abbreviated_flags_are_refused() -> None:
    with pytest.raises(SystemExit):
        main.parser().parse_args(["--pool-name", "a", "--no-such-gie-flag", "1"])
    with pytest.raises(SystemExit):  # pflag does not abbreviate, so neither does Frontier
        main.parser().parse_args(["--pool", "a"])


def test_pool_namespace_defaults_as_in_gie(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAMESPACE", raising=False)
    assert parse("--pool-name", "a").pool_namespace == "default"
    monkeypatch.setenv("NAMESPACE", "serving")
    assert parse("--pool-name", "a").pool_namespace == "serving"
    assert parse("--pool-name", "a", "--pool-namespace", "other").pool_namespace == "other"


def test_metrics_auth_is_on_by_default_only_where_there_is_an_api_server() -> None:
    assert parse("--pool-name", "a").metrics_auth is True  # GIE's default
    assert parse("--endpoints-file", "e.yaml").metrics_auth is False
    assert parse("--pool-name", "a", "--metrics-endpoint-auth=false").metrics_auth is False
    assert parse("--endpoints-file", "e.yaml", "--metrics-endpoint-auth").metrics_auth is True
