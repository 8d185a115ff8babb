"""Every flag of the GIE v1.5.0 endpoint picker (EPP), and what `frontier-picker` does with it.

`FLAGS` lists them all, in the order GIE defines them (`pkg/epp/server/options.go` `AddFlags`, which also adds
the logging flags `-v`/`--v` and controller-runtime's `--zap-*`), so a GIE Deployment's arguments can be
handed to Frontier unchanged. Each flag is handled one of four ways:

- `SAME`: a Frontier option with GIE's spelling, meaning and default (defined in `main.parser()`);
- `MAPPED`: translated onto a Frontier option (`--v` and `--zap-log-level` onto `--log-level`);
- `IGNORED`: accepted and logged at start; ignoring it changes nothing a GIE deployment relies on;
- `REFUSED`: the picker will not start, and the message names what to use instead. A refused flag whose
  value asks for what Frontier does anyway (`--ha-enable-leader-election=false`, `--pool-group
  inference.networking.k8s.io`, ...) is accepted: GIE's Helm chart passes some of these on every install.

Values parse as pflag parses them: `--flag value` or `--flag=value`; a boolean alone (`--secure-serving`)
means true; durations are Go's (`50ms`, `1m30s`). A flag in neither this table nor Frontier's own options
stops the start with argparse's "unrecognized arguments", as pflag refuses a flag it does not know.
GIE's controller-runtime also registers `--kubeconfig`, but on Go's flag set, which the EPP never parses;
Frontier's own `--kubeconfig` is unrelated.
"""

import argparse
import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from frontier_api import names

log = logging.getLogger(__name__)


class Handling(enum.Enum):
    """What `frontier-picker` does with a GIE flag."""

    SAME = "same"
    MAPPED = "mapped"
    IGNORED = "ignored"
    REFUSED = "refused"


class Kind(enum.Enum):
    """The GIE flag's value type, which decides how its value parses."""

    BOOL = "bool"
    INT = "int"
    STRING = "string"
    DURATION = "duration"
    INT_LIST = "ints"
    LEVEL = "level"


@dataclasses.dataclass(frozen=True, slots=True)
class GieFlag:
    """One GIE EPP flag: its value type, how Frontier handles it and why (or what to use instead)."""

    kind: Kind
    handling: Handling
    note: str
    # REFUSED only: values asking for what Frontier does anyway, accepted without a word.
    harmless: tuple[object, ...] = ()
    short: str | None = None


_METRIC_NAME_NOTE = (
    "Frontier reads each engine's own metric names, chosen by the Pod label "
    f"{names.ENGINE_TYPE_LABEL} ({names.ENGINE_VLLM}, the default, or {names.ENGINE_SGLANG}); "
    "drop the flag and label the Pods (GIE v1.5.0 refuses it too)"
)
_STANDALONE_NOTE = (
    "Frontier has no selector-based standalone mode; list the model servers in --endpoints-file "
    "(YAML/JSON, re-read when it changes) instead of --endpoint-selector/--endpoint-target-ports"
)

SAME, MAPPED, IGNORED, REFUSED = Handling.SAME, Handling.MAPPED, Handling.IGNORED, Handling.REFUSED

FLAGS: Final[Mapping[str, GieFlag]] = {
    "grpc-port": GieFlag(Kind.INT, SAME, "ext_proc port (9002)"),
    "ha-enable-leader-election": GieFlag(
        Kind.BOOL,
        REFUSED,
        "Frontier has no leader election: every replica is ready and picks (active-active); drop the flag",
        harmless=(False,),
    ),
    "pool-group": GieFlag(
        Kind.STRING,
        REFUSED,
        f"Frontier watches only {names.GIE_GROUP}/{names.GIE_VERSION} InferencePools; "
        f"drop the flag or give {names.GIE_GROUP}",
        harmless=(names.GIE_GROUP,),
    ),
    "pool-namespace": GieFlag(Kind.STRING, SAME, "empty: the NAMESPACE environment variable, then default"),
    "pool-name": GieFlag(Kind.STRING, SAME, "InferencePool to serve"),
    "endpoint-selector": GieFlag(Kind.STRING, REFUSED, _STANDALONE_NOTE),
    "endpoint-target-ports": GieFlag(Kind.INT_LIST, REFUSED, _STANDALONE_NOTE),
    "disable-endpoint-subset-filter": GieFlag(
        Kind.BOOL,
        REFUSED,
        f"Frontier always honours the gateway's {names.DESTINATION_SUBSET} hint; drop the flag",
        harmless=(False,),
    ),
    "model-server-metrics-scheme": GieFlag(
        Kind.STRING, REFUSED, "Frontier scrapes model servers over plain http only", harmless=("http",)
    ),
    "model-server-metrics-path": GieFlag(
        Kind.STRING,
        REFUSED,
        "Frontier scrapes /metrics on every endpoint; serve the engine's metrics there",
        harmless=("/metrics",),
    ),
    "model-server-metrics-port": GieFlag(
        Kind.INT,
        REFUSED,
        "Frontier scrapes each endpoint's own (target) port, GIE's default; drop the flag",
        harmless=(0,),
    ),
    # GIE's default is true; it only matters for https scraping, which Frontier does not do.
    "model-server-metrics-https-insecure-skip-verify": GieFlag(
        Kind.BOOL, IGNORED, "only affects https scraping, which Frontier does not do"
    ),
    "refresh-metrics-interval": GieFlag(Kind.DURATION, SAME, "interval between scrapes of each endpoint"),
    "refresh-prometheus-metrics-interval": GieFlag(
        Kind.DURATION, IGNORED, "Frontier computes its inference_pool_* gauges when scraped; nothing to flush"
    ),
    # In GIE it only gates those pool gauges; Frontier's saturation detector has its own staleness setting.
    "metrics-staleness-threshold": GieFlag(
        Kind.DURATION, IGNORED, "in GIE it only gates the pool gauges, which Frontier computes when scraped"
    ),
    "total-queued-requests-metric": GieFlag(Kind.STRING, REFUSED, _METRIC_NAME_NOTE),
    "total-running-requests-metric": GieFlag(Kind.STRING, REFUSED, _METRIC_NAME_NOTE),
    "kv-cache-usage-percentage-metric": GieFlag(Kind.STRING, REFUSED, _METRIC_NAME_NOTE),
    "lora-info-metric": GieFlag(Kind.STRING, REFUSED, _METRIC_NAME_NOTE),
    "cache-info-metric": GieFlag(Kind.STRING, REFUSED, _METRIC_NAME_NOTE),
    "v": GieFlag(Kind.INT, MAPPED, "log verbosity: 4 or more is --log-level DEBUG, less is INFO", short="v"),
    "zap-devel": GieFlag(Kind.BOOL, IGNORED, "Frontier has one log format"),
    # GIE's Helm chart passes --zap-encoder json on every install.
    "zap-encoder": GieFlag(Kind.STRING, IGNORED, "Frontier writes one key=value line per event"),
    "zap-log-level": GieFlag(
        Kind.LEVEL, MAPPED, "debug, info, error, panic or a verbosity as --v, onto --log-level; wins over --v"
    ),
    "zap-stacktrace-level": GieFlag(Kind.STRING, IGNORED, "Python tracebacks follow their errors"),
    "zap-time-encoding": GieFlag(Kind.STRING, IGNORED, "Frontier's log timestamps have one format"),
    # GIE traces by default, so either value leaves a Frontier deployment as GIE's default would find it.
    "tracing": GieFlag(Kind.BOOL, IGNORED, "Frontier emits no OpenTelemetry traces"),
    "health-checking": GieFlag(
        Kind.BOOL, IGNORED, "Frontier always serves gRPC health on the ext_proc port too"
    ),
    "metrics-port": GieFlag(Kind.INT, SAME, "Prometheus metrics port (9090)"),
    "grpc-health-port": GieFlag(Kind.INT, SAME, "gRPC health port (9003)"),
    "enable-pprof": GieFlag(Kind.BOOL, IGNORED, "Frontier has no pprof handlers"),
    "cert-path": GieFlag(Kind.STRING, SAME, "directory holding tls.crt and tls.key"),
    "enable-cert-reload": GieFlag(
        Kind.BOOL,
        REFUSED,
        "Frontier reads --cert-path once at start; restart the pods when the certificate is rotated",
        harmless=(False,),
    ),
    "secure-serving": GieFlag(Kind.BOOL, SAME, "TLS on the ext_proc port (true)"),
    # GIE's default is true; Frontier's only in Kubernetes mode (a file-mode picker has no API server).
    "metrics-endpoint-auth": GieFlag(
        Kind.BOOL, SAME, "bearer tokens reviewed against the API server on /metrics (true with --pool-name)"
    ),
    "config-file": GieFlag(Kind.STRING, SAME, "EndpointPickerConfig YAML file"),
    "config-text": GieFlag(Kind.STRING, SAME, "EndpointPickerConfig YAML text"),
}


def parse_bool(text: str) -> bool:
    """A boolean as Go's strconv.ParseBool reads it (true/t/1, false/f/0, any case), plus yes/no."""
    lowered = text.lower()
    if lowered in ("true", "t", "1", "yes"):
        return True
    if lowered in ("false", "f", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_SECONDS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "ms" before "m" and "s": the first alternative that matches wins.
_PART: Final = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION: Final = re.compile(rf"(?:{_PART.pattern})+")


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (`50ms`, `1m30s`, `0`) or a plain number of seconds (`0.05`)."""
    if re.fullmatch(_NUMBER, text):
        return float(text)  # Frontier's own spelling; Go's "0" reads the same
    if not _GO_DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a duration such as 50ms, 2s or 1m30s, got {text!r}")
    return sum(float(number) * _SECONDS[unit] for number, unit in _PART.findall(text))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


_ZAP_LEVELS: Final = {"debug": "DEBUG", "info": "INFO", "error": "ERROR", "panic": "CRITICAL"}


def _verbosity_level(verbosity: int) -> str:
    # GIE logs debug lines from verbosity 4 (its logging.DEBUG); 1 to 3 are info in its output too.
    return "DEBUG" if verbosity >= 4 else "INFO"


def _zap_level(text: str) -> str:
    """A Python log level name from a zap level name or a positive verbosity number."""
    if text.lower() in _ZAP_LEVELS:
        return _ZAP_LEVELS[text.lower()]
    if text.isdigit() and int(text) > 0:
        return _verbosity_level(int(text))
    raise argparse.ArgumentTypeError(f"expected debug, info, error, panic or a number above 0, got {text!r}")


_TYPES: Final[Mapping[Kind, tuple[Callable[[str], object], str]]] = {
    Kind.BOOL: (parse_bool, "BOOL"),
    Kind.INT: (int, "N"),
    Kind.STRING: (str, "TEXT"),
    Kind.DURATION: (parse_duration, "DURATION"),
    Kind.INT_LIST: (_int_list, "N,N"),
    Kind.LEVEL: (_zap_level, "LEVEL"),
}


def _handling_text(flag: GieFlag) -> str:
    if not flag.harmless:
        return flag.handling.value
    shown = ", ".join(
        str(value).lower() if isinstance(value, bool) else str(value) for value in flag.harmless
    )
    return f"{flag.handling.value} unless {shown}"


def dest(name: str) -> str:
    """The argparse attribute holding a GIE-only flag's value (None when the flag was not given)."""
    return "gie_" + name.replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every GIE flag that is not one of Frontier's own options (the SAME ones) to `parser`."""
    group = parser.add_argument_group(
        "GIE EPP flags", "accepted for drop-in compatibility; see frontier_picker/gie_flags.py"
    )
    for name, flag in FLAGS.items():
        if flag.handling is SAME:
            continue
        convert, metavar = _TYPES[flag.kind]
        spellings = [f"--{name}"] + ([f"-{flag.short}"] if flag.short else [])
        # pflag lets a boolean stand alone; nothing here is positional, so a following word is its value.
        extra: dict[str, Any] = {"nargs": "?", "const": True} if flag.kind is Kind.BOOL else {}
        group.add_argument(
            *spellings,
            dest=dest(name),
            type=convert,
            metavar=metavar,
            help=f"{_handling_text(flag)}: {flag.note}".replace("%", "%%"),
            **extra,
        )


def log_level(arguments: argparse.Namespace) -> str | None:
    """The log level GIE's `--zap-log-level` or else `--v` asks for (as in GIE); None if neither is given."""
    zap_level: str | None = getattr(arguments, dest("zap-log-level"), None)
    if zap_level is not None:
        return zap_level
    verbosity: int | None = getattr(arguments, dest("v"), None)
    return None if verbosity is None else _verbosity_level(verbosity)


def check(arguments: argparse.Namespace) -> None:
    """Log the ignored GIE flags that were given; exit naming the replacement of every refused one."""
    refusals: list[str] = []
    for name, flag in FLAGS.items():
        if flag.handling not in (IGNORED, REFUSED):
            continue
        value = getattr(arguments, dest(name), None)
        if value is None:
            continue
        if flag.handling is IGNORED:
            log.info("event=gie_flag_ignored flag=--%s value=%r why=%r", name, value, flag.note)
        elif value not in flag.harmless:
            refusals.append(f"frontier-picker: --{name} is not supported: {flag.note}")
    if refusals:
        raise SystemExit("\n".join(refusals))
