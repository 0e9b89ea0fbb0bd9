"""A throwaway certificate for trying the receiver over https on one machine.

``prefect-kandinsky webhooks serve --self-signed DIR`` writes a private CA (``DIR/ca.pem``)
and a certificate for 127.0.0.1 and localhost signed by it (``DIR/server.pem``, key
included), and serves https with them; the emulator trusts that CA with
``--webhook-ca-file DIR/ca.pem``. For local tries only: the CA's key is not kept, so nothing
else can ever be signed by it, and the certificate lasts 30 days.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

CA_FILE = "ca.pem"
"""The CA certificate a local gateway (the emulator) trusts: ``--webhook-ca-file``."""
SERVER_FILE = "server.pem"
"""The receiver's certificate chain and private key: ``--certfile``."""
VALID_DAYS = 30


def throwaway_certificate(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(ca.pem, server.pem)`` in ``folder``: made once, reused while both exist."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = Path(folder).expanduser()
    ca_file, server_file = root / CA_FILE, root / SERVER_FILE
    if ca_file.is_file() and server_file.is_file():
        return ca_file, server_file
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prefect-kandinsky local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server_file.touch(mode=0o600)
    server_file.write_bytes(key_pem + server.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file, server_file


__all__ = ["CA_FILE", "SERVER_FILE", "throwaway_certificate"]
