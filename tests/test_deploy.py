"""The deployment: `chalice package --stage prod` with keyfront's merge template, checked
property by property and by cfn-lint; the per-role IAM policies; the one table definition."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from chalicelib import admin, deploy
from chalicelib.core.kinds import KINDS
from chalicelib.core.services import Services

REPO = Path(__file__).resolve().parent.parent
CONFIG = json.loads((REPO / ".chalice" / "config.json").read_text())
PROD = CONFIG["stages"]["prod"]
TABLE = PROD["environment_variables"]["KEYFRONT_DYNAMODB_TABLE"]
PIN_SECRET = PROD["environment_variables"]["KEYFRONT_PIN_SECRET_ARN"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of what `chalice package` reads: app.py, chalicelib, .chalice.

    requirements.txt is empty: the template does not depend on the dependencies, and
    resolving them means downloading Linux wheels (network, ~30 s).
    """
    project = tmp_path_factory.mktemp("package") / "project"
    project.mkdir()
    shutil.copy(REPO / "app.py", project)
    shutil.copytree(REPO / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    for f in (REPO / ".chalice").glob("*.json"):
        shutil.copy(f, project / ".chalice")
    (project / "requirements.txt").write_text("")
    return project


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    return env


def _merge_template(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # run from the copy: `python -m` imports its chalicelib, which reads its .chalice
    return subprocess.run([sys.executable, "-m", "chalicelib.cli", "deploy", "template",
                           "--stage", "prod", "-o", str(out)],
                          cwd=project, env=_env(), check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def template(project) -> dict[str, Any]:
    """sam.json as `chalice package --stage prod --merge-template` writes it."""
    extras = project.parent / "extras.json"
    made = _merge_template(project, extras)
    assert "policy" not in made.stderr  # the committed policies are current
    subprocess.run([sys.executable, "-m", "chalicelib.cli", "deploy", "bytecode"],
                   cwd=project, env=_env(), check=True, capture_output=True)
    subprocess.run([str(BIN / "chalice"), "package", "--stage", "prod", "--merge-template",
                    str(extras), str(project.parent / "out")],
                   cwd=project, env=_env(), check=True, capture_output=True)
    return json.loads((project.parent / "out" / "sam.json").read_text())


def test_a_stale_policy_file_is_reported(project, tmp_path):
    stale = tmp_path / "project"
    shutil.copytree(project, stale, ignore=shutil.ignore_patterns("__pycache__"))
    policy = stale / ".chalice" / "policy-prod-api.json"
    document = json.loads(policy.read_text())
    document["Statement"][1]["Condition"]["ForAllValues:StringLike"][
        "dynamodb:LeadingKeys"].remove("ss#*")  # as if a ring kind were added since
    policy.write_text(json.dumps(document))
    made = _merge_template(stale, tmp_path / "extras.json")
    assert "policy-prod-api.json" in made.stderr and "deploy policies" in made.stderr
    assert "policy-prod-admin.json" not in made.stderr


def test_the_bundle_carries_checked_bytecode_of_every_module(template, project):
    """Lambda's code directory is read-only: without shipped bytecode every cold start
    compiles every module. The pycs are checked-hash ones (a zip keeps no exact mtime)."""
    import importlib.util
    import zipfile

    with zipfile.ZipFile(project.parent / "out" / "deployment.zip") as bundle:
        names = set(bundle.namelist())
        sources = [n for n in names if n.startswith("chalicelib/") and n.endswith(".py")]
        assert len(sources) > 50
        tag = sys.implementation.cache_tag
        for src in sources:
            folder, _, file = src.rpartition("/")
            pyc = bundle.read(f"{folder}/__pycache__/{file[:-3]}.{tag}.pyc")
            assert int.from_bytes(pyc[4:8], "little") == 0b11, src  # checked hash
            assert pyc[8:16] == importlib.util.source_hash(bundle.read(src)), src


def test_cfn_lint_passes(template, tmp_path):
    path = tmp_path / "sam.json"
    path.write_text(json.dumps(template))
    res = subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _functions(template):
    res = template["Resources"]
    return {role: res[logical]["Properties"] for role, logical in deploy.FUNCTIONS.items()}


def test_functions_reach_the_hsm_network_and_library(template):
    for props in _functions(template).values():
        assert props["VpcConfig"] == {"SubnetIds": PROD["subnet_ids"],
                                      "SecurityGroupIds": PROD["security_group_ids"]}
        assert props["Layers"] == PROD["layers"]
        env = props["Environment"]["Variables"]
        assert env["KEYFRONT_PKCS11_MODULE"].startswith("/opt/")  # where layers are unpacked
        assert env["KEYFRONT_PIN_SECRET_ARN"] == PIN_SECRET
        assert "KEYFRONT_PIN" not in env
        assert props["Runtime"] == deploy.LAMBDA_RUNTIME


def test_api_answers_before_api_gateway_gives_up(template):
    props = _functions(template)
    assert props["api"]["Timeout"] < deploy.API_GATEWAY_TIMEOUT_SECONDS
    assert props["admin"]["Timeout"] >= props["api"]["Timeout"]


def test_custom_domain_serves_the_paths_at_the_root(template):
    res = template["Resources"]
    domain = PROD["api_gateway_custom_domain"]
    props = res["ApiGatewayCustomDomain"]["Properties"]
    assert props["DomainName"] == domain["domain_name"]
    assert props["RegionalCertificateArn"] == domain["certificate_arn"]
    assert props["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    mapping = res["ApiGatewayCustomDomainMapping"]["Properties"]
    assert mapping["BasePath"] == "(none)"  # API Gateway's word for the empty base path
    assert mapping["Stage"] == PROD["api_gateway_stage"]
    assert mapping["RestApiId"] == {"Ref": "RestAPI"}
    assert set(template["Outputs"]) >= {"CustomDomainURL", "CustomDomainTarget"}


def test_separate_least_privilege_roles(template):
    res = template["Resources"]
    roles = {role: props["Role"]["Fn::GetAtt"][0]
             for role, props in _functions(template).items()}
    assert roles["api"] != roles["admin"]
    for role, logical in roles.items():
        (policy,) = res[logical]["Properties"]["Policies"]
        assert policy["PolicyDocument"] == deploy.role_policy(role, TABLE, PIN_SECRET)
        actions = {a for s in policy["PolicyDocument"]["Statement"] for a in s["Action"]}
        assert "ec2:CreateNetworkInterface" in actions
        assert not any(a.endswith("*") and a.startswith("dynamodb") for a in actions)
        assert "dynamodb:DeleteTable" not in actions
        # only the admin function's KEK roll scans the table
        assert ("dynamodb:Scan" in actions) == (role == "admin")


def _writes(role: str) -> list[str]:
    statement = deploy.role_policy(role, TABLE)["Statement"][1]
    assert "dynamodb:PutItem" in statement["Action"]
    assert statement["Condition"]["Null"] == {"dynamodb:LeadingKeys": "false"}
    return statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]


def _covered(pk: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(pk, p) for p in patterns)


def test_api_role_cannot_write_tokens():
    api = _writes("api")
    for pk in ("token#" + "ab" * 32, "tokens", "meta"):
        assert not _covered(pk, api)
    for kind in KINDS.values():
        assert _covered(f"{kind.store_prefix}#ring-1#keys", api)
    assert _covered("audit#2026-12-02", api) and _covered("rate#tok", api)
    assert _covered("usage#storedsafe#7", api)
    # the admin function's KEK roll rewrites blobs in every ring and keeps its progress
    assert _covered("auth0#x", _writes("admin")) and _covered("kek-roll", _writes("admin"))
    assert not _covered("kek-roll", api)


def test_every_role_reaches_the_deleted_keys_and_the_admin_their_rings():
    # a delete (api) moves a key into the "deleted" partition; a restore or a purge (admin,
    # maintenance) writes it and the key's ring; only the admin function writes tokens
    for role in deploy.FUNCTIONS:
        assert _covered("deleted", _writes(role)), role
        for kind in KINDS.values():
            assert _covered(f"{kind.store_prefix}#ring-1#keys", _writes(role)), role
    assert not _covered("tokens", _writes("maintenance"))


def test_every_partition_the_admin_function_writes_is_its_own(tmp_path, settings):
    services = Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "a.db")))
    made = admin.handle({"action": "create-token", "principal": "ci", "ttl_seconds": 60,
                         "scopes": [{"kind": "storedsafe", "ring": "7", "perms": ["read"]}]},
                        services)
    with sqlite3.connect(tmp_path / "a.db") as db:
        pks = {pk for (pk,) in db.execute("SELECT DISTINCT pk FROM items")}
    admin.handle({"action": "revoke-token", "token_id": made["record"]["token_id"]}, services)
    with sqlite3.connect(tmp_path / "a.db") as db:
        pks |= {pk for (pk,) in db.execute("SELECT DISTINCT pk FROM items")}
    assert any(pk.startswith("audit#") for pk in pks) and "tokens" in pks
    for pk in pks:
        assert _covered(pk, _writes("admin")), pk
    token_pk = next(pk for pk in pks if pk.startswith("token#"))
    reads = deploy.role_policy("api", TABLE)["Statement"][0]
    assert _covered(token_pk, reads["Condition"]["ForAllValues:StringLike"][
        "dynamodb:LeadingKeys"])  # the API authenticates with it


def test_committed_policies_are_the_generated_ones():
    for role in deploy.FUNCTIONS:
        path = REPO / ".chalice" / f"policy-prod-{role}.json"
        assert json.loads(path.read_text()) == deploy.role_policy(role, TABLE, PIN_SECRET), (
            f"{path.name} is stale: run `keyfront deploy policies --stage prod`")
    functions = PROD["lambda_functions"]
    assert functions["api_handler"]["iam_policy_file"] == "policy-prod-api.json"
    assert functions["admin"]["iam_policy_file"] == "policy-prod-admin.json"


def test_customer_managed_kms_key_is_an_option():
    key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    props = deploy.merge_template(TABLE, key)["Resources"]["KeyfrontTable"]["Properties"]
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS",
                                         "KMSMasterKeyId": key}
    kms = deploy.role_policy("api", TABLE, kms_key=key)["Statement"][-1]
    assert kms["Resource"] == key and "kms:Decrypt" in kms["Action"]


def test_the_table(template):
    table = template["Resources"]["KeyfrontTable"]
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["TableName"] == TABLE
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS"}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_store_init_makes_the_same_table(moto_endpoint):
    from chalicelib.store.dynamodb_store import create_table, make_client

    table = f"kf-{uuid.uuid4().hex[:12]}"
    create_table(table, region="us-east-1", endpoint_url=moto_endpoint)
    client = make_client("dynamodb", "us-east-1", moto_endpoint)
    described = client.describe_table(TableName=table)["Table"]
    assert described["DeletionProtectionEnabled"] is True
    assert described["SSEDescription"]["SSEType"] == "KMS"
    backups = client.describe_continuous_backups(TableName=table)
    pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"


def test_log_retention_and_outputs(template):
    res = template["Resources"]
    for group in ("ApiHandlerLogGroup", "AdminLogGroup"):
        props = res[group]["Properties"]
        assert props["RetentionInDays"] == PROD["log_retention_in_days"]
        ref = props["LogGroupName"]["Fn::Sub"].split("${")[1].rstrip("}")
        assert ref in res  # the log group is the function's own
    outputs = template["Outputs"]
    assert outputs["AdminFunctionName"]["Value"] == {"Ref": "Admin"}
    assert outputs["AdminFunctionArn"]["Value"] == {"Fn::GetAtt": ["Admin", "Arn"]}


def test_example_values_are_reported():
    assert deploy.placeholders(PROD)  # the shipped stage holds examples to replace
    assert deploy.placeholders({"a": ["subnet-0aa11bb22cc33dd44"]}) == []


def test_failed_admin_event_fails_the_invocation(tmp_path, settings):
    services = Services.build(dataclasses.replace(settings, sqlite_path=str(tmp_path / "b.db")))
    with pytest.raises(admin.AdminEventFailed) as failed:
        admin.invoke({"action": "drop-tables"}, services)
    assert json.loads(str(failed.value))["error"] == "invalid_input"
    assert admin.invoke({"action": "list-tokens"}, services) == {"ok": True, "tokens": []}
