"""
TLS test support shared by the unit and the integration tests: certificates
made on the fly (L{make_cert}, L{make_pki}) and L{TLSServer}, TLS servers on
127.0.0.1 that report what they saw.  The C{pki} and C{tls_server} fixtures
over them are in C{tests/conftest.py}.

Everything here needs Twisted's TLS extra (pyOpenSSL, service_identity,
cryptography); L{HAVE_TLS} says whether it is installed, and tests that need
it skip without it.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

try:
    import OpenSSL  # noqa: F401
    import service_identity  # noqa: F401
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_TLS = False
else:
    HAVE_TLS = True


def _name(common_name: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    common_name: str,
    issuer: tuple[Any, Any] | None = None,
    *,
    ca: bool = False,
    san: list[Any] | None = None,
) -> tuple[Any, Any]:
    """
    A new EC key and a certificate for it, signed by C{issuer} (a
    certificate and its key) or self-signed.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name = issuer[0].subject if issuer else _name(common_name)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
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
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def cert_pem(cert: Any) -> bytes:
    """
    A certificate as PEM.
    """
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def key_pem(key: Any) -> bytes:
    """
    A private key as unencrypted PKCS#8 PEM.
    """
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(directory: Path) -> dict[str, Path]:
    """
    A CA, a server certificate for localhost/127.0.0.1 and a client
    certificate signed by it, and an unrelated CA, written as PEM files in
    C{directory}; the paths by name (C{ca}, C{other_ca}, C{bundle} (both CAs),
    C{server} (certificate and key), C{client_cert}, C{client_key},
    C{client_both}).
    """
    ca = make_cert("txmsg test CA", ca=True)
    other_ca = make_cert("unrelated CA", ca=True)
    server = make_cert(
        "localhost",
        ca,
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client = make_cert("txmsg-client", ca)
    files = {
        "ca": cert_pem(ca[0]),
        "other_ca": cert_pem(other_ca[0]),
        "bundle": cert_pem(other_ca[0]) + cert_pem(ca[0]),
        "server": cert_pem(server[0]) + key_pem(server[1]),
        "client_cert": cert_pem(client[0]),
        "client_key": key_pem(client[1]),
        "client_both": cert_pem(client[0]) + key_pem(client[1]),
    }
    paths: dict[str, Path] = {}
    for name, data in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = path
    return paths


class _ServerProtocol(Protocol):
    """
    Answers the first line with what the TLS server saw: the SNI name and the
    client certificate's common name.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        sni = transport.getHandle().get_servername() or b"-"
        peer = transport.getPeerCertificate()
        common_name = b"-"
        if peer is not None:
            [attribute] = peer.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            common_name = str(attribute.value).encode()
        transport.write(b"sni=" + sni + b" client=" + common_name + b"\n")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class TLSServer:
    """
    TLS servers on 127.0.0.1 for the handshake tests, using the certificates
    of L{make_pki}.
    """

    def __init__(self, pki: dict[str, Path]) -> None:
        self.pki = pki
        self.ports: list[Any] = []
        self.connections: list[_ServerProtocol] = []

    def start(self, require_client_certificate: bool = False) -> int:
        """
        Listen with the server certificate, requiring a client certificate
        signed by the test CA if asked; return the port.
        """
        from twisted.internet import reactor
        from twisted.internet.ssl import Certificate, PrivateCertificate
        from twisted.protocols.tls import TLSMemoryBIOFactory

        server: Any = PrivateCertificate.loadPEM(self.pki["server"].read_bytes())
        if require_client_certificate:
            options = server.options(Certificate.loadPEM(self.pki["ca"].read_bytes()))
        else:
            options = server.options()
        factory: Any = Factory.forProtocol(self._new_connection)
        tls = TLSMemoryBIOFactory(options, False, factory)
        listener: Any = reactor
        port = listener.listenTCP(0, tls, interface="127.0.0.1")
        self.ports.append(port)
        return int(port.getHost().port)

    def _new_connection(self) -> _ServerProtocol:
        protocol = _ServerProtocol()
        self.connections.append(protocol)
        return protocol

    def stop(self) -> None:
        """
        Stop listening.
        """
        for port in self.ports:
            port.stopListening()
