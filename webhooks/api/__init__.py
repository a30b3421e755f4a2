"""The HTTP API for the customers' dashboard and scripts (SPEC, *HTTP API*).

A face beside the CLI: it parses requests, checks who is asking, calls the domain and renders;
the domain never imports it. `create_app` builds the ASGI application, which `webhooks api`
serves with uvicorn and the Cloud API can mount in its own, with its own key lookup.
"""

from __future__ import annotations

from webhooks.api._app import OPENAPI_URL, create_app, serve
from webhooks.api._auth import Identity, KeyLookup
from webhooks.api._errors import ApiError

__all__ = ["OPENAPI_URL", "ApiError", "Identity", "KeyLookup", "create_app", "serve"]
