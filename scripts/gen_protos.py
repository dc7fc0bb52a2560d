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
    # Generated into a fresh folder and swapped in, so running processes never see half a package.
    staging = ROOT / "gen.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={staging}",
        f"--mypy_out={staging}",
        f"--grpc_python_out={staging}",
        f"--mypy_grpc_out={staging}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        return code
    # Regular packages (not namespace ones), so mypy and importlib resolve them the same way.
    for directory in [staging / "xsell", *(staging / "xsell").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    (staging / "xsell" / "py.typed").touch()
    old = ROOT / "gen.old"
    if old.exists():
        shutil.rmtree(old)
    if GEN.exists():
        GEN.rename(old)
    staging.rename(GEN)
    if old.exists():
        shutil.rmtree(old)
    print(f"generated stubs for {len(sources)} proto files into {GEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
