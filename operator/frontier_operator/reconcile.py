"""Reconciliation: bring one ModelTier's children and status in line with its spec, writing only differences.

Level-triggered and idempotent: every pass reads the tier, its InferencePool and its children (from the cache
where it holds them, see `cache`), renders the desired children, and applies only those whose applied-hash
annotation differs from what is observed or whose fields were changed by hand (`manifests.drift`, logged once
per repaired child); children of roles the spec no longer has are deleted. A live object of a child's name
that the operator did not create is never applied over (`manifests.foreign`): the tier reports it instead. The
pool's picker is reconciled the same way, and the picker of a pool a tier left is re-owned by its remaining
tiers or deleted with the last. Status is then derived from the observed Deployments (with the pods of roles
still rolling out, and the pool's picker Deployment) and patched only if it differs; a ConfigValid=False
transition is also posted as a Kubernetes Event on the tier. A resumed operator facing an unchanged cluster
therefore reads but never writes.

Passes for one tier are serialised by a per-tier lock (spec events and Deployment status events race).
"""

import asyncio
import copy
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from frontier_api import modeltier, names, schema
from frontier_operator import (
    cache,
    events,
    kube,
    manifests,
    pools,
    render_args,
    render_picker,
    render_tier,
    settings,
    status,
    validate,
)

log = logging.getLogger("frontier_operator.reconcile")

TIER_API: Final = f"{names.FRONTIER_GROUP}/{names.FRONTIER_VERSION}"
POOL_API: Final = f"{names.GIE_GROUP}/{names.GIE_VERSION}"
# Kinds a tier owns; stale ones (a role or HPA the spec dropped) are deleted.
TIER_CHILD_KINDS: Final = (
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
)
# Kinds of a pool's picker (`render_picker`), collected when the pool's last tier has left it.
PICKER_KINDS: Final = (
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("v1", "ServiceAccount"),
)


class Taken(Exception):
    """A live object has the name of a child but was not created by the operator (`manifests.foreign`)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(
            f"{what} exists and {why}; frontier-operator does not adopt objects it did not create"
        )


@dataclasses.dataclass(kw_only=True)
class Outcome:
    """What one pass did (for the reconcile log line and tests)."""

    applied: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    status_written: bool = False
    invalid: validate.Invalid | None = None


class Reconciler:
    """Reconciles ModelTiers through a `kube.Kube`."""

    def __init__(self, client: kube.Kube, cfg: settings.Settings) -> None:
        self.kube = client
        self.cfg = cfg
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pool_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Per pool, the tier uids the picker objects were last verified to be owned by. A tier pass skips the
        # picker when its own uid is already there, so a pool of N tiers costs one tier LIST, not N (a restart
        # with 200 tiers would otherwise list all 200 tiers 200 times).
        self._picker_owners: dict[tuple[str, str], frozenset[str]] = {}
        # InferencePools as last seen on the watch (GIE's objects change rarely); a miss reads the API.
        self._pools: dict[tuple[str, str], dict[str, Any]] = {}
        # Pools a tier named and a pass found missing: the pool's first appearance on the watch, even in its
        # initial listing (a watch that started after the tier's pass), must give those tiers a pass.
        self._awaited_pools: set[tuple[str, str]] = set()
        # What the watches and the startup listing showed (`cache`): reads that hit it cost no request.
        self.cache = cache.Cache()

    def remember_pool(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self._pools[(meta["namespace"], meta["name"])] = copy.deepcopy(dict(obj))

    def awaited(self, namespace: str, name: str) -> bool:
        """Whether a tier's pass found pool `name` missing since the pool was last reconciled."""
        return (namespace, name) in self._awaited_pools

    def forget_pool(self, namespace: str, name: str) -> None:
        self._pools.pop((namespace, name), None)

    async def _pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._pools.get((namespace, name))
        if found is None:
            found = await self._get(POOL_API, "InferencePool", namespace, name)
            if found is not None:
                self._pools[(namespace, name)] = found
        return found

    def _lock(self, table: dict[tuple[str, str], asyncio.Lock], key: tuple[str, str]) -> asyncio.Lock:
        found = table.get(key)
        if found is None:
            found = table[key] = asyncio.Lock()
        return found

    async def _get(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = True
    ) -> dict[str, Any] | None:
        found = self.cache.take(api_version, kind, namespace, name) if cached else None
        if found is not None:
            return found
        return await asyncio.to_thread(self.kube.get, api_version, kind, namespace=namespace, name=name)

    async def _tiers(self, namespace: str) -> list[dict[str, Any]]:
        """The ModelTiers of `namespace`, from the watch when the cache has them."""
        found = self.cache.tiers(namespace)
        if found is not None:
            return found
        return await asyncio.to_thread(self.kube.list, TIER_API, names.MODEL_TIER_KIND, namespace=namespace)

    def _list_kinds(self, kinds: Sequence[tuple[str, str]], scopes: Sequence[str]) -> list[dict[str, Any]]:
        selector = f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGED_BY}"
        return [
            obj
            for namespace in scopes
            for api_version, kind in kinds
            for obj in self.kube.list(api_version, kind, namespace=namespace, label_selector=selector)
        ]

    async def prime(self, scopes: Sequence[str]) -> None:
        """Fill the cache from one listing per kind per scope (a namespace, or "" for all) before the watches
        start: from then on the watches keep its tiers and Deployments current."""
        started = time.perf_counter()
        tiers = await asyncio.to_thread(
            lambda: [
                t for ns in scopes for t in self.kube.list(TIER_API, names.MODEL_TIER_KIND, namespace=ns)
            ]
        )
        pool_objs = await asyncio.to_thread(
            lambda: [p for ns in scopes for p in self.kube.list(POOL_API, "InferencePool", namespace=ns)]
        )
        deployments = await asyncio.to_thread(self._list_kinds, [cache.WATCHED_DEPLOYMENT], scopes)
        listed = await asyncio.to_thread(self._list_kinds, cache.LISTED_KINDS, scopes)
        for pool_obj in pool_objs:
            self.remember_pool(pool_obj)
        self.cache.fill(tiers=tiers, deployments=deployments, listed=listed)
        log.info(
            "event=cache_primed tiers=%d pools=%d deployments=%d listed=%d duration_ms=%.1f",
            len(tiers),
            len(pool_objs),
            len(deployments),
            len(listed),
            (time.perf_counter() - started) * 1000,
        )

    async def relist(self, scopes: Sequence[str]) -> None:
        """Refresh the cache's single-use objects of the unwatched kinds (before a resync's passes)."""
        self.cache.relist(await asyncio.to_thread(self._list_kinds, cache.LISTED_KINDS, scopes))

    async def _observe(self, desired: list[manifests.Manifest]) -> list[dict[str, Any] | None]:
        """The live objects `desired` names (None where absent), read concurrently (a new tier's first write
        waits for these reads); raises `Taken` before anything is written when one of them is not the
        operator's."""
        observed = await asyncio.gather(*(self._get(*manifests.key(m)) for m in desired))
        for manifest, found in zip(desired, observed, strict=True):
            why = None if found is None else manifests.foreign(manifest, found)
            if why is not None:
                _, kind, namespace, name = manifests.key(manifest)
                raise Taken(f"{kind} {namespace}/{name}", why)
        return list(observed)

    async def _ensure(
        self, desired: manifests.Manifest, observed: dict[str, Any] | None
    ) -> tuple[str | None, dict[str, Any]]:
        """Apply `desired` unless the observed object already matches it; returns (`Kind/name` when written,
        the object as it now is)."""
        _, kind, namespace, name = manifests.key(desired)
        if observed is not None and _applied_hash(desired) == _applied_hash(observed):
            drifted = manifests.drift(desired, observed)
            if not drifted:
                return None, observed
            log.info(
                "event=drift_repaired kind=%s namespace=%s name=%s fields=%s",
                kind,
                namespace,
                name,
                ",".join(drifted),
            )
        applied = await asyncio.to_thread(self.kube.apply, desired)
        return f"{kind}/{name}", applied

    async def tier(
        self, namespace: str, name: str, *, body: Mapping[str, Any] | None = None
    ) -> Outcome | None:
        """One full pass for a tier (None when the tier is gone or being deleted); `body` is the tier as a
        watch event just delivered it (saves a read), else it is read."""
        async with self._lock(self._locks, (namespace, name)):
            return await self._tier(namespace, name, body)

    async def _tier(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> Outcome | None:
        started = time.perf_counter()
        if body is not None:
            obj: dict[str, Any] | None = copy.deepcopy(dict(body))
        else:
            obj = await self._get(TIER_API, names.MODEL_TIER_KIND, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        outcome = Outcome()
        spec: modeltier.ModelTierSpec | None = None
        pool: pools.Pool | None = None
        try:
            spec = modeltier.parse_spec(obj.get("spec"))
        except schema.ParseError as err:
            outcome.invalid = validate.Invalid(reason="SpecInvalid", message=str(err))
        if spec is not None:
            outcome.invalid = validate.check_spec(spec)
        if spec is not None and outcome.invalid is None:
            pool_name = spec.pool_ref.name
            pool_obj = await self._pool(namespace, pool_name)
            if pool_obj is None:
                self._awaited_pools.add((namespace, pool_name))
                outcome.invalid = validate.Invalid(
                    reason="PoolNotFound",
                    message=f"spec.poolRef.name: InferencePool {namespace}/{pool_name} does not exist",
                )
            else:
                try:
                    pool = pools.from_object(pool_obj)
                except pools.PoolError as err:
                    outcome.invalid = validate.Invalid(reason="PoolInvalid", message=str(err))
        args_hash: str | None = None
        roles: list[str] = []
        observed: dict[str, dict[str, Any]] = {}
        if spec is not None and pool is not None and outcome.invalid is None:
            roles = list(spec.roles())
            desired = render_tier.render(tier=obj, spec=spec, pool=pool, cfg=self.cfg)
            try:
                for manifest, live in zip(desired, await self._observe(desired), strict=True):
                    written, current = await self._ensure(manifest, live)
                    if written:
                        outcome.applied.append(written)
                    if manifest["kind"] == "Deployment":
                        observed[manifest["metadata"]["name"]] = current
            except kube.Refused as refused:
                # Passed admission, refused at apply: say so on the tier, in the API server's words.
                outcome.invalid = validate.Invalid(reason="ApplyRefused", message=str(refused))
            except Taken as taken:
                outcome.invalid = validate.Invalid(reason="ChildNameTaken", message=str(taken))
        if spec is not None and pool is not None and outcome.invalid is None:
            # Stale children can only exist after a spec change: skip the listing when this generation was
            # already reconciled and nothing needed writing (the common case, e.g. after a restart).
            already = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")
            valid_before = _condition_status(obj, modeltier.CONFIG_VALID) == "True"
            changed = bool(outcome.applied) or not (already and valid_before)
            if changed:
                outcome.deleted = await self._delete_stale(obj, {manifests.key(m) for m in desired})
            if not self._picker_owned_by(pool, obj["metadata"]["uid"]):
                try:
                    outcome.applied += await self.picker(pool, unless_owned_by=obj["metadata"]["uid"])
                except Taken as taken:
                    outcome.invalid = validate.Invalid(
                        reason="PickerNameTaken",
                        message=f"the endpoint picker of InferencePool {namespace}/{pool.name}"
                        f" (spec.endpointPickerRef.name {pool.picker_name!r}) cannot be created: {taken}",
                    )
            if changed:  # after the new pool's picker: serving first, clean-up second
                for left in await self._pools_left(obj, pool):
                    applied, deleted = await self._leave_pool(namespace, left)
                    outcome.applied += applied
                    outcome.deleted += deleted
            args_hash = render_args.args_hash(render_tier.rendered_args(spec=spec, pool=pool))
        valid_before_pass = _condition(obj, modeltier.CONFIG_VALID)
        outcome.status_written = await self._write_status(
            obj, roles=roles, pool=pool, invalid=outcome.invalid, args_hash=args_hash, observed=observed
        )
        if outcome.invalid is not None and events.is_transition(valid_before_pass, outcome.invalid):
            await asyncio.to_thread(
                self.kube.create,
                events.warning(
                    tier=obj,
                    reason=outcome.invalid.reason,
                    message=outcome.invalid.message,
                    now=status.now_rfc3339(),
                ),
            )
        log.info(
            "reconcile tier=%s/%s generation=%s valid=%s applied=%s deleted=%s status_written=%s"
            " duration_ms=%.1f",
            namespace,
            name,
            obj["metadata"].get("generation"),
            outcome.invalid is None,
            ",".join(outcome.applied) or "-",
            ",".join(outcome.deleted) or "-",
            outcome.status_written,
            (time.perf_counter() - started) * 1000,
        )
        if outcome.invalid is not None:
            log.warning(
                "config invalid tier=%s/%s reason=%s message=%r",
                namespace,
                name,
                outcome.invalid.reason,
                outcome.invalid.message,
            )
        return outcome

    async def status_only(self, namespace: str, name: str) -> bool:
        """Re-derive a tier's status after one of its Deployments changed; True when written."""
        async with self._lock(self._locks, (namespace, name)):
            obj = await self._get(TIER_API, names.MODEL_TIER_KIND, namespace, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return False
            conditions = {c.get("type"): c for c in obj.get("status", {}).get("conditions") or []}
            if conditions.get(modeltier.CONFIG_VALID, {}).get("status") != "True":
                return False
            try:
                spec = modeltier.parse_spec(obj.get("spec"))
            except schema.ParseError:
                return False
            pool_obj = await self._pool(namespace, spec.pool_ref.name)
            try:
                pool = pools.from_object(pool_obj) if pool_obj is not None else None
            except pools.PoolError:
                pool = None
            if pool is None:
                return False  # the next full pass reports the pool as ConfigValid=False
            # Read fresh: a burst of Deployment status events then writes the latest state once, not each one.
            written = await self._write_status(
                obj,
                roles=list(spec.roles()),
                pool=pool,
                invalid=None,
                args_hash=obj["status"].get("renderedArgsHash"),
                cached=False,
            )
            if written:
                log.info("status tier=%s/%s readyRoles=%s", namespace, name, obj["status"].get("readyRoles"))
            return written

    async def _write_status(
        self,
        obj: Mapping[str, Any],
        *,
        roles: list[str],
        pool: pools.Pool | None,
        invalid: validate.Invalid | None,
        args_hash: str | None,
        observed: Mapping[str, dict[str, Any]] | None = None,
        cached: bool = True,
    ) -> bool:
        """Derive and, if it differs, patch the status; `observed` holds Deployments already read by name;
        `cached=False` reads the others from the API server rather than the cache."""
        meta = obj["metadata"]
        deployments: dict[str, Mapping[str, Any] | None] = {}
        for role in roles:
            child = render_tier.child_name(meta["name"], role)
            if observed is not None and child in observed:
                deployments[role] = observed[child]
            else:
                deployments[role] = await self._get(
                    "apps/v1", "Deployment", meta["namespace"], child, cached=cached
                )
        pods: dict[str, list[dict[str, Any]]] = {}
        picker: dict[str, Any] | None = None
        if invalid is None and pool is not None:
            # Pods are read only while a role is unsettled: a settled tier (the common case, and every tier
            # after a restart) costs no pod listing.
            if status.unsettled_roles(roles, deployments):
                found = await asyncio.to_thread(
                    self.kube.list,
                    "v1",
                    "Pod",
                    namespace=meta["namespace"],
                    label_selector=f"{names.TIER_LABEL}={manifests.label_value(meta['name'])}",
                )
                for pod in found:
                    pod_role = str(((pod.get("metadata") or {}).get("labels") or {}).get(names.ROLE_LABEL))
                    pods.setdefault(pod_role, []).append(pod)
            picker = await self._get("apps/v1", "Deployment", pool.namespace, pool.picker_name, cached=cached)
        new = status.derive(
            tier=obj,
            roles=roles,
            deployments=deployments,
            pods=pods,
            picker=picker,
            picker_name=pool.picker_name if pool is not None else "",
            invalid=invalid,
            args_hash=args_hash,
            now=status.now_rfc3339(),
        )
        old = obj.get("status") or {}
        if all(old.get(k) == v for k, v in new.items()):
            return False
        patch = dict(new)
        dropped = set(old.get("roles") or {}) - set(new.get("roles") or {})
        if dropped:  # a merge patch keeps keys it does not name: null removes a role the tier no longer has
            patch["roles"] = {**(new.get("roles") or {}), **dict.fromkeys(sorted(dropped))}
        await asyncio.to_thread(
            self.kube.patch_status,
            TIER_API,
            names.MODEL_TIER_KIND,
            namespace=meta["namespace"],
            name=meta["name"],
            status=patch,
        )
        obj["status"] = new  # type: ignore[index]
        return True

    async def _delete_stale(
        self, obj: Mapping[str, Any], desired: set[tuple[str, str, str, str]]
    ) -> list[str]:
        meta = obj["metadata"]
        selector = (
            f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGED_BY},"
            f"{manifests.INSTANCE_LABEL}={manifests.label_value(meta['name'])},"
            f"{manifests.COMPONENT_LABEL}=model-server"
        )
        deleted: list[str] = []
        for api_version, kind in TIER_CHILD_KINDS:
            found = await asyncio.to_thread(
                self.kube.list, api_version, kind, namespace=meta["namespace"], label_selector=selector
            )
            for child in found:
                cmeta = child["metadata"]
                owned = any(ref.get("uid") == meta["uid"] for ref in cmeta.get("ownerReferences") or [])
                if owned and (api_version, kind, cmeta["namespace"], cmeta["name"]) not in desired:
                    await asyncio.to_thread(
                        self.kube.delete, api_version, kind, namespace=cmeta["namespace"], name=cmeta["name"]
                    )
                    deleted.append(f"{kind}/{cmeta['name']}")
        return deleted

    def _picker_owned_by(self, pool: pools.Pool, uid: str) -> bool:
        return uid in self._picker_owners.get((pool.namespace, pool.name), frozenset())

    async def picker(self, pool: pools.Pool, *, unless_owned_by: str | None = None) -> list[str]:
        """Ensure the pool's picker objects, owned by every live ModelTier that serves in the pool; skipped
        when they were verified to be owned by tier `unless_owned_by` meanwhile."""
        async with self._lock(self._pool_locks, (pool.namespace, pool.name)):
            # The tiers of one pool wait here together after a start: the first verifies for all of them.
            if unless_owned_by is not None and self._picker_owned_by(pool, unless_owned_by):
                return []
            tiers = await self._tiers(pool.namespace)
            owners = [
                t
                for t in tiers
                if (t.get("spec") or {}).get("poolRef", {}).get("name") == pool.name
                and not t["metadata"].get("deletionTimestamp")
            ]
            if not owners:
                return []
            applied: list[str] = []
            desired = render_picker.render(pool=pool, owners=owners, cfg=self.cfg)
            for manifest, live in zip(desired, await self._observe(desired), strict=True):
                written, _ = await self._ensure(manifest, live)
                if written:
                    applied.append(written)
            self._picker_owners[(pool.namespace, pool.name)] = frozenset(t["metadata"]["uid"] for t in owners)
            return applied

    async def _pools_left(self, obj: Mapping[str, Any], pool: pools.Pool) -> list[str]:
        """The pools whose picker `obj` still owns although its poolRef names `pool` now (it moved)."""
        meta = obj["metadata"]
        selector = (
            f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGED_BY},{manifests.COMPONENT_LABEL}=endpoint-picker"
        )
        # Every picker has a ServiceAccount: one listing finds every pool the tier helps own.
        accounts = await asyncio.to_thread(
            self.kube.list, "v1", "ServiceAccount", namespace=meta["namespace"], label_selector=selector
        )
        left = set()
        for account in accounts:
            ameta = account["metadata"]
            owned = any(ref.get("uid") == meta["uid"] for ref in ameta.get("ownerReferences") or [])
            served = (ameta.get("annotations") or {}).get(manifests.POOL_ANNOTATION)
            if owned and served and served != pool.name:
                left.add(str(served))
        return sorted(left)

    async def _leave_pool(self, namespace: str, pool_name: str) -> tuple[list[str], list[str]]:
        """A tier left `pool_name`: its picker is re-owned by the pool's remaining tiers, or deleted when none
        remains (its owner references would keep it alive while the departed tier lives). Returns (applied,
        deleted)."""
        self._picker_owners.pop((namespace, pool_name), None)
        tiers = await self._tiers(namespace)
        remaining = [
            t
            for t in tiers
            if (t.get("spec") or {}).get("poolRef", {}).get("name") == pool_name
            and not t["metadata"].get("deletionTimestamp")
        ]
        if remaining:
            pool_obj = await self._pool(namespace, pool_name)
            try:
                pool = None if pool_obj is None else pools.from_object(pool_obj)
            except pools.PoolError:
                pool = None
            # A pool gone or unservable leaves its tiers ConfigValid=False; its picker waits for them.
            return (await self.picker(pool) if pool is not None else []), []
        async with self._lock(self._pool_locks, (namespace, pool_name)):
            return [], await self._collect_picker(namespace, pool_name)

    async def _collect_picker(self, namespace: str, pool_name: str) -> list[str]:
        selector = (
            f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGED_BY},"
            f"{manifests.COMPONENT_LABEL}=endpoint-picker,"
            f"{manifests.INSTANCE_LABEL}={manifests.label_value(pool_name)}"
        )
        deleted: list[str] = []
        for api_version, kind in PICKER_KINDS:
            found = await asyncio.to_thread(
                self.kube.list, api_version, kind, namespace=namespace, label_selector=selector
            )
            for obj in found:
                meta = obj["metadata"]
                if (meta.get("annotations") or {}).get(manifests.POOL_ANNOTATION) != pool_name:
                    continue  # another pool whose name cuts to the same label value
                await asyncio.to_thread(
                    self.kube.delete, api_version, kind, namespace=namespace, name=meta["name"]
                )
                deleted.append(f"{kind}/{meta['name']}")
        if deleted:
            log.info("event=picker_collected pool=%s/%s deleted=%s", namespace, pool_name, ",".join(deleted))
        return deleted

    def forget_pickers(self) -> None:
        """Drop the verified-owner cache (the next pass of each pool re-lists its tiers)."""
        self._picker_owners.clear()

    async def pool_changed(self, namespace: str, pool_name: str) -> None:
        """Re-reconcile every tier of a pool (its selector, port or picker changed, or a tier left)."""
        self._picker_owners.pop((namespace, pool_name), None)
        self._awaited_pools.discard((namespace, pool_name))
        self.forget_pool(namespace, pool_name)
        tiers = await self._tiers(namespace)
        for t in tiers:
            if (t.get("spec") or {}).get("poolRef", {}).get("name") == pool_name:
                await self.tier(namespace, t["metadata"]["name"])


def _condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def _condition_status(obj: Mapping[str, Any], type_: str) -> str | None:
    cond = _condition(obj, type_)
    return None if cond is None else str(cond.get("status"))


def _applied_hash(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(manifests.APPLIED_HASH_ANNOTATION)
