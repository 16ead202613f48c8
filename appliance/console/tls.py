"""The console's per-device TLS certificate: created once, self-signed, identified by its fingerprint.

Owns: ``ensure_certificate`` (``STATE/tls/console.key`` 0600 + ``console.crt``: ECDSA P-256,
self-signed, subject alternative names for every name and address the console listens on,
10 years) and ``fingerprint`` (SHA-256 over the DER certificate, the form browsers show).
The technician compares the fingerprint their browser shows with the one printed by
``appliance console fingerprint`` on the node's label or serial console (trust on first use,
ETSI EN 303 645 5.5). Does not own serving TLS (uvicorn does).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.errors import KeyFileError

VALID_DAYS = 3650


def cert_paths(state_dir: str | Path) -> tuple[Path, Path]:
    tls = Path(state_dir) / "tls"
    return tls / "console.crt", tls / "console.key"


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in sorted(set(names) | {"localhost"}):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def ensure_certificate(state_dir: str | Path, names: Iterable[str], device: str = "appliance") -> Path:
    """The certificate path; created (with its private key) on first use only."""
    crt, key_path = cert_paths(state_dir)
    if crt.exists() and key_path.exists():
        return crt
    crt.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{device} recovery console")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, pem_key)
    finally:
        os.close(fd)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt


def fingerprint(state_dir: str | Path) -> str:
    """``SHA256:AB:CD:...`` of the console certificate (``KeyFileError`` if none was created yet)."""
    crt, _ = cert_paths(state_dir)
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"no console certificate at {crt}: {exc}",
            remedy="start the console once on a non-loopback address (or run `appliance console fingerprint --create`)",
        ) from exc
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
