"""A moto server on 127.0.0.1:0, for the AWS tests and benchmarks.

`moto_server()` starts one, sets fake credentials (and no profile, no
instance metadata lookup, no config files) so every request stays on
loopback, and puts the environment back as it was when it stops.
"""

from __future__ import annotations

import logging
import os
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


@contextmanager
def moto_server(env: Mapping[str, str] | None = FAKE_ENV) -> Iterator[str]:
    """The server's URL; `env=None` leaves the environment alone."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*(env or {}), "AWS_PROFILE"]} if env is not None else {}
    if env is not None:
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
