"""`python -m gateway` serves; `python -m gateway keys create|list|revoke` manages API keys."""

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from gateway import scopes
from gateway.app import MIGRATIONS, build
from gateway.keys import ApiKey, format_key, generate_key, hash_secret
from gateway.limits import RateLimit
from gateway.settings import GatewaySettings
from gateway.store import KeyStore
from plumbing.db import Database
from plumbing.errors import NotFound
from plumbing.runtime import run_service


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="The xsell gateway.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC and HTTP until SIGTERM (the default)")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="issue a key; its secret is printed once and never stored")
    create.add_argument("--name", "--client", dest="client", required=True, help='the client, e.g. "crm-prod"')
    create.add_argument(
        "--scopes",
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        help=f"scopes the key grants, comma-separated or repeated; one of {', '.join(sorted(scopes.GRANTABLE_SCOPES))}",
    )
    _limit_arguments(create)
    keys.add_parser("list", help="list keys (ids, clients, scopes, rate limits; never secrets)")
    limit = keys.add_parser("limit", help="set a key's own rate limit, or --default to use the gateway's")
    limit.add_argument("key_id", help="the key's id, the part after xsk_")
    _limit_arguments(limit)
    limit.add_argument("--default", action="store_true", help="drop the key's own limit")
    revoke = keys.add_parser("revoke", help="revoke a key; calls with it fail within seconds")
    revoke.add_argument("key_id", help="the key's id, the part after xsk_")
    return parser


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, help="calls per second on average (default: the gateway's setting)")
    parser.add_argument("--burst", type=int, help="calls at once before the rate applies (default: 2 x rate)")


def _limit_of(args: argparse.Namespace) -> RateLimit | None:
    if args.rate is None:
        if args.burst is not None:
            raise ValueError("--burst needs --rate")
        return None
    return RateLimit(args.rate, args.burst if args.burst is not None else max(1, int(2 * args.rate)))


async def keys_command(args: argparse.Namespace, settings: GatewaySettings) -> int:
    db = Database(settings.resolved_database_url("gateway"))
    try:
        await db.migrate(MIGRATIONS)
        store = KeyStore(db)
        if args.keys_command == "create":
            granted = frozenset(scope.strip() for value in args.scopes for scope in value.split(",") if scope.strip())
            unknown = sorted(granted - scopes.GRANTABLE_SCOPES)
            if unknown or not granted:
                print(
                    f"unknown scopes {unknown}; choose from {', '.join(sorted(scopes.GRANTABLE_SCOPES))}",
                    file=sys.stderr,
                )
                return 2
            try:
                rate_limit = _limit_of(args)
            except ValueError as error:
                print(str(error), file=sys.stderr)
                return 2
            presented = generate_key()
            await store.add(
                ApiKey(
                    presented.key_id,
                    args.client,
                    hash_secret(presented.secret),
                    granted,
                    datetime.now(UTC),
                    rate_limit=rate_limit,
                )
            )
            print(format_key(presented.key_id, presented.secret))
            print(f"key {presented.key_id} for {args.client}; store it now, it is not shown again", file=sys.stderr)
        elif args.keys_command == "list":
            for key in await store.list():
                state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
                limit = str(key.rate_limit) if key.rate_limit else "default rate limit"
                print(
                    f"{key.key_id}\t{key.client_name}\t{','.join(sorted(key.scopes))}\t"
                    f"{key.created_at.isoformat()}\t{state}\t{limit}"
                )
        elif args.keys_command == "limit":
            try:
                rate_limit = None if args.default else _limit_of(args)
                if rate_limit is None and not args.default:
                    raise ValueError("give --rate (and optionally --burst), or --default")
                key = await store.set_rate_limit(args.key_id, rate_limit)
            except (ValueError, NotFound) as error:
                print(str(error), file=sys.stderr)
                return 2 if isinstance(error, ValueError) else 1
            print(f"{key.key_id} ({key.client_name}): {key.rate_limit or 'the default rate limit'}")
        else:
            try:
                key = await store.revoke(args.key_id, datetime.now(UTC))
            except NotFound as error:
                print(str(error), file=sys.stderr)
                return 1
            print(f"revoked {key.key_id} ({key.client_name})")
        return 0
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = GatewaySettings()
    if args.command == "keys":
        return asyncio.run(keys_command(args, settings))
    run_service("gateway", settings, build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
