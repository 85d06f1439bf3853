"""The OpenAPI 3.1 document of a route table: each `Endpoint` names its request and response
models, and pydantic writes their JSON schemas, so the document follows the code."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.api_models import Error
from server.auth import SESSION_COOKIE


@dataclass(frozen=True)
class Endpoint:
    """One route: what registers it and what the OpenAPI document says of it."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.Response]]
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = (401,)
    public: bool = False
    query: tuple[dict[str, Any], ...] = ()

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def _operation(
    endpoint: Endpoint, refs: dict[tuple[Any, str], Any], reasons: Mapping[int, str]
) -> dict[str, Any]:
    error_schema = {"application/json": {"schema": refs[(Error, "serialization")]}}
    ok: dict[str, Any] = {"description": "OK" if endpoint.status == 200 else "Created"}
    if endpoint.response is not None:
        ok["content"] = {"application/json": {"schema": refs[(endpoint.response, "serialization")]}}
    else:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(endpoint.status): ok}
    for status in endpoint.errors:
        responses[str(status)] = {"description": reasons[status], "content": error_schema}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "responses": responses,
    }
    if parameters or endpoint.query:
        operation["parameters"] = [*parameters, *endpoint.query]
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    if endpoint.public:
        operation["security"] = []
    return operation


def openapi_document(endpoints: tuple[Endpoint, ...], reasons: Mapping[int, str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`, its schemas made by pydantic from the models;
    `reasons` describes each error status an endpoint lists."""
    wanted: dict[tuple[Any, str], None] = {(Error, "serialization"): None}
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted[(endpoint.body, "validation")] = None
        if endpoint.response is not None:
            wanted[(endpoint.response, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(
            endpoint, refs, reasons
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Giao Ban REST API",
            "version": "1",
            "description": (
                "Rooms and invitation links of a Giao Ban node. Authenticate with "
                "`Authorization: Bearer <API token>` (make one at /account/tokens or with "
                '`giaoban tokens add`). Errors are `{"error": {"code", "message"}}`.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token, gb_…",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "a signed-in browser; unsafe methods need X-CSRF-Token",
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }
