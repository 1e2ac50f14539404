"""The hostile-input corpus for the ``lenscope`` CLI, generated (never committed as blobs).

Every case is a command line a careless or hostile user could type, run in a workspace that holds
the user's own files (``make_workspace``), and what the CLI must answer: an exit code (2: the input
cannot be used; 3: ``index build`` interrupted and resumable), fragments of which at least one must
appear in the message (it names what was wrong: the option, path, field or address), and, for
every case, no ``Traceback``, no raw control character, and every file of the workspace unchanged.
Kinds per command: missing / empty / folder / special-file (FIFO, ``/dev/zero``) / binary / wrongly
encoded inputs, output paths holding user data or equal to an input, taken and out-of-range
ports, bad ``LENSCOPE_*`` values, a damaged index root, markup and escape codes in paths.

Importable (``build_cases()``: what tests/unit/test_cli_hostile.py runs), and a script:

    python tests/corpus/cli_cases.py --list     # the table of cases and expectations, counts per command

Placeholders in an argument: ``{taken}`` is a TCP port some process listens on during the case,
``{dead}`` a ``host:port`` where nothing listens (connection refused at once).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ESC = "\x1b"
DEAD = "127.0.0.1:1"  # port 1: refused immediately on loopback


@dataclass(frozen=True)
class CliCase:
    command: str  # e.g. "index build": the group the case belongs to
    name: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # at least one must appear in the output (case-insensitive)
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.command.replace(' ', '-')}:{self.name}"

    def argv(self, taken: int) -> list[str]:
        return [*self.command.split(), *(a.format(taken=taken, dead=DEAD) for a in self.args)]


def _tall_png(height: int) -> bytes:
    """A small PNG declaring 1 x `height` RGB pixels: cheap to send, ruinous to decode and resize."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * 4 * height, 9)  # filter byte + one black RGB pixel per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def make_workspace(root: Path) -> Path:
    """The user's files the cases aim at; every one of them must survive every case unchanged."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "userdata").mkdir()
    (root / "userdata" / "thesis.txt").write_text("work\n")
    (root / f"user{ESC}[2Jdata").mkdir()
    (root / f"user{ESC}[2Jdata" / "keep.txt").write_text("mine\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "adir").mkdir()
    (root / "onnxdir").mkdir()
    (root / "empty_root").mkdir()
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.csv").write_bytes("product_id,title,image\np1,caf\xe9 cr\xe8me,a.png\n".encode("latin-1"))
    (root / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    (root / "bad.json").write_text("{not json\n")
    (root / "settings.json").write_text(json.dumps({"theme": "dark"}) + "\n")
    (root / "catalog.jsonl").write_text(json.dumps({"product_id": "p1", "title": "red dress", "image": "p1.png"}) + "\n")
    (root / "feats.jsonl").write_text("".join(json.dumps({"label": i % 2, "visual": i / 10}) + "\n" for i in range(8)))
    (root / "sp[" / "]").mkdir(parents=True)  # the folder path `sp[/]`: Rich markup if printed as such
    (root / "sp[" / "]" / "x.json").write_text(json.dumps({"name": "x"}) + "\n")
    (root / "tall.png").write_bytes(_tall_png(1_000_000))
    os.mkfifo(root / "fifo")
    # an index root whose `current` is a regular file (someone replaced the link)
    (root / "root_file_current").mkdir()
    (root / "root_file_current" / "current").write_text("v1\n")
    # an index root with a published link (the version folder is empty: only Triton is asked first)
    (root / "root_ok" / "versions" / "v1").mkdir(parents=True)
    (root / "root_ok" / "current").symlink_to("versions/v1")
    return root


def _cases() -> list[CliCase]:
    c: list[CliCase] = []

    def add(command: str, name: str, args: list[str], *expect: str, code: int = 2, env: dict | None = None) -> None:
        c.append(CliCase(command, name, tuple(args), tuple(expect), code, env or {}))

    # -- model export: output folder and spec file
    me = "model export"
    add(me, "out-user-folder", ["--out", "userdata"], "--out userdata is a folder lenscope did not write")
    add(me, "out-user-folder-escape-codes", ["--out", f"user{ESC}[2Jdata"], "\\x1b[2jdata is a folder lenscope did not")
    add(me, "out-is-file", ["--out", "notes.txt"], "notes.txt exists and is not a folder")
    add(me, "out-dev-zero", ["--out", "/dev/zero"], "/dev/zero exists and is not a folder")
    add(me, "onnx-dir-user-folder", ["--out", "newrepo", "--onnx-dir", "userdata"], "--onnx-dir userdata is a folder")
    add(me, "onnx-dir-equals-out", ["--out", "onnxdir", "--onnx-dir", "onnxdir"], "is also the input")
    add(me, "spec-missing", ["--spec", "nope.json"], "nope.json does not exist")
    add(me, "spec-markup-path-missing", ["--spec", "sp[/]/nope.json"], "sp[/]/nope.json does not exist")
    add(me, "spec-markup-path-invalid", ["--spec", "sp[/]/x.json", "--out", "newrepo"], "sp[/]/x.json")
    add(me, "spec-escape-path", ["--spec", f"{ESC}]0;pwn\x07.json"], "\\x1b]0;pwn\\x07.json does not exist")
    add(me, "spec-empty", ["--spec", "empty.txt", "--out", "newrepo"], "empty.txt")
    add(me, "spec-folder", ["--spec", "adir"], "adir is a folder")
    add(me, "spec-fifo", ["--spec", "fifo"], "fifo is a fifo")
    add(me, "spec-dev-zero", ["--spec", "/dev/zero"], "/dev/zero is a device")
    add(me, "spec-binary", ["--spec", "binary.bin", "--out", "newrepo"], "binary.bin")
    add(me, "spec-latin1", ["--spec", "latin1.json", "--out", "newrepo"], "latin1.json")
    add(me, "profile-unknown", ["--profile", "tpu"], "profile")
    add(me, "max-batch-size-zero", ["--max-batch-size", "0"], "max_batch_size")

    bt = "model build-trt"
    add(bt, "out-user-folder", ["--onnx-dir", "onnxdir", "--out", "userdata"], "--out userdata is a folder")
    add(bt, "out-equals-onnx-dir", ["--onnx-dir", "onnxdir", "--out", "onnxdir"], "is also the input --onnx-dir")
    add(bt, "onnx-dir-missing", ["--onnx-dir", "nope", "--out", "new"], "'nope' does not exist")
    add(bt, "no-tensorrt", ["--onnx-dir", "onnxdir", "--out", "newtrt"], "tensorrt")

    cp = "model check-plans"
    add(cp, "repo-missing", ["nope"], "'nope' does not exist")
    add(cp, "no-manifest", ["userdata"], "no export_manifest.json")

    bp = "model build-plans"
    add(bp, "repo-missing", ["nope"], "'nope' does not exist")
    add(bp, "no-manifest", ["userdata"], "no export_manifest.json")
    add(bp, "cache-is-file", ["userdata", "--cache", "notes.txt"], "notes.txt")

    mf = "model fidelity"
    add(mf, "onnx-dir-missing", ["--onnx-dir", "nope", "--catalog", "catalog.jsonl"], "'nope' does not exist")
    add(mf, "catalog-fifo", ["--onnx-dir", "onnxdir", "--catalog", "fifo"], "fifo is a fifo")
    add(mf, "max-products-zero", ["--onnx-dir", "onnxdir", "--catalog", "catalog.jsonl", "--max-products", "0"], "--max-products")

    tr = "model train"
    add(tr, "out-user-file", ["--catalog", "catalog.jsonl", "--out", "notes.txt"], "notes.txt already exists and is not a checkpoint")
    add(tr, "out-equals-catalog", ["--catalog", "catalog.jsonl", "--out", "catalog.jsonl"], "is also the input --catalog")
    add(tr, "out-is-folder", ["--catalog", "catalog.jsonl", "--out", "userdata"], "userdata is a folder")
    add(tr, "catalog-fifo", ["--catalog", "fifo"], "fifo is a fifo")
    add(tr, "catalog-missing", ["--catalog", "nope.jsonl"], "nope.jsonl does not exist")
    add(tr, "strategy-unknown", ["--catalog", "catalog.jsonl", "--out", "new.pt", "--strategy", "bogus"], "strategy")

    cg = "catalog generate"
    add(cg, "out-user-folder", ["--out", "userdata", "--n-products", "2"], "--out userdata is a folder lenscope did not write")
    add(cg, "out-is-file", ["--out", "notes.txt", "--n-products", "2"], "notes.txt exists and is not a folder")
    add(cg, "n-products-zero", ["--out", "newcat", "--n-products", "0"], "--n-products")
    add(cg, "image-format-unknown", ["--out", "newcat", "--image-format", "gif"], "--image-format")

    ib = "index build"
    base = ["--triton", "{dead}", "--timeout", "1", "--no-progress"]
    add(ib, "rejects-equals-catalog", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--rejects", "catalog.jsonl", *base],
        "--rejects catalog.jsonl is also the input --catalog")
    add(ib, "rejects-user-file", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--rejects", "notes.txt", *base],
        "notes.txt already exists and is not a rejects file")
    add(ib, "rejects-folder", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--rejects", "userdata", *base],
        "userdata is a folder")
    add(ib, "rejects-dev-zero", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--rejects", "/dev/zero", *base],
        "/dev/zero is a special file")
    add(ib, "rejects-equals-fusion-weights", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--fusion-weights",
                                             "settings.json", "--rejects", "settings.json", *base], "is also the input")
    add(ib, "index-root-user-folder", ["--catalog", "catalog.jsonl", "--index-root", "userdata", *base],
        "--index-root userdata is a folder lenscope did not write")
    add(ib, "index-root-current-is-regular-file", ["--catalog", "catalog.jsonl", "--index-root", "root_file_current", *base],
        "current is not a symlink")
    add(ib, "index-root-is-file", ["--catalog", "catalog.jsonl", "--index-root", "notes.txt", *base], "notes.txt exists and is not a folder")
    add(ib, "catalog-missing", ["--catalog", "nope.jsonl", "--index-root", "newidx", *base], "nope.jsonl does not exist")
    add(ib, "catalog-empty", ["--catalog", "empty.txt", "--index-root", "newidx", *base], "empty.txt")
    add(ib, "catalog-folder", ["--catalog", "adir", "--index-root", "newidx", *base], "adir is a folder")
    add(ib, "catalog-fifo", ["--catalog", "fifo", "--index-root", "newidx", *base], "fifo is a fifo")
    add(ib, "catalog-dev-zero", ["--catalog", "/dev/zero", "--index-root", "newidx", *base], "/dev/zero is a device")
    add(ib, "catalog-binary", ["--catalog", "binary.bin", "--index-root", "newidx", *base], "binary.bin line 2: byte 0x80")
    add(ib, "catalog-latin1", ["--catalog", "latin1.csv", "--index-root", "newidx", *base], "latin1.csv line 2: byte 0xe9")
    add(ib, "fusion-weights-not-json", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--fusion-weights", "bad.json", *base],
        "bad.json")
    add(ib, "calibration-missing", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--calibration", "nope.json", *base],
        "nope.json does not exist")
    add(ib, "index-kind-unknown", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--index-kind", "lsh", *base], "--index-kind")
    add(ib, "batch-size-zero", ["--catalog", "catalog.jsonl", "--index-root", "newidx", "--batch-size", "0", *base], "--batch-size")
    add(ib, "triton-unreachable", ["--catalog", "catalog.jsonl", "--index-root", "newidx", *base], "unavailable", code=3)

    ii = "index inspect"
    add(ii, "index-root-missing", ["--index-root", "nope"], "'nope' does not exist")
    add(ii, "index-root-empty", ["--index-root", "empty_root"], "empty_root holds no published index")
    add(ii, "index-root-is-file", ["--index-root", "notes.txt"], "notes.txt")
    add(ii, "current-is-regular-file", ["--index-root", "root_file_current"], "current is not a symlink")
    add(ii, "index-root-escape-codes", ["--index-root", f"user{ESC}[2Jdata"], "\\x1b[2jdata")

    ip = "index prune"
    add(ip, "index-root-missing", ["--index-root", "nope"], "'nope' does not exist")
    add(ip, "index-root-is-file", ["--index-root", "notes.txt"], "notes.txt")
    add(ip, "min-age-negative", ["--index-root", "root_ok", "--min-age", "-1"], "--min-age")

    ir = "index remove"
    add(ir, "index-root-missing", ["--index-root", "nope", "--ids", "notes.txt"], "'nope' does not exist")
    add(ir, "index-root-empty", ["--index-root", "empty_root", "--ids", "notes.txt"], "nothing published yet")
    add(ir, "current-is-regular-file", ["--index-root", "root_file_current", "--ids", "notes.txt"],
        "current is not a symlink")
    add(ir, "ids-missing", ["--index-root", "root_ok", "--ids", "nope.txt"], "nope.txt does not exist")
    add(ir, "ids-binary", ["--index-root", "root_ok", "--ids", "binary.bin"], "binary.bin line 2: byte 0x80")
    add(ir, "ids-empty", ["--index-root", "root_ok", "--ids", "empty.txt"], "no product id in the file")
    add(ir, "ids-dev-zero", ["--index-root", "root_ok", "--ids", "/dev/zero"], "/dev/zero is a device")
    add(ir, "version-folder-empty", ["--index-root", "root_ok", "--ids", "notes.txt"], "bundle.json is missing")
    add(ir, "milvus-uri-bogus", ["--index-root", "root_ok", "--ids", "notes.txt", "--milvus-uri", "ftp://x"],
        "--milvus-uri 'ftp://x'")
    add(ir, "milvus-alias-bogus", ["--index-root", "root_ok", "--ids", "notes.txt", "--milvus-alias", "no good"],
        "--milvus-alias 'no good'")

    ss = "serve search"
    add(ss, "index-root-empty", ["--index-root", "empty_root"], "empty_root holds no published index")
    add(ss, "index-root-missing", ["--index-root", "nope"], "'nope' does not exist")
    add(ss, "index-root-is-file", ["--index-root", "notes.txt"], "notes.txt")
    add(ss, "current-is-regular-file", ["--index-root", "root_file_current"], "current is not a symlink")
    add(ss, "grpc-port-out-of-range", ["--index-root", "root_ok", "--grpc-port", "70000"], "--grpc-port")
    add(ss, "metrics-port-negative", ["--index-root", "root_ok", "--metrics-port", "-1"], "--metrics-port")
    add(ss, "grpc-port-taken", ["--index-root", "root_ok", "--grpc-port", "{taken}", "--metrics-port", "0"],
        "address already in use")
    add(ss, "metrics-port-taken", ["--index-root", "root_ok", "--grpc-port", "0", "--metrics-port", "{taken}"],
        "address already in use")
    add(ss, "env-grpc-port-not-a-number", ["--index-root", "root_ok"], "lenscope_grpc_port='abc'", env={"LENSCOPE_GRPC_PORT": "abc"})
    add(ss, "env-grpc-port-out-of-range", ["--index-root", "root_ok"], "lenscope_grpc_port='99999'", env={"LENSCOPE_GRPC_PORT": "99999"})
    add(ss, "env-host-bogus", ["--index-root", "root_ok", "--grpc-port", "0", "--metrics-port", "0"], "host 'no.such.host.invalid' is not an address",
        env={"LENSCOPE_HOST": "no.such.host.invalid"})
    add(ss, "triton-unreachable", ["--index-root", "root_ok", "--grpc-port", "0", "--metrics-port", "0", "--triton", "{dead}"],
        "127.0.0.1:1 did not answer")
    add(ss, "env-triton-unreachable", ["--index-root", "root_ok", "--grpc-port", "0", "--metrics-port", "0"],
        "127.0.0.1:1 did not answer", env={"LENSCOPE_TRITON_URL": DEAD})
    add(ss, "triton-ca-fifo", ["--index-root", "root_ok", "--triton-ca", "fifo"], "fifo is a fifo")

    st = "serve triton"
    add(st, "repository-missing", ["--model-repository", "nope"], "'nope' does not exist")
    add(st, "repository-is-file", ["--model-repository", "notes.txt"], "notes.txt")
    add(st, "repository-empty", ["--model-repository", "empty_root"], "empty_root holds no models (no <name>/config.pbtxt)")
    add(st, "http-port-zero", ["--model-repository", "empty_root", "--http-port", "0"], "--http-port")
    add(st, "grpc-port-out-of-range", ["--model-repository", "empty_root", "--grpc-port", "70000"], "--grpc-port")
    add(st, "log-file-folder", ["--model-repository", "empty_root", "--log-file", "userdata"], "--log-file userdata is not a regular file")
    add(st, "log-file-fifo", ["--model-repository", "empty_root", "--log-file", "fifo"], "--log-file fifo is not a regular file")
    add(st, "log-file-user-file", ["--model-repository", "empty_root", "--log-file", "notes.txt"],
        "--log-file notes.txt already exists and is not a tritonserver log")  # the log is appended: never to a user's file
    add(st, "tls-cert-without-key", ["--model-repository", "empty_root", "--grpc-tls-cert", "notes.txt"], "go together")
    add(st, "tls-key-dev-zero", ["--model-repository", "empty_root", "--grpc-tls-cert", "notes.txt", "--grpc-tls-key",
                                 "/dev/zero"], "/dev/zero is a device")

    sw = "serve web"
    add(sw, "catalog-missing", ["--catalog", "nope.jsonl"], "'nope.jsonl' does not exist")
    add(sw, "port-out-of-range", ["--catalog", "catalog.jsonl", "--port", "70000"], "--port")
    add(sw, "port-taken", ["--catalog", "catalog.jsonl", "--port", "{taken}", "--search-target", "{dead}"], "address already in use")

    se = "search"
    add(se, "no-query", [], "give --image, --text or both")
    add(se, "image-missing", ["--image", "nope.jpg"], "nope.jpg does not exist")
    add(se, "image-folder", ["--image", "adir"], "adir is a folder")
    add(se, "image-fifo", ["--image", "fifo"], "fifo is a fifo")
    add(se, "image-dev-zero", ["--image", "/dev/zero"], "/dev/zero is a device")
    add(se, "image-empty", ["--image", "empty.txt"], "empty.txt is empty")
    add(se, "image-extreme-aspect", ["--image", "tall.png", "--text", "dress", "--target", "{dead}"],
        "tall.png: image header declares 1x1000000")  # refused from the header, before any service is asked
    add(se, "image-not-an-image", ["--image", "binary.bin", "--target", "{dead}"], "binary.bin:")
    add(se, "image-escape-path", ["--image", f"{ESC}]0;pwn\x07.png"], "\\x1b]0;pwn\\x07.png does not exist")
    add(se, "filter-malformed", ["--text", "dress", "--filter", "color"], "facet=value")
    add(se, "target-unreachable", ["--text", "dress", "--target", "{dead}"], "no search service answers at 127.0.0.1:1")
    add(se, "env-target-unreachable", ["--text", "dress"], "no search service answers at 127.0.0.1:1",
        env={"LENSCOPE_SEARCH_TARGET": DEAD})
    add(se, "tls-cert-without-key", ["--text", "dress", "--tls-cert", "notes.txt"], "go together")
    add(se, "timeout-zero", ["--text", "dress", "--timeout", "0"], "--timeout")

    ev = "eval"
    add(ev, "out-user-folder", ["--catalog", "catalog.jsonl", "--repository", "empty_root", "--out", "userdata"],
        "--out userdata is a folder lenscope did not write")
    add(ev, "workdir-user-folder", ["--catalog", "catalog.jsonl", "--repository", "empty_root", "--workdir", "userdata"],
        "--workdir userdata is a folder lenscope did not write")
    add(ev, "name-path-traversal", ["--catalog", "catalog.jsonl", "--repository", "empty_root", "--name", "../x"], "--name")
    add(ev, "catalog-fifo", ["--catalog", "fifo"], "fifo is a fifo")
    add(ev, "split-unknown", ["--catalog", "catalog.jsonl", "--split", "holdout"], "--split")
    add(ev, "no-model", ["--catalog", "catalog.jsonl"], "give --repository")

    rf = "rerank fit"
    add(rf, "out-user-file", ["--features", "feats.jsonl", "--out", "notes.txt"], "notes.txt already exists and is not a fusion weights file")
    add(rf, "out-user-json", ["--features", "feats.jsonl", "--out", "settings.json"], "settings.json already exists")
    add(rf, "out-equals-features", ["--features", "feats.jsonl", "--out", "feats.jsonl"], "is also the input --features")
    add(rf, "calibration-out-user-file", ["--catalog", "catalog.jsonl", "--out", "new.json", "--calibration-out", "notes.txt"],
        "notes.txt already exists and is not a calibration file")
    add(rf, "features-binary", ["--features", "binary.bin", "--out", "new.json"], "binary.bin", "0x80", "utf-8")
    add(rf, "features-empty", ["--features", "empty.txt", "--out", "new.json"], "empty.txt", "no labelled", "rows")
    add(rf, "features-fifo", ["--features", "fifo", "--out", "new.json"], "fifo is a fifo")
    add(rf, "neither-input", ["--out", "new.json"], "give either --catalog")

    de = "demo"
    add(de, "repository-user-folder", ["--repository", "userdata"], "--repository userdata is a folder lenscope did not write")
    add(de, "web-port-out-of-range", ["--web-port", "70000"], "--web-port")
    return c


def build_cases() -> list[CliCase]:
    cases = _cases()
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the cases and the count per command")
    args = parser.parse_args(argv)
    cases = build_cases()
    if args.list:
        for case in cases:
            print(f"{case.id:<55} exit {case.code}  expects {' | '.join(repr(e) for e in case.expect)}")
    for command, n in sorted(Counter(case.command for case in cases).items()):
        print(f"{command:<18} {n} cases")
    print(f"{'total':<18} {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
