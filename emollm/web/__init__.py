"""Local web pages: the review queue (`emollm review serve`) and the explain page (`emollm serve`).

FastAPI + plain HTML / JS (no build step, no CDN: every page works offline), served by uvicorn. Why not
Gradio, which the field's demos use: its pages load their front end from the package's bundled assets
and change layout between majors, a keyboard-driven review page needs its own key handling anyway, and
FastAPI's ``TestClient`` lets every endpoint be tested without a browser. Installed as the ``web``
extra (``pip install 'emollm[web]'``).

Safety: a server binds 127.0.0.1 unless told otherwise (``--host``); on any other address it requires a
token (given, or generated and printed once), checked on every request (``?token=`` once, then a
cookie; or ``Authorization: Bearer``). Responses never include a stack trace: an error is one JSON
``{"error", "hint"}`` (an :class:`~emollm.errors.EmollmError`'s message) or a 500 saying to look at the
server log.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from emollm.errors import ConfigError, EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

TOKEN_COOKIE = "emollm_token"
LOOPBACK = "127.0.0.1"


def require_web() -> None:
    """The ``web`` extra's packages, or one error saying how to install them."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (file uploads)
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise EmollmError(f"the web pages need the 'web' extra ({err.name} is not installed)",
                          hint="pip install 'emollm[web]'") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token a server on ``host`` requires: None on a loopback address unless one is given; on any
    other address the given one, else a fresh random one (printed once by :func:`serve`)."""
    if token is not None and len(token) < 16:
        raise ConfigError("--token must be at least 16 characters", hint="or leave it out: one is generated")
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def install_guards(app: Any, token: str | None) -> None:
    """Token check on every request (when ``token``), and errors as one JSON line, never a traceback."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(EmollmError)
    async def _emollm_error(request: Request, exc: EmollmError):  # noqa: ANN202
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # noqa: ANN202
        log.exception("unexpected error serving %s", request.url.path)
        return JSONResponse({"error": f"unexpected {type(exc).__name__}", "hint": "see the server's log"},
                            status_code=500)

    if token is None:
        return

    @app.middleware("http")
    async def _token(request: Request, call_next):  # noqa: ANN202
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not given or not secrets.compare_digest(given, token):
            return JSONResponse({"error": "a token is required", "hint": "open the URL the server printed"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def serve(app: Any, *, host: str = LOOPBACK, port: int = 8000, token: str | None = None,
          what: str = "page") -> None:
    """Run ``app`` until interrupted, on ``host:port``; prints the URL (with the token when one is needed)."""
    import uvicorn

    token = resolve_token(host, token)
    install_guards(app, token)
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    print(f"emollm {what}: {url}  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def running(app: Any, *, host: str = LOOPBACK, token: str | None = None) -> Iterator[str]:
    """``app`` served in a background thread on a free port (tests, notebooks): yields its base URL."""
    import socket

    import uvicorn

    install_guards(app, token)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise EmollmError(f"the web server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
