"""--log-format: one line per event, JSON with the node and request ids."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from meshcore import logs

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def test_json_lines_carry_node_and_request_ids(capsys):
    logs.setup("info", "json", "main")
    try:
        async def rpc(n: int) -> None:
            logs.request_id.set(f"req{n}")
            await asyncio.sleep(0)
            logging.getLogger("meshd.test").info("handled %d\nsecond line", n)

        async def both() -> None:
            await asyncio.gather(rpc(1), rpc(2))
        asyncio.run(both())
        logging.getLogger("meshd.test").warning("outside")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers if not getattr(h, "mesh_logs", 0)]
    assert [(x["msg"], x.get("request_id")) for x in lines] == [
        ("handled 1\nsecond line", "req1"), ("handled 2\nsecond line", "req2"), ("outside", None)]
    assert all(x["node"] == "main" and x["time"].endswith("Z") for x in lines)
    assert lines[2]["level"] == "warning" and lines[0]["logger"] == "meshd.test"


def test_text_is_one_line_per_event(capsys):
    logs.setup("info", "text", "vm1")
    try:
        logging.getLogger("x").info("a\nb")
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers if not getattr(h, "mesh_logs", 0)]
    assert err.count("\n") == 1 and "node=vm1" in err and "a\\nb" in err


def test_meshd_logs_json(tmp_path):
    p = subprocess.Popen([str(BIN / "meshd"), "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0",
                          "--join-listen", "127.0.0.1:0", "--admin-socket", str(tmp_path / "a.sock"),
                          "--metrics", "", "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            event = json.loads(line)  # every line is JSON
            if "meshd serving" in event["msg"]:
                assert event["level"] == "info" and event["node"]
                return
        raise AssertionError("no 'meshd serving' line")
    finally:
        p.terminate()
        p.wait(15)
