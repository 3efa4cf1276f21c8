"""Packaging for evws (setuptools).

The C extension ``evws._speedups`` (unmasking, UTF-8 validation) is optional:
evws is pure Python and falls back to its Python code paths when the extension
is missing. So a failed compile -- no compiler, no Python headers -- must never
fail the install; ``OptionalBuildExt`` turns it into a warning. Set
``EVWS_NO_SPEEDUPS=1`` to skip the extension on purpose.
"""

import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the extension only speeds evws up."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing (DistutilsPlatformError, OSError...)
            self._skip(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError...
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"WARNING: evws C speedups not built ({exc!r}); "
              "the pure-Python code paths will be used.", file=sys.stderr)


if os.environ.get("EVWS_NO_SPEEDUPS"):
    ext_modules = []
else:
    ext_modules = [Extension("evws._speedups", ["evws/_speedups.c"], optional=True)]

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="evws",
    version="0.1.0",
    description=("Callback-style WebSockets (RFC 6455, RFC 7692) on a selectors loop, "
                 "after Perl's AnyEvent::WebSocket::Server and Client"),
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["evws", "evws.*"]),
    package_data={"evws": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    python_requires=">=3.10",
    # evws.emitter implements pyee's public EventEmitter API itself (no pyee
    # private is used); tested against pyee 11-13, and tests/test_layering.py
    # fails if a pyee release adds a public method evws does not implement.
    install_requires=["pyee>=11,<14"],
    extras_require={
        # h11 does the HTTP/1.1 framing of evws.wsgi (the core does not need it)
        "wsgi": ["h11>=0.14"],
        # hiredis parses RESP for evws.RedisBroker (Hub rooms across processes)
        "redis": ["hiredis>=2"],
        "test": ["pytest>=7", "hypothesis>=6", "websockets>=12", "h11>=0.14", "flask>=2.2",
                 "hiredis>=2", "mypy", "ruff", "build", "wheel"],
    },
    entry_points={
        "console_scripts": ["evws=evws.cli:console_main"],
        # The pytest plugin (evws_loop, ws_pair, ws_server): loaded by pytest
        # in any project that has evws installed; ``-p no:evws`` turns it off.
        "pytest11": ["evws.testing = evws.testing"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Environment :: Console",
        "Topic :: Internet :: WWW/HTTP",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
        "Framework :: Pytest",
        "Typing :: Typed",
    ],
)
