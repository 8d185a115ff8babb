"""Serving credentials: the picker serves ext_proc over TLS by default, as the GIE EPP does.

With no certificate given it generates a self-signed one at start (the gateway does not verify it; the point
is an encrypted channel). `--cert-path` names a directory holding `tls.crt` and `tls.key` (the layout of a
Kubernetes TLS Secret mounted as a volume), like the GIE EPP's flag. `--client-ca-cert` turns on mutual TLS:
only clients presenting a certificate signed by that CA (the gateway's) may open streams, so nobody else who
can reach the port can steer load.
"""

import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid


def self_signed(common_name: str = "frontier-picker") -> tuple[bytes, bytes]:
    """A fresh (private key PEM, certificate PEM) pair, valid for ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def server_credentials(cert_path: Path | None, *, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials from `cert_path/tls.{crt,key}`, or from a freshly generated self-signed pair; with
    `client_ca` (a PEM file) clients must present a certificate it signed."""
    if cert_path is None:
        key_pem, cert_pem = self_signed()
    else:
        try:
            key_pem = (cert_path / "tls.key").read_bytes()
            cert_pem = (cert_path / "tls.crt").read_bytes()
        except OSError as error:
            raise ValueError(f"--cert-path {cert_path}: needs tls.crt and tls.key there ({error})") from None
    if client_ca is None:
        return grpc.ssl_server_credentials([(key_pem, cert_pem)])
    try:
        roots = client_ca.read_bytes()
    except OSError as error:
        raise ValueError(f"--client-ca-cert {client_ca}: {error}") from None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=roots, require_client_auth=True
    )
