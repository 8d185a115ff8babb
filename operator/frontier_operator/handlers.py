"""kopf handlers: which watch events trigger which reconciliation.

All handlers are *event* handlers (`kopf.on.event`): kopf keeps no per-object progress for them, so it never
writes annotations, finalizers or status of its own — the operator's only writes are its children and the
ModelTier status (see `reconcile`). Triggers:

- a ModelTier appears, or its spec changes (generation ahead of `status.observedGeneration`) → full pass;
  deleted → its pool's picker is re-owned by the remaining tiers (children go by garbage collection);
- an owned model-server Deployment changes → the owner's status is re-derived; its spec changed (generation)
  → full pass (a hand edit is reverted, an own apply costs reads only); deleted → full pass (recreate); the
  initial listing after a start is skipped (each tier's own event derives its status then);
- a pending model-server pod changes (the scheduler could not place it, or now has) → the owner's status is
  re-derived, so an unschedulable shape shows the scheduler's reason at once;
- the pool's endpoint picker Deployment changes what the tiers show of it (available and desired replicas,
  or it is deleted) → the status of every tier owning it is re-derived (`Routable`);
- an InferencePool appears, changes spec or is deleted → every tier of the pool gets a full pass; pools are
  remembered from their watch so passes need not read them;
- startup, before the watches open → one listing per kind primes the reconciler's cache, which the tier and
  Deployment events then keep current (`cache`), so the initial listing's passes send no reads;
- a failed pass (API error, conflict) → retried with exponential backoff, 1 s doubling to 60 s;
- every `resync_seconds` → a full pass over all tiers (repairs drift on children that are not watched: the
  picker's objects, PodDisruptionBudgets, HPAs).
"""

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Sequence
from typing import Any, Final

import kopf

from frontier_api import names
from frontier_operator import kube, manifests, pools, reconcile, status

log = logging.getLogger("frontier_operator.handlers")

_UNSEEN: Final = (-1, -1)  # a picker no event has shown yet


def _owner_tier(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == names.MODEL_TIER_KIND and ref.get("controller"):
            return str(ref["name"])
    return None


def registry_for(
    reconciler: reconcile.Reconciler, *, login: kopf.ConnectionInfo, namespaces: Sequence[str] = ()
) -> kopf.OperatorRegistry:
    """A kopf registry whose handlers drive `reconciler` (one registry per operator instance)."""
    registry = kopf.OperatorRegistry()
    # Per pool: its generation and the values of the annotations the operator renders from.
    pool_generations: dict[tuple[str, str], tuple[int | str | None, ...]] = {}
    deployment_generations: dict[tuple[str, str], int] = {}
    picker_availability: dict[tuple[str, str], tuple[int, int] | None] = {}
    tasks: list[asyncio.Task[None]] = []
    retries: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def reconcile_tier(namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
        """A full pass; when it fails (API error, conflict), retried with backoff until it succeeds."""
        try:
            await reconciler.tier(namespace, name, body=body)
        except Exception as err:
            log.warning("reconcile failed tier=%s/%s error=%r; retrying", namespace, name, err)
            key = (namespace, name)
            if key not in retries or retries[key].done():
                retries[key] = asyncio.create_task(_retry(reconciler, namespace, name))

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return login

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf posts Kubernetes Events for handler log lines at INFO; keep only warnings so a healthy
        # reconcile writes nothing.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 600
        # The pod watch asks the API server for pending model-server pods only (handler label filters are
        # applied here, after the whole stream arrived); a pod that starts running leaves the stream.
        settings.watching.label_selectors["", "v1", "pods"] = (
            f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGED_BY},{manifests.COMPONENT_LABEL}=model-server"
        )
        settings.watching.field_selectors["", "v1", "pods"] = "status.phase=Pending"
        # Before the watches start (kopf runs startup handlers first): one listing per kind feeds the passes
        # of the initial listing instead of a few GETs per tier and a tier listing per pool.
        try:
            await reconciler.prime(scopes(namespaces))
        except Exception as error:  # e.g. no permission to list cluster-wide: every read asks the API server
            log.warning("event=cache_prime_failed error=%r", error)
        tasks.append(asyncio.create_task(_resync_forever(reconciler, namespaces)))

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        for task in [*tasks, *retries.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.event(names.FRONTIER_GROUP, names.FRONTIER_VERSION, names.MODEL_TIER_PLURAL, registry=registry)
    async def _tier_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if event["type"] == "DELETED":
            reconciler.cache.gone(event["object"])
            pool = (body.get("spec") or {}).get("poolRef", {}).get("name")
            if pool:
                await reconciler.pool_changed(namespace, pool)
            return
        reconciler.cache.seen(event["object"])
        observed = (body.get("status") or {}).get("observedGeneration")
        if event["type"] == "MODIFIED" and observed == meta.get("generation"):
            return  # a status or metadata change (often our own write); children are already current
        await reconcile_tier(namespace, name, dict(event["object"]))

    # Registered before the Deployment handlers below: kopf runs an event's handlers in this order, so the
    # passes they start read the Deployment as this event delivered it. Unfiltered, so a Deployment relabelled
    # away from the operator leaves the cache.
    @kopf.on.event("apps", "v1", "deployments", registry=registry)
    async def _deployment_seen(*, event: kopf.RawEvent, **_: Any) -> None:
        if event["type"] == "DELETED":
            reconciler.cache.gone(event["object"])
        else:
            reconciler.cache.seen(event["object"])

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={manifests.MANAGED_BY_LABEL: manifests.MANAGED_BY, manifests.COMPONENT_LABEL: "model-server"},
        registry=registry,
    )
    async def _deployment_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = dict(body["metadata"])
        tier = _owner_tier(meta)
        if tier is None:
            return  # not ours
        key = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation", 0))
        before = deployment_generations.get(key)
        deployment_generations[key] = generation
        if event["type"] is None:
            # The initial listing: the tier's own event derives its status. Logged so a restart can be
            # seen to have gone through the listing without writing anything.
            log.info("listed kind=Deployment namespace=%s name=%s", meta["namespace"], meta["name"])
            return
        if event["type"] == "DELETED":
            deployment_generations.pop(key, None)
            await reconcile_tier(meta["namespace"], tier)
        elif before is not None and before != generation:
            await reconcile_tier(meta["namespace"], tier)
        else:
            await reconciler.status_only(meta["namespace"], tier)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={manifests.MANAGED_BY_LABEL: manifests.MANAGED_BY, manifests.COMPONENT_LABEL: "model-server"},
        registry=registry,
    )
    async def _pod_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        # Only a pending pod can change whether the tier is schedulable; running pods show in the
        # Deployment's counts, which have their own events.
        if event["type"] in (None, "DELETED") or (body.get("status") or {}).get("phase") != "Pending":
            return
        meta = dict(body["metadata"])
        # The tier label is the tier's name: names are at most 50 characters (CEL), so never cut.
        tier = (meta.get("labels") or {}).get(names.TIER_LABEL)
        if tier:
            await reconciler.status_only(meta["namespace"], str(tier))

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={
            manifests.MANAGED_BY_LABEL: manifests.MANAGED_BY,
            manifests.COMPONENT_LABEL: "endpoint-picker",
        },
        registry=registry,
    )
    async def _picker_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = dict(body["metadata"])
        key = (meta["namespace"], meta["name"])
        shown = None if event["type"] == "DELETED" else status.picker_availability(event["object"])
        before = picker_availability.get(key, _UNSEEN)
        picker_availability[key] = shown
        if event["type"] is None:
            return  # the initial listing: each tier's own event derives its status
        if shown == before:
            # What the tiers show of their picker is unchanged (a re-owning or config rollout that kept a
            # replica available): re-deriving every owner's status would cost the pool's tier count in reads.
            return
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == names.MODEL_TIER_KIND:
                await reconciler.status_only(meta["namespace"], str(ref["name"]))

    @kopf.on.event(names.GIE_GROUP, names.GIE_VERSION, names.INFERENCE_POOL_PLURAL, registry=registry)
    async def _pool_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        # What the renderers read: the spec (its generation) and the Frontier annotations, which change no
        # generation.
        annotations = meta.get("annotations") or {}
        generation = (int(meta.get("generation", 0)), *(annotations.get(a) for a in pools.ANNOTATIONS))
        before = pool_generations.get(key)
        pool_generations[key] = generation
        if event["type"] == "DELETED":
            pool_generations.pop(key, None)
            await reconciler.pool_changed(*key)  # its tiers become ConfigValid=False (PoolNotFound)
            return
        if event["type"] is None and reconciler.awaited(*key):
            # Listed after a tier's pass found it missing (the pool watch started late): pass them now.
            await reconciler.pool_changed(*key)
        reconciler.remember_pool(event["object"])
        if event["type"] is None:
            log.info("listed kind=InferencePool namespace=%s name=%s", *key)
            return  # the initial listing: tier events cover it
        if before == generation:
            return  # a status-only change (or one to annotations the operator does not read)
        await reconciler.pool_changed(*key)

    return registry


def watched(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether the operator watches `namespace` (no patterns: every namespace)."""
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def scopes(patterns: Sequence[str]) -> list[str]:
    """Where to list to cover the watched namespaces: each named namespace, or "" (every namespace) when
    there are no patterns or one is a glob."""
    if not patterns or any(ch in p for p in patterns for ch in "*?["):
        return [""]
    return list(patterns)


async def _retry(reconciler: reconcile.Reconciler, namespace: str, name: str) -> None:
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        try:
            await reconciler.tier(namespace, name)
            return
        except Exception as err:
            delay = min(delay * 2, 60.0)
            log.warning(
                "reconcile failed tier=%s/%s error=%r; next try in %.0fs", namespace, name, err, delay
            )


async def _resync_forever(reconciler: reconcile.Reconciler, namespaces: Sequence[str]) -> None:
    while True:
        await asyncio.sleep(reconciler.cfg.resync_seconds)
        try:
            await resync_once(reconciler, namespaces)
        except Exception:
            log.exception("event=resync_failed")  # listing failed: the next period tries again


async def resync_once(reconciler: reconcile.Reconciler, namespaces: Sequence[str]) -> list[str]:
    """One full pass over the watched tiers; returns the tiers (`namespace/name`) whose pass failed. Each
    tier's pass is isolated: one broken tier never keeps the others from being repaired."""
    reconciler.forget_pickers()
    tiers = await asyncio.to_thread(
        reconciler.kube.list, reconcile.TIER_API, names.MODEL_TIER_KIND, namespace=""
    )
    await reconciler.relist(scopes(namespaces))
    failed = []
    for t in tiers:
        namespace, name = t["metadata"]["namespace"], t["metadata"]["name"]
        if not watched(namespace, namespaces):
            continue
        try:
            await reconciler.tier(namespace, name, body=t)
        except Exception as error:
            failed.append(f"{namespace}/{name}")
            log.exception("event=resync_tier_failed tier=%s/%s error=%r", namespace, name, error)
    log.info("event=resync tiers=%d failed=%d", len(tiers), len(failed))
    return failed


def connection_info(client: kube.Kube) -> kopf.ConnectionInfo:
    """kopf credentials from the same kubernetes-client configuration the reconciler uses."""
    cfg = client.configuration
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme = None
    if token and " " in token:
        scheme, token = token.split(" ", 1)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )
