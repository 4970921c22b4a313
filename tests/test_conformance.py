"""Dialect conformance: the security tests every dialect must pass, on both stores.

Each test runs once per entry of tests.conformance_dialects.DIALECTS (storedsafe, auth0,
miarec) and per live server (SQLite and DynamoDB, `live_server`). The tests never name a
vendor: routes, tokens, objects, store records and envelopes all come from the dialect's
table entry.

1. another ring's token: refused, with one answer whether the object (or ring) exists or not;
2. missing, malformed, unknown, expired and revoked tokens: 401 in the vendor's envelope;
3. a token of the right ring without the needed permission: 403, audited as "denied";
4. bodies that are not strict JSON objects: the vendor's 400, never a 5xx;
5. any Content-Type on any route: the vendor's answer, never the framework's 415;
6. a record copied into another ring: never used there (generic 500 when addressed, left out
   of lists, audited as a failure);
7. every denial audited (within 1 and 3);
8. no 5xx under a property-based fuzz of every route.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.core.tokens import Scope, TokenService
from tests.client import Client, Resp
from tests.conformance_dialects import DIALECTS, Dialect, Route
from tests.conftest import own_live_servers

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.parametrize("dialect", DIALECTS, ids=[d.name for d in DIALECTS])

# Words of integrity checks and internals: none may reach a client in a 500's error text.
INTERNAL_WORDS = ("belong", "integrity", "verification", "blob", "binding", "tamper", "record",
                  "origin", "context", "kek", "traceback", "exception", "stored", "place",
                  "vault", "tenant", "connection", "key ")

# Request bodies that are not a strict JSON object.
NOT_STRICT_JSON: dict[str, bytes] = {
    "invalid JSON": b'{"x": ',
    "NaN": b'{"x": NaN}',
    "-Infinity": b'{"x": -Infinity}',
    "1e400": b'{"x": 1e400}',
    "lone surrogate": b'{"x": "\\ud800"}',
    "lone surrogate name": b'{"\\udfff": 1}',
    "invalid UTF-8": b'{"x": "\xff\xfe"}',
    "10,000-deep": b'{"x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "array": b"[1, 2]",
    "string": b'"text"',
    "number": b"1",
    "null": b"null",
}

ODD_CONTENT_TYPES = ("application/xml", "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "garb@ge;;=/\u00e9 ;")

_REQUEST_ID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                         r"[0-9a-fA-F]{12}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


# ---- helpers ---------------------------------------------------------------------------------

def _principal(label: str) -> str:
    """A principal name no other test uses (audit records are found by it): a user id in
    canonical UUID form, which every dialect accepts as a principal (MiaRec requires it)."""
    del label  # the records are told apart by the id alone
    return str(uuid.uuid4())


def _mint(server: LiveServer, dialect: Dialect, ring: str, perms: str,
          principal: str | None = None) -> str:
    """A token for `ring` with `perms` ("" = none of the dialect's permissions)."""
    return server.mint(dialect.scope(ring, perms), principal=principal or _principal("any"))


def _token_routes(dialect: Dialect) -> list[Route]:
    """The routes that need a token."""
    return [r for r in dialect.routes if not r.public]


def _shape(resp: Resp, subst: dict[str, str]) -> tuple[int, str, Any]:
    """Status, content type and body, with the addressed values replaced by placeholders and
    request ids and timestamps masked: what must not differ between two refusals."""
    text = resp.body.decode("utf-8", "replace")
    for value in sorted(subst, key=len, reverse=True):
        text = text.replace(value, subst[value])
    text = _TIMESTAMP.sub("<time>", _REQUEST_ID.sub("<request-id>", text))
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return resp.status, resp.headers.get("content-type", ""), body


def _strict_json(raw: bytes) -> Any:
    """Parse as a strict client does: valid UTF-8, no NaN/Infinity, no lone surrogates."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    json.dumps(data, ensure_ascii=False).encode("utf-8")
    return data


def _audit_of(server: LiveServer, principal: str) -> list[dict[str, Any]]:
    """Today's audit records of one principal."""
    return [r for r in server.services.audit.find() if r["principal"] == principal]


def _describe(route: Route, resp: Resp) -> str:
    """One line for a problem report: the route and what it answered."""
    return f"{route}: {resp.status} {resp.text[:300]}"


# The suite's own servers: its fuzz and denial tests write thousands of audit records, which
# would otherwise slow every later audit lookup on the shared session servers.
_conformance_sqlite, _conformance_dynamodb, live_server = own_live_servers("conformance")


def _check(problems: list[str]) -> None:
    """Fail with every problem found (not only the first)."""
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def _listed(dialect: Dialect, client: Client, ring: str, token: str) -> list[list[str]]:
    """The ids each list route of the dialect answers for `ring` (asserting 200)."""
    out = []
    for route in dialect.routes:
        if route.lists:
            r = dialect.call(client, route, ring, "", token)
            assert r.status == 200 and dialect.is_success(r), _describe(route, r)
            out.append(dialect.list_ids(r))
    return out


# ---- 1. another ring's token -------------------------------------------------------------

def test_another_rings_token_is_refused_without_an_existence_oracle(
        live_server: LiveServer, dialect: Dialect) -> None:
    """A full-permission token of ring B on ring A's objects is refused (the vendor's forbidden
    or not-found answer), and the answer is the same whether the object (or ring A itself)
    exists or not. Every forbidden answer is audited as denied."""
    a, b, empty = dialect.new_ring(), dialect.new_ring(), dialect.new_ring()
    owner = _mint(live_server, dialect, a, dialect.full_perms)
    oid = dialect.create(live_server, a, owner)
    missing = dialect.missing_id()
    principal = _principal("stranger")
    stranger = _mint(live_server, dialect, b, dialect.full_perms, principal)
    client = live_server.client()
    problems: list[str] = []
    forbidden: Counter[str] = Counter()
    for route in _token_routes(dialect):
        if not (route.is_object or "{ring}" in route.path):
            continue  # acts on the token's own ring: nothing of ring A is addressed
        here = dialect.call(client, route, a, oid, stranger)
        status = dialect.error_status(here)
        if status not in dialect.foreign_statuses:
            problems.append(f"not refused in the vendor's envelope: {_describe(route, here)}")
            continue
        # the addressed ring and object ids are masked: only what they are may differ
        masks = {oid: "{id}", missing: "{id}", a: "{ring}", empty: "{ring}"}
        reference = _shape(here, masks)
        twins: list[tuple[str, Resp]] = []
        if route.is_object:
            twins.append(("a missing object",
                          dialect.call(client, route, a, missing, stranger)))
        if "{ring}" in route.path:
            twins.append(("a ring without objects",
                          dialect.call(client, route, empty, oid, stranger)))
        for what, twin in twins:
            if _shape(twin, masks) != reference:
                problems.append(f"{route}: answers differ for {what}: "
                                f"{here.status} {here.text[:200]} / {twin.status} "
                                f"{twin.text[:200]}")
        if status == dialect.forbidden_status:
            forbidden[route.action] += 1 + len(twins)
    # nothing of ring A changed
    for ids in _listed(dialect, client, a, owner):
        if oid not in ids:
            problems.append(f"ring A lost its object {oid} to a stranger's calls: {ids}")
    # 7. every forbidden answer is audited as denied, with its request id and token id
    denied = Counter(r["action"] for r in _audit_of(live_server, principal)
                     if r["outcome"] == "denied" and r["request_id"] and r["token_id"])
    for action, n in forbidden.items():
        if denied[action] < n:
            problems.append(f"{action}: {n} forbidden answer(s), {denied[action]} denied "
                            "record(s)")
    _check(problems)


# ---- 2. tokens that do not authenticate --------------------------------------------------

def _expired_token(server: LiveServer, dialect: Dialect, ring: str) -> str:
    """A token that expired an hour ago: minted for one hour by a TokenService whose clock
    runs two hours behind, on the server's store (no waiting, no store layout)."""
    past = TokenService(server.services.store, clock=lambda: time.time() - 7200)
    raw, record = past.create(
        _principal("expired"), [Scope.parse(dialect.scope(ring, dialect.full_perms))], 3600)
    assert record["expires_at"] < time.time() - 3000
    return raw


def _revoked_token(server: LiveServer, dialect: Dialect, ring: str) -> str:
    """A token revoked through TokenService.revoke."""
    tokens = server.services.tokens
    raw, record = tokens.create(
        _principal("revoked"), [Scope.parse(dialect.scope(ring, dialect.full_perms))], 3600)
    tokens.revoke(record["token_id"])
    return raw


def test_tokens_that_do_not_authenticate_are_401(
        live_server: LiveServer, dialect: Dialect) -> None:
    """No token, a malformed one, an unknown one, an expired one, a revoked one: 401 in the
    vendor's envelope on every route that needs a token."""
    ring = dialect.new_ring()
    owner = _mint(live_server, dialect, ring, dialect.full_perms)
    oid = dialect.create(live_server, ring, owner)
    bad: dict[str, str | None] = {
        "missing": None,
        "malformed": "not a token",
        "malformed prefix": "kf_short",
        "unknown": "kf_" + secrets.token_urlsafe(32),
        "expired": _expired_token(live_server, dialect, ring),
        "revoked": _revoked_token(live_server, dialect, ring),
    }
    client = live_server.client()
    problems: list[str] = []
    for route in _token_routes(dialect):
        for label, token in bad.items():
            r = dialect.call(client, route, ring, oid, token)
            if dialect.error_status(r) != 401:
                problems.append(f"{label} token: {_describe(route, r)}")
            elif token and token in r.text:
                problems.append(f"{label} token echoed in the 401: {_describe(route, r)}")
    # the refusals changed nothing
    for ids in _listed(dialect, client, ring, owner):
        if oid not in ids:
            problems.append(f"the object {oid} is gone after refused calls: {ids}")
    _check(problems)


# ---- 3. missing permission ---------------------------------------------------------------

def test_missing_permission_is_403_and_audited_as_denied(
        live_server: LiveServer, dialect: Dialect) -> None:
    """A token of the right ring without the route's permission: the vendor's forbidden answer
    (403), and a "denied" audit record of the route's action (with request id and token id)."""
    ring = dialect.new_ring()
    owner = _mint(live_server, dialect, ring, dialect.full_perms)
    oid = dialect.create(live_server, ring, owner)
    principal = _principal("weak")
    client = live_server.client()
    problems: list[str] = []
    tokens: dict[str, str] = {}
    expected: Counter[str] = Counter()
    for route in _token_routes(dialect):
        if route.weak not in tokens:
            tokens[route.weak] = _mint(live_server, dialect, ring, route.weak, principal)
        r = dialect.call(client, route, ring, oid, tokens[route.weak])
        if dialect.error_status(r) != dialect.forbidden_status:
            problems.append(f"weak token ({route.weak or 'no permission'}): "
                            f"{_describe(route, r)}")
        else:
            expected[route.action] += 1
    records = _audit_of(live_server, principal)
    denied = Counter(r["action"] for r in records if r["outcome"] == "denied")
    for action, n in expected.items():
        if denied[action] < n:
            problems.append(f"{action}: {n} forbidden answer(s), {denied[action]} denied "
                            "record(s)")
    for rec in records:
        if rec["outcome"] == "denied" and not (rec["request_id"] and rec["token_id"]):
            problems.append(f"denied record without request id or token id: {rec}")
    # the refusals changed nothing
    for ids in _listed(dialect, client, ring, owner):
        if oid not in ids:
            problems.append(f"the object {oid} is gone after refused calls: {ids}")
    _check(problems)


# ---- 4. strict JSON ----------------------------------------------------------------------

def test_bodies_that_are_not_strict_json_objects_are_400(
        live_server: LiveServer, dialect: Dialect) -> None:
    """Invalid JSON, NaN, 1e400, lone surrogates, 10,000-deep nesting, non-objects: the
    vendor's 400 envelope (itself strict JSON) on every route that reads a body."""
    ring = dialect.new_ring()
    token = _mint(live_server, dialect, ring, dialect.full_perms)
    oid = dialect.create(live_server, ring, token)
    client = live_server.client()
    problems: list[str] = []
    for route in dialect.routes:
        if not route.reads_body:
            continue
        for label, raw in NOT_STRICT_JSON.items():
            r = dialect.call(client, route, ring, oid, None if route.public else token, raw=raw)
            if dialect.error_status(r) != 400:
                problems.append(f"{label}: {_describe(route, r)}")
                continue
            try:
                _strict_json(r.body)
            except ValueError as exc:
                problems.append(f"{label}: the 400 itself is not strict JSON ({exc}): "
                                f"{_describe(route, r)}")
    _check(problems)


# ---- 5. any Content-Type -----------------------------------------------------------------

def test_any_content_type_gets_the_vendors_answer(
        live_server: LiveServer, dialect: Dialect) -> None:
    """Every route, GET and DELETE included, answers a request with an odd Content-Type in the
    vendor's envelope (success or error), never with the framework's 415; and with the status
    the same calls get with application/json (a body is read as JSON whatever the header says).
    Each run goes through the whole route table on a ring and object of its own."""
    client = live_server.client()
    runs: dict[str, list[Resp]] = {}
    for ctype in ("application/json", *ODD_CONTENT_TYPES):
        ring = dialect.new_ring()
        token = _mint(live_server, dialect, ring, dialect.full_perms)
        oid = dialect.create(live_server, ring, token)
        runs[ctype] = [dialect.call(client, route, ring, oid, None if route.public else token,
                                    headers={"Content-Type": ctype})
                       for route in dialect.routes]
    problems: list[str] = []
    for ctype in ODD_CONTENT_TYPES:
        for route, json_r, r in zip(dialect.routes, runs["application/json"], runs[ctype],
                                    strict=True):
            if r.status >= 500 or not (dialect.error_status(r) is not None
                                       or dialect.is_success(r)):
                problems.append(f"[{ctype}] not the vendor's answer: {_describe(route, r)}")
            elif r.status != json_r.status:
                problems.append(f"[{ctype}] {r.status}, but {json_r.status} with "
                                f"application/json: {_describe(route, r)}")
    _check(problems)


# ---- 6. a record copied into another ring ------------------------------------------------

def test_a_record_copied_into_another_ring_is_never_used_there(
        live_server: LiveServer, dialect: Dialect) -> None:
    """Ring A's object record, copied unchanged (same sort key) into ring B's partition: every
    route addressing it in ring B answers a generic 500 in the vendor's envelope that discloses
    nothing; ring B's lists leave it out (and still answer 200); a "failure" audit record names
    it; ring A's object is untouched."""
    a, b = dialect.new_ring(), dialect.new_ring()
    owner = _mint(live_server, dialect, a, dialect.full_perms)
    principal = _principal("copy")
    thief = _mint(live_server, dialect, b, dialect.full_perms, principal)
    oid = dialect.create(live_server, a, owner)
    store = live_server.services.store
    pk, sk = dialect.record(a, oid)
    item = store.get(pk, sk)
    assert item is not None, (pk, sk)
    pk_b, sk_b = dialect.record(b, oid)
    assert sk_b == sk
    store.put_if_absent({**{k: v for k, v in item.items() if k != "version"}, "pk": pk_b})

    client = live_server.client()
    problems: list[str] = []
    for route in dialect.routes:
        if not (route.is_object and route.ring_bound and not route.creates):
            continue
        r = dialect.call(client, route, b, oid, None if route.public else thief)
        if dialect.error_status(r) != 500:
            problems.append(f"not a generic 500: {_describe(route, r)}")
            continue
        said = dialect.error_text(r).lower()
        leaked = [w for w in (oid.lower(), a.lower(), b.lower(), *INTERNAL_WORDS) if w in said]
        if leaked or "traceback" in r.text.lower():
            problems.append(f"the 500 discloses {leaked}: {_describe(route, r)}")
    for ids in _listed(dialect, client, b, thief):
        if oid in ids:
            problems.append(f"ring B lists the copy {oid}: {ids}")
    failures = [r for r in live_server.services.audit.find()
                if r["outcome"] == "failure" and oid in r["object"] and b in r["object"]]
    if not failures:
        problems.append(f"no failure audit record names the copy of {oid} in ring {b}")
    for ids in _listed(dialect, client, a, owner):
        if oid not in ids:
            problems.append(f"ring A no longer lists {oid}: {ids}")
    _check(problems)


# ---- 8. fuzz -----------------------------------------------------------------------------

FUZZ_EXAMPLES = 200

_NASTY_SEGMENTS = ("", ".", "..", "%2e%2e", "%2F", "%00", "%ED%A0%80", "%FF", "%C0%AF", "%25",
                   "%", "%zz", "a%20b", "*", "~", "-1", "0", "1.0", "2.0", "v2", "null",
                   "%0A", "%0D%0A", "%5C", "con_" + "A" * 16, "con_", "k" * 129, "1" * 21)
_LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                        blacklist_characters="\x7f", blacklist_categories=("Cc",))
_HEADER_TEXT = st.text(alphabet=_LATIN1, max_size=60)

_segments = st.one_of(
    st.sampled_from(_NASTY_SEGMENTS),
    st.text(max_size=24).map(lambda s: quote(s, safe="")),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.builds(lambda ch, n: quote(ch * n, safe=""),
              st.sampled_from(["a", "9", "-", "\u00e9", "\U0001f600", "\u4e2d"]),
              st.integers(min_value=100, max_value=1000)),
)
_queries = st.one_of(
    st.just(""),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4)
    .map(lambda q: "?" + urlencode(q)),
    st.sampled_from(["?", "?&&", "?=", "?a", "?%zz=%", "?per_page=-1", "?page=1e400",
                     "?page=99999999999999999999", "?include_totals=maybe",
                     "?fields=id,name&include_fields=false", "?strategy=oidc&strategy=okta",
                     "?strategy=%ED%A0%80", "?name=" + "n" * 2000]),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40)
    | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
_raw_bodies = st.sampled_from([
    b"{", b"}", b'{"a":"\\ud800"}', b"\xff\xfe\x00", b"{}{}", b'{"x": 1e400}', b"[]",
    b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"a=b&c=d", b"--x\r\n\r\n--x--",
    b"<xml/>", b"\x00" * 16, b'{"token": null}', b'{"token": ["x"]}',
])
_junk_tokens = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "kf_", "kf_" + "A" * 43, "kf_" + "A" * 44, "null", "Bearer",
                     "\u00e9t\u00e9", "kf_" + "%" * 43, '"quoted"', "back\\slash", "{}"]),
    _HEADER_TEXT,
)
_content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                     "application/xml", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "multipart/form-data", "*/*", "",
                     "application/octet-stream", "application/json;;;"]),
    _HEADER_TEXT,
)


@st.composite
def _requests(draw: st.DrawFn, dialect: Dialect, ring: str, oid: str,
              token: str) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, path, headers, body): a route of the dialect, mangled."""
    route = draw(st.sampled_from(dialect.routes))
    # the real ring and object two times in three, a random segment otherwise
    path = route.url(draw(st.one_of(st.just(ring), st.just(ring), _segments)),
                     draw(st.one_of(st.just(oid), st.just(oid), _segments)))
    if draw(st.integers(0, 3)) == 0:  # one segment replaced
        parts = path.split("/")
        parts[draw(st.integers(1, len(parts) - 1))] = draw(_segments)
        path = "/".join(parts)
    if draw(st.integers(0, 5)) == 0:  # one segment too many
        path += "/" + draw(_segments)
    path += draw(_queries)
    method = route.method
    if draw(st.integers(0, 4)) == 0:  # another method
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))

    fields = sorted({k for r in dialect.routes if isinstance(r.body, dict) for k in r.body}
                    | {"token", "name", "id", "type"})
    valid_body = route.body if isinstance(route.body, dict) else {}
    body: bytes | None = draw(st.one_of(
        st.none(),
        st.just(json.dumps(valid_body).encode()),
        st.dictionaries(st.sampled_from(fields), _json_values, max_size=4)
        .map(lambda d: json.dumps({**valid_body, **d}).encode()),
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        _raw_bodies,
    ))

    if draw(st.booleans()):  # half of the examples carry a valid full-permission token
        headers = dialect.auth_headers(token, ring)
    else:
        headers = dialect.auth_headers(draw(_junk_tokens), ring)
        scheme = draw(st.sampled_from([None, "Bearer", "bearer", "Basic", "Digest", "Token",
                                       "", "Bearer  "]))
        if scheme is not None:
            headers["Authorization"] = f"{scheme} {draw(_HEADER_TEXT)}".strip()
    content_type = draw(_content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["*/*", "application/xml", "text/html", ""]))
    return method, path, headers, body


@pytest.fixture
def _no_source_constants(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep Hypothesis from mixing in literals it mines from the loaded local modules.

    Hypothesis (6.13x+) draws some strings and numbers from the constants of whatever local
    modules are imported at the time, so even derandomized examples would change with the
    source tree and with which tests ran before. With an empty local pool they depend on this
    file alone. (Hypothesis internals: a no-op if they move.)
    """
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover - another Hypothesis layout
        yield
        return
    cache = getattr(getattr(providers, "CONSTANTS_CACHE", None), "cache", None)
    if cache is not None:
        cache.clear()
    monkeypatch.setattr(providers, "_get_local_constants", Constants, raising=False)
    yield
    if cache is not None:
        cache.clear()


@pytest.mark.usefixtures("_no_source_constants")
def test_no_5xx_under_fuzz(
        live_server: LiveServer, dialect: Dialect) -> None:
    """Random path segments, query strings, bodies and headers on every route, half of them
    with a valid full-permission token: never a 5xx, and JSON wherever the dialect always
    answers JSON. Deterministic (derandomized, no example database), bounded."""
    ring = dialect.new_ring()
    token = _mint(live_server, dialect, ring, dialect.full_perms)
    oid = dialect.create(live_server, ring, token)
    client = live_server.client()
    found: list[tuple[str, str]] = []

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_requests(dialect, ring, oid, token))
    def one(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, headers, body = request
        sent = (f"{method} {path[:300]} headers={headers} "
                f"body={body[:200] if body else body!r}")
        try:
            r = client.request(method, path, headers=headers, raw=body)
        except (OSError, http.client.HTTPException) as exc:
            found.append(("no response", f"{sent} -> {type(exc).__name__}: {exc}"))
            client.close()
            return
        if r.status >= 500:
            found.append((f"{r.status}", f"{sent} -> {r.status} {r.text[:300]}"))
        elif dialect.always_json and not (not r.body and r.status in (202, 204)):
            try:
                json.loads(r.body)
            except ValueError:
                found.append((f"{r.status} not JSON", f"{sent} -> {r.status} {r.text[:300]}"))

    one()
    _check(_grouped(found))


def _grouped(found: Iterable[tuple[str, str]], per_kind: int = 3) -> list[str]:
    """Problems grouped by kind: how many of each, and the first few requests."""
    kinds: dict[str, list[str]] = {}
    for kind, text in found:
        kinds.setdefault(kind, []).append(text)
    return [f"{kind} ({len(texts)}x): " + "\n    ".join(texts[:per_kind])
            for kind, texts in kinds.items()]
