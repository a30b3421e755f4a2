"""What every portal page shares: templates, security headers, the session cookie, CSRF.

- Templates are Jinja2 with autoescaping always on: whatever a receiver controls (bodies,
  headers, URLs) is inserted as text. No template marks anything ``safe``.
- Every answer carries a strict Content-Security-Policy: scripts, styles and images from this
  origin only, no inline script or style, forms posting only here, never framed.
- The session cookie (``webhooks_portal``) holds the session's token: HttpOnly, SameSite=Lax
  (the link is clicked on another site, the customer's dashboard, and a Strict cookie set on
  that navigation is not sent on its redirect), Secure unless plain HTTP is allowed
  (``WEBHOOKS_API_ALLOW_HTTP``), scoped to ``/portal``, ending when the session does.
- Every POST carries the session's CSRF token in a hidden field (`check_csrf`): SameSite=Lax
  alone lets a same-site page, or a browser that ignores SameSite, post with the cookie.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from webhooks import clock
from webhooks.api._auth import is_secure
from webhooks.api._handling import state_of
from webhooks.database import translate_errors
from webhooks.errors import InvalidPortalLink
from webhooks.models import rfc3339
from webhooks.portal_sessions import PortalSession, authenticate_session, csrf_token, is_valid_csrf

COOKIE = "webhooks_portal"
PREFIX = "/portal"
MAX_FORM_BYTES = 64 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    # The link's token is in the first URL: never send it, or any portal URL, elsewhere.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class PortalError(Exception):
    """A page that is not the one asked for: an error page with a status and a message.

    ``is_signed_out``: the error page shows nothing but the message (an unknown, used or
    expired link, an ended session).
    """

    def __init__(
        self, status: int, title: str, message: str, *, is_signed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.is_signed_out = is_signed_out


LINK_MESSAGES = {
    "unknown": (
        "This portal link is not valid",
        "Check that the whole link was copied, or open the portal again from your dashboard.",
    ),
    "used": (
        "This portal link was already used",
        "A portal link works once, so that it cannot be reused from your browser's history or "
        "a shared screen. Open the portal again from your dashboard to get a new one.",
    ),
    "expired": (
        "This portal link has expired",
        "Portal links last a limited time. Open the portal again from your dashboard.",
    ),
    "revoked": (
        "This portal link was revoked",
        "Open the portal again from your dashboard to get a new one.",
    ),
}
SESSION_MESSAGES = {
    **LINK_MESSAGES,
    "unknown": (
        "You are not signed in to the portal",
        "Open the portal from your dashboard: its link signs you in.",
    ),
    "expired": (
        "Your portal session has ended",
        "Sessions last a limited time. Open the portal again from your dashboard.",
    ),
    "revoked": (
        "Your portal session was ended",
        "Open the portal again from your dashboard to start a new one.",
    ),
}


def link_error(exc: InvalidPortalLink, *, is_session: bool) -> PortalError:
    """The error page of an unusable link (``is_session``: of an unusable cookie)."""
    messages = SESSION_MESSAGES if is_session else LINK_MESSAGES
    title, message = messages.get(exc.reason, messages["unknown"])
    status = 401 if is_session or exc.reason == "unknown" else 410
    return PortalError(status, title, message, is_signed_out=True)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: their session, and the CSRF token their forms carry."""

    session: PortalSession
    csrf: str


def root_of(request: Request) -> str:
    """Where this app is mounted (the Cloud API may mount it under a prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _format_utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time(moment: datetime | None) -> Markup:
    """A time as ``<time datetime="…Z">… UTC</time>``; portal.js shows it in the viewer's
    zone, the UTC text stays for browsers without scripts."""
    if moment is None:
        return Markup("<span class=muted>—</span>")
    return Markup('<time datetime="{}">{}</time>').format(rfc3339(moment), _format_utc(moment))


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _percent(rate: float | None) -> str:
    if rate is None:
        return "—"
    shown = f"{rate * 100:.1f}".removesuffix(".0")
    return f"{shown} %"


def _query(values: dict[str, Any]) -> str:
    kept = {k: v for k, v in values.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("webhooks.portal", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _time
    env.filters["utc"] = _format_utc
    env.filters["pretty_json"] = _pretty_json
    env.filters["percent"] = _percent
    env.globals["query"] = _query
    return env


TEMPLATES = _environment()


def page(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    """A rendered page with the portal's security headers."""
    html = TEMPLATES.get_template(template).render(
        root=root_of(request), viewer=viewer, notice=context.pop("notice", None), **context
    )
    return secured(HTMLResponse(html, status_code=status))


def error_page(request: Request, error: PortalError, viewer: Viewer | None = None) -> Response:
    """The page of a `PortalError`."""
    return page(
        request,
        "error.html",
        viewer=None if error.is_signed_out else viewer,
        status=error.status,
        title=error.title,
        message=error.message,
    )


def secured(response: Response) -> Response:
    """``response`` with the portal's security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def redirect(request: Request, path: str, **query: Any) -> Response:
    """A 303 to a portal page (after a POST: reloading the page does not post again)."""
    return secured(RedirectResponse(root_of(request) + PREFIX + path + _query(query), 303))


def require_secure(request: Request) -> None:
    """Refuse plain HTTP as the API does (a Secure cookie would not come back over it)."""
    settings = state_of(request).settings
    peer = request.client.host if request.client else None
    if not is_secure(settings, request.url.scheme, peer, request.headers.get("x-forwarded-proto")):
        raise PortalError(
            403,
            "The portal needs https",
            "Open the portal over https. (Operators: WEBHOOKS_API_ALLOW_HTTP=true allows plain "
            "HTTP in development; WEBHOOKS_API_TRUSTED_PROXIES names proxies that terminate TLS.)",
            is_signed_out=True,
        )


def set_session_cookie(
    request: Request, response: Response, token: str, session: PortalSession
) -> None:
    """Give the browser the session's cookie, ending when the session does."""
    settings = state_of(request).settings
    max_age = max(0, int((session.expires_at - clock.now()).total_seconds()))
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path=(root_of(request) + PREFIX) or "/",
        secure=not settings.api_allow_http,
        httponly=True,
        samesite="lax",
    )


async def current_viewer(request: Request) -> Viewer:
    """The signed-in viewer, or the `PortalError` that answers instead (401)."""
    require_secure(request)
    token = request.cookies.get(COOKIE)
    if not token:
        raise link_error(InvalidPortalLink("unknown"), is_session=True)
    state = state_of(request)

    def authenticate() -> PortalSession:
        with translate_errors(state.settings), state.engine.begin() as conn:
            return authenticate_session(conn, state.settings.db_schema, token, clock.now())

    try:
        session = await run_in_threadpool(authenticate)
    except InvalidPortalLink as exc:
        raise link_error(exc, is_session=True) from exc
    return Viewer(session=session, csrf=csrf_token(token))


async def read_form(request: Request) -> dict[str, str]:
    """A POSTed form (``application/x-www-form-urlencoded``), the last value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PortalError(413, "That form is too large", "Send at most 64 KiB.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PortalError(400, "That form could not be read", "Send it as UTF-8.") from exc
    return dict(parse_qsl(text, keep_blank_values=True))


def check_csrf(request: Request, form: dict[str, str]) -> None:
    """Refuse a POST whose form does not carry the session's CSRF token (403)."""
    token = request.cookies.get(COOKIE) or ""
    if not is_valid_csrf(token, form.get("csrf")):
        raise PortalError(
            403,
            "That request was refused",
            "The form did not come from this portal page (its security token is missing or "
            "stale). Go back, reload the page and try again.",
        )


def text(value: object) -> str:
    """Escape a value for a message built in Python (templates escape on their own)."""
    return str(escape(str(value)))
