"""What every domain over one ring kind names the same way: its actions, its audit objects,
its partitions, and the audit of a misplaced record met by a read or a list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib.core.access import Grant, RingKind
from chalicelib.core.audit import AuditLog, object_name
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import MisplacedRecord


class RingDomain:
    """Base of the domains of one ring kind (`kind`), auditing through `_audit`."""

    kind: RingKind
    _audit: AuditLog
    usage: KeyUsage  # last use of the domain's keys, by key id

    def action(self, verb: str) -> str:
        """The access/audit action of a verb ("key.create" -> "<kind>.key.create")."""
        return f"{self.kind.name}.{verb}"

    def obj(self, ring: str, *parts: str) -> str:
        """An audit object name under the ring."""
        return object_name("/".join((self.kind.name, ring, *parts)))

    def pk(self, ring: str) -> str:
        """The ring's partition."""
        return f"{self.kind.store_prefix}#{ring}"

    def _used(self, ring: str, key_id: str, what: str, name: str = "") -> None:
        """Note a use of key `key_id` of the ring (no store call but once per flush
        period)."""
        self.usage.record(self.kind.name, ring, key_id, what, name=name)

    def _audited(self, grant: Grant, obj: str, read: Callable[[], Any]) -> Any:
        """A read that audits only a misplaced record it meets (as a failure)."""
        try:
            return read()
        except MisplacedRecord as exc:
            self._audit.refused(grant.caller, grant.action, obj, exc)
            raise

    def _report(self, grant: Grant, obj: str) -> Callable[[MisplacedRecord], None]:
        """Audit a misplaced item a list met, under `obj` and the item's sort key."""
        def report(exc: MisplacedRecord) -> None:
            where = exc.where[1] if exc.where else ""
            self._audit.refused(grant.caller, grant.action, object_name(f"{obj}/{where}"),
                                exc)
        return report
