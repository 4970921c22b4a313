"""What a deployment needs beyond `.chalice/config.json`, built from the code it protects.

- `role_policy(role, ...)`: the IAM policy of each Lambda function. The API handler may read
  and write only the partitions it owns (every ring kind's `store_prefix`, the audit and the
  rate windows) and only read token records; the admin function owns the token partitions and
  writes its audit records, and (for the KEK roll) scans the table and rewrites ring items.
  Written to `.chalice/policy-<stage>-<role>.json` by `keyfront deploy policies` (a test
  keeps the committed files equal to this).
- `merge_template(...)`: the CloudFormation fragment `chalice package --merge-template` adds:
  the one table definition, the runtime pinned, the admin function's name and ARN as outputs.

Chalice's own stage settings carry the rest (VPC, layers, custom domain, log retention,
timeouts): see the README's "Deploying".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from chalicelib.core.kinds import KINDS

# The runtime the bundle is built for. Chalice picks wheels (cryptography, pydantic-core,
# python-pkcs11 carry compiled code) for the interpreter that runs `chalice package`, so the
# template's runtime must be that interpreter's: `keyfront deploy template` refuses another.
LAMBDA_RUNTIME = "python3.11"
# API Gateway gives up on an integration after 29 s; the handler must answer before that.
API_GATEWAY_TIMEOUT_SECONDS = 29
FUNCTIONS = {"api": "APIHandler", "admin": "Admin",
             "maintenance": "Maintenance"}  # role -> Chalice's logical id

# Store partitions (the item's `pk`) by owner. Ring kinds own `<store_prefix>#...`.
TOKEN_PARTITIONS = ("token#*", "tokens")  # hashed token records and the token index
AUDIT_PARTITIONS = ("audit#*",)
RATE_PARTITIONS = ("rate#*",)
ROTATION_PARTITIONS = ("rotation",)  # the scheduled-rotation index (core/rotation.py)
USAGE_PARTITIONS = ("usage#*",)  # the last use of each key (core/usage.py)
KEK_ROLL_PARTITIONS = ("kek-roll",)  # core/kek_roll.py's progress items
DELETED_PARTITIONS = ("deleted",)  # deleted-key entries (core/deleted.py)

# Actions on items (a transaction is authorised item by item under these same actions).
_ITEM_READ = ("dynamodb:GetItem", "dynamodb:Query", "dynamodb:ConditionCheckItem")
_ITEM_WRITE = ("dynamodb:PutItem", "dynamodb:DeleteItem")
_TABLE_READ = ("dynamodb:DescribeTable",)
# A Scan names no partition (no LeadingKeys): only the admin function's KEK roll scans.
_TABLE_SCAN = ("dynamodb:Scan",)
# What a Lambda function attached to a VPC needs to create and remove its network interfaces
# (the actions of AWSLambdaVPCAccessExecutionRole).
_VPC_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


def ring_partitions() -> tuple[str, ...]:
    """`<store_prefix>#*` for every ring kind declared in core/kinds.py."""
    return tuple(sorted(f"{kind.store_prefix}#*" for kind in KINDS.values()
                        if kind.store_prefix))


def partitions(role: str) -> dict[str, tuple[str, ...]]:
    """{"read": patterns, "write": patterns} of the partitions `role` uses ("api", "admin",
    "maintenance")."""
    if role == "api":
        # a delete moves a key into its deleted-key entry; a use notes the key's last use; a
        # key's rotation period is set through a dialect too (and a rotation moves it on)
        owned = (ring_partitions() + AUDIT_PARTITIONS + RATE_PARTITIONS + USAGE_PARTITIONS
                 + DELETED_PARTITIONS + ROTATION_PARTITIONS)
        # authentication reads a token's hashed record; it never writes one
        return {"read": owned + ("token#*",), "write": owned}
    if role == "admin":
        # tokens; the keys of every ring kind: the operator's forced delete, restore and
        # purge of deleted keys, rotation settings run the domains' own code under the admin
        # principal, and the KEK roll (`rewrap`) rewrites blobs in every ring's partitions and
        # keeps its progress in its own; minting tokens already gives this function every ring
        owned = (TOKEN_PARTITIONS + AUDIT_PARTITIONS + ring_partitions() + USAGE_PARTITIONS
                 + DELETED_PARTITIONS + KEK_ROLL_PARTITIONS + ROTATION_PARTITIONS)
        return {"read": owned, "write": owned}
    if role == "maintenance":
        # scheduled upkeep changes keys of every ring kind (the purge of deleted keys and
        # scheduled rotation among it) and audits what it did
        owned = (ring_partitions() + AUDIT_PARTITIONS + USAGE_PARTITIONS + DELETED_PARTITIONS
                 + ROTATION_PARTITIONS)
        return {"read": owned, "write": owned}
    raise ValueError(f"unknown role {role!r}")


def _on_partitions(actions: tuple[str, ...], table_arn: str,
                   patterns: tuple[str, ...]) -> dict[str, Any]:
    # ForAllValues over a key absent from the request is true: the Null test makes the
    # partition key mandatory, so the statement never allows an action without one.
    return {
        "Effect": "Allow",
        "Action": list(actions),
        "Resource": table_arn,
        "Condition": {
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(patterns)},
            "Null": {"dynamodb:LeadingKeys": "false"},
        },
    }


def role_policy(role: str, table: str, pin_secret_arn: str | None = None,
                kms_key: str | None = None) -> dict[str, Any]:
    """The IAM policy document of `role`'s Lambda function (least privilege).

    `table` is the DynamoDB table name, `pin_secret_arn` the Secrets Manager secret of the HSM
    PIN (Secrets Manager appends a suffix to the name, hence the trailing `*`),
    `kms_key` the customer-managed KMS key encrypting the table, if one is used.
    """
    table_arn = f"arn:aws:dynamodb:*:*:table/{table}"
    use = partitions(role)
    statements: list[dict[str, Any]] = [
        _on_partitions(_ITEM_READ, table_arn, use["read"]),
        _on_partitions(_ITEM_WRITE, table_arn, use["write"]),
        {"Effect": "Allow", "Action": list(_TABLE_READ), "Resource": table_arn},
        *([{"Effect": "Allow", "Action": list(_TABLE_SCAN), "Resource": table_arn}]
          if role == "admin" else []),
        {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
         "Resource": (pin_secret_arn or "arn:aws:secretsmanager:*:*:secret:keyfront/hsm-pin")
         + "*"},
        {"Effect": "Allow", "Action": list(_VPC_ACTIONS), "Resource": "*"},
        {"Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "arn:aws:logs:*:*:*"},
    ]
    if kms_key:
        statements.append({
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
            "Resource": kms_key,
            "Condition": {"StringLike": {"kms:ViaService": "dynamodb.*.amazonaws.com"}},
        })
    return {"Version": "2012-10-17", "Statement": statements}


def merge_template(table: str, kms_key: str | None = None, *, log_retention: bool = True,
                   custom_domain: bool = True) -> dict[str, Any]:
    """The fragment for `chalice package --merge-template`: the table (the definition
    `keyfront store init` applies), the runtime pinned on both functions, and as outputs the
    admin function's name and ARN (CloudFormation names it otherwise than `chalice deploy`'s
    `keyfront-<stage>-admin`) and the custom domain's DNS target.

    `log_retention`/`custom_domain` say whether the stage sets `log_retention_in_days` and
    `api_gateway_custom_domain` (the fragment then completes what Chalice generates for them).
    """
    from chalicelib.store.dynamodb_store import TABLE_RESOURCE, cloudformation_template

    fragment = cloudformation_template(table, kms_key)
    resources = fragment["Resources"]
    for logical_id in FUNCTIONS.values():
        resources[logical_id] = {"Properties": {"Runtime": LAMBDA_RUNTIME}}
    if log_retention:
        # Chalice 1.34 names the API handler's log group after `ApiHandler`, a resource
        # that does not exist (the function is `APIHandler`): point it at the function.
        resources["ApiHandlerLogGroup"] = {"Properties": {
            "LogGroupName": {"Fn::Sub": "/aws/lambda/${" + FUNCTIONS["api"] + "}"}}}
    outputs: dict[str, Any] = {
        "AdminFunctionName": {"Value": {"Ref": FUNCTIONS["admin"]},
                              "Description": "aws lambda invoke --function-name <this>"},
        "AdminFunctionArn": {"Value": {"Fn::GetAtt": [FUNCTIONS["admin"], "Arn"]}},
        "TableName": {"Value": {"Ref": TABLE_RESOURCE}},
    }
    if custom_domain:
        outputs["CustomDomainURL"] = {
            "Value": {"Fn::Sub": "https://${ApiGatewayCustomDomain}/"},
            "Description": "the URL every vendor's client is given (paths at the root)"}
        outputs["CustomDomainTarget"] = {
            "Value": {"Fn::GetAtt": ["ApiGatewayCustomDomain", "RegionalDomainName"]},
            "Description": "the DNS name the custom domain's CNAME/alias points at"}
    fragment["Outputs"] = outputs
    return fragment


def compile_bytecode(package: Path) -> int:
    """Compile every module under `package` (chalicelib) to bytecode beside it, for
    `chalice package` to ship (it zips every file under chalicelib). Lambda's code directory
    is read-only, so without them each cold start compiles every module again. The files are
    checked-hash pycs: the interpreter uses one only while its source's hash matches (a zip
    keeps no exact mtime, so timestamp pycs would be ignored). Returns how many were written.
    """
    import compileall
    import importlib.util
    import py_compile

    saved = sys.pycache_prefix
    sys.pycache_prefix = None  # beside the sources, where the bundle carries them
    try:
        ok = compileall.compile_dir(
            str(package), quiet=1, force=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        if not ok:
            raise ValueError(f"a module under {package} does not compile")
        return sum(1 for src in package.rglob("*.py")
                   if Path(importlib.util.cache_from_source(str(src))).exists())
    finally:
        sys.pycache_prefix = saved


def local_runtime() -> str:
    """The Lambda runtime name of the interpreter running this code."""
    return f"python{sys.version_info[0]}.{sys.version_info[1]}"


# Values in the shipped config.json that stand for the deployer's own (AWS's example
# account, example.com, all-zero ids): packaging with them left in is a mistake.
PLACEHOLDERS = ("111122223333", "example.com", "0123456789abcdef", "00000000-0000")


def placeholders(stage_config: Any) -> list[str]:
    """The example values still present in a stage's configuration (JSON-like data)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and any(p in value for p in PLACEHOLDERS):
            found.append(value)

    walk(stage_config)
    return found
