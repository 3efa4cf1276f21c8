"""Packaging for evws (setuptools)."""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="evws",
    version="0.1.0",
    description="Callback-style WebSocket server (RFC 6455) on a selectors loop, after Perl's AnyEvent::WebSocket::Server",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["evws", "evws.*"]),
    package_data={"evws": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["pyee>=11"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "websockets>=12"],
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
        "Topic :: Internet :: WWW/HTTP",
        "Typing :: Typed",
    ],
)
