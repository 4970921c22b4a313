"""Project keys: named secret, private and public keys per ring (a project), each deployed to
some of the ring's environments with material of its own per environment.

A key's material is imported as given (bytes), checked first (a private or public key must
parse as one, a secret must fit its algorithm's lengths), then sealed per environment under a
key of its own generated in the HSM (material.seal, AES-GCM in the HSM with the record's
context as AAD): it is never stored, logged or returned in the clear. The one way it leaves is
`material`: an environment's own token (ring "<ring>/<environment>") reads the material of a
key deployed to that environment, audited; not after the key is undeployed or deleted.

Store layout (prefix = the ring kind's store prefix):

  pk "{p}#{ring}#keys"   sk "head"             {"count": n}  (the ring's cap)
                         sk "name#<name>"      the name's claim: {"id": kid}
                         sk "key#<kid>"        one key: ring, id, name, description, type,
                                               algorithm, environments [{name, alias, sealed,
                                               deployed_at}], times
  pk "{p}#{ring}#envs"   sk "env#<name>"       one environment: ring, id, name, description,
                                               type, access_url, created_at,
                                               deleting (set while being deleted)

Names are unique per ring by their claim (records.claim / rename), written in the same
transaction as the key, the head and the audit record; a rename moves the claim in that
transaction, so of two concurrent renames to one name exactly one wins. A deployment writes a
condition on every environment it names (it still exists as read, not being deleted). Key
ids are UUID version 7.

A deleted key's record (its sealed material in it) moves into a deleted-key entry
(core/deleted.py); a restore claims its name again and redeploys it to those of its
environments that still exist (the same ones, by id); deployments to environments deleted
meanwhile are dropped.

The rules (`algorithm_of`, `deployed`) are pure functions; `ProjectKeys` adds the HSM and the
store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.config import Settings
from chalicelib.core import material
from chalicelib.core.access import Grant, RingKind
from chalicelib.core.audit import AuditLog, allow_details, object_name
from chalicelib.core.clock import iso_millis
from chalicelib.core.deleted import Bin, Deleted, forget_blob, restore_conflict
from chalicelib.core.keys import new_key_id
from chalicelib.core.limits import GenerationRate, cap
from chalicelib.core.records import (
    CLAIM_PREFIX,
    Place,
    claim,
    claimed,
    parsed,
    read_head,
    release,
    rename,
    retry,
    scan,
)
from chalicelib.core.rings import RingDomain
from chalicelib.core.tokens import Caller, Scope, TokenService
from chalicelib.core.usage import KeyUsage
from chalicelib.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidState,
    LimitExceeded,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
)
from chalicelib.store import Check, Delete, Op, Put, Store, Update

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

SECRET, PRIVATE, PUBLIC = "secret", "private", "public"
KEY_TYPES = (SECRET, PRIVATE, PUBLIC)
# secret algorithms and the raw lengths (bytes) each takes; "rsa" secrets are RSA private keys
SECRET_LENGTHS: dict[str, tuple[int, ...]] = {"aes": (16, 24, 32), "des": (8,),
                                              "des3": (16, 24)}
SECRET_ALGORITHMS = (*SECRET_LENGTHS, "rsa")
PAIR_ALGORITHMS = ("rsa", "ec")  # what a private or public key is
MAX_ENVIRONMENTS = 16  # per key: 16 x MAX_CONTENT_BYTES stays far below an item's 400 KB
MAX_CONTENT_BYTES = 16 * 1024  # an RSA-4096 PKCS#8 PEM is about 3.3 KB
KEY_PREFIX = "key#"
ENV_PREFIX = "env#"

allow_details("environments", "deployed", "undeployed", "renamed", "old_name", "key_type",
              "environment", "option")


def key_not_found(name: str) -> NotFound:
    """No key of that name in this ring (the same answer for a key of another ring)."""
    return NotFound(f"key {name} not found", reason="key_not_found", name=name)


@dataclass(frozen=True)
class Deployed:
    """One environment a key is deployed to, as an API shows it (never the material)."""

    environment: str
    alias: str | None


@dataclass(frozen=True)
class ProjectKey:
    """One key as an API shows it: never its material."""

    id: str
    ring: str
    name: str
    description: str | None
    key_type: str
    algorithm: str | None  # None: a private or public key deployed nowhere yet
    environments: tuple[Deployed, ...]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Environment:
    """One environment of a ring."""

    id: str
    ring: str
    name: str
    description: str | None
    type: str
    access_url: str | None
    created_at: str


@dataclass(frozen=True)
class EnvironmentContent:
    """What a request gives for one environment: its name, alias and material (None: keep
    the material the key holds there)."""

    environment: str
    alias: str | None = None
    content: bytes | None = None
    # the material was given as text (a PEM as it is) rather than encoded bytes: only a key
    # that is a PEM structure (a private or public key, an RSA secret) is ever given so
    textual: bool = False


@dataclass(frozen=True)
class Deployment:
    """What a write did to each environment: deployed (or, for a delete, undeployed) there,
    in order; `undeployed`: the environments an update took the key away from."""

    undeploy: bool
    environments: tuple[str, ...]
    undeployed: tuple[str, ...] = ()


# ---- the rules, as pure functions --------------------------------------------------------------

def algorithm_of(key_type: str, algorithm: str | None, content: bytes, *,
                 field: str = "content") -> str:
    """The algorithm of a key's material, checked: a secret's raw length must fit its
    algorithm ("rsa" secrets are RSA private keys), a private or public key must parse as
    one (RSA or EC; its algorithm is what it is, and a stated one must agree). InvalidInput
    naming `field` (or "algorithm") otherwise."""
    if len(content) > MAX_CONTENT_BYTES:
        raise InvalidInput(f"the key material is at most {MAX_CONTENT_BYTES // 1024} KiB",
                           field=field)
    if key_type == SECRET:
        if algorithm is None:
            raise InvalidInput("the algorithm is required for a secret key",
                               field="algorithm", reason="algorithm_required")
        if algorithm == "rsa":
            found = material.inspect_private_key(content, field=field)
            if found.family != "rsa":
                raise InvalidInput("an RSA secret key is an RSA private key", field=field)
            return "rsa"
        lengths = SECRET_LENGTHS.get(algorithm)
        if lengths is None:
            raise InvalidInput(f"unknown algorithm {algorithm}", field="algorithm")
        if len(content) not in lengths:
            raise InvalidInput(f"a {algorithm} key is {' or '.join(map(str, lengths))} bytes, "
                               f"not {len(content)}", field=field)
        return algorithm
    if key_type == PRIVATE:
        family = material.inspect_private_key(content, field=field).family
    elif key_type == PUBLIC:
        public = material.parse_public_key(content, field=field)
        family = "rsa" if isinstance(public, rsa.RSAPublicKey) else "ec"
    else:
        raise InvalidInput(f"the key type is one of {', '.join(KEY_TYPES)}", field="key_type")
    if algorithm is not None and algorithm != family:
        raise InvalidInput(f"the key is an {family} key, not {algorithm}", field="algorithm")
    return family


def deployed(current: Sequence[dict[str, Any]], given: Sequence[EnvironmentContent] | None,
             known: set[str], *, needs_content: bool) -> list[EnvironmentContent]:
    """The environments a key is deployed to after a write: `given` (None: the current ones,
    kept), each naming an environment of the ring (`known`) once, at most MAX_ENVIRONMENTS.
    An entry without content keeps the material the key holds there; `needs_content` (a new
    key, a changed type or algorithm) makes content required everywhere."""
    have = {str(e["name"]): e for e in current}
    if given is None:
        if needs_content and have:
            raise InvalidInput("the key material of every environment is required when the "
                               "key's type or algorithm changes", field="content")
        return [EnvironmentContent(n, e.get("alias")) for n, e in have.items()]
    if len(given) > MAX_ENVIRONMENTS:
        raise InvalidInput(f"a key is deployed to at most {MAX_ENVIRONMENTS} environments",
                           field="environments")
    seen: set[str] = set()
    for entry in given:
        if entry.environment in seen:
            raise InvalidInput(f"environment {entry.environment} is named twice",
                               field="environments")
        seen.add(entry.environment)
        if entry.environment not in known:
            raise NotFound(f"environment {entry.environment} not found",
                           reason="environment_not_found", name=entry.environment)
        if entry.content is None and (needs_content or entry.environment not in have):
            raise InvalidInput(f"the key material for environment {entry.environment} is "
                               "required", field="content")
    return list(given)


def _one_algorithm(key_type: str, algorithm: str | None,
                   entries: Sequence[EnvironmentContent], known: str | None) -> str | None:
    """The one algorithm of a key whose environments get `entries` (material given is
    checked; `known` is the algorithm of the material kept). InvalidInput if the key type is
    unknown, if a secret key names no algorithm, or if the materials disagree."""
    if key_type not in KEY_TYPES:
        raise InvalidInput(f"the key type is one of {', '.join(KEY_TYPES)}", field="key_type")
    if key_type == SECRET and algorithm is None:
        raise InvalidInput("the algorithm is required for a secret key", field="algorithm",
                           reason="algorithm_required")
    # checked here, with or without material: a write giving none (a key deployed nowhere)
    # must not store a combination no material could ever match
    allowed = SECRET_ALGORITHMS if key_type == SECRET else PAIR_ALGORITHMS
    if algorithm is not None and algorithm not in allowed:
        raise InvalidInput(f"a {key_type} key's algorithm is one of {', '.join(allowed)}",
                           field="algorithm")
    if key_type == SECRET and algorithm != "rsa":
        for e in entries:
            if e.textual:
                raise InvalidInput(f"a {algorithm} key's material is its raw bytes, encoded, "
                                   "not PEM text", field=f"content:{e.environment}")
    # the same material given to several environments is parsed once (an RSA private key's
    # consistency check takes OpenSSL 3 about 0.1 s)
    distinct = {e.content: e.environment for e in reversed(entries) if e.content is not None}
    found = {algorithm_of(key_type, algorithm, content, field=f"content:{env}")
             for content, env in distinct.items()}
    if known is not None:
        found.add(known)
    if len(found) > 1:
        raise InvalidInput("every environment's material is a key of one algorithm",
                           field="content")
    return next(iter(found), algorithm)


# ---- the domain ----------------------------------------------------------------------------

class ProjectKeys(RingDomain):
    """The domain over the process's store, HSM, audit and tokens; one per container."""

    def __init__(self, kind: RingKind, store: Store, hsm: Hsm, audit: AuditLog,
                 tokens: TokenService, rate: GenerationRate, settings: Settings,
                 clock: Callable[[], float] = time.time, *,
                 usage: KeyUsage | None = None) -> None:
        self.kind = kind
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._tokens = tokens
        self._rate = rate
        self._attempts = settings.retry_attempts
        self._max_keys = settings.max_keys_per_ring
        self._token_seconds = settings.access_token_seconds
        self.default_ring = settings.default_ring
        self._clock = clock
        # uses: a deployment (create, update naming environments) and a material read
        self.usage = usage or KeyUsage(store, settings, clock)
        self.bin = Bin.for_settings(store, audit, settings, clock)

    # ---- names ---------------------------------------------------------------------------

    def pk(self, ring: str) -> str:
        """The ring's key partition (head, name claims, keys)."""
        return f"{super().pk(ring)}#keys"

    def material_obj(self, ring: str, environment: str, name: str) -> str:
        """The audit object of a material read, granted or refused."""
        return self.obj(ring, "environments", environment, "keys", name)

    def envs_pk(self, ring: str) -> str:
        """The ring's environment partition."""
        return f"{self.kind.store_prefix}#{ring}#envs"

    @staticmethod
    def environment_ring(ring: str, environment: str) -> str:
        """The ring of an environment's own tokens."""
        return f"{ring}/{environment}"

    def context(self, ring: str, kid: str, environment: str) -> str:
        """The HSM binding context of a key's sealed material in one environment."""
        return f"{self.kind.name}/{ring}/keys/{kid}/environments/{environment}"

    # ---- reading -------------------------------------------------------------------------

    def _view(self, ring: str, kid: str, record: dict[str, Any]) -> ProjectKey:
        place = Place(self.pk(ring), KEY_PREFIX + kid)
        if record.get("ring") != ring or record.get("id") != kid:
            raise place.misplaced("names another key")
        try:
            return ProjectKey(
                id=kid, ring=ring, name=record["name"], description=record.get("description"),
                key_type=record["key_type"], algorithm=record.get("algorithm"),
                environments=tuple(Deployed(e["name"], e.get("alias"))
                                   for e in record["environments"]),
                created_at=record["created_at"], updated_at=record["updated_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise place.misplaced("is malformed") from exc

    def _record(self, ring: str, name: str) -> tuple[dict[str, Any], ProjectKey]:
        """The key named `name` (through its claim); NotFound if there is none. A claim
        and a key that disagree are a MisplacedRecord."""
        kid = claimed(self._store, self.pk(ring), name)
        if kid is None:
            raise key_not_found(name)
        record = self._store.get(self.pk(ring), KEY_PREFIX + kid)
        if record is None or record.get("name") != name:
            raise Place(self.pk(ring), CLAIM_PREFIX + name).misplaced("names another key")
        return record, self._view(ring, kid, record)

    def get(self, grant: Grant, name: str) -> ProjectKey:
        """One key of the grant's ring by name; NotFound if there is none."""
        grant.require(self.action("key.read"))
        return self._audited(grant, self.obj(grant.ring, "keys", name),
                             lambda: self._record(grant.ring, name)[1])

    def list(self, grant: Grant) -> list[ProjectKey]:
        """Every key of the ring, in creation order (misplaced records left out, audited)."""
        grant.require(self.action("key.list"))
        ring = grant.ring

        def parse(item: dict[str, Any]) -> ProjectKey:
            return self._view(ring, str(item["sk"]).removeprefix(KEY_PREFIX), item)
        return list(parsed(scan(self._store, self.pk(ring), KEY_PREFIX), parse,
                           self._report(grant, self.obj(ring, "keys"))))

    # ---- environments --------------------------------------------------------------------

    def _environment(self, ring: str, item: dict[str, Any]) -> Environment:
        name = str(item["sk"]).removeprefix(ENV_PREFIX)
        if item.get("ring") != ring or item.get("name") != name:
            raise Place(self.envs_pk(ring), str(item["sk"])).misplaced(
                "names another environment")
        try:
            return Environment(id=item["id"], ring=ring, name=name,
                               description=item.get("description"), type=item["type"],
                               access_url=item.get("access_url"),
                               created_at=item["created_at"])
        except KeyError as exc:
            raise Place(self.envs_pk(ring), str(item["sk"])).misplaced("is malformed") \
                from exc

    def _environment_items(self, ring: str) -> dict[str, dict[str, Any]]:
        """The ring's environment items by name (each one checked) that a key may be
        deployed to: not one being deleted (see delete_environment)."""
        out = {}
        for item in scan(self._store, self.envs_pk(ring), ENV_PREFIX):
            env = self._environment(ring, item)
            if not item.get("deleting"):
                out[env.name] = item
        return out

    def environments(self, grant: Grant) -> list[Environment]:
        """The ring's environments, by name (misplaced records left out, audited)."""
        grant.require(self.action("environment.list"))
        ring = grant.ring
        return list(parsed(scan(self._store, self.envs_pk(ring), ENV_PREFIX),
                           lambda item: self._environment(ring, item),
                           self._report(grant, self.obj(ring, "environments"))))

    def all_environments(self, ring: str) -> list[Environment]:
        """The ring's environments (for the operator's tools; misplaced records raise)."""
        return [self._environment(ring, item)
                for item in scan(self._store, self.envs_pk(ring), ENV_PREFIX)]

    def create_environment(self, ring: str, name: str, env_type: str, *, principal: str,
                           description: str | None = None,
                           access_url: str | None = None) -> Environment:
        """Add an environment to a ring (the operator's work, audited under `principal`);
        Conflict (environment_exists) if the ring has one of that name."""
        now = self._clock()
        item = {"pk": self.envs_pk(ring), "sk": ENV_PREFIX + name, "ring": ring,
                "name": name, "id": new_key_id(now), "description": description,
                "type": env_type, "access_url": access_url, "created_at": iso_millis(now)}
        with self._audit.operation(None, self.action("environment.create"),
                                   self.obj(ring, "environments", name),
                                   principal=principal) as op:
            op.note(type=env_type)
            try:
                op.commit([Put(item)])
            except StoreTransactionCancelled:
                raise Conflict(f"environment {name} exists", reason="environment_exists",
                               name=name) from None
        return self._environment(ring, item)

    def delete_environment(self, ring: str, name: str, *, principal: str) -> None:
        """Remove an environment no key is deployed to (the operator's work, audited);
        NotFound if there is none, InvalidState (environment_in_use) while keys are deployed
        there.

        The environment is marked `deleting` first (a version bump): a deployment that read
        it before fails its condition on it, and one reading it after finds no such
        environment. So the scan that follows sees every deployment there is, and none can
        begin before the delete (conditional on the marked version): no deployment is left
        dangling for a recreated environment of the same name to reactivate. An environment
        in use is unmarked again."""
        with self._audit.operation(None, self.action("environment.delete"),
                                   self.obj(ring, "environments", name),
                                   principal=principal) as op:
            item = self._store.get(self.envs_pk(ring), ENV_PREFIX + name)
            if item is None:
                raise NotFound(f"environment {name} not found",
                               reason="environment_not_found", name=name)
            fields = {k: v for k, v in item.items() if k != "version"}
            try:
                marked = item if item.get("deleting") else \
                    self._store.update_if_version({**fields, "deleting": True},
                                                  int(item["version"]))
            except StoreConditionFailed:
                raise Conflict(f"environment {name} is being changed concurrently; retry",
                               reason="busy") from None
            users = [k["name"] for k in scan(self._store, self.pk(ring), KEY_PREFIX)
                     if any(e.get("name") == name for e in k.get("environments") or ())]
            if users:
                op.note(count=len(users))
                try:
                    self._store.update_if_version({**fields, "deleting": None},
                                                  int(marked["version"]))
                except StoreConditionFailed:
                    pass  # another delete holds it now: that one settles the mark
                raise InvalidState(f"keys are deployed to environment {name}",
                                   reason="environment_in_use", name=name)
            try:
                op.commit([Delete(item["pk"], item["sk"], int(marked["version"]))])
            except StoreTransactionCancelled:
                raise Conflict(f"environment {name} is being changed concurrently; retry",
                               reason="busy") from None

    # ---- changing ------------------------------------------------------------------------

    def _sealed(self, ring: str, kid: str, entries: Sequence[EnvironmentContent],
                current: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The stored environment list: new material sealed in the HSM (work done once,
        before any transaction), material not given kept as stored."""
        have = {str(e["name"]): e for e in current}
        out = []
        for e in entries:
            if e.content is None:
                kept = have[e.environment]
                out.append({**kept, "alias": e.alias if e.alias is not None
                            else kept.get("alias"), "deployed_at": iso_millis(now)})
            else:
                out.append({"name": e.environment, "alias": e.alias,
                            "sealed": material.seal(self._hsm,
                                                    self.context(ring, kid, e.environment),
                                                    e.content),
                            "deployed_at": iso_millis(now)})
        return out

    def _conditions(self, ring: str, names: Sequence[str],
                    items: dict[str, dict[str, Any]]) -> list[Check]:
        """Every named environment still exists as read (a deployment's conditions); NotFound
        for one that is gone since the request's first look."""
        for n in names:
            if n not in items:
                raise NotFound(f"environment {n} not found", reason="environment_not_found",
                               name=n)
        return [Check(self.envs_pk(ring), ENV_PREFIX + n, int(items[n]["version"]))
                for n in names]

    def _spend(self, grant: Grant, key_type: str, algorithm: str | None,
               entries: Sequence[EnvironmentContent]) -> None:
        """Opening a private key given is expensive work (see GenerationRate): each distinct
        one costs 1 of the caller's rate, before any is parsed."""
        if key_type == PRIVATE or (key_type == SECRET and algorithm == "rsa"):
            count = len({e.content for e in entries if e.content is not None})
            if count:
                self._rate.spend(grant.caller, count)

    def create(self, grant: Grant, *, name: str, description: str | None, key_type: str,
               algorithm: str | None,
               environments: Sequence[EnvironmentContent]) -> tuple[ProjectKey, Deployment]:
        """Import a key and deploy it to `environments` (each with its material): the name's
        claim, the key, the head and the audit record in one transaction. Conflict
        (key_exists) if the ring has a key of that name."""
        grant.require(self.action("key.create"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "keys", name)) as op:
            op.note(key_type=key_type, environments=len(environments))
            self._spend(grant, key_type, algorithm, environments)
            found = _one_algorithm(key_type, algorithm, environments, algorithm)
            op.note(algorithm=found)
            # the answers a client can fix come before any HSM work
            if claimed(self._store, pk, name) is not None:
                raise Conflict(f"key {name} exists", reason="key_exists", name=name)
            items = self._environment_items(ring)
            entries = deployed((), environments, set(items), needs_content=True)
            cap(int(read_head(self._store, pk).state.get("count", 0)), self._max_keys,
                "keys per ring")
            now = self._clock()
            kid = new_key_id(now)
            stamp = iso_millis(now)
            record = {"pk": pk, "sk": KEY_PREFIX + kid, "ring": ring, "id": kid, "name": name,
                      "description": description, "key_type": key_type, "algorithm": found,
                      "environments": self._sealed(ring, kid, entries, (), now),
                      "created_by": grant.caller.principal.name,
                      "created_at": stamp, "updated_at": stamp}
            op.note(kid=kid, deployed=[e.environment for e in entries])

            def attempt() -> None:
                head = read_head(self._store, pk)
                count = int(head.state.get("count", 0))
                cap(count, self._max_keys, "keys per ring")
                envs = self._environment_items(ring)
                try:
                    op.commit([head.replaced({"count": count + 1}), claim(pk, name, kid),
                               Put(record),
                               *self._conditions(ring, [e.environment for e in entries],
                                                 envs)])
                except StoreTransactionCancelled:
                    if claimed(self._store, pk, name) is not None:
                        raise Conflict(f"key {name} exists", reason="key_exists",
                                       name=name) from None
                    raise
            retry(attempt, self._attempts, what="the project")
        if entries:
            self._used(ring, kid, "deploy", name)
        return (self._view(ring, kid, record),
                Deployment(False, tuple(e.environment for e in entries)))

    def update(self, grant: Grant, name: str, *, new_name: str | None = None,
               description: str | None = None, key_type: str | None = None,
               algorithm: str | None = None,
               environments: Sequence[EnvironmentContent] | None = None,
               option: str | None = None) -> tuple[ProjectKey, Deployment]:
        """Change what is given (None: kept) and redeploy: a rename moves the name's claim
        in the same transaction as the key (Conflict key_exists if the new name is taken);
        `environments` replaces the deployment (an entry without material keeps the one the
        key holds there; environments left out are undeployed); None keeps it."""
        grant.require(self.action("key.update"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "keys", name)) as op:
            op.note(option=option, renamed=new_name is not None and new_name != name)
            spent: list[bool] = []

            def attempt() -> tuple[ProjectKey, Deployment]:
                # Everything written is derived from this one read, and the write expects
                # its version: a concurrent commit (an undeploy, say) makes the write fail
                # and the whole computation run again on what that commit left, never
                # overwritten by a computation made before it.
                record, key = self._record(ring, name)
                kid = key.id
                kind = key_type or key.key_type
                changes_kind = kind != key.key_type or \
                    (algorithm is not None and algorithm != key.algorithm)
                algo = algorithm if algorithm is not None else \
                    (key.algorithm if kind == SECRET else None)
                if changes_kind and kind == SECRET and algorithm is None:
                    raise InvalidInput("the algorithm is required for a secret key",
                                       field="algorithm", reason="algorithm_required")
                items = self._environment_items(ring)
                entries = deployed(record["environments"], environments, set(items),
                                   needs_content=changes_kind)
                if not spent:  # the request's work is counted once, not once per attempt
                    self._spend(grant, kind, algo, entries)
                    spent.append(True)
                found = _one_algorithm(kind, algo, entries,
                                       algo if changes_kind else key.algorithm)
                if new_name is not None and new_name != name \
                        and claimed(self._store, pk, new_name) is not None:
                    raise Conflict(f"key {new_name} exists", reason="key_exists",
                                   name=new_name)
                now = self._clock()
                sealed = self._sealed(ring, kid, entries, record["environments"], now)
                names = [e.environment for e in entries]
                gone = [str(e["name"]) for e in record["environments"]
                        if e["name"] not in names]
                op.note(kid=kid, key_type=kind, algorithm=found, environments=len(entries),
                        deployed=names, undeployed=gone)
                new = {k: v for k, v in record.items() if k != "version"}
                new.update(key_type=kind, algorithm=found, environments=sealed,
                           updated_at=iso_millis(now))
                if description is not None:
                    new["description"] = description
                ops: list[Any] = [Update(new, int(record["version"]))]
                target = name
                if new_name is not None and new_name != name:
                    new["name"] = target = new_name
                    ops += rename(pk, name, new_name, kid)
                    op.note(old_name=name)
                try:
                    op.commit([*ops, *self._conditions(
                        ring, [e.environment for e in entries], items)],
                        obj=self.obj(ring, "keys", target))
                except StoreTransactionCancelled:
                    if target != name and claimed(self._store, pk, target) not in (None, kid):
                        raise Conflict(f"key {target} exists", reason="key_exists",
                                       name=target) from None
                    raise
                return self._view(ring, kid, new), Deployment(False, tuple(names),
                                                              tuple(gone))
            key, deployment = retry(attempt, self._attempts, what="the key")
            if deployment.environments:  # every update redeploys
                self._used(ring, key.id, "deploy", key.name)
            return key, deployment

    def delete(self, grant: Grant, name: str, *, option: str | None = None) -> Deployment:
        """Undeploy a key from every environment and delete it, its claim released and the
        head counted down in the same transaction."""
        grant.require(self.action("key.delete"))
        ring, pk = grant.ring, self.pk(grant.ring)
        with self._audit.operation(grant.caller, grant.action,
                                   self.obj(ring, "keys", name)) as op:
            op.note(option=option)

            def attempt() -> tuple[Deployment, Deleted]:
                record, key = self._record(ring, name)
                self.usage.guard(grant, key.id, op)
                head = read_head(self._store, pk)
                op.note(kid=key.id, undeployed=[e.environment for e in key.environments])
                count = max(0, int(head.state.get("count", 0)) - 1)
                # which environment each deployment was to (by id): a restore redeploys only
                # to those still there, not to a new environment of the same name
                envs = self._environment_items(ring)
                entry = self.bin.entry(
                    self.kind.name, ring, key.id, name, grant.caller.principal.name, [record],
                    {"environments": {e.environment: envs[e.environment]["id"]
                                      for e in key.environments if e.environment in envs}})
                op.commit([head.replaced({**head.state, "count": count}),
                           release(pk, name), *entry.moved()])
                return Deployment(True, tuple(e.environment for e in key.environments)), entry
            done, entry = retry(attempt, self._attempts, what="the key")
        self.bin.settle(entry, self, principal=grant.caller.principal.name)
        return done

    # ---- the deleted-key adapter (core/deleted.py) -----------------------------------------

    def restore_ops(self, entry: Deleted) -> list[Op]:
        """The key back under its name (if free, within the cap), deployed to those of its
        environments that still exist (the same environment, by id, not being deleted;
        conditions on each); a deployment to an environment deleted meanwhile is dropped
        with its sealed material."""
        ring, pk, name = entry.ring, self.pk(entry.ring), entry.name
        if claimed(self._store, pk, name) is not None:
            raise restore_conflict(f"key name {name} is taken by another key")
        head = read_head(self._store, pk)
        count = int(head.state.get("count", 0))
        try:
            cap(count, self._max_keys, "keys per ring")
        except LimitExceeded as exc:
            raise restore_conflict(f"the project is full: {exc.message}") from None
        envs = self._environment_items(ring)
        was = entry.meta.get("environments") or {}
        record = {k: v for k, v in entry.records[0].items() if k != "version"}
        kept = [e for e in record["environments"] if e.get("name") in envs
                and envs[e["name"]]["id"] == was.get(e["name"])]
        record["environments"] = kept
        return [head.replaced({**head.state, "count": count + 1}),
                claim(pk, name, entry.id), Put(record),
                *self._conditions(ring, [e["name"] for e in kept], envs)]

    def purge_dependents(self, entry: Deleted) -> int:
        """Nothing in the store (the sealed material is in the record the entry holds); this
        process's HSM session copies of its sealing keys are dropped."""
        for e in entry.records[0].get("environments") or ():
            sealed = e.get("sealed") if isinstance(e, dict) else None
            if isinstance(sealed, dict):
                forget_blob(self._hsm, sealed.get("key"),
                            self.context(entry.ring, entry.id, str(e.get("name"))))
        return 0

    def forget(self, entry: Deleted) -> None:
        """Nothing of a key is cached in-process."""

    # ---- material --------------------------------------------------------------------------

    def material(self, grant: Grant, ring: str, environment: str,
                 name: str) -> tuple[ProjectKey, bytes]:
        """The key `name` and its material deployed to `environment` of `ring`, for a grant on
        that environment's own ring; NotFound while the key is not deployed there (or the
        environment is gone). Audited as a use of the key."""
        grant.require(self.action("key.material"))
        if grant.ring != self.environment_ring(ring, environment):
            raise AssertionError("a grant for another environment")
        with self._audit.operation(grant.caller, grant.action,
                                   self.material_obj(ring, environment, name)) as op:
            op.note(environment=environment)
            record, key = self._record(ring, name)
            op.note(kid=key.id)
            if self._store.get(self.envs_pk(ring), ENV_PREFIX + environment) is None:
                raise key_not_found(name)
            entry = next((e for e in record["environments"] if e.get("name") == environment),
                         None)
            if entry is None:
                raise key_not_found(name)
            opened = material.open(self._hsm, self.context(ring, key.id, environment),
                                   entry["sealed"])
            self._used(ring, key.id, "export", key.name)
            return key, opened

    # ---- short-lived tokens ------------------------------------------------------------------

    def issue_token(self, caller: Caller, scopes: Sequence[Scope] | None) \
            -> tuple[str, dict[str, Any]]:
        """A short-lived token for the caller's token, audited: the caller's scopes of this
        ring kind, or narrower ones asked (of this kind only: this kind's token endpoint
        hands out no other kind's access). Forbidden (scope_not_held) for a scope of another
        kind or one the caller's token does not hold, or when it holds none of this kind.
        Each issuance spends 1 of the root token's generation rate (GenerationRate): minting
        is bounded by the same budget, and a derived token spends its root's."""
        with self._audit.operation(caller, "token.issue", "token") as op:
            own = tuple(s for s in caller.principal.scopes if s.kind == self.kind.name)
            if scopes is None:
                scopes = own
            if not scopes or any(s.kind != self.kind.name for s in scopes):
                raise Forbidden(f"only {self.kind.name} scopes are issued here",
                                reason="scope_not_held")
            self._rate.spend(caller)
            raw, record = self._tokens.derive(caller.principal, scopes, self._token_seconds)
            op.note(count=len(record["scopes"]))
            op.obj = object_name(f"token/{record['token_id']}")
            return raw, record
