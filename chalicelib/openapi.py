"""An OpenAPI 3.1 description of every route the app serves, from the routes themselves and
the pydantic models their views parse.

Routes come from the Chalice app's route table, so a route cannot be missing. A view's
request model is found in its own code: the first pydantic model class it passes to a call
(`parse_body(CreateBody, ...)`, `call.body(EncryptBody)`, `parse(Model, ...)`) is the body
of a POST/PUT/PATCH; on a GET or DELETE it describes the query parameters. Response bodies
are each vendor's envelope, described in the README, not modelled here.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

TITLE = "keyfront"
_WITH_BODY = ("POST", "PUT", "PATCH")


def _unwrap(view: Any) -> Any:
    return inspect.unwrap(view)


def request_model(view: Any) -> type[BaseModel] | None:
    """The first pydantic model class the view passes as an argument to a call, if any."""
    func = _unwrap(view)
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    scope = func.__globals__
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Name):
                    candidate = scope.get(arg.id)
                    if isinstance(candidate, type) and issubclass(candidate, BaseModel) \
                            and candidate is not BaseModel:
                        return candidate
    return None


def _dialect(view: Any) -> str:
    parts = (_unwrap(view).__module__ or "").split(".")
    if parts[:2] == ["chalicelib", "dialects"] and len(parts) > 2 and parts[2] != "service":
        return parts[2]
    return "keyfront"


def _summary(view: Any) -> tuple[str, str]:
    doc = inspect.getdoc(_unwrap(view)) or ""
    first, _, rest = doc.partition("\n")
    return first.strip(), rest.strip()


def package_version() -> str:
    """keyfront's version from its installed metadata ("unknown" in a bundle that only
    copies the code, as a Lambda deployment does)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keyfront")
    except PackageNotFoundError:
        return "unknown"


def build(app: Any, version: str | None = None) -> dict[str, Any]:
    """The OpenAPI document of `app` (a Chalice app with its blueprints registered)."""
    version = version or package_version()
    operations: list[tuple[str, str, Any, type[BaseModel] | None]] = []
    for path, methods in sorted(app.routes.items()):
        for method, entry in sorted(methods.items()):
            operations.append((path, method, entry, request_model(entry.view_function)))
    models = sorted({m for *_, m in operations if m is not None},
                    key=lambda m: (m.__module__, m.__qualname__))
    names, defs = models_json_schema([(m, "validation") for m in models],
                                     ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for path, method, entry, model in operations:
        summary, description = _summary(entry.view_function)
        op: dict[str, Any] = {
            "operationId": f"{_dialect(entry.view_function)}.{entry.view_name}",
            "tags": [_dialect(entry.view_function)],
            "responses": {"default": {"description": "the vendor's envelope (see README)"}},
        }
        if summary:
            op["summary"] = summary
        if description:
            op["description"] = description
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in entry.view_args]
        if model is not None:
            ref = names[(model, "validation")]
            if method in _WITH_BODY:
                op["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": ref}}}
            else:
                params += _query_params(model)
        if params:
            op["parameters"] = params
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version,
                 "description": "The vendor APIs keyfront speaks; each route answers in its "
                                "vendor's envelope."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]
