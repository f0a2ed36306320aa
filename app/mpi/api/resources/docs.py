"""``/openapi.json`` and a Swagger UI page that needs no internet."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon

from mpi.api.access import public
from mpi.api.openapi import operation

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Master Patient Index - API</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true}});
  </script>
</body>
</html>
"""


class OpenApiDocument:
    uses_database = False

    def __init__(self, build: Callable[[], dict[str, Any]]):
        self._build = build
        self._body: bytes | None = None

    @public
    @operation("This document (OpenAPI 3.1)", tags=["meta"],
               responses={200: ("The OpenAPI document", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._body is None:  # built once, on first use: nothing happens at import
            self._body = json.dumps(self._build(), indent=2, sort_keys=False).encode()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body


class SwaggerPage:
    uses_database = False

    def __init__(self, *, spec_url: str, static_url: str):
        self._page = SWAGGER_PAGE.format(spec=spec_url, static=static_url).encode()

    @public
    @operation("Interactive API documentation (Swagger UI)", tags=["meta"],
               responses={200: ("An HTML page", None)}, content_type="text/html")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._page
