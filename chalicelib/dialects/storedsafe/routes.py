"""StoredSafe transparent encryption, under /api/{version}/transparent.

Thin handlers: authenticate (X-Http-Token, or the legacy JSON `token`), check the vault
permission, validate the body, call core.transparent, shape the vendor envelope. Order of
answers: 401 (token), 400 (route parameters), 403 (permission), 400 (body), then the
operation's own (404, 409, 400). A 500 says only "internal error" and the request id.

Every route accepts any Content-Type (`curl -d` sends application/x-www-form-urlencoded): the
body is read as JSON whatever the header says, and a body that is not JSON gets the vendor's
400 envelope instead of the framework's 415. Every route takes a body: the legacy `token`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, TypeVar

from chalice import Blueprint, Response
from chalice.app import Request
from pydantic import BaseModel

from chalicelib.core.access import KINDS, TRANSIT, Grant, authorize
from chalicelib.core.services import Services, get_services
from chalicelib.core.tokens import Caller
from chalicelib.core.transit import TransitKey, TransitKeys, restore_body_limit
from chalicelib.dialects.http import (
    ANY_CONTENT_TYPE,
    InternalError,
    guarded,
    header,
    json_object,
    parse,
    remember_grant,
    request_id,
)
from chalicelib.dialects.storedsafe import envelope
from chalicelib.dialects.storedsafe.envelope import STATE_ATTR, CallState
from chalicelib.dialects.storedsafe.models import (
    ConfigBody,
    CreateKeyBody,
    DatakeyBody,
    DecryptBody,
    EncryptBody,
    RestoreBody,
    RewrapBody,
    TrimBody,
    validate_name,
    validate_vault,
)
from chalicelib.errors import InvalidInput, KeyfrontError, LimitExceeded, NotFound, Unavailable
from chalicelib.formats.ciphertext import b64decode_strict

bp = Blueprint(__name__)
PREFIX = "/api/{version}/transparent"
API_VERSIONS = frozenset({"1.0"})
TOKEN_HEADER = "X-Http-Token"
M = TypeVar("M", bound=BaseModel)
KIND = KINDS[TRANSIT]


def transit_keys(services: Services) -> TransitKeys:
    """This dialect's domain over the process's services."""
    return TransitKeys(KIND, services.store, services.hsm, services.audit, services.settings)


def _render(exc: KeyfrontError, request: Request, rid: str) -> Response:
    if exc.status >= 500 and not isinstance(exc, InternalError | Unavailable):
        exc = InternalError(rid)  # a 5xx never tells what went wrong inside (logged instead)
    return envelope.failure(exc, request, getattr(request, STATE_ATTR, None))


@dataclass
class _Call:
    """One authorized call: its grant, the domain and the envelope state."""

    request: Request
    state: CallState
    grant: Grant
    core: TransitKeys
    services: Services

    def body(self, model: type[M]) -> M:
        """The JSON body validated into `model` (InvalidInput per field otherwise)."""
        return parse(model, self.state.body)

    def ok(self, status: int, callinfo: dict[str, Any], general: list[str] | None = None,
           **top: Any) -> Response:
        """The SUCCESS envelope."""
        return envelope.success(self.request, self.state, status, callinfo, general, **top)


def _begin(version: str, params: dict[str, str], *, action: str, variant: str | None = None,
           echo: type[BaseModel] | None = None, body_limit: int | None = None) -> _Call:
    """Authenticate, validate route parameters, authorize `action` in the vault."""
    request = bp.current_request
    state = CallState(params=dict(params),
                      echo=tuple(echo.model_fields) if echo is not None else ())
    setattr(request, STATE_ATTR, state)
    body_error: InvalidInput | None = None
    try:
        state.body = json_object(request, body_limit)
    except InvalidInput as exc:
        body_error = exc
    raw = header(request, TOKEN_HEADER)
    if raw is None:
        if body_error is not None:
            raise body_error  # the token may be in the body we cannot read
        legacy = state.body.get("token")
        raw = legacy if isinstance(legacy, str) else None
    services = get_services()
    principal = services.tokens.authenticate(raw)
    state.token = principal.raw_token  # valid: returned for the next call
    if body_error is not None:
        raise body_error
    if version not in API_VERSIONS:
        raise NotFound(f"API version {version} is not supported (use 1.0)")
    vault = validate_vault(params["vaultid"])
    name = params.get("name")
    if name is not None:
        validate_name(name)
    core = services.domain(transit_keys)
    caller = Caller(principal, request_id(request))
    grant = remember_grant(request, authorize(services.audit, caller, KIND, vault,
                                              f"{TRANSIT}.{action}",
                                              core.obj(vault, name or ""), variant))
    return _Call(request, state, grant, core, services)


def _b64(value: str, field: str, limit: int) -> bytes:
    """Canonical standard base64 (padded); InvalidInput otherwise."""
    if len(value) > 4 * (limit // 3 + 1):
        raise LimitExceeded(f"{field} is larger than {limit} bytes")
    try:
        return b64decode_strict(value)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64", field=field) from exc


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _metadata(key: TransitKey) -> dict[str, Any]:
    """The vendor's KEYS entry, plus min_decryption_version and auto_rotate_period."""
    return {
        "name": key.name, "key_version": str(key.latest_version), "type": key.type,
        "allow_backup": key.allow_backup, "allow_export": key.allow_export,
        "allow_delete": key.allow_delete, "supports_signing": False, "info": key.info,
        "min_decryption_version": str(key.min_decryption_version), "objectid": key.objectid,
        "auto_rotate_period": str(key.rotation_period),  # as Vault's key read, in seconds
    }


def _key_info(key: TransitKey) -> dict[str, str]:
    return {"name": key.name, "key_version": str(key.latest_version),
            "objectid": key.objectid}


# ---- keys ----------------------------------------------------------------------------------

@bp.route(PREFIX + "/{vaultid}/keys/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def create_key(version: str, vaultid: str, name: str) -> Response:
    """Create a named key. Write. 201."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.create",
                  echo=CreateKeyBody)
    b = call.body(CreateKeyBody)
    key = call.core.create_key(call.grant, name, key_type=b.type,
                               allow_export=b.allow_export, allow_backup=b.allow_backup,
                               allow_delete=b.allow_delete, info=b.info)
    return call.ok(201, _key_info(key))


@bp.route(PREFIX + "/{vaultid}/keys", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def list_keys(version: str, vaultid: str) -> Response:
    """List the vault's keys (the vendor's LIST verb; GET here). Read."""
    call = _begin(version, {"vaultid": vaultid}, action="key.list")
    keys = call.core.list_keys(call.grant)
    return call.ok(200, {}, KEYS=[_metadata(k) for k in keys])


@bp.route(PREFIX + "/{vaultid}/keys/{name}", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def read_key(version: str, vaultid: str, name: str) -> Response:
    """One key's metadata. Read."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.read")
    key = call.core.read_key(call.grant, name)
    # keyfront's addition, like Vault's key fields a client ignores if it does not know them
    use = call.core.usage.last(KIND.name, key.ring, key.objectid)
    last = None if use is None else use.to_dict()
    return call.ok(200, {"version": str(key.latest_version), "objectid": key.objectid},
                   KEYS=[{**_metadata(key),
                          "last_used": last and last["last_used_at"],
                          "last_used_for": last and last["last_used_for"]}])


@bp.route(PREFIX + "/{vaultid}/keys/{name}/rotate", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def rotate_key(version: str, vaultid: str, name: str) -> Response:
    """Add a version. Write. 201."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.rotate")
    key = call.core.rotate(call.grant, name)
    return call.ok(201, _key_info(key))


@bp.route(PREFIX + "/{vaultid}/keys/{name}/config", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def configure_key(version: str, vaultid: str, name: str) -> Response:
    """Beyond the vendor: set min_decryption_version / allow_delete / auto_rotate_period
    (as Vault's key config). Admin."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.config",
                  echo=ConfigBody)
    b = call.body(ConfigBody)
    key = call.core.configure(call.grant, name,
                              min_decryption_version=b.min_decryption_version,
                              allow_delete=b.allow_delete,
                              rotation_period=b.auto_rotate_period)
    return call.ok(200, {**_key_info(key),
                         "min_decryption_version": str(key.min_decryption_version),
                         "allow_delete": key.allow_delete,
                         "auto_rotate_period": str(key.rotation_period)})


@bp.route(PREFIX + "/{vaultid}/keys/{name}", methods=["DELETE"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def delete_key(version: str, vaultid: str, name: str) -> Response:
    """Delete a key and all versions. Write, and only if allow_delete."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.delete")
    key = call.core.delete(call.grant, name)
    return call.ok(200, {"name": key.name, "objectid": key.objectid})


# ---- key use -------------------------------------------------------------------------------

@bp.route(PREFIX + "/{vaultid}/encrypt/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def encrypt(version: str, vaultid: str, name: str) -> Response:
    """Encrypt base64 plaintext. Read (Write creates a missing key)."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="encrypt",
                  echo=EncryptBody)
    b = call.body(EncryptBody)
    limit = call.services.settings.max_plaintext_bytes
    out = call.core.encrypt(call.grant, name, _b64(b.plaintext, "plaintext", limit),
                            key_version=b.key_version, key_type=b.type)
    general = [f"key {name} created"] if out.created else []
    return call.ok(200, {"key_version": str(out.key_version), "ciphertext": out.ciphertext},
                   general)


@bp.route(PREFIX + "/{vaultid}/decrypt/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def decrypt(version: str, vaultid: str, name: str) -> Response:
    """Decrypt a storedsafe:vN: ciphertext. Read."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="decrypt",
                  echo=DecryptBody)
    b = call.body(DecryptBody)
    out = call.core.decrypt(call.grant, name, b.ciphertext)
    return call.ok(200, {"plaintext": _enc(out.plaintext), "key_version": str(out.key_version)})


@bp.route(PREFIX + "/rewrap/{vaultid}/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def rewrap(version: str, vaultid: str, name: str) -> Response:
    """Re-encrypt under to_version (default latest), never returning plaintext. Read."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="rewrap",
                  echo=RewrapBody)
    b = call.body(RewrapBody)
    out = call.core.rewrap(call.grant, name, b.ciphertext, to_version=b.to_version)
    return call.ok(200, {"ciphertext": out.ciphertext, "key_version": str(out.key_version)})


@bp.route(PREFIX + "/{vaultid}/datakey/{type}/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def datakey(version: str, vaultid: str, type: str, name: str) -> Response:  # noqa: A002
    """A data key: `wrapped` (Read) or `plaintext` (Write) returns its plaintext too."""
    params = {"vaultid": vaultid, "type": type, "name": name}
    call = _begin(version, params, action="datakey",
                  variant="plaintext" if type == "plaintext" else None, echo=DatakeyBody)
    if type not in ("plaintext", "wrapped"):
        raise InvalidInput("type must be plaintext or wrapped", field="type")
    b = call.body(DatakeyBody)
    out = call.core.datakey(call.grant, name, bits=b.bits, key_version=b.key_version)
    info: dict[str, Any] = {"key_version": str(out.key_version), "ciphertext": out.ciphertext,
                            "objectid": out.key.objectid}
    if out.plaintext is not None:
        info["plaintext"] = _enc(out.plaintext)
    return call.ok(200, info)


# ---- export, backup, restore ---------------------------------------------------------------

def _export(version: str, vaultid: str, name: str, key_version: str | None) -> Response:
    params = {"vaultid": vaultid, "name": name}
    if key_version is not None:
        params["key_version"] = key_version
    call = _begin(version, params, action="key.export")
    wanted = None
    if key_version is not None:
        if not (key_version.isdecimal() and key_version.isascii() and 0 < len(key_version) < 10):
            raise InvalidInput("key_version must be a positive integer", field="key_version")
        wanted = int(key_version)
    key, material = call.core.export(call.grant, name, key_version=wanted)
    return call.ok(200, {}, KEYS={
        "name": key.name, "type": key.type,
        "key_version": str(wanted if wanted is not None else key.latest_version),
        "keys": {str(n): _enc(raw) for n, raw in material.items()},
    })


@bp.route(PREFIX + "/export/{vaultid}/{name}", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def export_key(version: str, vaultid: str, name: str) -> Response:
    """Every version's key material (from min_decryption_version). Admin + allow_export."""
    return _export(version, vaultid, name, None)


@bp.route(PREFIX + "/export/{vaultid}/{name}/{key_version}", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def export_key_version(version: str, vaultid: str, name: str, key_version: str) -> Response:
    """One version's key material. Admin + allow_export."""
    return _export(version, vaultid, name, key_version)


@bp.route(PREFIX + "/backup/{vaultid}/{name}", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def backup_key(version: str, vaultid: str, name: str) -> Response:
    """A protected backup of the key, all versions. Admin + allow_backup."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.backup")
    key, backup = call.core.backup(call.grant, name)
    return call.ok(200, {"version": str(key.latest_version), "objectid": key.objectid},
                   KEYS={"backup": backup})


@bp.route(PREFIX + "/restore/{vaultid}/{name}", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def restore_key(version: str, vaultid: str, name: str) -> Response:
    """Restore a backup as a new key under vaultid/name. Write; only into the vault the
    backup was taken from (400 otherwise)."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.restore",
                  echo=RestoreBody, body_limit=restore_body_limit(get_services().settings))
    b = call.body(RestoreBody)
    key = call.core.restore(call.grant, name, b.backup)
    return call.ok(200, _key_info(key))


@bp.route(PREFIX + "/{vaultid}/keys/{name}/trim", methods=["POST"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, _render)
def trim_key(version: str, vaultid: str, name: str) -> Response:
    """Beyond the vendor, as Vault's trim: delete the versions below min_available_version
    (default: the key's min_decryption_version). Admin."""
    call = _begin(version, {"vaultid": vaultid, "name": name}, action="key.trim",
                  echo=TrimBody)
    b = call.body(TrimBody)
    key = call.core.trim(call.grant, name, b.min_available_version)
    return call.ok(200, {**_key_info(key),
                         "min_available_version": str(key.min_available_version)})
