"""Build the compiled core of bunws.

The extensions are mandatory: a failed compile fails the install (no pure-Python
fallback; the tests carry their own oracles).

Build switches are environment variables, because PEP 517 front ends do not pass
argv flags through to setup.py:

* ``BUNWS_DEBUG=1``    bounds/wraparound checks on, ``-O0 -g``
* ``BUNWS_TRACE=1``    line tracing for ``Cython.Coverage`` (CYTHON_TRACE_NOGIL)
* ``BUNWS_ANNOTATE=1`` write the ``cython -a`` HTML next to each .pyx
* ``BUNWS_SANITIZE=address`` build with ``-fsanitize=address`` (fuzzing runs)
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


DEBUG = _flag("BUNWS_DEBUG")
TRACE = _flag("BUNWS_TRACE")
ANNOTATE = _flag("BUNWS_ANNOTATE")
SANITIZE = os.environ.get("BUNWS_SANITIZE", "")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
macros = []
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
ldflags = []
if TRACE:
    directives["linetrace"] = True
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
if SANITIZE:
    cflags += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"]
    ldflags += [f"-fsanitize={SANITIZE}"]


def ext(name: str, **kw) -> Extension:
    return Extension(
        f"bunws.{name}",
        [f"bunws/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        **kw,
    )


extensions = [
    ext("_frame"),
    ext("_deflate", libraries=["z"]),
    ext("_wscore"),
    ext("_client"),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        force=TRACE or DEBUG,
    ),
    zip_safe=False,
)
