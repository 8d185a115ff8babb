"""`frontier-operator`: runs the kopf operator that turns ModelTiers into model-server and picker workloads.

Credentials come from `--kubeconfig` (or KUBECONFIG / ~/.kube/config), falling back to the in-cluster service
account. Without `--namespace` it watches the whole cluster; each `--namespace` (glob patterns allowed)
limits it. Settings for the rendered workloads come from flags or FRONTIER_* variables (`settings.from_env`).
"""

import argparse
import asyncio
import dataclasses
import logging
import pathlib
import threading

import kopf
import prometheus_client
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from frontier_operator import handlers, kube, reconcile, settings

log = logging.getLogger("frontier_operator")


def api_client(kubeconfig: str | None) -> k8s_client.ApiClient:
    """A kubernetes ApiClient from a kubeconfig file, else the in-cluster service account."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (k8s_config.ConfigException, FileNotFoundError):
        if kubeconfig:
            raise
        k8s_config.load_incluster_config(client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frontier-operator", description=__doc__.splitlines()[0])
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, then in-cluster)"
    )
    p.add_argument("--namespace", action="append", default=[], help="watch only these namespaces (globs ok)")
    p.add_argument("--engine-image", default=None, help="default model-server image")
    p.add_argument("--engine-command", default=None, help="model-server command, space-separated")
    p.add_argument("--picker-image", default=None, help="endpoint picker image")
    p.add_argument(
        "--picker-standalone",
        choices=("true", "false"),
        default=None,
        help="true: every pool's picker runs with an Envoy sidecar serving clients on port 8081 (GIE's "
        "standalone mode) unless its inference.frontier.dev/standalone annotation says false",
    )
    p.add_argument("--envoy-image", default=None, help="image of the standalone pickers' Envoy sidecar")
    p.add_argument(
        "--picker-config-file", default=None, help="EndpointPickerConfig for generated picker ConfigMaps"
    )
    p.add_argument(
        "--accelerator-label",
        default=None,
        help="node label accelerator.type is matched against (default cloud.google.com/gke-accelerator;"
        " nvidia.com/gpu.product with GPU Feature Discovery)",
    )
    p.add_argument("--resync-seconds", type=float, default=None, help="full resync period")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: off)")
    p.add_argument(
        "--liveness-port", type=int, default=0, help="kopf liveness endpoint port /healthz (0: off)"
    )
    p.add_argument("--log-level", default="INFO")
    return p


def settings_from(args: argparse.Namespace) -> settings.Settings:
    cfg = settings.from_env()
    if args.engine_image:
        cfg = dataclasses.replace(cfg, engine_image=args.engine_image)
    if args.engine_command:
        cfg = dataclasses.replace(cfg, engine_command=tuple(args.engine_command.split()))
    if args.picker_image:
        cfg = dataclasses.replace(cfg, picker_image=args.picker_image)
    if args.picker_standalone is not None:
        cfg = dataclasses.replace(cfg, picker_standalone=args.picker_standalone == "true")
    if args.envoy_image:
        cfg = dataclasses.replace(cfg, envoy_image=args.envoy_image)
    if args.picker_config_file:
        cfg = dataclasses.replace(cfg, picker_config=pathlib.Path(args.picker_config_file).read_text())
    if args.accelerator_label:
        cfg = dataclasses.replace(cfg, accelerator_label=args.accelerator_label)
    if args.resync_seconds is not None:
        cfg = dataclasses.replace(cfg, resync_seconds=args.resync_seconds)
    return cfg


async def run(
    *,
    kubeconfig: str | None,
    cfg: settings.Settings,
    namespaces: list[str],
    liveness_port: int = 0,
    stop_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    client = kube.Kube(api_client(kubeconfig), field_manager=cfg.field_manager)
    reconciler = reconcile.Reconciler(client, cfg)
    registry = handlers.registry_for(
        reconciler, login=handlers.connection_info(client), namespaces=namespaces
    )
    log.info(
        "starting namespaces=%s engine_image=%s engine_command=%r",
        ",".join(namespaces) or "*",
        cfg.engine_image,
        " ".join(cfg.engine_command),
    )
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf logs "Handler ... succeeded" per watch event; the operator logs one line per reconcile itself.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    asyncio.run(
        run(
            kubeconfig=args.kubeconfig,
            cfg=settings_from(args),
            namespaces=args.namespace,
            liveness_port=args.liveness_port,
        )
    )


if __name__ == "__main__":
    main()
