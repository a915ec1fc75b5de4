"""A development certificate authority and the certificates it issues (``quorumkv certs``).

The CA is an EC P-256 key and a self-signed certificate (basicConstraints
CA, pathlen 0). A certificate it issues names its holder in the common name
and, for hostname checks, in its SubjectAlternativeName (the name as a DNS
name, plus any extra DNS names and IP addresses). By default a certificate
serves both ways (EKU serverAuth and clientAuth): a node presents the same
one to the peers it calls and to the peers that call it. A client-only
certificate (``client_only``) carries clientAuth alone.

Private keys are written with mode 0600 and every file atomically (a
temporary file beside it, fsynced, renamed over), so a node reloading its
certificate never reads half a file.

``certificate_names`` reads back the names a peer's certificate carries, as
``ssl`` reports them (``getpeercert()``) or from the raw DER bytes: it is what
the peer transport checks a member's identity against.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quorumkv.errors import InvalidArgument

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 825
_CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this much in the past, so a peer whose clock is a little behind
does not refuse a certificate issued a moment ago."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# DNS names may be wildcards or contain dots; still no path separators or spaces.
_DNS = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class Issued:
    """Where an issued certificate and its key were written."""

    cert_file: Path
    key_file: Path
    serial: int


def check_cert_name(name: str) -> str:
    """A certificate holder's name: it becomes a file name and a DNS name."""
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid certificate name {name!r}: 1-63 letters, digits, "
                              "'.', '_' or '-', starting with a letter or digit")
    return name


def _check_dns(name: str) -> str:
    if not _DNS.match(name):
        raise InvalidArgument(f"invalid DNS name {name!r}")
    return name


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid IP address {text!r}") from None


def _validity(days: int, not_before: dt.datetime | None,
              not_after: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if not_before is None and not_after is None and days < 1:
        raise InvalidArgument("a certificate must be valid for at least one day")
    start = not_before or dt.datetime.now(dt.UTC) - _CLOCK_SKEW
    end = not_after or start + _CLOCK_SKEW + dt.timedelta(days=days)
    if end <= start:
        raise InvalidArgument("a certificate's not_after must be later than its not_before")
    return start, end


def write_private_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, the file created with ``mode`` from the start
    (a key is never readable by others, not even for a moment)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(*, common_name: str = "quorumkv development CA", days: int = DEFAULT_CA_DAYS,
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate and its key (in memory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, None, None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "quorumkv")])
    public = key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, *,
              dns: Iterable[str] = (), ips: Iterable[str] = (), days: int = DEFAULT_CERT_DAYS,
              client_only: bool = False, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None,
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``name`` signed by the CA, and its new key (in memory).

    ``not_before``/``not_after`` override ``days`` (tests make expired certificates).
    """
    check_cert_name(name)
    dns_names = list(dict.fromkeys([name, *(_check_dns(d) for d in dns)]))
    addresses = list(dict.fromkeys(_parse_ip(ip) for ip in ips))
    start, end = _validity(days, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_only
              else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    alt_names += [x509.IPAddress(a) for a in addresses]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def init_ca(directory: Path, *, days: int = DEFAULT_CA_DAYS, force: bool = False) -> Issued:
    """Create ``directory``/ca.pem and ca-key.pem; refuses to replace them unless ``force``
    (every certificate the old CA signed would stop being trusted)."""
    directory = Path(directory)
    cert_file, key_file = directory / CA_CERT, directory / CA_KEY
    if not force and (cert_file.exists() or key_file.exists()):
        raise InvalidArgument(f"a CA already exists in {directory} (give --force to replace "
                              "it; certificates it signed will no longer be trusted)")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = make_ca(days=days)
    write_private_file(key_file, _key_pem(key))
    write_private_file(cert_file, _cert_pem(cert), mode=0o644)
    return Issued(cert_file, key_file, cert.serial_number)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    directory = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(),
                                                 password=None)
    except FileNotFoundError:
        raise InvalidArgument(f"no CA in {directory}: run `quorumkv certs init --dir "
                              f"{directory}` first") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read the CA in {directory}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"the CA key in {directory} is not an EC key")
    return cert, key


def issue(directory: Path, name: str, *, dns: Iterable[str] = (), ips: Iterable[str] = (),
          days: int = DEFAULT_CERT_DAYS, client_only: bool = False,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
          out_dir: Path | None = None) -> Issued:
    """Issue a certificate for ``name`` with the CA in ``directory``; write NAME.pem and
    NAME-key.pem (into ``out_dir``, by default the CA's directory). Replaces an existing
    certificate of that name: re-issuing is how a certificate is renewed."""
    ca_cert, ca_key = load_ca(directory)
    cert, key = make_cert(ca_cert, ca_key, name, dns=dns, ips=ips, days=days,
                          client_only=client_only, not_before=not_before, not_after=not_after)
    target = Path(out_dir) if out_dir is not None else Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = target / f"{name}.pem", target / f"{name}-key.pem"
    # Key first: a reloading node that sees the new certificate must find its key.
    write_private_file(key_file, _key_pem(key))
    write_private_file(cert_file, _cert_pem(cert), mode=0o644)
    return Issued(cert_file, key_file, cert.serial_number)


def certificate_names(peer_cert: Mapping[str, Any] | bytes | None) -> tuple[str, ...]:
    """The names a certificate carries: its SAN DNS names, then its common name(s).

    ``peer_cert`` is what ``SSLObject.getpeercert()`` returns (a verified peer's
    certificate as a dict) or DER bytes (``getpeercert(binary_form=True)``).
    """
    if not peer_cert:
        return ()
    names: list[str] = []
    if isinstance(peer_cert, bytes):
        try:
            cert = x509.load_der_x509_certificate(peer_cert)
        except ValueError:
            return ()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            pass
        names += [str(a.value) for a in
                  cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        for kind, value in peer_cert.get("subjectAltName", ()):
            if kind == "DNS":
                names.append(str(value))
        for rdn in peer_cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    names.append(str(value))
    return tuple(dict.fromkeys(names))


def serial_of(cert_file: Path) -> int:
    """The serial number of the PEM certificate in ``cert_file``."""
    return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).serial_number
