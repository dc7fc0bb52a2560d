"""The xsell CLI run as an operator runs it: a subprocess pointed at a test gateway."""

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


async def xsell(target: str, key: str, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `xsell <args>` with XSELL_GATEWAY and XSELL_API_KEY set, run in the repo."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        cwd=REPO,
        env={**os.environ, "XSELL_GATEWAY": target, "XSELL_API_KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
