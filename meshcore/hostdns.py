"""Host DNS: send the `cluster.local` and `mesh` zones to the agent's resolver.

Two ways, chosen by what the host runs:

- **systemd-resolved** (it is running when /run/systemd/resolve exists): split
  DNS with a drop-in, /etc/systemd/resolved.conf.d/mesh.conf, saying
  `DNS=<agent>` and `Domains=~cluster.local ~mesh`. The '~' makes them
  routing-only domains: only those zones go to the agent, everything else
  keeps its resolver. resolved is restarted to read it.
- **plain /etc/resolv.conf**: glibc has no split DNS, so the agent's address
  becomes the first `nameserver` and the original lines follow untouched. The
  agent answers its zones and forwards the rest to the original nameservers
  (`upstream_nameservers` reads them from the saved original, never the
  agent's own address, so it cannot forward to itself); if the agent is down,
  glibc times out and moves on to the next nameserver. glibc reads at most
  three nameservers (MAXNS), so a third original one goes unused while
  installed. resolv.conf cannot name a port: this mode needs the agent on 53.

Restoring exactly: before the first change to a file, its previous state is
saved in a manifest under <state_dir> (bytes, mode, or the symlink target, or
"absent"). `uninstall` puts every file back as saved, byte for byte, and
deletes the manifest. If something else rewrites resolv.conf while installed
(a DHCP client), the next install saves that new version as the one to restore.

Idempotent: installing twice writes nothing the second time and does not
restart resolved. Every path lives under `root`, so tests run on a temp dir.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshcore.errors import ConfigError, StateError

MARKER = "# Managed by meshctl dns install"
DROPIN = "etc/systemd/resolved.conf.d/mesh.conf"
RESOLV_CONF = "etc/resolv.conf"
RESOLVED_RUNTIME = "run/systemd/resolve"
MODES = ("auto", "resolved", "resolv.conf")

Runner = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class HostDnsConfig:
    """Where the agent answers and which zones go to it.

    root: the file system root all paths hang off ("/" on a host, a temp dir in tests).
    address: the agent's DNS address; 127.0.0.77 avoids systemd-resolved's 127.0.0.53.
    port: 53 (resolv.conf cannot express any other).
    zones: routed to the agent; Kubernetes' and the mesh's own.
    mode: "auto" picks resolved when it runs, else resolv.conf.
    state_dir: where the manifest of saved originals lives, relative to root.
    """

    root: Path = Path("/")
    address: str = "127.0.0.77"
    port: int = 53
    zones: tuple[str, ...] = ("cluster.local", "mesh")
    mode: str = "auto"
    state_dir: str = "var/lib/meshagent/hostdns"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ConfigError(f"invalid DNS address {self.address!r}: must be an IPv4 or IPv6 address") from None
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"invalid DNS port {self.port}: a port must be between 1 and 65535")
        if self.mode not in MODES:
            raise ConfigError(f"invalid DNS mode {self.mode!r}: choose one of {', '.join(MODES)}")


@dataclass
class Result:
    """What an install or uninstall did, for the CLI to print."""

    mode: str
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files something else rewrote: left alone
    restarted: bool = False


def _restart_resolved(argv: Sequence[str]) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise StateError(f"'{' '.join(argv)}' failed: {r.stderr.strip() or r.returncode}")


class HostDns:
    def __init__(self, config: HostDnsConfig | None = None, run: Runner = _restart_resolved) -> None:
        self.config = config or HostDnsConfig()
        self._run = run
        self._root = Path(self.config.root)
        self._manifest = self._root / self.config.state_dir / "manifest.json"

    # -- public -------------------------------------------------------------

    def detect_mode(self) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        return "resolved" if (self._root / RESOLVED_RUNTIME).is_dir() else "resolv.conf"

    def installed(self) -> bool:
        return self._manifest.exists()

    def install(self) -> Result:
        mode = self.detect_mode()
        manifest = self._load()
        result = Result(mode)
        if mode == "resolved":
            # A switch of mode (resolved started since) first undoes the other one.
            if RESOLV_CONF in manifest:
                self._restore(RESOLV_CONF, manifest, result)
            if self._ensure(DROPIN, self._dropin().encode(), manifest, result):
                self._run(["systemctl", "restart", "systemd-resolved"])
                result.restarted = True
        else:
            if self.config.port != 53:
                raise ConfigError(f"DNS port {self.config.port}: /etc/resolv.conf can only name servers on port 53; "
                                  "use systemd-resolved or run the agent's DNS on port 53")
            if DROPIN in manifest:
                self._restore(DROPIN, manifest, result)
            self._ensure(RESOLV_CONF, self._resolv_conf(manifest), manifest, result)
        self._save(manifest)
        return result

    def uninstall(self) -> Result:
        manifest = self._load()
        result = Result(self.detect_mode())
        had_dropin = DROPIN in manifest
        for rel in list(manifest):
            self._restore(rel, manifest, result)
        if had_dropin and DROPIN in result.changed and (self._root / RESOLVED_RUNTIME).is_dir():
            self._run(["systemctl", "restart", "systemd-resolved"])
            result.restarted = True
        if self._manifest.exists():
            self._manifest.unlink()
        return result

    # -- content ------------------------------------------------------------

    def _server(self) -> str:
        a = self.config.address
        if self.config.port == 53:
            return a
        return f"[{a}]:{self.config.port}" if ":" in a else f"{a}:{self.config.port}"

    def _dropin(self) -> str:
        zones = " ".join("~" + z for z in self.config.zones)
        return (f"{MARKER}: the mesh agent answers {', '.join(self.config.zones)}.\n"
                f"# `meshctl dns uninstall` removes this file.\n"
                f"[Resolve]\nDNS={self._server()}\nDomains={zones}\n")

    def _resolv_conf(self, manifest: dict) -> bytes:
        path = self._root / RESOLV_CONF
        if self._ours(path):
            saved = manifest.get(RESOLV_CONF)
            if saved is None:
                raise StateError(f"{path} is marked as managed by the mesh but {self._manifest} has no saved "
                                 "original: remove the mesh lines by hand")
            original = base64.b64decode(saved.get("data", ""))
        else:
            original = self._read(path) or b""  # through a symlink: what the resolver reads today
        head = (f"{MARKER}: the mesh agent answers {', '.join(self.config.zones)} and refuses the rest.\n"
                f"# `meshctl dns uninstall` restores the original below.\n"
                f"nameserver {self.config.address}\n").encode()
        return head + original

    # -- files --------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def _ours(path: Path) -> bool:
        if path.is_symlink():
            return False
        data = HostDns._read(path)
        return data is not None and data.startswith(MARKER.encode())

    def _snapshot(self, path: Path) -> dict:
        if path.is_symlink():
            snap = {"kind": "symlink", "target": os.readlink(path)}
            data = self._read(path) if path.exists() else None
            if data is not None:
                snap["data"] = base64.b64encode(data).decode()  # what it pointed at, to build on
            return snap
        if not path.exists():
            return {"kind": "absent"}
        st = path.stat()
        return {"kind": "file", "mode": st.st_mode & 0o7777, "data": base64.b64encode(path.read_bytes()).decode()}

    def _ensure(self, rel: str, content: bytes, manifest: dict, result: Result) -> bool:
        """Make `rel` hold `content` as a plain file; save its previous state first."""
        path = self._root / rel
        if not path.is_symlink() and self._read(path) == content:
            return False
        if rel not in manifest or (not self._ours(path) and (path.exists() or path.is_symlink())):
            # First write, or someone else rewrote the file since: that is what to restore.
            manifest[rel] = self._snapshot(path)
            self._save(manifest)  # saved before the file is touched, so a crash can still be undone
        self._write(path, content, manifest[rel].get("mode", 0o644))
        result.changed.append(rel)
        return True

    def _restore(self, rel: str, manifest: dict, result: Result) -> None:
        saved = manifest.pop(rel)
        path = self._root / rel
        before = self._snapshot(path)
        if before == saved:
            return
        if (path.exists() or path.is_symlink()) and not self._ours(path):
            # Rewritten by something else since install: not ours to undo.
            result.skipped.append(rel)
            return
        if path.is_symlink() or path.exists():
            path.unlink()
        if saved["kind"] == "symlink":
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(saved["target"], path)
        elif saved["kind"] == "file":
            self._write(path, base64.b64decode(saved["data"]), saved["mode"])
        result.changed.append(rel)

    @staticmethod
    def _write(path: Path, content: bytes, mode: int) -> None:
        # Write then rename, so a reader never sees half a resolv.conf; the
        # rename also replaces a symlink instead of writing through it.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load(self) -> dict:
        try:
            data = json.loads(self._manifest.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StateError(f"{self._manifest} is not valid JSON ({e}): cannot know what to restore") from None
        if not isinstance(data, dict):
            raise StateError(f"{self._manifest} must hold a JSON object of saved files")
        return data

    def _save(self, manifest: dict) -> None:
        self._manifest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write(self._manifest, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def upstream_nameservers(config: HostDnsConfig | None = None) -> list[str]:
    """The host's nameservers as they were before `install`, without the agent's own address.

    For the agent's forwarder: after install, /etc/resolv.conf names the agent
    first, and forwarding there would loop.
    """
    config = config or HostDnsConfig()
    dns = HostDns(config)
    saved = dns._load().get(RESOLV_CONF)
    if saved is not None and "data" in saved:
        text = base64.b64decode(saved["data"]).decode(errors="replace")
    else:
        text = (HostDns._read(Path(config.root) / RESOLV_CONF) or b"").decode(errors="replace")
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != config.address and parts[1] not in servers:
            servers.append(parts[1])
    return servers
