"""Apinizer API Ops routes (prefix /apiops): keys per project, environments, deployment, token.

  POST   /apiops/projects/{p}/keys/                   manage (+ deploy with environments)
  GET    /apiops/projects/{p}/keys/                   read (any project permission)
  GET    /apiops/projects/{p}/keys/{name}/            read
  PUT    /apiops/projects/{p}/keys/{name}/            manage + deploy (it redeploys)
  DELETE /apiops/projects/{p}/keys/{name}/            manage + deploy (it undeploys)
  GET    /apiops/environments/                        read, the token's one project
  GET    /apiops/environments/{p}                     read (the older path)
  GET    /apiops/projects/{p}/environments/           read
  GET    /apiops/projects/{p}/environments/{env}/keys/{name}/material/
                                                      consume on ring "<p>/<env>" (keyfront's)
  POST   /apiops/auth/token                           any valid keyfront token (form body)

Clients send every path with a trailing "/": API Gateway (and the local server) strips one
before matching, and Chalice rejects routes ending in "/", so the routes are registered
without it and both forms are served. A project is a ring of the core's project keys
(core.project_keys); what each route needs is the core's table (core.kinds), decided once by
`authorize`. Order of answers: 401, then the permission (400, the same whether the object
exists or not), then the body and query (400), then the operation's own; a create reads its
body (as JSON) before the permission, since whether it deploys decides what it needs.
Path parameters are taken as API Gateway and `keyfront serve` hand them over (decoded);
`chalice local` hands them over as sent (percent-encoded).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl

from chalice import Blueprint, Response

from chalicelib.core.access import KINDS, PROJECT_KEYS, Grant, authorize
from chalicelib.core.project_keys import Deployment, Environment, ProjectKey, ProjectKeys
from chalicelib.core.services import Services, get_services
from chalicelib.core.tokens import ALL_RINGS, Caller, Principal, Scope
from chalicelib.dialects.apinizer.envelope import render, render_oauth, success
from chalicelib.dialects.apinizer.models import (
    ALGORITHM_NAMES,
    ALGORITHMS,
    DELETE_ACTIONS,
    KEY_TYPES,
    TYPE_NAMES,
    UPDATE_ACTIONS,
    UPDATE_SCOPES,
    check_name,
    check_project,
    choice,
    entries,
    parse_key,
)
from chalicelib.dialects.http import (
    ANY_CONTENT_TYPE,
    guarded,
    header,
    json_object,
    json_response,
    remember_grant,
    request_id,
)
from chalicelib.errors import InvalidInput, Unauthenticated

bp = Blueprint(__name__)
PREFIX = "/apiops"
KEYS = PREFIX + "/projects/{project}/keys"
KIND = KINDS[PROJECT_KEYS]
SOURCE = "UPLOAD"  # every key's material was given in a request
MAX_FORM_BYTES = 8 * 1024


def project_keys(services: Services) -> ProjectKeys:
    """This dialect's domain over the process's services."""
    return ProjectKeys(KIND, services.store, services.hsm, services.audit, services.tokens,
                       services.rate, services.settings)


def _domain() -> ProjectKeys:
    return get_services().domain(project_keys)


def _principal() -> Principal:
    """The Bearer token's principal; 401 with the vendor's texts otherwise."""
    auth = (header(bp.current_request, "Authorization") or "").strip()
    if not auth:
        raise Unauthenticated("no credentials", reason="no_credentials")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("not a bearer token", reason="invalid_token")
    return get_services().tokens.authenticate(value.strip())


def _segment(value: str, what: str) -> str:
    """A project, environment or key name from the path: never one holding "/" (an
    environment ring is "<project>/<environment>"), see models.check_name; a project never
    "*" (models.check_project)."""
    if what == "project":
        return check_project(value)
    return check_name(value, what, slash=False)


def _grant(verb: str, ring: str, *parts: str, variant: str | None = None,
           principal: Principal | None = None, obj: str | None = None) \
        -> tuple[Grant, ProjectKeys]:
    """Authenticate (unless `principal` is given) and authorize `verb` on the ring
    (refusals audited under `obj`, by default the ring's `parts`); the grant is remembered
    so later refusals are audited under it."""
    principal = principal or _principal()
    domain = _domain()
    caller = Caller(principal, request_id(bp.current_request))
    grant = authorize(get_services().audit, caller, KIND, ring, domain.action(verb),
                      obj or domain.obj(ring, *parts), variant)
    return remember_grant(bp.current_request, grant), domain


def _query() -> dict[str, str]:
    params = bp.current_request.query_params or {}
    return {k: params[k] for k in params}


def _key(key: ProjectKey) -> dict[str, Any]:
    """A key as the vendor shows it: never its material."""
    return {
        "id": key.id, "name": key.name, "description": key.description,
        "projectId": key.ring, "keyType": TYPE_NAMES[key.key_type],
        "algorithm": None if key.algorithm is None else ALGORITHM_NAMES[key.algorithm],
        "cryptoKeyInfoEnvironmentList": [
            {"environmentName": e.environment, "alias": e.alias, "source": SOURCE}
            for e in key.environments],
    }


def _deployment(done: Deployment) -> dict[str, Any]:
    """deploymentResult: every environment the write reached (all of them, or the write
    failed as a whole and the answer is an error), those an update undeployed included."""
    verb = "Undeploy" if done.undeploy else "Deploy"
    return {"success": True, "message": f"{verb}ment completed successfully",
            "environmentResults": [{"environmentName": e, "success": True,
                                    "message": f"{verb}ed successfully"}
                                   for e in done.environments] + [
                {"environmentName": e, "success": True, "message": "Undeployed successfully"}
                for e in done.undeployed]}


def _environment(env: Environment) -> dict[str, Any]:
    return {"id": env.id, "name": env.name, "description": env.description,
            "type": env.type, "status": "ACTIVE", "accessUrl": env.access_url,
            "deployed": True, "redeployRequired": False}


# ---- keys ------------------------------------------------------------------------------------

@bp.route(KEYS, methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def create_key(project: str) -> Response:
    """Import a key and deploy it to the environments named: 200 with deploymentResult."""
    principal = _principal()  # 401 before the body is read
    raw = json_object(bp.current_request)
    # a create naming environments deploys: the deploy permission is needed as well
    listed = raw.get("cryptoKeyInfoEnvironmentList")
    variant = "deploy" if isinstance(listed, list) and listed else None
    name = raw.get("name")
    grant, domain = _grant("key.create", _segment(project, "project"), "keys",
                           name if isinstance(name, str) else "", variant=variant,
                           principal=principal)
    body = parse_key(raw, create=True)
    key, done = domain.create(
        grant, name=str(body.name), description=body.description,
        key_type=KEY_TYPES[str(body.keyType)],
        algorithm=None if body.algorithm is None else ALGORITHMS[body.algorithm],
        environments=entries(body) or [])
    return success([_key(key)], deploymentResult=_deployment(done))


@bp.route(KEYS, methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_keys(project: str) -> Response:
    """Every key of the project (never the material)."""
    principal = _principal()
    grant, domain = _grant("key.list", _segment(project, "project"), "keys",
                           principal=principal)
    return success([_key(k) for k in domain.list(grant)])


@bp.route(KEYS + "/{name}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def get_key(project: str, name: str) -> Response:
    """One key by name."""
    principal = _principal()
    grant, domain = _grant("key.read", _segment(project, "project"), "keys", name,
                           principal=principal)
    name = _segment(name, "key")
    return success([_key(domain.get(grant, name))])


@bp.route(KEYS + "/{name}", methods=["PUT"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def update_key(project: str, name: str) -> Response:
    """Partial update (rename allowed), redeployed; jwkUpdateAction and updateScope are
    checked and recorded (keyfront holds no JWKs for them to act on)."""
    principal = _principal()
    grant, domain = _grant("key.update", _segment(project, "project"), "keys", name,
                           principal=principal)
    name = _segment(name, "key")
    params = _query()
    action = choice(params, "jwkUpdateAction", UPDATE_ACTIONS)
    scope = choice(params, "updateScope", UPDATE_SCOPES)
    body = parse_key(json_object(bp.current_request), create=False)
    key, done = domain.update(
        grant, name, new_name=body.name, description=body.description,
        key_type=None if body.keyType is None else KEY_TYPES[body.keyType],
        algorithm=None if body.algorithm is None else ALGORITHMS[body.algorithm],
        environments=entries(body),
        option=",".join(v for v in (action, scope) if v) or None)
    return success([_key(key)], deploymentResult=_deployment(done))


@bp.route(KEYS + "/{name}", methods=["DELETE"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def delete_key(project: str, name: str) -> Response:
    """Undeploy the key from every environment and delete it."""
    principal = _principal()
    grant, domain = _grant("key.delete", _segment(project, "project"), "keys", name,
                           principal=principal)
    name = _segment(name, "key")
    action = choice(_query(), "jwkDeleteAction", DELETE_ACTIONS)
    done = domain.delete(grant, name, option=action)
    return success([], deploymentResult=_deployment(done))


# ---- environments ----------------------------------------------------------------------------

def _environments(project: str, principal: Principal) -> Response:
    grant, domain = _grant("environment.list", _segment(project, "project"), "environments",
                           principal=principal)
    return success([_environment(e) for e in domain.environments(grant)])


@bp.route(PREFIX + "/environments", methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_own_environments() -> Response:
    """The environments of the one project the token names (an all-projects token: the
    default project); a token naming several projects names one in the path instead."""
    principal = _principal()
    rings = {s.ring for s in principal.scopes
             if s.kind == KIND.name and s.ring != ALL_RINGS and "/" not in s.ring}
    if len(rings) > 1:
        raise InvalidInput("the token names more than one project: use "
                           "/apiops/projects/{projectName}/environments/", field="project")
    return _environments(next(iter(rings)) if rings else _domain().default_ring, principal)


@bp.route(PREFIX + "/environments/{project}", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_environments_older(project: str) -> Response:
    """The older path of a project's environments."""
    return _environments(project, _principal())


@bp.route(PREFIX + "/projects/{project}/environments", methods=["GET"],
          content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def list_environments(project: str) -> Response:
    """A project's environments."""
    return _environments(project, _principal())


@bp.route(PREFIX + "/projects/{project}/environments/{environment}/keys/{name}/material",
          methods=["GET"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render)
def read_material(project: str, environment: str, name: str) -> Response:
    """keyfront's own: the material of a key deployed to the environment, for a token of
    that environment (consume on ring "<project>/<environment>")."""
    principal = _principal()
    project, environment = _segment(project, "project"), _segment(environment, "environment")
    domain = _domain()
    ring = domain.environment_ring(project, environment)
    # a refusal is audited under the object a read is (the environment's ring is not a
    # project of its own)
    grant, domain = _grant("key.material", ring, principal=principal,
                           obj=domain.material_obj(project, environment, name))
    name = _segment(name, "key")
    key, data = domain.material(grant, project, environment, name)
    alias = next((e.alias for e in key.environments if e.environment == environment), None)
    return success([{**_key(key), "cryptoKeyInfoEnvironmentList": [
        {"environmentName": environment, "alias": alias, "source": SOURCE,
         "content": base64.b64encode(data).decode("ascii")}]}])


# ---- the token endpoint ----------------------------------------------------------------------

def _form() -> dict[str, str]:
    """The form-urlencoded body: each parameter once (RFC 6749 3.2), bounded."""
    raw = bp.current_request.raw_body or b""
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidInput("the request body is too large", field="body")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the request body is not a form", field="body") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidInput(f"{k} is given more than once", field=k)
        out[k] = v
    return out


def _client_basic() -> tuple[str, str] | None:
    """client_id and client_secret from HTTP Basic (client_secret_basic), if sent."""
    auth = (header(bp.current_request, "Authorization") or "").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8") \
            .partition(":")
    except (binascii.Error, ValueError):
        raise Unauthenticated("malformed Basic credentials") from None
    if not sep:
        raise Unauthenticated("malformed Basic credentials")
    return user, secret


@bp.route(PREFIX + "/auth/token", methods=["POST"], content_types=ANY_CONTENT_TYPE)
@guarded(bp, render_oauth)
def token() -> Response:
    """client_credentials: the client secret is a keyfront token, the client id its
    principal; the answer is a short-lived token with its scopes or the narrower `scope`
    asked (space-separated KIND:RING:PERMS)."""
    form = _form()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidInput("grant_type is required", field="grant_type")
    if grant_type != "client_credentials":
        raise InvalidInput("only the client_credentials grant is supported",
                           reason="unsupported_grant_type")
    basic = _client_basic()
    client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
    if basic and ("client_secret" in form or "client_id" in form and
                  form["client_id"] != client_id):
        raise InvalidInput("the client authenticates one way only", field="client_secret")
    if not secret:
        raise InvalidInput("client_secret is required", field="client_secret")
    principal = get_services().tokens.authenticate(secret)
    if client_id and client_id != principal.name:
        raise Unauthenticated("the client id is not the token's")
    scopes = None
    if form.get("scope"):
        if len(form["scope"]) > 2048:
            raise InvalidInput("scope is too long", field="scope")
        scopes = [Scope.parse(s) for s in form["scope"].split()]
    raw, record = _domain().issue_token(Caller(principal, request_id(bp.current_request)),
                                        scopes)
    return json_response(200, {
        "access_token": raw, "token_type": "Bearer",
        "expires_in": int(record["expires_at"]) - int(record["created_at"]),
        "scope": " ".join(f"{s['kind']}:{s['ring']}:{','.join(s['perms'])}"
                          for s in record["scopes"])}, {"Pragma": "no-cache"})


__all__ = ["bp", "project_keys"]
