"""Tiny network probe run inside lab namespaces (stdlib only, started as a script).

  probe.py serve NAME PORT          TCP: answer "NAME <peer address>" and close; UDP: echo.
  probe.py connect TIMEOUT HOST:PORT...   one TCP connect per target; prints a JSON list
                                          of {"target", "ok", "answer" | "error"}.
  probe.py rtt HOST PORT COUNT      UDP round trips to an echo server; prints JSON ms samples.
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


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], int(args[1]))
    elif cmd == "connect":
        connect(float(args[0]), args[1:])
    elif cmd == "rtt":
        rtt(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown command {cmd}")
