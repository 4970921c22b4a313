"""Item store: the only package that imports boto3 or sqlite3."""

from __future__ import annotations

from chalicelib.config import Settings
from chalicelib.store._items import cursor_past
from chalicelib.store._items import encode_cursor as cursor_after
from chalicelib.store.base import Check, Delete, Item, Op, Page, Put, Store, Update

__all__ = ["Check", "Delete", "Item", "Op", "Page", "Put", "Store", "Update", "cursor_after",
           "cursor_past", "open_store"]

MAX_TRANSACTION_OPS = 100  # DynamoDB's TransactWriteItems limit; the SQLite store has none


def open_store(settings: Settings) -> Store:
    """The backend named by settings.store_backend."""
    if settings.store_backend == "sqlite":
        from chalicelib.store.sqlite_store import SqliteStore

        return SqliteStore(settings.sqlite_path)
    if settings.store_backend == "dynamodb":
        from chalicelib.store.dynamodb_store import DynamoStore, client_config

        return DynamoStore(settings.dynamodb_table, region=settings.aws_region,
                           endpoint_url=settings.dynamodb_endpoint,
                           config=client_config(settings.dynamodb_read_timeout))
    raise ValueError(f"unknown store backend {settings.store_backend!r}")
