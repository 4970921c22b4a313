"""The `keyfront` console script: local server, admin events, HSM and store set-up."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from chalicelib.config import Settings
from chalicelib.core.kinds import PERMISSIONS


def _print(obj: Any, as_json: bool) -> None:
    print(json.dumps(obj, indent=None if as_json else 2, sort_keys=True))


def _admin(event: dict[str, Any]) -> dict[str, Any]:
    from chalicelib import admin

    return admin.handle(event)


def _event(event: dict[str, Any]) -> int:
    """Run an admin event and print its result as one JSON line (0), or its error as one
    line on standard error (1)."""
    result = _admin(event)
    if not result.get("ok"):
        return _fail(result.get("message", "failed"))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the app with gunicorn workers through Chalice's local gateway; print an admin
    token on the first start."""
    from chalicelib.serving import load_app, serve

    _check_listen(args.host, args.port)  # a port in use is one error line, not five retries
    load_app(args.stage)  # the app and its routes load here, or the command fails now
    _first_start_token()
    _maintenance_on_start()
    workers = args.workers or os.cpu_count() or 1
    url = f"http://{args.host}:{args.port}"

    def ready() -> None:
        print(f"keyfront serving on {url} ({workers} workers x {args.threads} threads;"
              " Ctrl-C stops)", flush=True)

    serve(args.host, args.port, stage=args.stage, workers=workers, threads=args.threads,
          access_log=Settings.from_env().access_log, on_ready=ready)
    return 0


def _maintenance_on_start() -> None:
    """Run the scheduled upkeep once before serving (locally nothing else schedules it); a
    failed step is reported on stderr and does not stop the server."""
    from chalicelib import maintenance

    result = maintenance.run()
    if not result["ok"]:
        print("maintenance on start: " + json.dumps(result["steps"], sort_keys=True),
              file=sys.stderr)


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Run the scheduled upkeep now (what the `maintenance` Lambda function runs)."""
    from chalicelib import maintenance

    result = maintenance.run(only=args.only)
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


def _check_listen(host: str, port: int) -> None:
    """OSError if `host:port` cannot be listened on (bound the way gunicorn binds)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


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
    if not result.get("ok") and not args.json:
        return _fail(result.get("message", "failed"))
    if args.json or args.token_cmd != "create":
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
    return _event(event)


def cmd_apinizer(args: argparse.Namespace) -> int:
    """Apinizer project environments through the admin function's code."""
    event: dict[str, Any] = {"action": f"{args.env_cmd}-environment"
                             if args.env_cmd != "list" else "list-environments",
                             "project": args.project}
    if args.env_cmd in ("create", "delete"):
        event["name"] = args.name
    if args.env_cmd == "create":
        event.update(type=args.type, description=args.description, access_url=args.access_url)
    return _event(event)


def cmd_keys(args: argparse.Namespace) -> int:
    """Keys of every dialect through the admin function's code: a key's last use, the
    vendor's delete run by the admin, and deleted keys (list, restore, purge)."""
    event: dict[str, Any]
    if args.keys_cmd in ("usage", "delete"):
        event = {"action": "key-usage" if args.keys_cmd == "usage" else "delete-key",
                 "kind": args.kind, "ring": args.ring, "id": args.id}
        if args.keys_cmd == "delete":
            event["force"] = args.force
    elif args.keys_cmd == "deleted":
        event = {"action": "list-deleted", "kind": args.kind, "ring": args.ring}
    elif args.keys_cmd == "restore":
        event = {"action": "restore-deleted", "kind": args.kind, "ring": args.ring,
                 "id": args.id}
    elif args.all_due:
        if args.target:
            return _fail("give --all-due or KIND RING ID, not both")
        event = {"action": "purge-deleted", "all_due": True}
    elif len(args.target) == 3:
        kind, ring, oid = args.target
        event = {"action": "purge-deleted", "kind": kind, "ring": ring, "id": oid}
    else:
        return _fail("give --all-due or KIND RING ID")
    return _event({k: v for k, v in event.items() if v is not None})


def cmd_rotation(args: argparse.Namespace) -> int:
    """Scheduled rotation periods through the admin function's code."""
    event: dict[str, Any] = {"action": f"{args.rotation_cmd}-rotation"
                             if args.rotation_cmd != "list" else "list-rotations"}
    if args.rotation_cmd == "list":
        event["kind"] = args.kind
    else:
        event.update(kind=args.kind, ring=args.ring, id=args.id)
    if args.rotation_cmd == "set":
        event["period_seconds"] = args.period
    return _event(event)


def cmd_hsm(args: argparse.Namespace) -> int:
    """HSM set-up: create the KEK and the bind key on the configured token if absent; roll
    the stored blobs to a KEK version (or check them); destroy an old KEK version."""
    if args.hsm_cmd == "rewrap":
        return _rewrap(args)
    if args.hsm_cmd == "destroy-kek":
        return _event({"action": "destroy-kek", "version": args.version,
                       "force": args.force})
    from chalicelib.hsm.bootstrap import ensure_keys

    created = ensure_keys(Settings.from_env())
    print(json.dumps({"created": created}))
    return 0


def _rewrap(args: argparse.Namespace) -> int:
    """`hsm rewrap`: bounded runs of the admin event until the pass is done (one JSON line
    per run), or with --check one full check that changes nothing (status 1 while blobs
    remain under other KEKs)."""
    if args.check:
        result = _admin({"action": "rewrap-check", "to_version": args.to_version})
        if not result.get("ok"):
            return _fail(result.get("message", "failed"))
        print(json.dumps(result, sort_keys=True))
        return 0 if result["done"] else 1
    while True:
        result = _admin({"action": "rewrap", "to_version": args.to_version,
                         "max_items": args.max_items})
        if not result.get("ok"):
            return _fail(result.get("message", "failed"))
        print(json.dumps(result, sort_keys=True), flush=True)
        if result["done"]:
            return 1 if result["status"]["counts"]["failed"] else 0


def cmd_store(args: argparse.Namespace) -> int:
    """Create the store (SQLite file or DynamoDB table) or print the deploy template."""
    settings = Settings.from_env()
    if args.store_cmd == "cfn-template":
        from chalicelib.store.dynamodb_store import cloudformation_template

        print(json.dumps(cloudformation_template(args.table or settings.dynamodb_table,
                                                 settings.dynamodb_kms_key), indent=2))
        return 0
    if settings.store_backend == "dynamodb":
        from chalicelib.store.dynamodb_store import create_table

        create_table(settings.dynamodb_table, region=settings.aws_region,
                     endpoint_url=settings.dynamodb_endpoint,
                     kms_key=settings.dynamodb_kms_key)
    else:
        from chalicelib.store import open_store

        open_store(settings).ping()
    print(json.dumps({"store": settings.store_backend, "ready": True}))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Write what `chalice package`/`chalice deploy` read beside config.json (see deploy.py)."""
    from chalicelib import deploy
    from chalicelib.config import REPO_ROOT

    settings = Settings.from_env()  # the stage's variables, applied by main()
    chalice_dir = REPO_ROOT / ".chalice"
    if args.deploy_cmd == "policies":
        for role in deploy.FUNCTIONS:
            path = chalice_dir / f"policy-{args.stage}-{role}.json"
            policy = deploy.role_policy(role, settings.dynamodb_table,
                                        settings.pin_secret_arn, settings.dynamodb_kms_key)
            path.write_text(json.dumps(policy, indent=2) + "\n")
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    if deploy.local_runtime() != deploy.LAMBDA_RUNTIME:
        raise SystemExit(f"keyfront: error: chalice packages wheels for this interpreter "
                         f"({deploy.local_runtime()}) but the template pins "
                         f"{deploy.LAMBDA_RUNTIME}: run it from a {deploy.LAMBDA_RUNTIME} venv")
    if args.deploy_cmd == "bytecode":
        package = REPO_ROOT / "chalicelib"
        count = deploy.compile_bytecode(package)
        print(f"compiled {count} modules under {package.relative_to(REPO_ROOT)} "
              f"for {deploy.LAMBDA_RUNTIME}")
        return 0
    # template
    stage = json.loads((chalice_dir / "config.json").read_text())["stages"].get(args.stage, {})
    for role in deploy.FUNCTIONS:
        path = chalice_dir / f"policy-{args.stage}-{role}.json"
        expected = deploy.role_policy(role, settings.dynamodb_table, settings.pin_secret_arn,
                                      settings.dynamodb_kms_key)
        if not path.exists() or json.loads(path.read_text()) != expected:
            print(f"keyfront: warning: {path.name} is not what the code needs (a new ring "
                  f"kind, table or key?): run `keyfront deploy policies --stage {args.stage}`",
                  file=sys.stderr)
    for value in deploy.placeholders(stage):
        print(f"keyfront: warning: .chalice/config.json stage {args.stage} still holds the "
              f"example value {value!r}", file=sys.stderr)
    fragment = deploy.merge_template(
        settings.dynamodb_table, settings.dynamodb_kms_key,
        log_retention="log_retention_in_days" in stage,
        custom_domain="api_gateway_custom_domain" in stage)
    return _emit(json.dumps(fragment, indent=2), args.output)


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

    from chalicelib.core.material import unwrap_under_password
    from chalicelib.errors import IntegrityError, InvalidInput

    if os.path.lexists(args.out):
        return _fail(f"{args.out} exists; refusing to overwrite it")
    try:
        text = _wrapped_text(args.file)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        return _fail(f"cannot read a wrapped key from {args.file}: {reason}")
    password = getpass.getpass("Password: ")
    if not password:
        return _fail("a password is required")
    try:
        key = unwrap_under_password(text, password)
    except IntegrityError:
        return _fail("wrong password, or the file was altered")
    except InvalidInput as exc:
        return _fail(f"{args.file} is not a keyfront master-key file or PSK: {exc.message}")
    out = {"raw": key, "hex": key.hex().encode() + b"\n",
           "base64": base64.b64encode(key) + b"\n"}[args.encoding]
    try:
        # created here with mode 0600, never over an existing file (O_EXCL)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return _fail(f"cannot create {args.out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(out)
    print(f"wrote the {len(key) * 8}-bit key to {args.out} ({args.encoding})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    p = argparse.ArgumentParser(prog="keyfront", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                   help="print keyfront's version and exit")
    p.add_argument("--debug", action="store_true",
                   help="on an error, print the Python traceback too")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the app locally (gunicorn workers in front of"
                                     " Chalice's local gateway)",
                       description="Serve the app on HOST:PORT with the stage's variables.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    s.add_argument("--stage", default="dev",
                   help="stage of .chalice/config.json whose variables apply (%(default)s)")
    s.add_argument("--workers", type=int, default=0,
                   help="worker processes, each with its own HSM session and store"
                        " connection (default: one per CPU)")
    s.add_argument("--threads", type=int, default=8, help="threads per worker (%(default)s)")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="create, list or revoke API tokens",
                       description="API tokens, through the admin function's code.")
    tsub = t.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="mint a token (printed once)",
                         description="Mint a token; only its hash is stored.")
    tc.add_argument("--principal", required=True,
                    help="who the token stands for (a MiaRec token: the user id)")
    tc.add_argument("--scope", action="append", required=True,
                    help="KIND:RING:PERM[,PERM...], RING may be *; repeatable")
    tc.add_argument("--ttl", type=int, default=30 * 24 * 3600,
                    help="lifetime in seconds (%(default)s)")
    tc.add_argument("--json", action="store_true", help="print the whole result as JSON")
    tl = tsub.add_parser("list", help="list tokens (never their secrets)",
                         description="List the tokens' records.")
    tl.add_argument("--json", action="store_true", help="print compact JSON")
    tr = tsub.add_parser("revoke", help="revoke a token by its id",
                         description="Revoke a token: it stops working at once.")
    tr.add_argument("token_id", help="the token_id that create and list show")
    tr.add_argument("--json", action="store_true", help="print compact JSON")
    t.set_defaults(func=cmd_token)

    a = sub.add_parser("admin", help="run a raw admin event (JSON)",
                       description="Run an admin event, as `aws lambda invoke` sends it.")
    a.add_argument("payload", help='the event as JSON, e.g. \'{"action":"health"}\'')
    a.set_defaults(func=cmd_admin)

    ap = sub.add_parser("apinizer", help="Apinizer dialect: project environments",
                        description="Environments of the Apinizer dialect's projects.")
    apsub = ap.add_subparsers(dest="apinizer_cmd", required=True, metavar="WHAT")
    env = apsub.add_parser("environment", help="create, list or delete a project's environments",
                           description="A project's environments (keys deploy to them).")
    esub = env.add_subparsers(dest="env_cmd", required=True, metavar="ACTION")
    ec = esub.add_parser("create", help="create an environment",
                         description="Create an environment of a project.")
    ec.add_argument("--project", required=True, help="the project")
    ec.add_argument("--name", required=True, help="the environment's name")
    ec.add_argument("--type", required=True, help="PRODUCTION, SANDBOX or TEST")
    ec.add_argument("--description", help="free text")
    ec.add_argument("--access-url", dest="access_url", help="the environment's gateway URL")
    el = esub.add_parser("list", help="list a project's environments",
                         description="List a project's environments.")
    el.add_argument("--project", required=True, help="the project")
    ed = esub.add_parser("delete", help="delete an environment (none of its keys deployed)",
                         description="Delete an environment no key is deployed to.")
    ed.add_argument("--project", required=True, help="the project")
    ed.add_argument("--name", required=True, help="the environment's name")
    ap.set_defaults(func=cmd_apinizer)

    k = sub.add_parser("keys", help="keys of every dialect: last use, admin delete, deleted "
                                    "keys (list, restore, purge), scheduled rotation",
                       description="Keys of every dialect, by kind, ring and the key's "
                                   "vendor identifier (AI-VAULT PSKs: psk/NAME). Deleted keys "
                                   "wait for the deletion window "
                                   "(KEYFRONT_DELETION_WINDOW_DAYS) before they are purged.")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    ku = ksub.add_parser("usage", help="when a key was last used, and for what",
                         description="The last use of a key, or of every key of the ring "
                                     "with a recorded use (deleted keys' too, by key id).")
    kdel = ksub.add_parser("delete", help="delete a key as its vendor's API does",
                           description="The vendor's delete of a key, run by the admin "
                                       "principal; --force overrides the delete guard "
                                       "(KEYFRONT_DELETE_GUARD_SECONDS).")
    for parser, id_help in ((ku, "the key (default: every key of the ring)"),
                            (kdel, "the key")):
        parser.add_argument("kind", choices=sorted(PERMISSIONS), help="the ring kind")
        parser.add_argument("ring", help="the ring (vault, tenant, domain, project)")
        parser.add_argument("id", nargs="?" if parser is ku else None, help=id_help)
    kdel.add_argument("--force", action="store_true",
                      help="delete although the key was used within the guard's window")
    kd = ksub.add_parser("deleted", help="list deleted keys (never their material)",
                         description="List the deleted keys still restorable or due.")
    kd.add_argument("--kind", help="only this ring kind (" + ", ".join(PERMISSIONS) + ")")
    kd.add_argument("--ring", help="only this ring (with --kind)")
    kr = ksub.add_parser("restore", help="restore a deleted key as it was",
                         description="Restore a deleted key (refused if its name is taken, "
                         "its ring is full, or what it needs is gone).")
    kr.add_argument("kind", help="ring kind (" + ", ".join(PERMISSIONS) + ")")
    kr.add_argument("ring", help="the ring it was deleted from")
    kr.add_argument("id", help="its id (as `keyfront keys deleted` lists it)")
    kp = ksub.add_parser("purge", help="destroy deleted keys now",
                         description="Purge every deleted key past its window (--all-due), "
                         "or one named by KIND RING ID, due or not.")
    kp.add_argument("--all-due", dest="all_due", action="store_true",
                    help="every deleted key past its window")
    kp.add_argument("target", nargs="*", metavar="KIND RING ID",
                    help="one deleted key")
    k.set_defaults(func=cmd_keys)
    rot = ksub.add_parser("rotation", help="set, show or list scheduled rotation periods",
                          description="Scheduled rotation: storedsafe keys (ID: the key's "
                                      "name) and auth0 key rings (ID: 'signing' or a "
                                      "connection id), rotated by the maintenance run.")
    rsub = rot.add_subparsers(dest="rotation_cmd", required=True, metavar="ACTION")
    rs = rsub.add_parser("set", help="set a key's rotation period (0 turns it off)",
                         description="Set a key's rotation period.")
    rg = rsub.add_parser("get", help="show a key's rotation period and next rotation",
                         description="Show a key's rotation schedule.")
    for parser in (rs, rg):
        parser.add_argument("kind", help="ring kind (storedsafe, auth0)")
        parser.add_argument("ring", help="the ring (vault id, tenant)")
        parser.add_argument("id", help="the key: a name, 'signing' or a connection id")
    rs.add_argument("--period", required=True,
                    help="seconds, or a duration such as 24h or 30d (at least 1h; 0: off)")
    rl = rsub.add_parser("list", help="list every scheduled key",
                         description="List the scheduled keys and their next rotation.")
    rl.add_argument("--kind", default=None, help="only this ring kind")
    rot.set_defaults(func=cmd_rotation)

    h = sub.add_parser("hsm", help="HSM set-up",
                       description="Set up the HSM token named by the settings.")
    hsub = h.add_subparsers(dest="hsm_cmd", required=True, metavar="ACTION")
    hsub.add_parser("init", help="create the KEK and bind key if absent",
                    description="Create the KEK (KEYFRONT_KEK_VERSION) and the bind key on "
                                "the token if they are absent.")
    hr = hsub.add_parser("rewrap", help="re-wrap every stored key blob under a KEK version",
                         description="Re-wrap every stored key blob under KEK version N "
                                     "(KEYFRONT_KEK_VERSION must be N and its KEK exist), "
                                     "in bounded, resumable runs until the pass is done; "
                                     "exit status 1 if blobs were reported and left.")
    hr.add_argument("--to-version", dest="to_version", type=int, required=True,
                    help="the KEK version N")
    hr.add_argument("--check", action="store_true",
                    help="change nothing: count the blobs by KEK and list those not under N "
                         "(exit status 1 while any remain)")
    hr.add_argument("--max-items", dest="max_items", type=int, default=1000,
                    help="items one run reads (%(default)s); runs repeat until done")
    hd = hsub.add_parser("destroy-kek", help="retire, then destroy, an old KEK version",
                         description="First run: retire KEK version M (the token refuses to "
                                     "wrap under it) and print when it may be destroyed. "
                                     "A run from then on: a full check, then the destroy; "
                                     "refused while any stored blob names M, and for the "
                                     "configured version. The wait is "
                                     "KEYFRONT_KEK_DESTROY_AFTER_SECONDS after the retirement "
                                     "and after the roll's finished pass.")
    hd.add_argument("--version", dest="version", type=int, required=True,
                    help="the KEK version M")
    hd.add_argument("--force", action="store_true",
                    help="do not wait (the retirement and the full check still happen)")
    h.set_defaults(func=cmd_hsm)

    av = sub.add_parser("aivault", help="AI-VAULT master-key files",
                        description="Open what the AI-VAULT dialect hands out.")
    avsub = av.add_subparsers(dest="aivault_cmd", required=True, metavar="ACTION")
    om = avsub.add_parser("open-mk", help="open a master-key file (MK.json) or a PSK with "
                          "its password (prompted) and write the key",
                          description="Open a master-key file or a PSK with its password "
                                      "(prompted, never an argument) and write the key.")
    om.add_argument("file", help="MK.json, a createPSK answer, or the bare wrapped text")
    om.add_argument("--out", required=True, help="where to write the key (created 0600, "
                    "never overwritten)")
    om.add_argument("--encoding", choices=("raw", "hex", "base64"), default="raw",
                    help="how the key is written (%(default)s)")
    av.set_defaults(func=cmd_aivault_open)


    st = sub.add_parser("store", help="store set-up",
                        description="Set up the store named by KEYFRONT_STORE.")
    stsub = st.add_subparsers(dest="store_cmd", required=True, metavar="ACTION")
    stsub.add_parser("init", help="create the SQLite file or the DynamoDB table",
                     description="Create the SQLite file, or the DynamoDB table as the "
                                 "deploy template declares it.")
    cf = stsub.add_parser("cfn-template", help="CloudFormation for the DynamoDB table",
                          description="Print the table's CloudFormation fragment.")
    cf.add_argument("--table", help="table name (default: KEYFRONT_DYNAMODB_TABLE)")
    st.set_defaults(func=cmd_store)

    d = sub.add_parser("deploy", help="files for chalice package/deploy (policies, template)",
                       description="Write what chalice package/deploy read beside "
                                   "config.json, built from the code.")
    dsub = d.add_subparsers(dest="deploy_cmd", required=True, metavar="ACTION")
    dp = dsub.add_parser("policies", help="write .chalice/policy-STAGE-{api,admin}.json",
                         description="Write both functions' IAM policies.")
    dt = dsub.add_parser("template", help="the fragment for chalice package --merge-template",
                         description="Print or write the merge template (table, runtime, "
                                     "outputs); warn about example values left in the stage.")
    dt.add_argument("-o", "--output", help="file to write (default: standard output)")
    db = dsub.add_parser("bytecode", help="compile chalicelib for the bundle (faster cold "
                                          "starts)",
                         description="Compile every module under chalicelib to checked-hash "
                                     "bytecode, which chalice package then ships.")
    for parser in (dp, dt, db):
        parser.add_argument("--stage", default="prod",
                            help="stage of .chalice/config.json whose variables apply "
                                 "(%(default)s)")
    d.set_defaults(func=cmd_deploy)

    m = sub.add_parser("maintenance", help="scheduled upkeep",
                       description="What the scheduled `maintenance` Lambda function runs.")
    msub = m.add_subparsers(dest="maintenance_cmd", required=True, metavar="ACTION")
    mr = msub.add_parser("run", help="run every step now (or one, --only STEP)",
                         description="Run the upkeep steps now; prints their summaries.")
    mr.add_argument("--only", default=None, help="run only this step")
    mr.set_defaults(func=cmd_maintenance)

    o = sub.add_parser("openapi", help="write the OpenAPI 3.1 description of every route",
                       description="Print or write what GET /openapi.json serves.")
    o.add_argument("-o", "--output", help="file to write (default: standard output)")
    o.set_defaults(func=cmd_openapi)
    return p


def _version() -> str:
    from chalicelib.openapi import package_version

    return package_version()


def cmd_openapi(args: argparse.Namespace) -> int:
    """Write the OpenAPI description of every route (what GET /openapi.json serves)."""
    from chalicelib import openapi
    from chalicelib.config import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app as app_module  # app.py sits at the repository root, beside chalicelib

    return _emit(json.dumps(openapi.build(app_module.app), indent=2, sort_keys=True),
                 args.output)


def _emit(text: str, output: str | None) -> int:
    """Write a generated document to `output`, or to standard output."""
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def _fail(message: str) -> int:
    """One line on standard error, exit status 1."""
    print(f"keyfront: error: {message}", file=sys.stderr)
    return 1


def _explain(exc: BaseException) -> str:
    """An error's message and, for a component that failed, what it said (its cause)."""
    from chalicelib.errors import KeyfrontError

    message = exc.message if isinstance(exc, KeyfrontError) else str(exc)
    cause = exc.__cause__
    if cause is not None:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        message += f" ({type(cause).__name__}{': ' + detail if detail else ''})"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: errors are one line on stderr and a non-zero exit
    (with --debug, the traceback too); a closed pipe (`keyfront token list | head`) ends it
    quietly."""
    import errno
    import os
    import traceback

    from chalicelib.errors import KeyfrontError

    args = build_parser().parse_args(argv)
    from chalicelib.local_server import apply_stage_environment

    try:
        # Every command sees the same configuration as the server: the stage's variables,
        # unless the environment already sets them.
        apply_stage_environment(getattr(args, "stage", "dev"))
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # Python would report the pipe again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a reader that went away
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line's last line of defence
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, KeyfrontError):
            return _fail(_explain(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES,
                                                      errno.EADDRNOTAVAIL) \
                and getattr(args, "port", None) is not None:
            return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
        if isinstance(exc, OSError):
            where = f": {exc.filename}" if exc.filename else ""
            return _fail(f"{exc.strerror or exc}{where}")
        return _fail(f"unexpected {type(exc).__name__}: {exc} (--debug shows where)")


if __name__ == "__main__":
    sys.exit(main())
