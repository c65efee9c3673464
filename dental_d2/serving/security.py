"""What keeps the service private: a bearer token for every endpoint but `/health` (and the
page that asks for it), and headers that keep answers out of caches and the page to itself.

Off this machine, the service needs a token or an explicit `--insecure-no-auth`, as Orthanc
needs registered users for remote access.
"""

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

from ..errors import DentalError

logger = logging.getLogger(__name__)

# The environment variable that holds the token when --token-file is not given.
TOKEN_ENV = "DENTAL_D2_TOKEN"
# Shorter tokens can be guessed; secrets.token_urlsafe(32) gives 43 characters.
MIN_TOKEN_LENGTH = 16
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Answered without a token: liveness for load balancers, and the page, which holds no data
# and is where a person types the token.
OPEN_PATHS = frozenset({"/health", "/"})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _checked(token: str, source: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise DentalError(
            f"{source}: the token must be one word of at least {MIN_TOKEN_LENGTH} characters; "
            f"make one with {MAKE_TOKEN}"
        )
    return token


def load_token(token_file: str | None) -> str | None:
    """The service's token: the first line of `token_file`, else $DENTAL_D2_TOKEN, else None.

    Args:
        token_file (str | None): a file holding the token (readable by the service only).

    Raises:
        DentalError: the file cannot be read, or the token is too short.
    """
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                first_line = f.readline()
        except OSError as e:
            raise DentalError(
                f"--token-file {token_file}: cannot be read ({e.strerror or e}); pass a file "
                f"holding the token, made with {MAKE_TOKEN}"
            ) from e
        return _checked(first_line, f"--token-file {token_file}")
    if os.environ.get(TOKEN_ENV, "").strip():
        return _checked(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


def check_access(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """Refuses to serve beyond this machine without a token or an explicit opt-out.

    Raises:
        DentalError: one line saying what to pass.
    """
    if token and insecure_no_auth:
        raise DentalError(
            "--insecure-no-auth and a token (--token-file or $DENTAL_D2_TOKEN) contradict each "
            "other: pass one of them"
        )
    if not is_loopback(host) and not token and not insecure_no_auth:
        raise DentalError(
            f"--host {host} lets anyone who reaches this port send and see patient images: pass "
            f"--token-file FILE (or set ${TOKEN_ENV}), or --insecure-no-auth to serve without "
            "authentication"
        )


def _inline_hashes(page: str, tag: str) -> str:
    # The blocks whose tags open a line (a tag named in a comment or a string is not one).
    blocks = re.findall(rf"^<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL | re.MULTILINE)
    digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks]
    return " ".join(f"'sha256-{digest}'" for digest in digests) or "'none'"


def content_security_policy(page: str) -> str:
    """A policy that lets the page run its own inline script and style (by hash), talk to this
    server and show data: images, and load or send nothing anywhere else.

    Args:
        page (str): the HTML whose inline `<script>` and `<style>` blocks are allowed.
    """
    return (
        f"default-src 'none'; script-src {_inline_hashes(page, 'script')}; "
        f"style-src {_inline_hashes(page, 'style')}; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class PrivateByDefault:
    """ASGI middleware: answers 401 without `Authorization: Bearer <token>` (when there is a
    token), and puts the security headers on every answer.

    The token is compared with `hmac.compare_digest`, in time that does not depend on where
    a guess differs.

    Args:
        app (ASGIApp): the app it wraps.
        token (str | None): the token; None lets every request in.
        policy (str): the Content-Security-Policy header.
    """

    def __init__(self, app, token: str | None, policy: str):
        self.app = app
        self._token = token.encode() if token else None
        self._headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }

    def _authorized(self, scope) -> bool:
        scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self._headers.items():
                    headers[name] = value
            await send(message)

        if self._token and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            refused = JSONResponse(
                {"error": "this server needs its token: send Authorization: Bearer <token>"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="dental_d2"'},
            )
            await refused(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:
            if started:
                raise
            # Starlette answers an error no handler took from outside every middleware, so
            # without this a 500 would lack the headers above.
            logger.exception("request %s %s failed", scope.get("method"), scope["path"])
            text = " ".join(f"internal error ({type(e).__name__}: {e}); see the server log".split())
            await JSONResponse({"error": text}, 500)(scope, receive, send_with_headers)
