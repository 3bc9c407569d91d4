"""A moto server on 127.0.0.1:0, for the AWS tests and benchmarks.

`moto_server()` starts one in a process of its own (moto and the boto3 calls
it answers then run on two cores, not by turns under one interpreter lock),
sets fake credentials (and no profile, no instance metadata lookup, no config
files) so every request stays on loopback, and puts the environment back as
it was when it stops.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


#: The child: moto's threaded server on a free port, which it prints, until SIGTERM.
_SERVER = """
import logging, signal
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait, in every thread
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
server.stop()
"""


@contextmanager
def moto_server(env: Mapping[str, str] | None = FAKE_ENV) -> Iterator[str]:
    """The server's URL; `env=None` leaves the environment alone."""
    saved = {k: os.environ.get(k) for k in [*(env or {}), "AWS_PROFILE"]} if env is not None else {}
    if env is not None:
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()  # the child's first line, or "" if it died
        if not port.isdigit():
            raise RuntimeError(f"moto server did not start (exit {server.wait(timeout=10)})")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
