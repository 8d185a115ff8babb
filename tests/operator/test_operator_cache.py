"""The reconciler's cache: watched tiers and Deployments stay current, listed objects serve one read, a miss
is never taken for absence."""

import pytest

from frontier_api import names
from frontier_operator import cache, manifests, reconcile

NS = "team-a"
OURS = {manifests.MANAGED_BY_LABEL: manifests.MANAGED_BY}


def _deployment(name, *, labels=OURS, image="engine:1"):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
        "spec": {"template": {"spec": {"containers": [{"name": "engine", "image": image}]}}},
    }


def _tier(name, namespace=NS):
    return {
        "apiVersion": reconcile.TIER_API,
        "kind": names.MODEL_TIER_KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {"poolRef": {"name": "chat"}},
    }


def _service(name):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": OURS},
    }


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def filled(clock):
    c = cache.Cache(clock=clock)
    c.fill(
        tiers=[_tier("a"), _tier("b"), _tier("other", namespace="team-b")],
        deployments=[_deployment("a-serving")],
        listed=[_service("chat-picker")],
    )
    return c


def test_until_filled_nothing_is_answered_from_memory(clock):
    c = cache.Cache(clock=clock)
    c.seen(_deployment("a-serving"))
    c.seen(_tier("a"))
    assert c.take("apps/v1", "Deployment", NS, "a-serving") is None
    assert c.tiers(NS) is None


def test_watched_deployments_serve_every_read_and_follow_the_watch(filled):
    assert filled.take("apps/v1", "Deployment", NS, "a-serving")["metadata"]["name"] == "a-serving"
    assert filled.take("apps/v1", "Deployment", NS, "a-serving") is not None
    event = _deployment("a-serving", image="engine:by-hand")
    filled.seen(event)
    event["spec"]["template"]["spec"]["containers"][0]["image"] = "mutated-after-the-event"
    live = filled.take("apps/v1", "Deployment", NS, "a-serving")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "engine:by-hand"
    filled.gone(event)
    assert filled.take("apps/v1", "Deployment", NS, "a-serving") is None


def test_a_deployment_relabelled_away_from_the_operator_is_read_from_the_api_again(filled):
    filled.seen(_deployment("a-serving", labels={manifests.MANAGED_BY_LABEL: "someone-else"}))
    assert filled.take("apps/v1", "Deployment", NS, "a-serving") is None


def test_tiers_are_listed_per_namespace_and_follow_the_watch(filled):
    assert sorted(t["metadata"]["name"] for t in filled.tiers(NS)) == ["a", "b"]
    filled.seen(_tier("c"))
    filled.gone(_tier("a"))
    assert sorted(t["metadata"]["name"] for t in filled.tiers(NS)) == ["b", "c"]


def test_a_listed_object_serves_one_read_then_the_api_server_is_asked(filled):
    assert filled.take("v1", "Service", NS, "chat-picker") is not None
    assert filled.take("v1", "Service", NS, "chat-picker") is None


def test_listed_objects_expire(filled, clock):
    clock.now += cache.LISTED_TTL_S + 1
    assert filled.take("v1", "Service", NS, "chat-picker") is None


def test_a_relisting_replaces_the_listed_objects(filled):
    filled.relist([_service("other-picker")])
    assert filled.take("v1", "Service", NS, "chat-picker") is None
    assert filled.take("v1", "Service", NS, "other-picker") is not None
