"""The committed stubs must be exactly what `make proto` generates from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_protos(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    assert "mesh/v1/catalog.proto" in protos
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
                        f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *[f"proto/{p}" for p in protos]],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    drift = [str(p) for p in generated if not (ROOT / p).exists() or not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert drift == [], f"stubs differ from proto/: run `make proto` ({drift})"
