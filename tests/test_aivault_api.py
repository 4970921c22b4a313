"""AI-VAULT master keys and PSKs end to end over HTTP, through `keyfront serve`, on both
stores: every status code of the family, the cap and the bindings under races, another
domain's token, sorting, case-insensitive parameters, the service routes."""

from __future__ import annotations

import json
import threading
import uuid
from itertools import count
from typing import Any

from tests.client import Resp
from tests.conftest import own_live_servers

V1 = "/AIVAULT/v1"
PASSWORD = "Correct-Horse-Battery-Staple-0123456789-xyz"  # 43 characters, four classes
_domains = count(1)

# This module's own servers: its racing creates (cancelled transactions, which moto answers
# by restoring a copy of the whole table) would slow the shared session servers.
_aivault_sqlite, _aivault_dynamodb, live_server = own_live_servers("aivault")


def _domain() -> int:
    """A domain id no other test of this module uses (per server, 1..500)."""
    return next(_domains)


class Api:
    """A caller of one domain, with a keyfront Bearer token."""

    def __init__(self, server: Any, domain: int, perms: str = "read,manage",
                 scope_domain: int | str | None = None) -> None:
        self.server, self.domain = server, domain
        ring = domain if scope_domain is None else scope_domain
        self.principal = f"aivault-{uuid.uuid4().hex[:8]}"
        self.token = server.mint(f"aivault:{ring}:{perms}", principal=self.principal)
        self.client = server.client()

    def again(self) -> Api:
        """The same caller on a connection of its own (for racing requests)."""
        twin = object.__new__(Api)
        twin.__dict__.update(self.__dict__, client=self.server.client())
        return twin

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, domain: Any = "default") -> Resp:
        h = {"Authorization": f"Bearer {self.token}"}
        d = self.domain if domain == "default" else domain
        if d is not None:
            h["DomainID"] = str(d)
        h.update(headers or {})
        if body is not None:
            raw = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        return self.client.request(method, V1 + path, headers=h, raw=raw)

    def create_mk(self, name: str, **extra: Any) -> Resp:
        return self.call("POST", "/createMK", {"MKName": name, "MKUsage": "test usage",
                                              "Password": PASSWORD, **extra})

    def create_psk(self, name: str, mk: str, **extra: Any) -> Resp:
        return self.call("POST", "/createPSK", {"PSKName": name, "MKName": mk,
                                               "Password": PASSWORD, **extra})


def status(r: Resp, code: str, http: int = 200) -> Any:
    """Assert the envelope's status (and HTTP status); its data."""
    assert r.status == http, r.text
    body = r.json
    assert isinstance(body, dict) and set(body) == {"status", "msg", "data"}, r.text
    assert body["status"] == code, r.text
    return body["data"]


def mk_file(r: Resp) -> str:
    """The createMK answer is the file itself, as an attachment; its CipherMasterKey."""
    assert r.status == 200, r.text
    assert r.headers["content-disposition"] == "attachment; filename=MK.json"
    assert set(r.json) == {"Version", "CipherMasterKey"} and r.json["Version"] == "V1", r.text
    return str(r.json["CipherMasterKey"])


def _mk_names(api: Api, query: str = "") -> list[str] | None:
    data = status(api.call("GET", "/queryMK" + query), "00000000")
    return None if data is None else [k["MKName"] for k in data]


# ---- races -----------------------------------------------------------------------------------

def _race(calls: list[Any]) -> list[Resp]:
    out: list[Resp] = [None] * len(calls)  # type: ignore[list-item]
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        out[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_the_cap_holds_under_16_racing_creates(live_server):
    domain = _domain()
    first = Api(live_server, domain)
    apis = [first.again() for _ in range(16)]
    for i in range(9):
        mk_file(apis[0].create_mk(f"have-{i}"))
    results = _race([lambda a=a, i=i: a.create_mk(f"racer-{i}")
                     for i, a in enumerate(apis)])
    won = [r for r in results if r.status == 200 and "CipherMasterKey" in r.json]
    assert len(won) == 1, [r.text for r in results]
    for r in results:
        if r not in won:
            status(r, "31000003")
    assert len(_mk_names(apis[0]) or []) == 10
    status(apis[0].create_mk("one-more"), "31000003")
    # room again after a delete
    status(apis[0].call("DELETE", "/deleteMK/have-0"), "00000000")
    mk_file(apis[0].create_mk("one-more"))


def test_a_name_is_taken_once_under_racing_creates(live_server):
    api = Api(live_server, _domain())
    twins = [api.again() for _ in range(4)]
    results = _race([lambda a=a: a.create_mk("same") for a in twins])
    codes = sorted(r.json.get("status", "file") for r in results)
    assert codes == ["31000008"] * 3 + ["file"], codes
    assert _mk_names(api) == ["same"]


def test_one_psk_per_mk_and_no_delete_while_bound_under_races(live_server):
    api = Api(live_server, _domain())
    mk_file(api.create_mk("target"))
    others = [api.again() for _ in range(5)]
    results = _race([lambda a=a, i=i: a.create_psk(f"psk-{i}", "target")
                     for i, a in enumerate(others)])
    codes = sorted(r.json["status"] for r in results)
    assert codes == ["00000000"] + ["31000004"] * 4, codes
    assert len(status(api.call("GET", "/queryPSK"), "00000000")) == 1
    # bind and delete racing: either the delete wins (then the bind finds no MK) or the
    # bind wins (then the delete is refused); never both
    for round_ in range(2):
        name = f"contested-{round_}"
        mk_file(api.create_mk(name))
        bind, delete = _race([lambda n=name: others[0].create_psk(f"c-{n}", n),
                              lambda n=name: others[1].call("DELETE", f"/deleteMK/{n}")])
        pair = (bind.json["status"], delete.json["status"])
        assert pair in (("00000000", "31000005"), ("31000011", "00000000")), pair
        psks = status(api.call("GET", f"/queryPSK?BindMKName={name}"), "00000000")
        assert (psks is not None) == (pair[0] == "00000000")
        assert (name in (_mk_names(api) or [])) == (pair[0] == "00000000")
    names = {p["PSKName"] for p in status(api.call("GET", "/queryPSK"), "00000000")}
    for n in names:
        status(api.call("DELETE", f"/deletePSK/{n}"), "00000000")
    for mk in _mk_names(api) or []:
        status(api.call("DELETE", f"/deleteMK/{mk}"), "00000000")
    assert _mk_names(api) is None


# ---- the life of a master key and its PSK ----------------------------------------------------

def test_create_query_bind_delete(live_server):
    api = Api(live_server, _domain())
    assert status(api.call("GET", "/queryMK"), "00000000") is None  # null, not []
    assert status(api.call("GET", "/queryPSK"), "00000000") is None
    text = mk_file(api.create_mk("mk-1", MKRemarks="first key"))
    assert text.startswith("kf-kwp1$scrypt$") and PASSWORD not in text
    [mk] = status(api.call("GET", "/queryMK"), "00000000")
    assert set(mk) == {"MkID", "MKName", "CreateType", "MKUsage", "MKRemarks", "CreatedAt"}
    assert (mk["MKName"], mk["CreateType"], mk["MKUsage"], mk["MKRemarks"]) == \
        ("mk-1", "AIVAULT", "test usage", "first key")
    assert len(mk["CreatedAt"]) == 19 and mk["CreatedAt"][10] == " "

    data = status(api.create_psk("psk-1", "mk-1", PSKRemarks="for mk 1"), "00000000")
    assert set(data) == {"PSK"} and data["PSK"].startswith("kf-kwp1$scrypt$")
    [psk] = status(api.call("GET", "/queryPSK"), "00000000")
    assert psk["PSKName"] == "psk-1" and psk["PSKBindMKName"] == "mk-1" \
        and psk["PSKRemarks"] == "for mk 1" and len(psk["PSKCreateTime"]) == 19

    # bound: a second PSK for the MK, and deleting the MK, are refused
    status(api.create_psk("psk-2", "mk-1"), "31000004")
    status(api.call("DELETE", "/deleteMK/mk-1"), "31000005")
    mk_file(api.create_mk("mk-2"))
    status(api.create_psk("psk-1", "mk-2"), "31000009")
    status(api.create_psk("psk-x", "no-such-mk"), "31000011")
    status(api.create_mk("mk-1"), "31000008")

    status(api.call("DELETE", "/deletePSK/psk-1"), "00000000")
    status(api.call("DELETE", "/deletePSK/psk-1"), "00003001")
    assert status(api.call("GET", "/queryPSK"), "00000000") is None
    status(api.call("DELETE", "/deleteMK/mk-1"), "00000000")
    status(api.call("DELETE", "/deleteMK/mk-1"), "31000011")
    assert _mk_names(api) == ["mk-2"]
    # a name is free again once deleted
    mk_file(api.create_mk("mk-1"))
    # every change audited, never a password or key material
    audit = [r for r in live_server.services.audit.find() if r["principal"] == api.principal]
    assert {r["action"] for r in audit} >= {"aivault.key.create", "aivault.secret.create",
                                            "aivault.secret.delete", "aivault.key.delete"}
    assert PASSWORD not in json.dumps(audit) and text not in json.dumps(audit)


def test_sorting_and_filters(live_server):
    api = Api(live_server, _domain())
    for name in ("b-key", "a-key", "c-key"):
        mk_file(api.create_mk(name))
    assert _mk_names(api) == ["c-key", "a-key", "b-key"]  # CreateTime desc by default
    assert _mk_names(api, "?SortBy=CreateTime&SortMode=asc") == ["b-key", "a-key", "c-key"]
    assert _mk_names(api, "?SortBy=MKName&SortMode=asc") == ["a-key", "b-key", "c-key"]
    assert _mk_names(api, "?SortBy=MKName&SortMode=desc") == ["c-key", "b-key", "a-key"]
    assert _mk_names(api, "?MKName=a-") == ["a-key"]
    assert _mk_names(api, "?MKName=") == ["c-key", "a-key", "b-key"]
    assert _mk_names(api, "?MKName=nothing") is None
    for psk, mk in (("p2", "a-key"), ("p1", "b-key")):
        status(api.create_psk(psk, mk), "00000000")

    def psks(query: str) -> Any:
        data = status(api.call("GET", "/queryPSK" + query), "00000000")
        return None if data is None else [p["PSKName"] for p in data]
    assert psks("") == ["p1", "p2"]
    assert psks("?SortBy=PSKName&SortMode=asc") == ["p1", "p2"]
    assert psks("?SortBy=CreateTime&SortMode=asc") == ["p2", "p1"]
    assert psks("?BindMKName=a-key") == ["p2"]
    assert psks("?BindMKName=c-key") is None
    assert psks("?PSKName=p1") == ["p1"]
    for query, field in (("?SortBy=Name", "SortBy"), ("?SortMode=up", "SortMode"),
                         ("?MKName=bad%20name", "MKName"), ("?Other=1", "Other")):
        r = api.call("GET", "/queryMK" + query)
        status(r, "00002000")
        assert field in r.json["msg"], r.text
    status(api.call("GET", "/queryPSK?SortBy=MKName"), "00002000")


def test_parameter_names_are_case_insensitive(live_server):
    api = Api(live_server, _domain())
    mk_file(api.call("POST", "/createMK", {"mkname": "lower", "MKUSAGE": "u",
                                           "password": PASSWORD}))
    status(api.call("POST", "/createPSK", {"pskname": "p", "mkName": "lower",
                                           "PSKremarks": "r", "PASSWORD": PASSWORD}),
           "00000000")
    assert _mk_names(api, "?mkname=low&sortby=MKName&SORTMODE=asc") == ["lower"]
    r = api.call("POST", "/createMK", {"MKName": "x", "mkname": "y", "MKUsage": "u",
                                       "Password": PASSWORD})
    status(r, "00002000")
    assert "MKName" in r.json["msg"]


BAD_CREATES = [
    ({"MKName": ""}, "MKName"),
    ({"MKName": "x" * 129}, "MKName"),
    ({"MKName": "has space"}, "MKName"),
    ({"MKName": "naïve"}, "MKName"),
    ({"MKName": 7}, "MKName"),
    ({"MKUsage": ""}, "MKUsage"),
    ({"MKUsage": "   "}, "MKUsage"),
    ({"MKUsage": "u" * 129}, "MKUsage"),
    ({"MKUsage": "semi;colon"}, "MKUsage"),
    ({"MKRemarks": "r" * 257}, "MKRemarks"),
    ({"MKRemarks": "no/slash"}, "MKRemarks"),
    ({"MKRemarks": None}, "MKRemarks"),
    ({"Password": "Short-1"}, "Password"),
    ({"Password": "a" * 65}, "Password"),
    ({"Password": "a" * 50}, "Password"),  # one class only
    ({"Password": "Aa1-" * 10 + "\n"}, "Password"),
    ({"Password": ["x"]}, "Password"),
    ({"Extra": 1}, "Extra"),
]


def test_bad_parameters_are_00002000_naming_the_field(live_server):
    api = Api(live_server, _domain())
    for change, field in BAD_CREATES:
        body = {"MKName": "k", "MKUsage": "u", "Password": PASSWORD, **change}
        r = api.call("POST", "/createMK", body)
        status(r, "00002000")
        assert field in r.json["msg"], (change, r.text)
        assert PASSWORD not in r.text
    assert _mk_names(api) is None


def test_missing_parameters_and_bodies(live_server):
    api = Api(live_server, _domain())
    for missing in ("MKName", "MKUsage", "Password"):
        body = {"MKName": "k", "MKUsage": "u", "Password": PASSWORD}
        del body[missing]
        r = api.call("POST", "/createMK", body)
        status(r, "00002000")
        assert missing in r.json["msg"]
    # the password may not be the name or the name reversed
    name = "Abcdefghij" * 4 + "-1"
    for pw in (name, name[::-1]):
        r = api.call("POST", "/createMK", {"MKName": name, "MKUsage": "u", "Password": pw})
        status(r, "00002000")
        assert "Password" in r.json["msg"]
    r = api.call("POST", "/createPSK", {"PSKName": name, "MKName": "k", "Password": name})
    status(r, "00002000")
    for raw in (b"not json", b"[1]", b'{"MKName": NaN}', b"{" * 100_000, b"x" * 20_000,
                json.dumps({"MKName": "\ud800"}).encode()):
        status(api.call("POST", "/createMK", raw=raw,
                        headers={"Content-Type": "text/plain"}), "00002000")
        status(api.call("POST", "/createPSK", raw=raw), "00002000")
    status(api.call("POST", "/createPSK", {"PSKName": "p", "Password": PASSWORD}), "00002000")
    status(api.call("DELETE", "/deleteMK/bad%20name"), "00002000")
    status(api.call("DELETE", "/deletePSK/" + "x" * 129), "00002000")
    assert _mk_names(api) is None


# ---- headers, tokens, permissions ------------------------------------------------------------

def test_domain_header_errors_are_31000021(live_server):
    api = Api(live_server, 3, scope_domain="*")
    for value in (None, "", "abc", "0", "501", "-1", "1.5", "\u00b2", "+7",
                  "99999999999999999999"):
        status(api.call("GET", "/queryMK", domain=value), "31000021")
    for method, path, body in (("GET", "/queryPSK", None), ("DELETE", "/deleteMK/x", None),
                               ("DELETE", "/deletePSK/x", None),
                               ("POST", "/createMK", {"MKName": "k"}),
                               ("POST", "/createPSK", {})):
        for value in (None, "x", "501"):
            status(api.call(method, path, body, domain=value), "31000021")
    # a * token works on any domain in range
    assert status(api.call("GET", "/queryMK", domain="500"), "00000000") is None


def test_authentication_failures_are_401_login(live_server):
    api = Api(live_server, _domain())
    for auth in (None, "Bearer", "Bearer kf_unknown", "Basic dXNlcjpwYXNz", "Bearer  "):
        headers = {} if auth is None else {"Authorization": auth}
        r = live_server.client().request("GET", V1 + "/queryMK",
                                         headers={"DomainID": str(api.domain), **headers})
        assert r.status == 401 and r.json == {"status": "00000003", "msg": "login",
                                              "data": None}, r.text
    # 401 comes before the header check
    r = live_server.client().request("POST", V1 + "/createMK", headers={"DomainID": "x"},
                                     raw=b"{}")
    assert r.status == 401 and r.json["status"] == "00000003"


def test_another_domains_token_learns_nothing(live_server):
    owner, stranger = Api(live_server, _domain()), Api(live_server, _domain())
    mk_file(owner.create_mk("secret-mk"))
    status(owner.create_psk("secret-psk", "secret-mk"), "00000000")
    answers = []
    for name in ("secret-mk", "missing-mk"):
        for method, path, body in (
                ("GET", f"/queryMK?MKName={name}", None),
                ("GET", f"/queryPSK?BindMKName={name}", None),
                ("DELETE", f"/deleteMK/{name}", None),
                ("DELETE", f"/deletePSK/{name.replace('mk', 'psk')}", None),
                ("POST", "/createPSK", {"PSKName": "p", "MKName": name, "Password": PASSWORD}),
                ("POST", "/createMK", {"MKName": name, "MKUsage": "u", "Password": PASSWORD})):
            r = stranger.call(method, path, body, domain=owner.domain)
            answers.append(r.json)
            status(r, "31000002")
    assert all(a == answers[0] for a in answers)
    assert _mk_names(owner) == ["secret-mk"]
    denied = [r for r in live_server.services.audit.find()
              if r["principal"] == stranger.principal and r["outcome"] == "denied"]
    assert len(denied) == len(answers)


def test_permissions(live_server):
    domain = _domain()
    owner = Api(live_server, domain)
    mk_file(owner.create_mk("k"))
    reader, manager = Api(live_server, domain, "read"), Api(live_server, domain, "manage")
    assert _mk_names(reader) == ["k"]
    status(reader.create_mk("k2"), "31000002")
    status(reader.create_psk("p", "k"), "31000002")
    status(reader.call("DELETE", "/deleteMK/k"), "31000002")
    status(reader.call("DELETE", "/deletePSK/p"), "31000002")
    status(manager.call("GET", "/queryMK"), "31000002")
    status(manager.call("GET", "/queryPSK"), "31000002")
    status(manager.create_psk("p", "k"), "00000000")
    status(manager.call("DELETE", "/deletePSK/p"), "00000000")


# ---- service routes --------------------------------------------------------------------------

def test_version_health_and_cert_status(live_server):
    c = live_server.client()
    for path in ("/version", "/version/"):
        data = status(c.get(V1 + path), "00000000")
        assert set(data) == {"version"} and data["version"], data
    assert status(c.get(V1 + "/health"), "00000000") == "probe successfully"
    # keyfront terminates no TLS itself: an empty list, no invented certificate dates
    assert status(c.get(V1 + "/certStatus"), "00000000") == []
