"""The dead-letter stream for operators: list what failed and why, and replay messages once the cause is fixed.

    python -m services.dead_letters list   [--durable campaigns-delivery] [--limit 50] [--json]
    python -m services.dead_letters replay --durable campaigns-delivery [--seq 12 --seq 15 | --all]

As the NATS user in $XSELL_NATS_USER / $XSELL_NATS_PASSWORD where the server has users (`operator`: `make run` writes
var/nats-operator.env).

A replay republishes the stored original (the letter names its stream and sequence), never the letter's own copy,
and only from the stream and subject its durable consumes. It goes back under a new Nats-Msg-Id (the stream would
drop the old one as a duplicate inside its window) and carries the original id in `Xsell-Replay-Of`. Consumers take
that as the message's identity for their inbox (plumbing.bus.Delivery), so durables that handled the message the
first time skip it, and only the durable that dead-lettered it applies it, once. The dead letter is
deleted after its republish is acknowledged, so `list` shows what is still waiting.
"""

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType

from nats.js.errors import NotFoundError

from plumbing.bus import (
    CAMPAIGN_ID_HEADER,
    DLQ_MESSAGE_ID_HEADER,
    DLQ_PAYLOAD_OMITTED_HEADER,
    DLQ_REASON_HEADER,
    DLQ_SEQUENCE_HEADER,
    DLQ_STREAM_HEADER,
    DLQ_SUBJECT_HEADER,
    MSG_ID_HEADER,
    REPLAY_OF_HEADER,
    Bus,
    NatsRefused,
)
from plumbing.settings import ToolSettings
from services.streams import CONSUMERS, DEAD_LETTER_PREFIX
from services.streams import DEAD_LETTER_STREAM as DEAD_LETTER_SPEC

DEAD_LETTER_STREAM = DEAD_LETTER_SPEC.name


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    durable: str
    original_subject: str
    original_message_id: str
    reason: str
    campaign_id: str
    size_bytes: int


def _original_id(headers: dict[str, str]) -> str:
    """The id the message had before it was dead-lettered (the DLQ copy's own id is `dlq:<durable>:<id>`); a
    replay that failed again keeps the first id."""
    if headers.get(REPLAY_OF_HEADER):
        return headers[REPLAY_OF_HEADER]
    if headers.get(DLQ_MESSAGE_ID_HEADER):
        return headers[DLQ_MESSAGE_ID_HEADER]
    own = headers.get(MSG_ID_HEADER, "")
    return own.split(":", 2)[2] if own.startswith("dlq:") and own.count(":") >= 2 else own


async def dead_letters(bus: Bus, durable: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """The oldest `limit` dead letters still in the stream, for one durable or all."""
    subject = f"{DEAD_LETTER_PREFIX}.{durable}" if durable else f"{DEAD_LETTER_PREFIX}.>"
    found: list[DeadLetter] = []
    seq = 1
    while len(found) < limit:
        try:
            message = await bus.js.get_msg(DEAD_LETTER_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        headers = dict(message.headers or {})
        found.append(
            DeadLetter(
                seq=message.seq or seq,
                durable=(message.subject or "").removeprefix(f"{DEAD_LETTER_PREFIX}."),
                original_subject=headers.get(DLQ_SUBJECT_HEADER, ""),
                original_message_id=_original_id(headers),
                reason=headers.get(DLQ_REASON_HEADER, ""),
                campaign_id=headers.get(CAMPAIGN_ID_HEADER, ""),
                size_bytes=_size(headers, message.data or b""),
            )
        )
        seq = (message.seq or seq) + 1
    return found


def _size(headers: Mapping[str, str], payload: bytes) -> int:
    """The dead-lettered message's size: a large one's letter goes without its payload and names its size."""
    omitted = headers.get(DLQ_PAYLOAD_OMITTED_HEADER, "")
    return int(omitted) if omitted.isdigit() else len(payload)


CONSUMED = MappingProxyType({consumer.durable: (consumer.stream, consumer.filter_subject) for consumer in CONSUMERS})
"""The stream and subject each durable consumes: a letter is replayed only from there."""


async def replay(
    bus: Bus, durable: str, seqs: Sequence[int] | None = None, consumed: Mapping[str, tuple[str, str]] = CONSUMED
) -> list[int]:
    """Republishes the originals of this durable's dead letters (the given sequence numbers, or all) to their
    subjects and deletes each letter once its stream has the copy; returns the sequence numbers replayed.

    Whoever may write the dead-letter subject chose a letter's headers and payload, so neither is trusted: the
    letter names where its original is stored (`Xsell-Original-Stream` / `-Sequence`), and what is republished is
    that stored message, and only when it is on the stream and subject the durable consumes (`consumed`). A letter
    whose original the stream no longer keeps (streams keep 14 days, dead letters 30) is not replayed."""
    if durable not in consumed:
        raise ValueError(f"{durable} is not a durable of xsell's ({', '.join(sorted(consumed))})")
    stream, subject = consumed[durable]
    letters = await dead_letters(bus, durable, limit=1_000_000)
    wanted = set(seqs) if seqs is not None else None
    replayed: list[int] = []
    for letter in letters:
        if wanted is not None and letter.seq not in wanted:
            continue
        original = await _original(bus, letter, stream, subject)
        _, payload, stored_headers = original
        headers = dict(stored_headers)
        headers[REPLAY_OF_HEADER] = stored_headers.get(REPLAY_OF_HEADER) or stored_headers.get(MSG_ID_HEADER, "")
        # Unguessable, so that nothing published beforehand under the same id makes the stream drop the replay.
        headers[MSG_ID_HEADER] = f"replay:{DEAD_LETTER_STREAM}:{letter.seq}:{uuid.uuid4().hex}"
        ack = await bus.js.publish(subject, payload, headers=headers)
        if ack.duplicate:
            raise ValueError(f"dead letter {letter.seq}: its replay was dropped as a duplicate; the letter is kept")
        await bus.js.delete_msg(DEAD_LETTER_STREAM, letter.seq)
        replayed.append(letter.seq)
    missing = sorted(wanted - set(replayed)) if wanted is not None else []
    if missing:
        raise ValueError(f"no dead letter of {durable} with seq {missing}; `list --durable {durable}` shows them")
    return replayed


async def _original(bus: Bus, letter: DeadLetter, stream: str, subject: str) -> tuple[str, bytes, dict[str, str]]:
    """The stored message a letter copies, checked to be one the durable consumes."""
    message = await bus.js.get_msg(DEAD_LETTER_STREAM, seq=letter.seq)
    headers = dict(message.headers or {})
    try:
        where, sequence = headers[DLQ_STREAM_HEADER], int(headers[DLQ_SEQUENCE_HEADER])
    except (KeyError, ValueError):
        raise ValueError(
            f"dead letter {letter.seq} does not name where its original is stored ({DLQ_STREAM_HEADER}, "
            f"{DLQ_SEQUENCE_HEADER}); not replayed (delete it by hand once you have applied it another way)"
        ) from None
    if where != stream:
        raise ValueError(
            f"dead letter {letter.seq} names stream {where!r}, but {letter.durable} consumes {stream!r}; not replayed"
        )
    original = await bus.stored_message(where, sequence)
    if original is None:
        raise ValueError(
            f"dead letter {letter.seq}: its original ({where} #{sequence}) is no longer in the stream; not replayed"
        )
    if original[0] != subject:
        raise ValueError(
            f"dead letter {letter.seq} names {where} #{sequence}, a {original[0]!r} message, but {letter.durable} "
            f"consumes {subject!r}; not replayed"
        )
    return original


def _table(letters: list[DeadLetter]) -> str:
    lines = [f"{'seq':>6}  {'durable':<24} {'campaign id':<22} reason"]
    lines += [f"{d.seq:>6}  {d.durable:<24} {d.campaign_id or '-':<22} {d.reason}" for d in letters]
    return "\n".join(lines)


async def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dead_letters", description=__doc__.splitlines()[0])
    settings = ToolSettings()
    parser.add_argument("--nats-url", default=settings.nats_url, help="default $XSELL_NATS_URL or the local server")
    parser.add_argument(
        "--nats-user",
        default=settings.nats_user,
        help="NATS user (default $XSELL_NATS_USER; `operator` may replay to any subject); the password is read "
        "from $XSELL_NATS_PASSWORD, never from the command line",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="dead letters still waiting, oldest first")
    listing.add_argument("--durable")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replaying = commands.add_parser("replay", help="republish a durable's dead letters to their original subjects")
    replaying.add_argument("--durable", required=True)
    which = replaying.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, action="append", help="a dead letter's seq (repeatable)")
    which.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    try:
        bus = await Bus.of_service(
            settings.model_copy(update={"nats_url": args.nats_url, "nats_user": args.nats_user}), "dead-letters"
        )
    except NatsRefused as error:
        print(
            f"error: {error}; this tool reads XSELL_NATS_USER, XSELL_NATS_PASSWORD and XSELL_NATS_TLS_CA (user "
            "operator; `make run` writes them, with XSELL_NATS_URL, to var/nats-operator.env)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "list":
            letters = await dead_letters(bus, args.durable, args.limit)
            print("\n".join(json.dumps(asdict(d)) for d in letters) if args.json else _table(letters))
            return 0
        try:
            replayed = await replay(bus, args.durable, None if args.all else args.seq)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"replayed {len(replayed)} dead letter(s) of {args.durable}: {replayed}")
        return 0
    finally:
        await bus.drain()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
