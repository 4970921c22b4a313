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


def cmd_apinizer(args: argparse.Namespace) -> int:
    """Apinizer project environments through the admin function's code."""
    event: dict[str, Any] = {"action": f"{args.env_cmd}-environment"
                             if args.env_cmd != "list" else "list-environments",
                             "project": args.project}
    if args.env_cmd in ("create", "delete"):
        event["name"] = args.name
    if args.env_cmd == "create":
        event.update(type=args.type, description=args.description, access_url=args.access_url)
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

    ap = sub.add_parser("apinizer", help="Apinizer dialect: project environments")
    apsub = ap.add_subparsers(dest="apinizer_cmd", required=True)
    env = apsub.add_parser("environment", help="create, list or delete a project's environments")
    esub = env.add_subparsers(dest="env_cmd", required=True)
    ec = esub.add_parser("create")
    ec.add_argument("--project", required=True)
    ec.add_argument("--name", required=True)
    ec.add_argument("--type", required=True, help="PRODUCTION, SANDBOX or TEST")
    ec.add_argument("--description")
    ec.add_argument("--access-url", dest="access_url")
    el = esub.add_parser("list")
    el.add_argument("--project", required=True)
    ed = esub.add_parser("delete")
    ed.add_argument("--project", required=True)
    ed.add_argument("--name", required=True)
    ap.set_defaults(func=cmd_apinizer)

    h = sub.add_parser("hsm", help="HSM set-up")
    hsub = h.add_subparsers(dest="hsm_cmd", required=True)
    hsub.add_parser("init", help="create the KEK and bind key if absent")
    h.set_defaults(func=cmd_hsm_init)

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
