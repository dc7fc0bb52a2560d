"""A throwaway PKI for TLS tests: a CA and certificates it signs, made with the openssl command."""

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory: Path, name: str, subject: str, extensions: str) -> None:
    """A P-256 key and a certificate for it signed by the test CA in `directory`."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=directory)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=directory)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory,
    )  # fmt: skip


def make_ca(directory: Path) -> Path:
    """A CA (ca.key, ca.pem) in `directory`, with a server certificate for localhost and 127.0.0.1 (server.pem)."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=xsell test CA", "-days", "1", "-out", "ca.pem",
        cwd=directory,
    )  # fmt: skip
    issue(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    return directory
