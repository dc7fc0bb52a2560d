"""The channels bench's floor: the same provider requests and e-mails sent with the bare clients, no service.

    python -m bench.channels_floor <job.json>     # prints one JSON line: sent, refused, seconds, cpu_seconds

`bench.channels` writes the job (the HTTP requests the service's adapters build for the same
DispatchRequested, or the same composed e-mails) and starts this in a process of its own, so the
CPU it reports is the client's alone, as the service's is the service's: no database, no NATS, no
spans or metrics, just aiohttp (one session, the service's pool size and per-provider concurrency)
or aiosmtplib (the service's number of kept-open sessions, one mail transaction after another).
"""

import asyncio
import base64
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib


def encode_http(provider: str, method: str, url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """One request of an HTTP job, as `bench.channels` writes it."""
    return {
        "provider": provider,
        "method": method,
        "url": url,
        "body": base64.b64encode(body).decode(),
        "headers": headers,
    }


def encode_mail(recipient: str, payload: bytes) -> dict[str, Any]:
    """One e-mail of an SMTP job."""
    return {"recipient": recipient, "payload": base64.b64encode(payload).decode()}


async def send_http(job: dict[str, Any]) -> dict[str, Any]:
    """Every request, `concurrency` at a time and at most `provider_concurrency` per provider, as the service."""
    requests = [
        (r["provider"], r["method"], r["url"], base64.b64decode(r["body"]), r["headers"]) for r in job["requests"]
    ]
    slots = {provider: asyncio.Semaphore(job["provider_concurrency"]) for provider, *_ in requests}
    pending: Iterator[tuple[str, str, str, bytes, dict[str, str]]] = iter(requests)
    refused = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        for provider, method, url, body, headers in pending:
            async with (
                slots[provider],
                session.request(method, url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                await response.read()
                refused += not 200 <= response.status < 300

    cpu, started = time.process_time(), time.perf_counter()
    # The service's session settings: its pool size, no cookie jar, nothing from the environment.
    connector = aiohttp.TCPConnector(limit=job["concurrency"])
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(job["concurrency"])))
    return _figures(len(requests), refused, started, cpu)


async def send_smtp(job: dict[str, Any]) -> dict[str, Any]:
    """Every e-mail over `sessions` kept-open SMTP sessions, one mail transaction after another on each."""
    mails = [(m["recipient"], base64.b64decode(m["payload"])) for m in job["mails"]]
    pending = iter(mails)
    refused = 0

    async def session() -> None:
        nonlocal refused
        client = aiosmtplib.SMTP(hostname=job["host"], port=job["port"], start_tls=False)
        await client.connect()
        try:
            for recipient, payload in pending:
                errors, _ = await client.sendmail(job["sender"], [recipient], payload)
                refused += len(errors)
        finally:
            await client.quit()

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(session() for _ in range(job["sessions"])))
    return _figures(len(mails), refused, started, cpu)


def _figures(sent: int, refused: int, started: float, cpu: float) -> dict[str, Any]:
    return {
        "sent": sent,
        "refused": refused,
        "seconds": time.perf_counter() - started,
        # All threads of this process: what the bare client cost.
        "cpu_seconds": time.process_time() - cpu,
    }


def main(argv: Sequence[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    send = send_http if job["kind"] == "http" else send_smtp
    print(json.dumps(asyncio.run(send(job))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
