"""The portal (SPEC, *Portal*): the pages customers see, served by `webhooks api`.

A face beside the HTTP API: it reads and acts on one project in one mode, that of the
portal session its visitor signed in with (`webhooks.portal_sessions`), through the same
domain functions as the API's routes. Pages are rendered on the server from Jinja2
templates (``templates/``) with one stylesheet and one small script (``static/``) shipped
in the package: no build step, no CDN, nothing inline (the Content-Security-Policy forbids
it).

`install` adds it to an application made by `webhooks.api.create_app`.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import Response

from webhooks.portal._routes import router
from webhooks.portal._web import PREFIX, PortalError, error_page, secured

STATIC = {"portal.css": "text/css; charset=utf-8", "portal.js": "text/javascript; charset=utf-8"}

__all__ = ["PREFIX", "install", "is_portal_path"]


def is_portal_path(path: str) -> bool:
    """True for the portal's pages, which a session cookie admits (not an API key)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def install(app: FastAPI) -> None:
    """Serve the portal's pages and files from ``app``, and its errors as pages."""
    app.include_router(router)

    @app.get(PREFIX + "/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise PortalError(404, "Not found", "There is no such file.")
        body = files("webhooks.portal").joinpath("static", name).read_bytes()
        return secured(Response(body, media_type=STATIC[name]))

    @app.exception_handler(PortalError)
    async def portal_error(request: Request, exc: PortalError) -> Response:
        return error_page(request, exc)
