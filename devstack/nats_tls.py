"""Certificates for a local NATS server's TLS: a CA of the stack's own and a server certificate it signed.

`make run` and the e2e tests make them once per var/ (var/nats-tls/); every process checks the server's certificate
against ca.pem (ServiceSettings.nats_tls_ca). Kubernetes takes its certificates from the Secret nats-tls instead
(docs/deploy.md); `python -m devstack.nats_tls DIR NAME...` writes such a set (ca.crt, tls.crt, tls.key) for the dev
overlay.
"""

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1")
RENEW_BEFORE = datetime.timedelta(days=30)
"""A certificate that ends sooner than this is made anew."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    certificate: Path
    key: Path


def local_certificates(directory: Path, names: tuple[str, ...] = LOCAL_NAMES, *, days: int = 365) -> TlsFiles:
    """ca.pem, server.pem and server.key in `directory`, made unless valid ones for `names` are there already."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if _still_valid(files, names):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, certificate_pem, key_pem = make_certificates(names, days=days, ca_name="xsell local NATS CA")
    files.ca.write_bytes(ca_pem)
    files.certificate.write_bytes(certificate_pem)
    files.key.touch(mode=0o600)
    files.key.write_bytes(key_pem)
    return files


def make_certificates(names: tuple[str, ...], *, days: int, ca_name: str) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a certificate for `names` (DNS names, IP addresses, `*.` wildcards) it signed with the
    server's private key: PEM each. The server certificate serves both sides of TLS (NATS routes are mutual TLS:
    server and client auth)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        # Key identifiers: Python 3.13's default TLS context (VERIFY_X509_STRICT) refuses a chain without them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _still_valid(files: TlsFiles, names: tuple[str, ...]) -> bool:
    """Whether the certificate names `names`, ends later than RENEW_BEFORE from now, and was signed by the CA file
    (a set left half written is made anew)."""
    if not (files.certificate.exists() and files.ca.exists() and files.key.exists()):
        return False
    try:
        certificate = x509.load_pem_x509_certificate(files.certificate.read_bytes())
        certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    present = {str(n) for n in alternatives.get_values_for_type(x509.DNSName)}
    present |= {str(n) for n in alternatives.get_values_for_type(x509.IPAddress)}
    ends = certificate.not_valid_after_utc
    return set(names) <= present and ends - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def main(argv: list[str]) -> int:
    """`python -m devstack.nats_tls DIR NAME...`: ca.crt, tls.crt and tls.key for NAME... in DIR (the Secret nats-tls's
    keys), valid 10 years: for a development cluster only."""
    if len(argv) < 2:
        print("usage: python -m devstack.nats_tls DIR NAME...", file=sys.stderr)
        return 2
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, certificate_pem, key_pem = make_certificates(
        tuple(argv[1:]), days=3650, ca_name="xsell dev NATS CA (not for production)"
    )
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "tls.crt").write_bytes(certificate_pem)
    (directory / "tls.key").touch(mode=0o600)
    (directory / "tls.key").write_bytes(key_pem)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
