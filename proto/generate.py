"""Generate the Python gRPC stubs in ``coral_base/wire`` from ``proto/``.

The generated ``*_pb2_grpc.py`` files import their ``*_pb2`` siblings by the
``.proto`` path relative to the include directory. To make those imports
resolve inside the ``coral_base.wire`` package, the ``.proto`` tree is staged
under ``coral_base/wire/`` in a temporary include directory, so every import
the generator writes is a fully qualified package import. Nothing generated
is ever edited by hand: ``make proto`` reruns this script, and
``tests/test_proto_stubs.py`` fails when the committed stubs are stale.

Usage: python proto/generate.py [OUT_ROOT]   (default: the repository root)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PACKAGE_PATH = Path("coral_base") / "wire"


def proto_files() -> list[Path]:
    """Every .proto under proto/, relative to it, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Write the stubs under ``out_root/coral_base/wire`` and return them."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as staging:
        include = Path(staging)
        (include / PACKAGE_PATH).parent.mkdir(parents=True)
        (include / PACKAGE_PATH).symlink_to(PROTO_ROOT, target_is_directory=True)
        files = [str(PACKAGE_PATH / p) for p in proto_files()]
        out_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            *files,
        ]
        subprocess.run(cmd, check=True)
    package = out_root / PACKAGE_PATH
    for directory in [package, *(d for d in package.rglob("*") if d.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    return sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
