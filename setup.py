"""Build script: compiles the Cython pricing kernel (``settlement/_fast``).

Everything else is declared in ``pyproject.toml``.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "settlement._fast._kernel",
        ["settlement/_fast/_kernel.pyx"],
        extra_compile_args=["-O2"],
    ),
]

setup(
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
