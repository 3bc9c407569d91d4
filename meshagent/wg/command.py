"""Running the system tools (ip, nft, sysctl) for one network namespace.

A `Runner` prefixes commands so they act inside `netns` (None: the agent's own
namespace). Failures raise `Unavailable` with the command and its stderr: they
are the host refusing, not the caller's mistake. Everything is async so the
agent's event loop never blocks on a child process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from meshcore.errors import Unavailable


@dataclass(frozen=True)
class Runner:
    netns: str | None = None

    def argv(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return list(argv)
        if argv[0] == "ip":
            return ["ip", "-n", self.netns, *argv[1:]]
        return ["ip", "netns", "exec", self.netns, *argv]

    async def run(self, argv: list[str], stdin: str | None = None, check: bool = True) -> tuple[int, str, str]:
        full = self.argv(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *full, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError:
            raise Unavailable(f"cannot run '{full[0]}': not installed (install iproute2 and nftables)") from None
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        rc = proc.returncode or 0
        if check and rc != 0:
            raise Unavailable(f"'{' '.join(full)[:200]}' failed ({rc}): {err.decode(errors='replace').strip()[:500]}")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    async def json(self, argv: list[str]) -> Any:
        _, out, _ = await self.run(argv)
        return json.loads(out) if out.strip() else []
