"""Self-signed certificates made at test time with the ``openssl`` command."""

from __future__ import annotations

import pathlib
import subprocess


def self_signed(directory: pathlib.Path, name: str = "localhost",
                alt_names: str = "DNS:localhost,IP:127.0.0.1,IP:::1") -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``cert.pem`` and ``key.pem`` (EC P-256, 2 days) for ``name``; return their paths."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName={alt_names}"],
        check=True, capture_output=True, timeout=30)
    return cert, key
