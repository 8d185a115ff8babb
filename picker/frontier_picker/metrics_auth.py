"""Authenticated `/metrics`, as GIE's EPP does it (controller-runtime's `WithAuthenticationAndAuthorization`).

A scrape must carry `Authorization: Bearer <token>`. The token is reviewed against the API server: a
TokenReview says who holds it, then a SubjectAccessReview asks whether that user may `get` the
non-resource URL requested (`/metrics`). No or an unknown token answers 401, a user without the grant 403,
a review that could not be made 500 (not remembered: the next scrape asks again). Outcomes are remembered
per token and path, allowed ones for `ALLOW_TTL_S`, refused ones for `DENY_TTL_S`, so a scraper costs the
API server two reviews a minute. The picker's ServiceAccount needs `create` on `tokenreviews` and
`subjectaccessreviews` (Kubernetes' built-in ClusterRole `system:auth-delegator`); a scraper's identity needs
`get` on the nonResourceURL `/metrics`.

`Gate` is the pure part (the decision and its cache, over a `Reviewer`); `KubeReviewer` makes the two reviews
with the `kubernetes` client; `guard` wraps a WSGI app (the Prometheus exposition) in the gate.
"""

import collections
import dataclasses
import hashlib
import http
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

ALLOW_TTL_S: Final = 60.0
DENY_TTL_S: Final = 10.0
# Tokens are client input: the cache holds at most this many outcomes, dropping the oldest first.
MAX_CACHED: Final = 1024
# A review the API server has not answered by then is a 500 for that scrape, not a hung metrics thread.
REVIEW_TIMEOUT_S: Final = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    """Who a token belongs to, as the TokenReview reported it."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


class Reviewer(Protocol):
    """Asks the API server about a token; raises when it cannot."""

    def authenticate(self, token: str) -> User | None:
        """The token's user, or None when the API server does not accept the token."""
        ...

    def authorize(self, user: User, *, verb: str, path: str) -> bool:
        """Whether `user` may `verb` the non-resource URL `path`."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer a scrape: 200 lets it through; anything else is refused with `reason`."""

    status: int
    reason: str
    user: str = ""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Gate:
    """Decides scrapes by reviewing their tokens, remembering outcomes briefly; safe across threads."""

    def __init__(self, reviewer: Reviewer, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._reviewer = reviewer
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[bytes, str, str], tuple[Verdict, float]] = (
            collections.OrderedDict()
        )

    def check(self, authorization: str | None, *, verb: str = "get", path: str = "/metrics") -> Verdict:
        """The verdict on a request with this `Authorization` header value."""
        token = bearer_token(authorization)
        if token is None:
            return Verdict(401, "a bearer token is required")
        key = (hashlib.sha256(token.encode()).digest(), verb, path)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        verdict = self._review(token, verb=verb, path=path)
        if verdict.status >= 500:
            return verdict
        ttl = ALLOW_TTL_S if verdict.status == 200 else DENY_TTL_S
        with self._lock:
            self._cache[key] = (verdict, now + ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return verdict

    def _review(self, token: str, *, verb: str, path: str) -> Verdict:
        try:
            user = self._reviewer.authenticate(token)
            if user is None:
                verdict = Verdict(401, "the token was not accepted")
            elif self._reviewer.authorize(user, verb=verb, path=path):
                verdict = Verdict(200, "allowed", user.name)
            else:
                verdict = Verdict(403, f"user {user.name} may not {verb} {path}", user.name)
        except Exception as error:
            log.warning("event=metrics_auth_failed verb=%s path=%s error=%r", verb, path, str(error))
            return Verdict(500, "the token could not be reviewed")
        if verdict.status == 200:
            log.debug("event=metrics_auth_allowed user=%s verb=%s path=%s", verdict.user, verb, path)
        else:
            log.info(
                "event=metrics_auth_refused status=%d user=%s verb=%s path=%s",
                verdict.status,
                verdict.user or "-",
                verb,
                path,
            )
        return verdict


class KubeReviewer:
    """TokenReviews and SubjectAccessReviews through the `kubernetes` client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # imported here: only Kubernetes mode needs the client

        self._client = client
        self._authentication = client.AuthenticationV1Api(api_client)
        self._authorization = client.AuthorizationV1Api(api_client)

    def authenticate(self, token: str) -> User | None:
        review = self._authentication.create_token_review(
            self._client.V1TokenReview(spec=self._client.V1TokenReviewSpec(token=token)),
            _request_timeout=REVIEW_TIMEOUT_S,
        )
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        return User(
            name=user.username or "",
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={key: tuple(values) for key, values in (user.extra or {}).items()},
        )

    def authorize(self, user: User, *, verb: str, path: str) -> bool:
        spec = self._client.V1SubjectAccessReviewSpec(
            user=user.name,
            uid=user.uid or None,
            groups=list(user.groups) or None,
            extra={key: list(values) for key, values in user.extra.items()} or None,
            non_resource_attributes=self._client.V1NonResourceAttributes(path=path, verb=verb),
        )
        review = self._authorization.create_subject_access_review(
            self._client.V1SubjectAccessReview(spec=spec), _request_timeout=REVIEW_TIMEOUT_S
        )
        return bool(review.status is not None and review.status.allowed)


def kube_gate(kubeconfig: Path | None) -> Gate:
    """A gate reviewing tokens with the API server the picker runs against (its kubeconfig, else
    in-cluster, else ~/.kube)."""
    from kubernetes import config

    if kubeconfig is not None:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
    else:
        from kubernetes import client

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
        api_client = client.ApiClient(configuration)
    return Gate(KubeReviewer(api_client))


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def guard(app: WsgiApp, gate: Gate) -> WsgiApp:
    """`app` behind `gate`: a refused request gets the verdict's status and reason as plain text."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        verdict = gate.check(
            environ.get("HTTP_AUTHORIZATION"),
            verb=str(environ.get("REQUEST_METHOD", "GET")).lower(),
            path=str(environ.get("PATH_INFO") or "/"),
        )
        if verdict.status == 200:
            return app(environ, start_response)
        body = f"{verdict.reason}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if verdict.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="frontier-picker"'))
        start_response(f"{verdict.status} {http.HTTPStatus(verdict.status).phrase}", headers)
        return [body]

    return guarded
