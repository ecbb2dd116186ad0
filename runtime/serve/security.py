"""Who may use args-serve: API keys (`--api-key KEY`, repeatable, and $ARGS_RT_API_KEY, comma-separated) that every
/v1/* route (and /metrics with --metrics-need-key) requires as `Authorization: Bearer KEY`, compared in constant time
(Starlette's AuthenticationMiddleware runs the check before a body is read); and the rule that a server other machines
can reach has a key unless --allow-open says it is open on purpose. A key is never logged, counted or echoed."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping, Sequence

from fastapi import FastAPI
from fastapi.security.utils import get_authorization_scheme_param
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import Response

from ..errors import ArgsError
from .refusals import Refused

ENV_KEYS = "ARGS_RT_API_KEY"
log = logging.getLogger("args_runtime.serve")


class Unauthorized(Refused):
    """A /v1/* request without a valid API key: HTTP 401, as the OpenAI API answers it."""

    status = 401
    code = "invalid_api_key"


def api_keys(flags: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys the server accepts: each --api-key, and each comma-separated part of $ARGS_RT_API_KEY. A key must be
    printable ASCII without spaces (what an `Authorization: Bearer` header carries); the error never shows the key."""
    environ = os.environ if environ is None else environ
    named = [(f"--api-key number {i + 1}", key) for i, key in enumerate(flags)]
    named += [(f"{ENV_KEYS}'s part {i + 1}", key.strip()) for i, key in enumerate(environ.get(ENV_KEYS, "").split(",")) if key.strip()]
    for where, key in named:
        if not key or not all(33 <= ord(c) <= 126 for c in key):
            raise ArgsError(f"{where} is not a usable API key: give printable ASCII characters without spaces "
                            "(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return tuple(dict.fromkeys(key for _, key in named))


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: a loopback address (127.0.0.0/8, ::1), or a name that resolves to
    loopback addresses only (localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def check_exposure(host: str, keys: Sequence[str], allow_open: bool) -> None:
    """Refuse to listen where other machines reach the server without a key, unless that is asked for (--allow-open)."""
    if keys or allow_open or is_loopback(host):
        return
    raise ArgsError(f"--host {host} lets every machine that reaches this port use the server, and it has no API key: give "
                    f"--api-key KEY (or set {ENV_KEYS}=KEY1,KEY2), or --allow-open to serve it open on purpose")


def log_exposure(keys: Sequence[str], metrics_need_key: bool) -> None:
    """Say at start-up whether the server is open (never which keys it takes)."""
    if not keys:
        log.warning("args-serve: no API key: every client that reaches this server can use it (--api-key KEY or %s=KEY "
                    "makes /v1/* require one)", ENV_KEYS)
    else:
        log.info("args-serve: /v1/*, /pooling, /classify%s require an API key (%d accepted)", " and /metrics" if metrics_need_key else "", len(keys))


SCORING_ROUTES = ("/pooling", "/classify")  # the RM as a scoring endpoint: at the root, as vLLM's are


class KeyBackend(AuthenticationBackend):
    """Checks `Authorization: Bearer KEY` on the guarded routes against every accepted key, each in constant time
    (hmac.compare_digest), so neither the match nor which key matched shows in the time taken."""

    def __init__(self, keys: Sequence[str], metrics_need_key: bool) -> None:
        if not keys:
            raise ArgsError("KeyBackend needs at least one API key")
        self._keys = tuple(key.encode() for key in keys)
        self._metrics_need_key = metrics_need_key

    def __repr__(self) -> str:  # never the keys
        return f"KeyBackend({len(self._keys)} keys, metrics_need_key={self._metrics_need_key})"

    def guards(self, path: str) -> bool:
        return (path == "/v1" or path.startswith("/v1/") or path in SCORING_ROUTES
                or (self._metrics_need_key and path == "/metrics"))

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if not self.guards(_route_path(conn)):
            return None
        scheme, token = get_authorization_scheme_param(conn.headers.get("authorization"))
        if not token or scheme.lower() != "bearer":
            raise AuthenticationError("this server needs an API key: send the header `Authorization: Bearer KEY` "
                                      "(OpenAI clients: api_key=KEY)")
        if not self.accepts(token):
            raise AuthenticationError("the API key is not valid for this server: send one of the keys it was started "
                                      f"with (--api-key or {ENV_KEYS})")
        return AuthCredentials(["api"]), SimpleUser("api-key")

    def accepts(self, token: str) -> bool:
        given = token.encode()
        matched = False
        for key in self._keys:  # every key compared, whichever matches
            matched |= hmac.compare_digest(given, key)
        return matched


def _route_path(conn: HTTPConnection) -> str:
    """The path the app routes on (a root_path, e.g. behind a proxy, taken off)."""
    path, root = conn.scope.get("path", ""), conn.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _unauthorized(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    refusal = Unauthorized(str(exc), {"WWW-Authenticate": "Bearer"})
    state = getattr(conn.app.state, "args", None)
    if state is not None:
        state.metrics.refused(None, refusal.outcome, refusal.code)
    return refusal.response()


def require_keys(app: FastAPI, keys: Sequence[str], metrics_need_key: bool) -> None:
    """With keys, every /v1/* and scoring request (and /metrics with `metrics_need_key`) needs one, checked before its
    body is read; /health stays open."""
    if keys:
        app.add_middleware(AuthenticationMiddleware, backend=KeyBackend(keys, metrics_need_key), on_error=_unauthorized)
    elif metrics_need_key:
        raise ArgsError("--metrics-need-key needs an API key: give --api-key KEY (or set ARGS_RT_API_KEY)")
