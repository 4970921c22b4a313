"""The OpenAPI description: valid OpenAPI 3.1, every route of the app, the pydantic bodies;
served at /openapi.json and written by `keyfront openapi`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from chalice.test import Client
from openapi_spec_validator import validate

from chalicelib import openapi

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import app as app_module  # noqa: E402 - app.py lives at the repository root


@pytest.fixture(scope="module")
def served():
    with Client(app_module.app, stage_name="dev") as client:
        r = client.http.get("/openapi.json")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        return json.loads(r.body)


def test_served_document_is_valid_openapi_3(served):
    validate(served)  # raises on any schema violation
    assert served["openapi"].startswith("3.")


def test_every_route_is_listed(served):
    routes = {(path, method.lower()) for path, methods in app_module.app.routes.items()
              for method in methods}
    listed = {(path, method) for path, ops in served["paths"].items() for method in ops}
    assert listed == routes
    assert ("/api/v2/encrypt_keys.json", "post") in listed  # one of each dialect
    assert ("/api/{version}/transparent/{vaultid}/encrypt/{name}", "post") in listed
    assert ("/.well-known/jwks.json", "get") in listed
    ids = [op["operationId"] for ops in served["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_bodies_come_from_the_pydantic_models(served):
    from chalicelib.dialects.miarec.models import CreateBody

    op = served["paths"]["/api/v2/encrypt_keys.json"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = served["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == set(CreateBody.model_json_schema()["properties"])
    encrypt = served["paths"]["/api/{version}/transparent/{vaultid}/encrypt/{name}"]["post"]
    assert "requestBody" in encrypt
    assert {p["name"] for p in encrypt["parameters"]} == {"version", "vaultid", "name"}
    listing = served["paths"]["/api/v2/connections"]["get"]
    assert "per_page" in {p["name"] for p in listing["parameters"] if p["in"] == "query"}


def test_a_view_without_a_model_has_no_body():
    def view():
        return len("x")

    assert openapi.request_model(view) is None


def test_cli_writes_the_same_document(served, tmp_path):
    out = tmp_path / "openapi.json"
    subprocess.run([sys.executable, "-m", "chalicelib.cli", "openapi", "-o", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    assert json.loads(out.read_text()) == served
