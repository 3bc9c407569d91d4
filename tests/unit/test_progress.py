"""meshctl's progress printer: a status line on a terminal, one line per event elsewhere."""

from __future__ import annotations

import io
from types import SimpleNamespace

from meshctl.progress import Printer


def drive(p: Printer) -> None:
    p.phase("network")
    p.start("us-east-1", 2)
    p.step("us-east-1", SimpleNamespace(op="create", resource="vpc 10.4.0.0/16"))
    p.waiting("us-east-1", "peering pcx-1 to reach us-east-1")
    p.step("us-east-1", SimpleNamespace(op="create", resource="subnet us-east-1a"))
    p.finish("us-east-1", None)
    p.note("us-west-2", "terminating i-1")
    p.close()


def test_lines_for_a_log_carry_elapsed_time_and_what_is_awaited():
    out, t = io.StringIO(), iter([0.0, 1.0, 2.5, 3.0, 64.0, 65.0, 66.0, 70.0])
    drive(Printer(out, tty=False, clock=lambda: next(t)))
    assert out.getvalue().splitlines() == [
        "[   1.0s] network ...",
        "[   2.5s] us-east-1: applying 2 change(s)",
        "[   3.0s] us-east-1: 1/2 create vpc 10.4.0.0/16",
        "[  64.0s] us-east-1: waiting for peering pcx-1 to reach us-east-1",
        "[  65.0s] us-east-1: 2/2 create subnet us-east-1a",
        "[  66.0s] us-east-1: done, 2/2",
        "[  70.0s] us-west-2: terminating i-1",
    ]


def test_a_terminal_gets_one_status_line_rewritten_in_place():
    out = io.StringIO()
    drive(Printer(out, tty=True, clock=lambda: 0.0))
    text = out.getvalue()
    # Steps, waits and notes overwrite each other; stages and results stay on lines of their own.
    assert text.count("\n") == 4 and text.endswith("terminating i-1\n")
    assert "\r\x1b[K[   0.0s] us-east-1: waiting for peering pcx-1" in text
    assert "\r\x1b[K[   0.0s] us-east-1: done, 2/2\n" in text
