"""The store contract: a narrow transactional item store over (pk, sk) items.

Items are dicts with string `pk` and `sk` plus attributes whose values are str, int, bool,
None, bytes, list or dict (nested values of the same kinds). Every stored item carries an
integer `version` managed by the store: put_if_absent writes version 1, update_if_version
writes expected+1. Backends: SQLite (sqlite_store) and DynamoDB (dynamodb_store).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Item = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """One page of a query; `cursor` is None when there is nothing more."""

    items: list[Item]
    cursor: str | None = None


@dataclass(frozen=True)
class Put:
    """Write `item`; with if_absent, only when no item has its (pk, sk)."""

    item: Item
    if_absent: bool = True


@dataclass(frozen=True)
class Update:
    """Replace the item at its (pk, sk) only when its stored version equals expected_version."""

    item: Item
    expected_version: int


@dataclass(frozen=True)
class Delete:
    """Delete (pk, sk); with expected_version, only when the stored version matches."""

    pk: str
    sk: str
    expected_version: int | None = None


@dataclass(frozen=True)
class Check:
    """Condition only: the item exists with expected_version (or, if None, does not exist)."""

    pk: str
    sk: str
    expected_version: int | None = None


Op = Put | Update | Delete | Check


@dataclass
class Store(ABC):
    """What every backend implements; errors come from chalicelib.errors."""

    name: str = field(default="store", init=False)

    @abstractmethod
    def get(self, pk: str, sk: str) -> Item | None:
        """The item at (pk, sk), or None."""

    @abstractmethod
    def query(self, pk: str, sk_prefix: str = "", *, limit: int = 100,
              cursor: str | None = None, descending: bool = False) -> Page:
        """Items of partition pk whose sk starts with sk_prefix, in sk order, paged."""

    @abstractmethod
    def scan_all(self, cursor: str | None = None, *, limit: int = 100) -> Page:
        """Every item of the store, a page at a time (SQLite: in (pk, sk) order; DynamoDB:
        in its Scan order); each cursor resumes after the last item of its page, whatever
        was written or deleted meanwhile, and `cursor_past(pk)` after a whole partition.
        For whole-store maintenance, never a request."""

    @abstractmethod
    def put_if_absent(self, item: Item) -> Item:
        """Write item with version 1; StoreConditionFailed if (pk, sk) exists."""

    @abstractmethod
    def update_if_version(self, item: Item, expected_version: int) -> Item:
        """Replace item (version becomes expected+1); StoreConditionFailed otherwise."""

    @abstractmethod
    def delete_if(self, pk: str, sk: str, expected_version: int | None = None) -> None:
        """Delete the item; StoreConditionFailed if missing or the version differs."""

    @abstractmethod
    def transact(self, ops: list[Op]) -> None:
        """All-or-nothing; StoreTransactionCancelled(reasons) names the failed conditions."""

    @abstractmethod
    def ping(self) -> None:
        """Raise Unavailable if the backend cannot be reached."""
