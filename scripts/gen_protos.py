"""Generates the Python and gRPC stubs for every contract under protos/ into gen/."""

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
BIN = Path(sys.executable).parent


def main() -> int:
    if GEN.exists():
        shutil.rmtree(GEN)
    GEN.mkdir()
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={GEN}",
        f"--mypy_out={GEN}",
        f"--grpc_python_out={GEN}",
        f"--mypy_grpc_out={GEN}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        return code
    # Regular packages (not namespace ones), so mypy and importlib resolve them the same way.
    for directory in [GEN / "xsell", *(GEN / "xsell").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    (GEN / "xsell" / "py.typed").touch()
    print(f"generated stubs for {len(sources)} proto files into {GEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
