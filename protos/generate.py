"""Generate Python code from the contracts in protos/.

    python protos/generate.py            # regenerate in place
    python protos/generate.py --check    # exit 1 if the checked-in code is stale

For every `crm/**/*.proto` it writes `_pb2.py`, `_pb2.pyi` and `_pb2_grpc.py`
(grpcio-tools) and `_pb2_grpc.pyi` (mypy-protobuf) beside the source, plus the
`__init__.py` files that make `crm` an importable package. Nobody edits these.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import google.api
import grpc_tools

PROTOS = Path(__file__).resolve().parent
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
# googleapis-common-protos ships google/api/*.proto beside its generated modules.
GOOGLEAPIS = Path(next(iter(google.api.__path__))).parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def sources() -> list[Path]:
    return sorted(PROTOS.glob("crm/**/*.proto"))


def generate(out: Path) -> None:
    """Write the generated package for every source into `out`."""
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{GOOGLEAPIS}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTOS)) for p in sources()),
    ]
    from grpc_tools import protoc

    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for leaf in {p.parent for p in out.glob("crm/**/*_pb2.py")} | {out / "crm"}:
        package = leaf
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent


def generated_files(root: Path) -> set[Path]:
    found = {p for s in GENERATED_SUFFIXES for p in root.glob(f"crm/**/*{s}")}
    return {p.relative_to(root) for p in found | set(root.glob("crm/**/__init__.py"))}


def stale_files() -> list[str]:
    """The generated files that differ from what the sources produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(PROTOS)
        stale = sorted(str(p) for p in want ^ have)
        stale += sorted(
            str(p) for p in want & have if not filecmp.cmp(fresh / p, PROTOS / p, shallow=False)
        )
        return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    if parser.parse_args().check:
        stale = stale_files()
        if stale:
            print("stale generated code, run `make protos`:", *stale, sep="\n  ")
            raise SystemExit(1)
        return
    for old in generated_files(PROTOS):
        (PROTOS / old).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for rel in generated_files(Path(tmp)):
            (PROTOS / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / rel, PROTOS / rel)


if __name__ == "__main__":
    main()
