"""Tiny network probe run inside lab namespaces (stdlib only, started as a script).

  probe.py serve NAME PORT          TCP: answer "NAME <peer address>" and close; UDP: echo.
  probe.py connect TIMEOUT HOST:PORT...   one TCP connect per target; prints a JSON list
                                          of {"target", "ok", "answer" | "error"}.
  probe.py rtt HOST PORT COUNT      UDP round trips to an echo server; prints JSON ms samples.
  probe.py reach DNS PORT TIMEOUT NAME...  until TIMEOUT s: resolve each NAME (A record) at the
                                          DNS server DNS and open a TCP connection to it on PORT,
                                          retrying; prints JSON {name: monotonic time of success}.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time


def serve(name: str, port: int) -> None:
    class TCP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(f"{name} {self.client_address[0]}\n".encode())

    class UDP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data, self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    tcp = socketserver.ThreadingTCPServer(("0.0.0.0", port), TCP)
    udp = socketserver.ThreadingUDPServer(("0.0.0.0", port), UDP)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    tcp.serve_forever()


def connect(timeout: float, targets: list[str]) -> None:
    out = []
    for t in targets:
        host, _, port = t.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as s:
                s.settimeout(timeout)
                out.append({"target": t, "ok": True, "answer": s.recv(200).decode().strip()})
        except OSError as e:
            out.append({"target": t, "ok": False, "error": str(e)})
    print(json.dumps(out))


def rtt(host: str, port: int, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    samples = []
    for i in range(count):
        t0 = time.perf_counter()
        s.sendto(str(i).encode(), (host, port))
        try:
            while s.recv(100) != str(i).encode():
                pass
        except OSError:
            continue
        samples.append((time.perf_counter() - t0) * 1000)
    print(json.dumps(samples))


def _a_record(server: tuple[str, int], name: str) -> str | None:
    """One A query over UDP (stdlib only); the first address, or None."""
    qid = int(time.monotonic() * 1000) & 0xFFFF
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(q, server)
            r = s.recv(1500)
        except OSError:
            return None
    if len(r) < 12 or r[:2] != q[:2] or int.from_bytes(r[6:8], "big") == 0:
        return None
    i = len(q)  # answers follow the echoed question
    while i + 12 <= len(r):
        i += 2 if r[i] & 0xC0 == 0xC0 else r.index(b"\x00", i) + 1 - i
        rtype, rdlen = int.from_bytes(r[i:i + 2], "big"), int.from_bytes(r[i + 8:i + 10], "big")
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(r[i + 10:i + 14])
        i += 10 + rdlen
    return None


def reach(dns: str, port: int, timeout: float, names: list[str]) -> None:
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(names) and time.monotonic() < deadline:
        for name in names:
            if name in done:
                continue
            addr = _a_record((dns, 53), name)
            if addr is None:
                continue
            try:
                with socket.create_connection((addr, port), timeout=0.3):
                    done[name] = time.monotonic()
            except OSError:
                pass
        time.sleep(0.02)
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], int(args[1]))
    elif cmd == "connect":
        connect(float(args[0]), args[1:])
    elif cmd == "rtt":
        rtt(args[0], int(args[1]), int(args[2]))
    elif cmd == "reach":
        reach(args[0], int(args[1]), float(args[2]), args[3:])
    else:
        sys.exit(f"unknown command {cmd}")
