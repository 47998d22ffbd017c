"""Build script: compiles the Cython pricing kernel (``settlement/_fast``) and
generates the gRPC code of ``proto/settlement/v1/*.proto`` into
``settlement/v1/`` (grpcio-tools, at build time; never hand-edited or
committed).

Everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import glob
import importlib.resources
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_grpc_code() -> None:
    """``protoc`` for every proto of the contract: ``*_pb2.py``, ``*_pb2.pyi`` and
    ``*_pb2_grpc.py`` next to ``settlement/v1/__init__.py``."""
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join("proto", "settlement", "v1", "*.proto"),
                              root_dir=HERE))
    if not protos:
        raise SystemExit("no .proto files under proto/settlement/v1")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        status = protoc.main(["grpc_tools.protoc", "-Iproto", f"-I{well_known}",
                              "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
                              *protos])
    finally:
        os.chdir(cwd)
    if status != 0:
        raise SystemExit(f"protoc failed ({status}) on {protos}")


class BuildPy(build_py):
    """Generate the gRPC code before collecting the packages (wheels, sdists)."""

    def run(self) -> None:
        generate_grpc_code()
        super().run()


class BuildExt(build_ext):
    """Editable installs build the extension in place but may skip build_py: generate
    the gRPC code here too (it is idempotent)."""

    def run(self) -> None:
        generate_grpc_code()
        super().run()


extensions = [
    Extension(
        "settlement._fast._kernel",
        ["settlement/_fast/_kernel.pyx"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
