"""DynamoDB backend, through the low-level boto3 client (thread-safe, no resource layer).

The table definition lives here once and serves both create_table (tests, local moto) and
cloudformation_template (deployment via `chalice package --merge-template`).
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from chalicelib.errors import (
    LimitExceeded,
    StoreConditionFailed,
    StoreTransactionCancelled,
    Unavailable,
)
from chalicelib.store._items import (
    VERSION_ATTR,
    check_key,
    check_limit,
    check_ops,
    check_query,
    decode_cursor,
    decode_scan_cursor,
    encode_cursor,
    split_item,
    stored,
)
from chalicelib.store.base import Check, Delete, Item, Op, Page, Put, Store, Update

TTL_ATTRIBUTE = "expires_at"  # epoch seconds; DynamoDB deletes expired items lazily

TABLE_DEFINITION: dict[str, Any] = {
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ],
    "KeySchema": [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ],
    "BillingMode": "PAY_PER_REQUEST",
}

# What the service's role needs at runtime (create_table needs more, but only runs locally).
REQUIRED_IAM_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:Scan",  # the admin function's whole-store maintenance (a KEK roll)
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
)

def client_config(read_timeout: int = 5) -> Config:
    """The boto3 client's config: short timeouts (a key service should answer "unavailable"
    fast rather than hang), botocore's standard retries."""
    return Config(
        connect_timeout=2,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=32,  # >= request threads, so calls do not queue for a connection
        tcp_keepalive=True,
    )


CLIENT_CONFIG = client_config()

# Errors that mean "the backend cannot serve us right now" rather than "your request is bad".
_UNAVAILABLE_CODES = frozenset({
    "ResourceNotFoundException",  # table missing: misconfigured or not yet created
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
    "InternalServerError",
    "ServiceUnavailable",
    "UnrecognizedClientException",
    "AccessDeniedException",
    "ExpiredTokenException",
    "InvalidSignatureException",
})

_NAMES_PK = {"#pk": "pk"}
_NAMES_V = {"#v": VERSION_ATTR}
_ABSENT = "attribute_not_exists(#pk)"
_EXISTS = "attribute_exists(#pk)"
_VERSION_IS = "#v = :v"


class _Deserializer(TypeDeserializer):
    """TypeDeserializer giving back what was stored: int instead of Decimal, bytes not Binary."""

    def _deserialize_n(self, value: str) -> int:
        number = Decimal(value)
        if number != number.to_integral_value():
            raise TypeError(f"stored number {value} is not an integer")
        return int(number)

    def _deserialize_b(self, value: bytes) -> bytes:
        return bytes(value)


_serialize = TypeSerializer().serialize
_deserialize = _Deserializer().deserialize


_clients: dict[tuple[str, str, str | None, int], tuple[Config, Any]] = {}
_clients_lock = threading.Lock()
_session: boto3.session.Session | None = None


def make_client(service: str, region: str, endpoint_url: str | None = None,
                config: Config = CLIENT_CONFIG) -> Any:
    """A shared boto3 client for these settings (clients are thread-safe, creation is not).

    Creating a client from a fresh session costs ~100 ms (it reloads the service model), so
    clients are made once per process from one session and reused.
    """
    global _session
    key = (service, region, endpoint_url, id(config))
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            if _session is None:
                _session = boto3.session.Session()
            client = _session.client(service, region_name=region, endpoint_url=endpoint_url,
                                     config=config)
            # Keeping config referenced keeps its id() from being reused by another.
            entry = _clients[key] = (config, client)
    return entry[1]


@contextmanager
def aws_errors(what: str = "the item store") -> Iterator[None]:
    """Map botocore failures to the keyfront error hierarchy."""
    try:
        yield
    except ClientError as e:
        error = e.response.get("Error", {})
        code = error.get("Code", "")
        if code == "ConditionalCheckFailedException":
            raise StoreConditionFailed("the item is missing, exists or has another version") \
                from e
        if code == "TransactionCanceledException":
            raise StoreTransactionCancelled(_cancellation_reasons(e)) from e
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _UNAVAILABLE_CODES or status >= 500:
            raise Unavailable(f"{what} is unavailable", aws_error=code) from e
        if code == "ValidationException" and "size" in error.get("Message", "").lower():
            raise LimitExceeded("the item is too large") from e
        raise
    except ParamValidationError:
        raise  # a bug in the caller, not an outage
    except BotoCoreError as e:
        # Connection refused/timeouts, no credentials, ...: after botocore's retries.
        raise Unavailable(f"{what} cannot be reached") from e


def _cancellation_reasons(e: ClientError) -> list[str | None]:
    """reasons[i] for op i: its failure code, or None; from CancellationReasons or message."""
    reasons = e.response.get("CancellationReasons")
    if reasons:
        return [None if r.get("Code") in (None, "None") else r["Code"] for r in reasons]
    # Fallback: "... specific reasons [None, ConditionalCheckFailed]"
    match = re.search(r"\[([^\]]*)\]\s*$", e.response.get("Error", {}).get("Message", ""))
    if not match:
        return []
    return [None if c.strip() in ("", "None") else c.strip() for c in match.group(1).split(",")]


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _to_dynamo(pk: str, sk: str, attrs: dict[str, Any], version: int) -> dict[str, Any]:
    item = {name: _serialize(value) for name, value in attrs.items()}
    item.update(_key(pk, sk))
    item[VERSION_ATTR] = {"N": str(version)}
    return item


def _from_dynamo(raw: dict[str, Any]) -> Item:
    item = {name: _deserialize(value) for name, value in raw.items()}
    pk, sk, version = item.pop("pk"), item.pop("sk"), item.pop(VERSION_ATTR, 0)
    return stored(pk, sk, item, version)


def _version_condition(expected: int) -> dict[str, Any]:
    return {"ConditionExpression": _VERSION_IS, "ExpressionAttributeNames": _NAMES_V,
            "ExpressionAttributeValues": {":v": {"N": str(expected)}}}


def _exists_condition(exists: bool) -> dict[str, Any]:
    return {"ConditionExpression": _EXISTS if exists else _ABSENT,
            "ExpressionAttributeNames": _NAMES_PK}


class DynamoStore(Store):
    """Store on one DynamoDB table with string keys `pk` (HASH) and `sk` (RANGE).

    Reads are strongly consistent: a read-modify-write cycle must see the latest version.
    """

    __eq__ = object.__eq__  # the dataclass base would compare stores by name only
    __hash__ = object.__hash__

    def __init__(self, table: str, region: str, endpoint_url: str | None = None, *,
                 config: Config = CLIENT_CONFIG) -> None:
        self.name = "dynamodb"
        self.table = table
        self._client = make_client("dynamodb", region, endpoint_url, config)

    def get(self, pk: str, sk: str) -> Item | None:
        """The item at (pk, sk), or None."""
        check_key(pk, sk)
        with aws_errors():
            resp = self._client.get_item(TableName=self.table, Key=_key(pk, sk),
                                         ConsistentRead=True)
        raw = resp.get("Item")
        return None if raw is None else _from_dynamo(raw)

    def query(self, pk: str, sk_prefix: str = "", *, limit: int = 100,
              cursor: str | None = None, descending: bool = False) -> Page:
        """Items of partition pk whose sk starts with sk_prefix, in sk order, paged."""
        check_query(pk, sk_prefix, limit)
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk"},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ScanIndexForward": not descending,
            "ConsistentRead": True,
        }
        if sk_prefix:  # begins_with(sk, "") is invalid in DynamoDB
            request["KeyConditionExpression"] += " AND begins_with(#sk, :prefix)"
            request["ExpressionAttributeNames"]["#sk"] = "sk"
            request["ExpressionAttributeValues"][":prefix"] = {"S": sk_prefix}
        start = None if cursor is None else _key(pk, decode_cursor(cursor, pk, sk_prefix))
        items, more = self._page(self._client.query, request, start, limit)
        return Page(items, encode_cursor(pk, items[-1]["sk"]) if more else None)

    def scan_all(self, cursor: str | None = None, *, limit: int = 100) -> Page:
        """Every item of the table, a page at a time (DynamoDB's Scan order, strongly
        consistent reads); the cursor is the last item's key (ExclusiveStartKey)."""
        check_limit(limit)
        request: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        start = None if cursor is None else _key(*decode_scan_cursor(cursor))
        items, more = self._page(self._client.scan, request, start, limit)
        return Page(items, encode_cursor(items[-1]["pk"], items[-1]["sk"]) if more else None)

    @staticmethod
    def _page(call: Any, request: dict[str, Any], start: dict[str, Any] | None,
              limit: int) -> tuple[list[Item], bool]:
        """Up to `limit` items of a Query or Scan `request` from `start`, and whether there
        are more. Asks for one more than limit so the last page has no cursor (DynamoDB
        alone would hand out a cursor to an empty page); loops since a response stops at
        1 MB."""
        raw_items: list[dict[str, Any]] = []
        while True:
            if start is not None:
                request["ExclusiveStartKey"] = start
            request["Limit"] = limit + 1 - len(raw_items)
            with aws_errors():
                resp = call(**request)
            raw_items.extend(resp.get("Items", []))
            start = resp.get("LastEvaluatedKey")
            if len(raw_items) > limit or start is None:
                break
        return [_from_dynamo(raw) for raw in raw_items[:limit]], len(raw_items) > limit

    def put_if_absent(self, item: Item) -> Item:
        """Write item with version 1; StoreConditionFailed if (pk, sk) exists."""
        pk, sk, attrs = split_item(item)
        with aws_errors():
            self._client.put_item(TableName=self.table, Item=_to_dynamo(pk, sk, attrs, 1),
                                  **_exists_condition(False))
        return stored(pk, sk, attrs, 1)

    def update_if_version(self, item: Item, expected_version: int) -> Item:
        """Replace item (version becomes expected+1); StoreConditionFailed otherwise."""
        pk, sk, attrs = split_item(item)
        # A full PutItem, not UpdateItem: attributes absent from item must disappear.
        with aws_errors():
            self._client.put_item(TableName=self.table,
                                  Item=_to_dynamo(pk, sk, attrs, expected_version + 1),
                                  **_version_condition(expected_version))
        return stored(pk, sk, attrs, expected_version + 1)

    def delete_if(self, pk: str, sk: str, expected_version: int | None = None) -> None:
        """Delete the item; StoreConditionFailed if missing or the version differs."""
        check_key(pk, sk)
        condition = (_exists_condition(True) if expected_version is None
                     else _version_condition(expected_version))
        with aws_errors():
            self._client.delete_item(TableName=self.table, Key=_key(pk, sk), **condition)

    def transact(self, ops: list[Op]) -> None:
        """All-or-nothing; StoreTransactionCancelled(reasons) names the failed conditions."""
        check_ops(ops)
        if not ops:
            return  # DynamoDB rejects an empty transaction; nothing to do is success
        items = [self._transact_item(op) for op in ops]
        # The token makes botocore's retries idempotent: a retry after a lost response must
        # not be cancelled by the conditions our own first attempt already changed.
        with aws_errors():
            self._client.transact_write_items(TransactItems=items,
                                              ClientRequestToken=uuid.uuid4().hex)

    def _transact_item(self, op: Op) -> dict[str, Any]:
        """One TransactItems entry for op."""
        if isinstance(op, Put):
            pk, sk, attrs = split_item(op.item)
            put = {"TableName": self.table, "Item": _to_dynamo(pk, sk, attrs, 1)}
            if op.if_absent:
                put.update(_exists_condition(False))
            return {"Put": put}
        if isinstance(op, Update):
            pk, sk, attrs = split_item(op.item)
            return {"Put": {"TableName": self.table,
                            "Item": _to_dynamo(pk, sk, attrs, op.expected_version + 1),
                            **_version_condition(op.expected_version)}}
        if isinstance(op, Delete):
            condition = (_exists_condition(True) if op.expected_version is None
                         else _version_condition(op.expected_version))
            return {"Delete": {"TableName": self.table, "Key": _key(op.pk, op.sk),
                               **condition}}
        if isinstance(op, Check):
            condition = (_exists_condition(False) if op.expected_version is None
                         else _version_condition(op.expected_version))
            return {"ConditionCheck": {"TableName": self.table, "Key": _key(op.pk, op.sk),
                                       **condition}}
        raise TypeError(f"not a store operation: {type(op).__name__}")

    def ping(self) -> None:
        """Raise Unavailable unless the table exists and is usable."""
        with aws_errors():
            status = self._client.describe_table(TableName=self.table)["Table"]["TableStatus"]
        if status not in ("ACTIVE", "UPDATING"):
            raise Unavailable("the item store is unavailable", table_status=status)


def _sse(kms_key: str | None, *, enabled_key: str) -> dict[str, Any]:
    """Encryption at rest, in the create_table (`Enabled`) or CloudFormation (`SSEEnabled`)
    spelling: always KMS, under DynamoDB's AWS-managed key (`alias/aws/dynamodb`) unless a
    customer-managed key is named. Stated rather than left to the AWS-owned default so that
    key use shows in CloudTrail and a customer key can be chosen."""
    sse: dict[str, Any] = {enabled_key: True, "SSEType": "KMS"}
    if kms_key:
        sse["KMSMasterKeyId"] = kms_key
    return sse


def create_table(table: str, region: str, endpoint_url: str | None = None,
                 kms_key: str | None = None) -> None:
    """Create the table as the template declares it (see cloudformation_template): key
    schema, on-demand billing, KMS encryption, deletion protection, point-in-time recovery
    and TTL on `expires_at`. Idempotent: an existing table gets PITR and TTL switched on."""
    with aws_errors():  # a bad profile fails already here
        client = make_client("dynamodb", region, endpoint_url)
        try:
            client.create_table(TableName=table, **copy.deepcopy(TABLE_DEFINITION),
                                SSESpecification=_sse(kms_key, enabled_key="Enabled"),
                                DeletionProtectionEnabled=True)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(TableName=table, TimeToLiveSpecification={
                "AttributeName": TTL_ATTRIBUTE, "Enabled": True})
        backups = client.describe_continuous_backups(TableName=table)[
            "ContinuousBackupsDescription"]
        pitr = backups.get("PointInTimeRecoveryDescription", {})
        if pitr.get("PointInTimeRecoveryStatus") != "ENABLED":
            client.update_continuous_backups(
                TableName=table,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})


TABLE_RESOURCE = "KeyfrontTable"  # its logical id in the template


def cloudformation_template(table_name: str, kms_key: str | None = None) -> dict[str, Any]:
    """Template fragment declaring the table, for `chalice package --merge-template`: the
    same definition create_table applies.

    The table is retained on stack deletion or replacement and protected against deletion:
    it holds the wrapped keys.
    """
    properties = {
        "TableName": table_name,
        **copy.deepcopy(TABLE_DEFINITION),
        "SSESpecification": _sse(kms_key, enabled_key="SSEEnabled"),
        "DeletionProtectionEnabled": True,
        "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
    }
    return {"Resources": {TABLE_RESOURCE: {
        "Type": "AWS::DynamoDB::Table",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": properties,
    }}}
