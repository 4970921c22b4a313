"""The `keyfront` console script: local server, admin events, HSM and store set-up."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from chalicelib.config import Settings
from chalicelib.core.kinds import PERMISSIONS


def _print(obj: Any, as_json: bool) -> None:
    print(json.dumps(obj, indent=None if as_json else 2, sort_keys=True))


def _admin(event: dict[str, Any]) -> dict[str, Any]:
    from chalicelib import admin

    return admin.handle(event)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the app like `chalice local`, with TCP_NODELAY; print an admin token once."""
    from chalicelib.local_server import build_server

    server = build_server(args.host, args.port, args.stage)
    _first_start_token()
    print(f"keyfront serving on http://{args.host}:{args.port}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    return 0


def _first_start_token() -> None:
    """On the first start against a store, mint an all-rings admin token and show it once.

    The token is minted (through the admin function's code, so it is audited) before the
    first-start marker is written: a failed mint leaves no marker behind, and a second
    process that loses the race for the marker revokes its own token.
    """
    from chalicelib.core.services import get_services
    from chalicelib.errors import StoreConditionFailed

    marker = {"pk": "meta", "sk": "first-start-token"}
    svc = get_services()
    if svc.store.get(marker["pk"], marker["sk"]) is not None:
        return
    result = _admin({"action": "create-token", "principal": "local-admin",
                     "ttl_seconds": 365 * 24 * 3600,
                     "scopes": [{"kind": kind, "ring": "*", "perms": sorted(perms)}
                                for kind, perms in PERMISSIONS.items()]})
    if not result.get("ok"):
        print(f"could not mint the first-start admin token: {result.get('message')}",
              flush=True)
        return
    token_id = result["record"]["token_id"]
    try:
        svc.store.put_if_absent({**marker, "token_id": token_id})
    except StoreConditionFailed:
        _admin({"action": "revoke-token", "token_id": token_id})
        return
    print("=" * 72)
    print("First start: an admin token for every key ring (shown once, store it now):")
    print(f"  {result['token']}")
    print(f"  token_id {token_id}; revoke with: keyfront token revoke {token_id}")
    print("=" * 72, flush=True)


def cmd_token(args: argparse.Namespace) -> int:
    """Token create/list/revoke through the admin function's code."""
    from chalicelib.core.tokens import Scope

    if args.token_cmd == "create":
        event = {"action": "create-token", "principal": args.principal,
                 "scopes": [Scope.parse(s).to_dict() for s in args.scope],
                 "ttl_seconds": args.ttl}
    elif args.token_cmd == "list":
        event = {"action": "list-tokens"}
    else:
        event = {"action": "revoke-token", "token_id": args.token_id}
    result = _admin(event)
    if args.json or args.token_cmd != "create" or not result.get("ok"):
        _print(result, args.json)
    else:
        print(result["token"])
    return 0 if result.get("ok") else 1


def cmd_admin(args: argparse.Namespace) -> int:
    """Run a raw admin event given as JSON (what `aws lambda invoke --payload` sends)."""
    try:
        event = json.loads(args.payload)
    except ValueError:
        print(json.dumps({"ok": False, "error": "invalid_input", "message": "not JSON"}))
        return 1
    result = _admin(event)
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("ok") else 1


def cmd_hsm_init(args: argparse.Namespace) -> int:
    """Create the KEK and the bind key on the configured token if absent."""
    from chalicelib.hsm.bootstrap import ensure_keys

    created = ensure_keys(Settings.from_env())
    print(json.dumps({"created": created}))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """Create the store (SQLite file or DynamoDB table) or print the deploy template."""
    settings = Settings.from_env()
    if args.store_cmd == "cfn-template":
        from chalicelib.store.dynamodb_store import cloudformation_template

        print(json.dumps(cloudformation_template(args.table or settings.dynamodb_table),
                         indent=2))
        return 0
    if settings.store_backend == "dynamodb":
        from chalicelib.store.dynamodb_store import create_table

        create_table(settings.dynamodb_table, region=settings.aws_region,
                     endpoint_url=settings.dynamodb_endpoint)
    else:
        from chalicelib.store import open_store

        open_store(settings).ping()
    print(json.dumps({"store": settings.store_backend, "ready": True}))
    return 0


def _wrapped_text(path: str) -> str:
    """The password-wrapped key in a file: createMK's MK.json ({"CipherMasterKey"}), a
    createPSK answer ({"PSK"} or its envelope), or the bare text."""
    with open(path, "rb") as f:
        raw = f.read(64 * 1024)
    text = raw.decode("utf-8").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    if isinstance(doc, dict):
        for field in ("CipherMasterKey", "PSK"):
            if isinstance(doc.get(field), str):
                return str(doc[field])
    raise ValueError("no CipherMasterKey or PSK in the file")


def cmd_aivault_open(args: argparse.Namespace) -> int:
    """Open an AI-VAULT master-key file (or a PSK) with its password; write the key."""
    import base64
    import getpass
    import os

    from chalicelib.core.material import unwrap_under_password
    from chalicelib.errors import IntegrityError, InvalidInput

    def fail(message: str) -> int:
        print(f"keyfront: {message}", file=sys.stderr)
        return 1

    if os.path.lexists(args.out):
        return fail(f"{args.out} exists; refusing to overwrite it")
    try:
        text = _wrapped_text(args.file)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return fail(f"cannot read a wrapped key from {args.file}: {exc}")
    password = getpass.getpass("Password: ")
    try:
        key = unwrap_under_password(text, password)
    except IntegrityError:
        return fail("wrong password, or the file was altered")
    except InvalidInput as exc:
        return fail(f"{args.file} is not a keyfront master-key file or PSK: {exc.message}")
    out = {"raw": key, "hex": key.hex().encode() + b"\n",
           "base64": base64.b64encode(key) + b"\n"}[args.encoding]
    try:
        # created here with mode 0600, never over an existing file (O_EXCL)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return fail(f"cannot create {args.out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(out)
    print(f"wrote the {len(key) * 8}-bit key to {args.out} ({args.encoding})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    p = argparse.ArgumentParser(prog="keyfront", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve the app locally (chalice local + TCP_NODELAY)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--stage", default="dev")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="create, list or revoke API tokens")
    tsub = t.add_subparsers(dest="token_cmd", required=True)
    tc = tsub.add_parser("create")
    tc.add_argument("--principal", required=True)
    tc.add_argument("--scope", action="append", required=True,
                    help="KIND:RING:PERM[,PERM...], RING may be *; repeatable")
    tc.add_argument("--ttl", type=int, default=30 * 24 * 3600, help="seconds")
    tc.add_argument("--json", action="store_true")
    tl = tsub.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tr = tsub.add_parser("revoke")
    tr.add_argument("token_id")
    tr.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token)

    a = sub.add_parser("admin", help="run a raw admin event (JSON)")
    a.add_argument("payload")
    a.set_defaults(func=cmd_admin)

    h = sub.add_parser("hsm", help="HSM set-up")
    hsub = h.add_subparsers(dest="hsm_cmd", required=True)
    hsub.add_parser("init", help="create the KEK and bind key if absent")
    h.set_defaults(func=cmd_hsm_init)

    av = sub.add_parser("aivault", help="AI-VAULT master-key files")
    avsub = av.add_subparsers(dest="aivault_cmd", required=True)
    om = avsub.add_parser("open-mk", help="open a master-key file (MK.json) or a PSK with "
                          "its password (prompted) and write the key")
    om.add_argument("file", help="MK.json, a createPSK answer, or the bare wrapped text")
    om.add_argument("--out", required=True, help="where to write the key (created 0600, "
                    "never overwritten)")
    om.add_argument("--encoding", choices=("raw", "hex", "base64"), default="raw")
    av.set_defaults(func=cmd_aivault_open)

    st = sub.add_parser("store", help="store set-up")
    stsub = st.add_subparsers(dest="store_cmd", required=True)
    stsub.add_parser("init", help="create the SQLite file or the DynamoDB table")
    cf = stsub.add_parser("cfn-template", help="CloudFormation for the DynamoDB table")
    cf.add_argument("--table")
    st.set_defaults(func=cmd_store)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    from chalicelib.local_server import apply_stage_environment

    # Every command sees the same configuration as the server: the stage's variables,
    # unless the environment already sets them.
    apply_stage_environment(getattr(args, "stage", "dev"))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
