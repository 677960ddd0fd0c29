"""Certificates and keys for a trial deployment: a private CA, a SuperLink server certificate
signed by it, and SuperNode authentication key pairs.

    python -m autofednlp.deploy.certs --host 192.168.1.10 --out certs [--node-keys 3]

writes `ca.crt`, `ca.key`, `server.crt`, `server.key` (and `node0`, `node0.pub`, ...). The
SuperLink gets `ca.crt`, `server.crt`, `server.key`; every SuperNode and the machine running
`flwr run` get `ca.crt` only; `ca.key` signs certificates and should stay offline.

For trials, not production: no revocation, no intermediate CA, keys are not encrypted.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The SuperLink reaches its own Runtime API on the loopback address even when it listens on
# all interfaces (flwr 1.42 rewrites 0.0.0.0 to 127.0.0.1), so its certificate must name it too.
LOCAL_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TrialCerts:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys([*hosts, *LOCAL_NAMES]):  # keeps order, drops repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def make_trial_certs(out_dir: str | Path, hosts: list[str], days: int = 365) -> TrialCerts:
    """Create a private CA and a server certificate valid for `hosts` (IP addresses or DNS
    names the SuperNodes use to reach the SuperLink), both on ECDSA P-384."""
    if not hosts:
        raise ValueError("give at least one host (the SuperLink's IP address or DNS name)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_from = now - datetime.timedelta(minutes=5)  # tolerate small clock skew
    valid_to = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autofednlp trial CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    paths = TrialCerts(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.ca_key, _pem_key(ca_key))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.server_key, _pem_key(key))
    return paths


def make_node_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format for SuperNode authentication, as
    `ssh-keygen -t ecdsa -b 384 -N "" -f <name>` writes it: `<name>` (private, for
    `flower-supernode --auth-supernode-private-key`) and `<name>.pub` (for
    `flwr supernode register`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = out / name
    public = out / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_bytes(pub + f" {name}\n".encode())
    return private, public


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autofednlp.deploy.certs",
        description="Create a private CA, a SuperLink certificate and SuperNode keys for trials.",
    )
    p.add_argument(
        "--host",
        action="append",
        required=True,
        help="IP address or DNS name SuperNodes use to reach the SuperLink (repeatable); "
        f"{' and '.join(LOCAL_NAMES)} are always added",
    )
    p.add_argument("--out", required=True, help="directory to write the files to")
    p.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    p.add_argument(
        "--node-keys",
        type=int,
        default=0,
        metavar="N",
        help="also create N SuperNode key pairs node0..node<N-1> (default: 0)",
    )
    args = p.parse_args(argv)
    certs = make_trial_certs(args.out, args.host, args.days)
    written = [certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key]
    for i in range(args.node_keys):
        written.extend(make_node_key(args.out, f"node{i}"))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
