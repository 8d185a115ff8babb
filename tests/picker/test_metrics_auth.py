"""Authenticated /metrics: the gate's verdicts and their cache over a recorded reviewer, the HTTP answers
through the real metrics server, and (marker `cluster`) TokenReview and SubjectAccessReview against the
local kube-apiserver with the picker holding only `system:auth-delegator`."""

import dataclasses
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from frontier_picker import metrics, metrics_auth
from frontier_testkit import controlplane


@dataclasses.dataclass
class Reviewer:
    """Tokens the API server would accept, users it would allow, and every review asked of it."""

    users: dict[str, str]
    allowed: set[str]
    down: bool = False
    asked: list[str] = dataclasses.field(default_factory=list)

    def authenticate(self, token: str) -> metrics_auth.User | None:
        self.asked.append(f"token:{token}")
        if self.down:
            raise ConnectionError("API server unreachable")
        name = self.users.get(token)
        return None if name is None else metrics_auth.User(name=name, groups=("system:authenticated",))

    def authorize(self, user: metrics_auth.User, *, verb: str, path: str) -> bool:
        self.asked.append(f"access:{user.name}:{verb}:{path}")
        return user.name in self.allowed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bearer_tokens_are_read_from_the_authorization_header() -> None:
    assert metrics_auth.bearer_token("Bearer abc") == "abc"
    assert metrics_auth.bearer_token("bearer  abc ") == "abc"
    assert metrics_auth.bearer_token("Basic dXNlcjpwYXNz") is None
    assert metrics_auth.bearer_token("Bearer ") is None
    assert metrics_auth.bearer_token(None) is None


def test_verdicts_follow_the_reviews_and_are_remembered_briefly() -> None:
    reviewer = Reviewer(users={"good": "prometheus", "weak": "someone"}, allowed={"prometheus"})
    clock = Clock()
    gate = metrics_auth.Gate(reviewer, clock=clock)
    assert gate.check(None).status == 401
    assert gate.check("Bearer unknown").status == 401
    assert gate.check("Bearer weak") == metrics_auth.Verdict(
        403, "user someone may not get /metrics", "someone"
    )
    assert gate.check("Bearer good") == metrics_auth.Verdict(200, "allowed", "prometheus")
    asked = len(reviewer.asked)
    for _ in range(5):  # scrapes within the TTLs ask the API server nothing
        assert gate.check("Bearer good").status == 200
        assert gate.check("Bearer weak").status == 403
    assert len(reviewer.asked) == asked
    clock.now += metrics_auth.DENY_TTL_S + 1  # refusals are forgotten first: a new grant takes effect soon
    reviewer.allowed.add("someone")
    assert gate.check("Bearer weak").status == 200
    assert gate.check("Bearer good").status == 200
    assert len(reviewer.asked) == asked + 2
    clock.now += metrics_auth.ALLOW_TTL_S
    reviewer.allowed.clear()  # a revoked grant is honoured within ALLOW_TTL_S
    assert gate.check("Bearer good").status == 403


def test_an_unreachable_api_server_answers_500_and_is_asked_again_next_time() -> None:
    reviewer = Reviewer(users={"good": "prometheus"}, allowed={"prometheus"}, down=True)
    gate = metrics_auth.Gate(reviewer, clock=Clock())
    assert gate.check("Bearer good").status == 500
    reviewer.down = False
    assert gate.check("Bearer good").status == 200


def test_the_cache_is_bounded_however_many_tokens_arrive() -> None:
    reviewer = Reviewer(users={}, allowed=set())
    gate = metrics_auth.Gate(reviewer, clock=Clock())
    for index in range(metrics_auth.MAX_CACHED + 500):
        assert gate.check(f"Bearer forged-{index}").status == 401
    assert len(gate._cache) == metrics_auth.MAX_CACHED


def _get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def _serve(gate: metrics_auth.Gate) -> tuple[str, object]:
    own = metrics.create()
    port, _thread, server = metrics.serve(own.registry, address="127.2.0.100", port=0, gate=gate)
    return f"http://127.2.0.100:{port}/metrics", server


def test_the_metrics_server_answers_each_verdict_over_http() -> None:
    gate = metrics_auth.Gate(
        Reviewer(users={"good": "prometheus", "weak": "someone"}, allowed={"prometheus"})
    )
    url, server = _serve(gate)
    try:
        status, body, headers = _get(url)
        assert (status, body) == (401, "a bearer token is required\n")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert _get(url, "weak")[:2] == (403, "user someone may not get /metrics\n")
        status, body, _ = _get(url, "good")
        assert status == 200 and "frontier_picker_ready_endpoints" in body
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


def _token(core: k8s_client.CoreV1Api, namespace: str, account: str) -> str:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    request = {"spec": {"expirationSeconds": 3600}}
    return str(core.create_namespaced_service_account_token(account, namespace, request).status.token)


@pytest.mark.cluster
def test_tokens_are_reviewed_by_the_api_server_with_only_auth_delegator(
    control_plane: controlplane.ControlPlane, tmp_path: Path
) -> None:
    namespace = control_plane.namespace("metrics-auth")
    api = control_plane.api_client()
    core, rbac = k8s_client.CoreV1Api(api), k8s_client.RbacAuthorizationV1Api(api)
    picker_token = _token(core, namespace, "picker")
    reader_token = _token(core, namespace, "prometheus")
    stranger_token = _token(core, namespace, "stranger")
    # What the picker needs (Kubernetes' built-in role), and what a scraper needs.
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": f"{namespace}-picker-auth"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "picker", "namespace": namespace}],
        }
    )
    rbac.create_cluster_role(
        {
            "metadata": {"name": f"{namespace}-metrics-reader"},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": f"{namespace}-metrics-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}-metrics-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
        }
    )
    kubeconfig = tmp_path / "picker.kubeconfig"
    controlplane.write_kubeconfig(
        kubeconfig,
        server=control_plane.server,
        ca_file=control_plane.workdir / "pki" / "ca.crt",
        token=picker_token,
    )
    url, server = _serve(metrics_auth.kube_gate(kubeconfig))
    try:
        assert _get(url)[0] == 401
        assert _get(url, "not-a-token")[0] == 401
        status, body, _ = _get(url, stranger_token)
        assert (status, body) == (
            403,
            f"user system:serviceaccount:{namespace}:stranger may not get /metrics\n",
        )
        status, body, _ = _get(url, reader_token)
        assert status == 200 and "frontier_picker_ready_endpoints" in body
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
