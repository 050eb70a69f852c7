"""Build step of textrec-client: compiles the textrec protos into Python stubs.

The stubs are generated at build time with grpcio-tools (a build requirement, see
pyproject.toml) rather than committed, so they always match ``proto/`` in this checkout.

The protos are looked up in this order:

1. ``$TEXTREC_PROTO_DIR``;
2. ``proto/`` next to this file (an sdist carries a copy there);
3. ``../../proto`` (the repository's own folder, when building from a clone).

Every ``.proto`` is compiled under the ``textrec_client._pb`` prefix (``textrec/v1/recognizer.proto``
becomes ``textrec_client._pb.textrec.v1.recognizer_pb2``), so the generated imports point inside
this package instead of at top-level ``textrec`` and ``inference`` packages that would clash with
other installed code. Package and message names in the protos are unchanged, so the wire format
and the gRPC method paths are those of the server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PREFIX = Path("textrec_client") / "_pb"


def proto_dir() -> Path:
    candidates = []
    if os.environ.get("TEXTREC_PROTO_DIR"):
        candidates.append(Path(os.environ["TEXTREC_PROTO_DIR"]))
    candidates += [HERE / "proto", HERE.parent.parent / "proto"]
    for c in candidates:
        if (c / "textrec" / "v1" / "recognizer.proto").is_file():
            return c.resolve()
    raise RuntimeError(
        "textrec-client: no protos found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); build from a textrec clone or an sdist, or set TEXTREC_PROTO_DIR"
    )


def generate(out_dir: Path) -> list[Path]:
    """Compiles every .proto under proto_dir() into out_dir/textrec_client/_pb; returns the files."""
    from grpc_tools import protoc  # build requirement

    try:
        from importlib.resources import files

        wkt = str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons
        wkt = str(Path(protoc.__file__).parent / "_proto")

    out_dir = out_dir.resolve()
    src = proto_dir()
    protos = sorted(p.relative_to(src) for p in src.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel in protos:
            dst = root / PREFIX / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst)
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{wkt}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        ] + [str(PREFIX / rel) for rel in protos]
        out_dir.mkdir(parents=True, exist_ok=True)
        # protoc resolves the file names against the -I roots; run from the temporary root.
        cwd = os.getcwd()
        os.chdir(root)
        try:
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed (exit {rc}) on {src}")

    generated = []
    pb_root = out_dir / PREFIX
    # Packages for every generated folder (protoc writes modules only).
    for d in [pb_root, *sorted(p for p in pb_root.rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from textrec\'s protos at build time; do not edit."""\n')
        generated.append(init)
    generated += sorted(pb_root.rglob("*_pb2*.py")) + sorted(pb_root.rglob("*_pb2*.pyi"))
    return generated


class BuildPyWithStubs(build_py):
    """build_py that also writes the generated gRPC stubs into the build (or, editable, the source)."""

    def run(self) -> None:
        super().run()
        target = HERE / "src" if getattr(self, "editable_mode", False) else Path(self.build_lib)
        for f in generate(target):
            self.announce(f"generated {f}", level=2)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        pb = Path(self.build_lib) / PREFIX
        if pb.is_dir():
            outputs += [str(p) for p in pb.rglob("*") if p.is_file() and str(p) not in outputs]
        return outputs


class SdistWithProtos(sdist):
    """sdist that carries a copy of the protos, so a wheel builds from it outside a clone."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(proto_dir(), Path(base_dir) / "proto", dirs_exist_ok=True)


class GenerateStubs(Command):
    """`python setup.py generate`: writes the stubs into src/ for development without installing."""

    description = "generate the gRPC stubs into src/textrec_client/_pb"
    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        for f in generate(HERE / "src"):
            self.announce(f"generated {f}", level=2)


setup(
    cmdclass={
        "build_py": BuildPyWithStubs,
        "sdist": SdistWithProtos,
        "generate": GenerateStubs,
    }
)
