"""meshctl commands that fit the mesh into the host: systemd, host DNS, K3s.

- `meshctl install agent|coordinator` copies the unit from systemd/ into
  /etc/systemd/system with ExecStart at the daemon's real executable (the
  one installed next to this meshctl, e.g. in its virtualenv, else the one
  on PATH, symlinks resolved; or --bin-dir), checked to exist, to be
  executable, to have an interpreter that exists and to lie outside what
  the unit's ProtectHome= hides; writes the daemon's environment file
  (/etc/mesh/<daemon>.env, mode 0600) and, for an agent that has not joined,
  the join token in /etc/mesh/join-token (0600), which the agent deletes
  once it has joined (`--remove-token-file`); checks the
  unit with `systemd-analyze verify` where that exists; then runs
  `systemctl daemon-reload`, `enable` and `restart` (`start` when nothing
  changed, so a re-run does not bounce a running daemon), unless --no-start.
  On a Type=notify unit `systemctl start` returns once the daemon sent
  READY=1 (bounded by --timeout); a failed start prints the journal's last
  lines. `--dry-run` prints the unit and the environment file (the token's
  secret masked) and changes nothing. Options for the daemon go in the environment file as
  MESHAGENT_OPTS / MESHD_OPTS, which the unit's ExecStart expands (split on whitespace: values are checked to hold none).
- `meshctl install store-certs` makes, on a replica at first boot, its etcd
  member certificate and meshd's etcd client certificate from the cluster's
  store CA (meshcore.pki).
- `meshctl dns install|uninstall` drives meshcore.hostdns.
- `meshctl k3s join|leave` turns `--k3s` on or off in the agent's options and
  restarts the agent, which fetches the join facts from meshd over mTLS and
  starts the K3s agent; no kubeconfig is involved.

Every command takes --root (default "/") so tests run against a temp dir;
systemctl is whatever `systemctl` is first on PATH.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from meshcore.defaults import DNS_ADDRESS, DNS_PORT, MESHD_PORT
from meshcore.errors import InvalidArgument, MeshError
from meshcore.jointoken import ARGV_REFUSED, check_token, read_token_file
from meshcore.names import check_name, parse_hostport, parse_labels
from meshctl.output import OUTPUT_OPTION, Output, emit, fail

UNIT_SOURCE = Path(__file__).resolve().parent.parent / "systemd"
UNIT_DIR = "etc/systemd/system"
ENV_DIR = "etc/mesh"
#: the join token for the agent's first start, beside the environment file; deleted by the agent once joined
TOKEN_FILE = "join-token"
DEFAULT_BIN = "/usr/local/bin"
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

install_app = typer.Typer(help="Install meshd or meshagent as a systemd service.", no_args_is_help=True)
dns_app = typer.Typer(help="Send the cluster.local and mesh zones from the host resolver to the agent.",
                      no_args_is_help=True)
k3s_app = typer.Typer(help="Join this VM to the mesh's K3s cluster as an agent.", no_args_is_help=True)

ROOT_OPTION = typer.Option(Path("/"), "--root", help="file system root to install into (for tests and images)")
NO_START_OPTION = typer.Option(False, "--no-start", help="write files only; do not run systemctl")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="print the unit and the environment file; change nothing")
TIMEOUT_OPTION = typer.Option(150.0, "--timeout", min=1, help="seconds to wait for the daemon to report ready")
BIN_DIR_HELP = "directory of the daemon's executable (default: next to this meshctl, else on PATH)"
#: hidden from the units by ProtectHome=yes
PROTECTED = ("/home", "/root", "/run/user")


# -- validation --------------------------------------------------------------------

def check_host_port(value: str, what: str) -> str:
    """`value` if it is HOST:PORT, where HOST is a host name, an IPv4 address or a
    bracketed IPv6 address; stricter than parse_hostport, since the value ends up
    in a systemd environment file."""
    rule = (f"invalid {what} {value!r}: must be HOST:PORT with a port between 1 and 65535, "
            f"e.g. 10.4.0.4:{MESHD_PORT} or [fd00::1]:{MESHD_PORT}")
    try:
        host, _ = parse_hostport(value, what)
    except InvalidArgument:
        raise InvalidArgument(rule) from None
    if value.startswith("["):
        if value.rpartition(":")[0] != f"[{host}]":
            raise InvalidArgument(rule)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidArgument(rule) from None
    elif not _HOST.match(host):
        raise InvalidArgument(rule)
    return value


def check_daemon_args(args: list[str]) -> list[str]:
    # ExecStart splits the options on whitespace and knows no quoting.
    for arg in args:
        if not re.fullmatch(r"[A-Za-z0-9_.:/@+=,-]+", arg):
            raise InvalidArgument(f"invalid --daemon-arg {arg!r}: letters, digits and _.:/@+=,- only")
    return list(args)


# -- environment files (systemd EnvironmentFile= syntax) -----------------------

def read_env(path: Path) -> list[tuple[str, str | None]]:
    """Lines as (key, value), or (raw line, None) for comments and blanks."""
    if not path.exists():
        return []
    out: list[tuple[str, str | None]] = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and key.strip().isidentifier():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out.append((key.strip(), value))
        else:
            out.append((line, None))
    return out


def render_env(lines: list[tuple[str, str | None]]) -> str:
    text = []
    for key, value in lines:
        if value is None:
            text.append(key)
        elif re.fullmatch(r"[A-Za-z0-9_.:/@+=,-]*", value):
            text.append(f"{key}={value}")
        else:
            text.append(f'{key}="{value}"')  # checked values never hold '"', '\\' or '$'
    return "\n".join(text) + "\n"


def set_env(lines: list[tuple[str, str | None]], updates: dict[str, str | None]) -> list[tuple[str, str | None]]:
    """Set (or, with None, drop) keys in place; new keys go at the end."""
    out, done = [], set()
    for key, value in lines:
        if value is not None and key in updates:
            done.add(key)
            if updates[key] is not None:
                out.append((key, updates[key]))
        else:
            out.append((key, value))
    out += [(k, v) for k, v in updates.items() if k not in done and v is not None]
    return out


# -- writing and systemctl -------------------------------------------------------

def write_file(path: Path, content: str, mode: int) -> bool:
    """Write if different; True if written. Permissions are set before the content lands."""
    if path.exists() and path.read_text() == content and (path.stat().st_mode & 0o7777) == mode:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def systemctl(*args: str, timeout: float = 120) -> None:
    argv = ["systemctl", *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise MeshError("systemctl not found: this host does not run systemd; use --no-start and start the daemon "
                        "yourself") from None
    except subprocess.TimeoutExpired:
        raise MeshError(f"'{' '.join(argv)}' did not return within {timeout:.0f} s") from None
    if r.returncode != 0:
        raise MeshError(f"'{' '.join(argv)}' failed: {r.stderr.strip() or f'exit code {r.returncode}'}")


def journal_tail(unit: str, lines: int = 20) -> str:
    """The unit's last journal lines, or "" where there is no journal."""
    try:
        r = subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
                           capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = r.stdout.strip()
    return "" if r.returncode != 0 or out.startswith("-- No entries --") else out


def find_binary(daemon: str, bin_dir: str | None) -> str:
    """The daemon's executable, symlinks resolved, checked as the unit will run it."""
    if bin_dir is not None:
        if not bin_dir.startswith("/"):
            raise InvalidArgument(f"invalid --bin-dir {bin_dir!r}: must be an absolute path")
        candidates = [Path(bin_dir) / daemon]
    else:
        # the one installed with this meshctl (a virtualenv's bin), else PATH
        on_path = shutil.which(daemon)
        candidates = [Path(sys.prefix) / "bin" / daemon] + ([Path(on_path)] if on_path else [])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise MeshError(f"{daemon} executable not found (looked at {', '.join(str(p) for p in candidates)}): "
                        f"install the package (pip install 'mesh[...]') or pass --bin-dir")
    real = os.path.realpath(found)
    if not os.access(real, os.X_OK):
        raise MeshError(f"{real} is not executable: chmod +x it or pass --bin-dir")
    if any(real == d or real.startswith(d + "/") for d in PROTECTED):
        raise MeshError(f"{real} is under {next(d for d in PROTECTED if real.startswith(d))}, which the unit's "
                        f"ProtectHome=yes hides from {daemon}: install the package outside home directories "
                        f"(e.g. python3 -m venv /opt/mesh && /opt/mesh/bin/pip install ...)")
    with open(real, "rb") as f:
        first = f.readline(512)
    if first.startswith(b"#!"):
        interpreter = first[2:].decode(errors="replace").split()[0] if first[2:].split() else ""
        if not (interpreter and os.access(interpreter, os.X_OK)):
            raise MeshError(f"{real} runs {interpreter or 'no interpreter'}, which does not exist: "
                            f"reinstall the package")
    return real


def verify_unit(path: Path, daemon: str) -> None:
    """`systemd-analyze verify` on the written unit, where systemd-analyze exists; complaints
    about other units on the host are not ours to report."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    try:
        r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return
    ours = [line for line in (r.stdout + r.stderr).splitlines() if f"{daemon}.service" in line or str(path) in line]
    if r.returncode != 0 and ours:
        raise MeshError(f"systemd-analyze verify {path}: " + "; ".join(ours))


def unit_text(daemon: str, bin_dir: str | None) -> str:
    # A source checkout (editable install) has them in systemd/; an installed
    # wheel carries them as data files under <prefix>/share/mesh/systemd.
    candidates = [UNIT_SOURCE / f"{daemon}.service", Path(sys.prefix) / "share/mesh/systemd" / f"{daemon}.service"]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        raise MeshError(f"unit file {daemon}.service is missing from this installation "
                        f"(looked in {', '.join(str(p.parent) for p in candidates)})")
    text = source.read_text()
    return text.replace(f"{DEFAULT_BIN}/{daemon} ", f"{find_binary(daemon, bin_dir)} ")


def masked(lines: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The environment file as --dry-run shows it: a join token's secret is not printed."""
    out = []
    for key, value in lines:
        if value is not None and key == "MESH_JOIN_TOKEN" and value.count(".") == 2:
            tid, _, pin = value.split(".")
            value = f"{tid}.<secret>.{pin}"
        out.append((key, value))
    return out


def install(daemon: str, root: Path, updates: dict[str, str | None], bin_dir: str | None, no_start: bool,
            dry_run: bool = False, timeout: float = 150.0, secret_files: dict[Path, str] | None = None) -> list[dict]:
    """Write the unit, the environment file and `secret_files` (0600, never printed), then start."""
    unit_path = root / UNIT_DIR / f"{daemon}.service"
    env_path = root / ENV_DIR / f"{daemon}.env"
    unit = unit_text(daemon, bin_dir)
    header = [(f"# {daemon} options, read by {daemon}.service (written by meshctl install).", None)]
    env_lines = set_env(read_env(env_path) or header, updates)
    if dry_run:
        print(f"# {unit_path}\n{unit}\n# {env_path} (mode 0600)\n{render_env(masked(env_lines))}", end="")
        raise typer.Exit(0)
    rows = []
    secrets_changed = False
    for path, content in (secret_files or {}).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        wrote = write_file(path, content, 0o600)
        secrets_changed = secrets_changed or wrote
        rows.append({"what": str(path), "result": "written" if wrote else "unchanged"})
    changed = write_file(unit_path, unit, 0o644)
    rows.append({"what": str(unit_path), "result": "written" if changed else "unchanged"})
    env_changed = write_file(env_path, render_env(env_lines), 0o600)
    rows.append({"what": str(env_path), "result": "written" if env_changed else "unchanged"})
    verify_unit(unit_path, daemon)
    rows.append({"what": f"systemd-analyze verify {unit_path.name}",
                 "result": "ok" if shutil.which("systemd-analyze") else "skipped (no systemd-analyze)"})
    changed = changed or env_changed or secrets_changed
    if not no_start:
        # Restart only when something changed, so a re-run does not bounce a running daemon.
        # On a Type=notify unit, start returns once the daemon said READY=1.
        steps = [("daemon-reload",), ("enable", f"{daemon}.service"),
                 ("restart" if changed else "start", f"{daemon}.service")]
        for step in steps:
            try:
                systemctl(*step, timeout=timeout if len(step) > 1 and step[0] in ("start", "restart") else 120)
            except MeshError as e:
                if step[0] in ("start", "restart"):
                    tail = journal_tail(f"{daemon}.service")
                    raise MeshError(f"{daemon} did not start: {e}; see `journalctl -u {daemon}`"
                                    + (f"; its last lines:\n{tail}" if tail else "")) from None
                raise MeshError(f"{e}; the files are written: run 'systemctl daemon-reload && "
                                f"systemctl restart {daemon}' once systemd is reachable") from None
            rows.append({"what": "systemctl " + " ".join(step),
                         "result": "ok (ready)" if step[0] in ("start", "restart") else "ok"})
    return rows


def _edge(fn):
    """Run a command body; typed errors and OS errors become one clear line."""
    try:
        return fn()
    except MeshError as e:
        fail(str(e))
    except PermissionError as e:
        fail(f"cannot write {e.filename}: permission denied (run as root)")
    except OSError as e:
        fail(f"{e.filename or 'file system'}: {e.strerror}")


# -- meshctl install ---------------------------------------------------------------

@install_app.command("agent")
def install_agent(
    coordinator: str = typer.Option(..., "--coordinator", help="meshd address, HOST:PORT"),
    token_file: Path = typer.Option(None, "--token-file",
                                    help="file holding the join token (first start only); or set MESH_JOIN_TOKEN"),
    token_arg: str = typer.Option(None, "--token", hidden=True),  # refused: see jointoken.ARGV_REFUSED
    name: str = typer.Option(None, "--name", help="node name (agent default: the host name)"),
    label: list[str] = typer.Option([], "--label", help="node label key=value (repeatable)"),
    k3s: bool = typer.Option(False, "--k3s", help="also join the K3s cluster as an agent"),
    dns: str = typer.Option(None, "--dns", help="address:port the agent's DNS answers on (agent default if unset)"),
    daemon_arg: list[str] = typer.Option([], "--daemon-arg", help="one more meshagent option, repeatable"),
    bin_dir: str = typer.Option(None, "--bin-dir", help=BIN_DIR_HELP),
    root: Path = ROOT_OPTION,
    no_start: bool = NO_START_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    timeout: float = TIMEOUT_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Install meshagent as a systemd service, start it and wait until it is ready."""
    def body():
        if token_arg is not None:
            raise InvalidArgument(f"--token is refused: {ARGV_REFUSED}")
        check_host_port(coordinator, "coordinator")
        state = root / "var/lib/meshagent"
        joined = state.is_dir() and any(state.iterdir())
        from_env = os.environ.get("MESH_JOIN_TOKEN") or None  # an empty MESH_JOIN_TOKEN means none
        if token_file is not None and from_env is not None:
            raise InvalidArgument("a join token from both --token-file and MESH_JOIN_TOKEN: give one")
        token = read_token_file(str(token_file)) if token_file is not None else from_env
        if token is None and not joined:
            raise InvalidArgument("a join token is needed for the first start: pass --token-file PATH "
                                  "or set MESH_JOIN_TOKEN")
        opts = ["--coordinator", coordinator]
        if name:
            opts += ["--name", check_name(name, "node name")]
        parse_labels(label)  # node labels become Kubernetes node labels
        for item in label:
            opts += ["--label", item]
        if dns:
            opts += ["--dns", check_host_port(dns, "DNS address")]
        if k3s:
            opts.append("--k3s")
        opts += check_daemon_args(daemon_arg)
        # The token goes to its own file, which the agent deletes once it has joined: it is never
        # in the environment file (MESH_JOIN_TOKEN from an older install is dropped).
        opts += ["--token-file", f"/{ENV_DIR}/{TOKEN_FILE}", "--remove-token-file"]
        updates = {"MESHAGENT_OPTS": " ".join(opts), "MESH_JOIN_TOKEN": None}
        files = {root / ENV_DIR / TOKEN_FILE: check_token(token) + "\n"} if token is not None and not joined else {}
        return install("meshagent", root, updates, bin_dir, no_start, dry_run, timeout, files)
    emit(_edge(body), ["what", "result"], output, title="meshagent")


@install_app.command("coordinator")
def install_coordinator(
    listen: str = typer.Option(f"0.0.0.0:{MESHD_PORT}", "--listen", help="gRPC address agents and meshctl reach"),
    daemon_arg: list[str] = typer.Option([], "--daemon-arg", help="one more meshd option, repeatable"),
    bin_dir: str = typer.Option(None, "--bin-dir", help=BIN_DIR_HELP),
    root: Path = ROOT_OPTION,
    no_start: bool = NO_START_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    timeout: float = TIMEOUT_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Install meshd as a systemd service, start it and wait until it is ready."""
    def body():
        check_host_port(listen, "listen address")
        opts = " ".join(["--listen", listen, *check_daemon_args(daemon_arg)])
        return install("meshd", root, {"MESHD_OPTS": opts}, bin_dir, no_start, dry_run, timeout)
    emit(_edge(body), ["what", "result"], output, title="meshd")


def store_certs(root: Path, ca_key: Path, ca_cert: Path, name: str, addresses: list[str], etcd_dir: str,
                meshd_dir: str) -> list[dict]:
    """An etcd member's certificate (its client and peer listeners) and meshd's client certificate, both
    from the cluster's store CA; the member's files go to the `etcd` user when it exists."""
    import pwd

    from meshcore import pki

    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            if not _HOST.match(a):
                raise InvalidArgument(f"invalid --address {a!r}: an IP address or a host name") from None

    def read(flag: str, path: Path) -> bytes:
        try:
            return (root / str(path).lstrip("/")).read_bytes()
        except OSError as e:
            raise InvalidArgument(f"{flag} {path}: cannot read it: {e.strerror or e}") from None

    ca = pki.CertificateAuthority(pki.load_key(read("--ca-key", ca_key), f"--ca-key {ca_key}"),
                                  pki.load_cert(read("--ca-cert", ca_cert), f"--ca-cert {ca_cert}"))
    if ca.cert.public_key().public_numbers() != ca.key.public_key().public_numbers():
        raise InvalidArgument(f"--ca-cert {ca_cert} does not match --ca-key {ca_key}")
    try:
        owner = pwd.getpwnam("etcd")
    except KeyError:
        owner = None
    rows = []
    member_key, client_key = pki.new_key(), pki.new_key()
    files = {
        (etcd_dir, "ca.crt"): (ca.pem, 0o644),
        (etcd_dir, "member.crt"): (ca.store_cert(member_key, name, member=True,
                                                 addresses=addresses), 0o644),
        (etcd_dir, "member.key"): (pki.key_pem(member_key), 0o600),
        (meshd_dir, "ca.crt"): (ca.pem, 0o644),
        (meshd_dir, "client.crt"): (ca.store_cert(client_key, f"meshd {name}", member=False), 0o644),
        (meshd_dir, "client.key"): (pki.key_pem(client_key), 0o600),
    }
    for (directory, file), (data, mode) in files.items():
        path = root / directory.lstrip("/") / file
        write_file(path, data.decode(), mode)
        who = "root"
        if directory == etcd_dir and owner is not None:  # etcd runs as its own user
            for p in (path.parent, path):
                os.chown(p, owner.pw_uid, owner.pw_gid)
            who = "etcd"
        rows.append({"what": f"/{directory.strip('/')}/{file}", "result": f"written ({who}, {mode:o})"})
    return rows


@install_app.command("store-certs")
def install_store_certs(
    ca_key: Path = typer.Option(..., "--ca-key", help="the store CA's key (the cluster keeps it in SSM)"),
    ca_cert: Path = typer.Option(..., "--ca-cert", help="the store CA's certificate"),
    name: str = typer.Option(..., "--name", help="the etcd member's name"),
    address: list[str] = typer.Option(..., "--address", help="an address etcd serves on (SAN; repeatable)"),
    etcd_dir: str = typer.Option("/var/lib/etcd/tls", "--etcd-dir", help="where etcd's files go"),
    meshd_dir: str = typer.Option("/var/lib/meshd/etcd", "--meshd-dir", help="where meshd's files go"),
    root: Path = ROOT_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Make an etcd member's certificate and meshd's etcd client certificate from the store CA.

    Paths are under --root, like the other install commands."""
    emit(_edge(lambda: store_certs(root, ca_key, ca_cert, name, address, etcd_dir, meshd_dir)),
         ["what", "result"], output, title="store certificates")


# -- meshctl dns -------------------------------------------------------------------

def _hostdns(root: Path, address: str = DNS_ADDRESS, port: int = DNS_PORT, mode: str = "auto"):
    from meshcore.hostdns import HostDns, HostDnsConfig

    def restart(argv) -> None:
        systemctl(*argv[1:])

    return HostDns(HostDnsConfig(root=root, address=address, port=port, mode=mode), run=restart)


def _dns_rows(result) -> list[dict]:
    rows = [{"what": f"/{p}", "result": "changed"} for p in result.changed]
    rows += [{"what": f"/{p}", "result": "left alone: rewritten by something else"} for p in result.skipped]
    if result.restarted:
        rows.append({"what": "systemctl restart systemd-resolved", "result": "ok"})
    return rows or [{"what": f"host DNS ({result.mode})", "result": "unchanged"}]


@dns_app.command("install")
def dns_install(
    address: str = typer.Option(DNS_ADDRESS, "--address", help="where the agent answers DNS"),
    port: int = typer.Option(DNS_PORT, "--port", help="the agent's DNS port (resolv.conf mode needs 53)"),
    mode: str = typer.Option("auto", "--mode", help="auto, resolved or resolv.conf"),
    root: Path = ROOT_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Route cluster.local and mesh to the agent (systemd-resolved drop-in, or resolv.conf)."""
    emit(_edge(lambda: _dns_rows(_hostdns(root, address, port, mode).install())), ["what", "result"], output)


@dns_app.command("uninstall")
def dns_uninstall(root: Path = ROOT_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Put the host resolver back exactly as it was before `dns install`."""
    emit(_edge(lambda: _dns_rows(_hostdns(root).uninstall())), ["what", "result"], output)


# -- meshctl k3s -------------------------------------------------------------------

def _set_k3s(root: Path, on: bool, no_start: bool) -> list[dict]:
    env_path = root / ENV_DIR / "meshagent.env"
    lines = read_env(env_path)
    current = dict((k, v) for k, v in lines if v is not None)
    if "MESHAGENT_OPTS" not in current:
        raise MeshError(f"{env_path} has no MESHAGENT_OPTS: install the agent first with `meshctl install agent`")
    opts = [o for o in current["MESHAGENT_OPTS"].split() if o != "--k3s"] + (["--k3s"] if on else [])
    changed = write_file(env_path, render_env(set_env(lines, {"MESHAGENT_OPTS": " ".join(opts)})), 0o600)
    rows = [{"what": str(env_path), "result": "written" if changed else "unchanged"}]
    if not no_start:
        steps = []
        if not on:
            steps.append(("stop", "mesh-k3s-agent.service"))  # it outlives agent restarts by design
        if changed:
            steps.append(("restart", "meshagent.service"))
        for step in steps:
            systemctl(*step)
            rows.append({"what": "systemctl " + " ".join(step), "result": "ok"})
    return rows


@k3s_app.command("join")
def k3s_join(root: Path = ROOT_OPTION, no_start: bool = NO_START_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Run this node as a K3s agent: node IP and flannel on the mesh, token from meshd over mTLS."""
    emit(_edge(lambda: _set_k3s(root, True, no_start)), ["what", "result"], output)


@k3s_app.command("leave")
def k3s_leave(root: Path = ROOT_OPTION, no_start: bool = NO_START_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Stop the K3s agent on this node and stop joining it."""
    emit(_edge(lambda: _set_k3s(root, False, no_start)), ["what", "result"], output)
