"""meshd's store: the revisioned key-value interface (base) and its backends."""

from __future__ import annotations

from pathlib import Path

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import ConfigError
from meshd.store.base import Store


def sqlite_path(spec: str, state_dir: Path) -> Path | None:
    """The database file of a SQLite store spec; None for other stores."""
    if spec in ("", "sqlite"):
        return state_dir / "state.db"
    if spec.startswith("sqlite://"):
        return Path(spec[len("sqlite://"):])
    return None


def open_store(spec: str, state_dir: Path, clock: Clock = SYSTEM, etcd_ca: str = "", etcd_cert: str = "",
               etcd_key: str = "") -> Store:
    """`sqlite` (state_dir/state.db), `sqlite:///path/to.db`, `etcd://host:2379,host:2379`, or
    `etcds://...` over TLS with a CA bundle, client certificate and key (files; see etcd_tls)."""
    from meshd.store.etcd_tls import from_flags

    tls = from_flags(spec, etcd_ca, etcd_cert, etcd_key)
    if spec in ("", "sqlite"):
        from meshd.store.sqlite import SQLiteStore
        return SQLiteStore(state_dir / "state.db", clock)
    if spec.startswith("sqlite://"):
        from meshd.store.sqlite import SQLiteStore
        return SQLiteStore(Path(spec[len("sqlite://"):]), clock)
    if spec.startswith(("etcd://", "etcds://")):
        try:
            from meshd.store.etcd import EtcdStore
        except ImportError as e:
            raise ConfigError(f"--store {spec}: the etcd backend is not available ({e})") from e
        return EtcdStore.from_url(spec, clock, tls=tls)
    raise ConfigError(f"invalid --store {spec!r}: use sqlite, sqlite:///path/state.db or etcd://host:2379[,host:2379...] "
                      f"(etcds:// for TLS)")
