"""Regenerate the committed protobuf / gRPC Python code from ``search.proto``.

Why a script and a temporary tree: protoc names the generated imports after the proto's path under
its include root, so the proto must sit at ``lenscope/client/api/search.proto`` for
``search_pb2_grpc`` to import ``lenscope.client.api.search_pb2`` (the installed name); in the repo it
lives at ``client/api/``. The script builds that layout from a symlink, runs the protoc bundled with
grpcio-tools (pinned in requirements.lock: its protobuf gencode version must not be newer than the
protobuf runtime), and copies the outputs next to the proto. ``tests/unit/test_api_generated.py``
regenerates and compares byte for byte, so the proto and the committed code cannot drift.

    python -m lenscope.client.api.generate [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from importlib import resources
from pathlib import Path

PROTO = Path(__file__).resolve().with_name("search.proto")
# Where the proto must appear under the include root: the Python package that holds the code.
PROTO_PACKAGE_PATH = Path("lenscope/client/api")
GENERATED_FILES = ("search_pb2.py", "search_pb2.pyi", "search_pb2_grpc.py")


class GenerationError(RuntimeError):
    """protoc rejected the proto (its diagnostics went to stderr)."""


def generate(out_dir: Path) -> list[Path]:
    """Compile ``search.proto`` and write GENERATED_FILES into ``out_dir``; return their paths."""
    # grpcio-tools is a development dependency: import it only when generating.
    from grpc_tools import protoc

    well_known_protos = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lenscope-protoc-") as tmp:
        include_root = Path(tmp, "include")
        staged = include_root / PROTO_PACKAGE_PATH / PROTO.name
        staged.parent.mkdir(parents=True)
        staged.symlink_to(PROTO)
        gen_root = Path(tmp, "out")
        gen_root.mkdir()
        rc = protoc.main([
            "grpc_tools.protoc",
            f"--proto_path={include_root}",
            f"--proto_path={well_known_protos}",
            f"--python_out={gen_root}",
            f"--pyi_out={gen_root}",
            f"--grpc_python_out={gen_root}",
            str(staged),
        ])
        if rc != 0:
            raise GenerationError(f"protoc failed on {PROTO} (exit {rc}); see its messages above")
        written = []
        for name in GENERATED_FILES:
            target = out_dir / name
            shutil.copyfile(gen_root / PROTO_PACKAGE_PATH / name, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO.parent, help="output directory (default: next to the proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
