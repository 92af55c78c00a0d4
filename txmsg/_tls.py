"""
TLS for C{amqps} URLs: the client configuration made from a URL's
certificate options (see L{txmsg.url}), and the connection creator for
C{verify_none}, which still sends the server name.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from zope.interface import implementer

from txmsg._url_syntax import is_ip_address
from txmsg.url import ConnectionParameters

if TYPE_CHECKING:
    from OpenSSL.SSL import Connection, Context
    from twisted.internet.ssl import Certificate, PrivateCertificate
    from twisted.protocols.tls import TLSMemoryBIOProtocol

#: whether this Twisted's wrapClientTLS takes the reactor as its clock (26.4 and later)
_WRAP_TAKES_CLOCK = "clock" in inspect.signature(wrapClientTLS).parameters

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    Client TLS that does not check the server's certificate (C{verify_none})
    but still sends the server name (SNI), which proxies may route on.
    """

    def __init__(self, hostname: str, context: Context) -> None:
        """
        @param hostname: the name to send in SNI; an IP address sends none.
        @param context: the OpenSSL context, with verification off.
        """
        self._context = context
        self._server_name: bytes | None = None
        if not is_ip_address(hostname):
            self._server_name = hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> Connection:
        """
        A new OpenSSL connection for C{tlsProtocol}.
        """
        from OpenSSL.SSL import Connection

        connection = Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def wrap_client_tls(
    params: ConnectionParameters, tcp: IStreamClientEndpoint, reactor: Any
) -> IStreamClientEndpoint:
    """
    C{tcp} wrapped in the TLS C{params} ask for.  The reactor is the TLS
    layer's clock where Twisted takes one (26.4 and later); older ones use
    the global reactor's, as they always did.
    """
    creator = connection_creator(params)
    if _WRAP_TAKES_CLOCK:
        return wrapClientTLS(creator, tcp, clock=reactor)
    return wrapClientTLS(creator, tcp)


def connection_creator(params: ConnectionParameters) -> IOpenSSLClientConnectionCreator:
    """
    The TLS client configuration for C{params} (an C{amqps} URL).
    """
    try:
        from twisted.internet import ssl
    except ImportError as exc:  # pragma: no cover - depends on installation
        raise NotImplementedError(
            "amqps:// needs pyOpenSSL and service_identity: pip install twisted[tls]"
        ) from exc

    hostname = params.server_name_indication or params.host
    client_certificate = _client_certificate(params)
    if params.verify:
        trust_root = None
        if params.cafile is not None:
            trust_root = ssl.trustRootFromCertificates(_load_ca_certificates(params.cafile))
        return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client_certificate)
    if client_certificate is None:
        options = ssl.CertificateOptions(verify=False)
    else:
        options = ssl.CertificateOptions(
            privateKey=client_certificate.privateKey.original,
            certificate=client_certificate.original,
            verify=False,
        )
    return cast(
        IOpenSSLClientConnectionCreator,
        _UnverifiedClientTLS(hostname, options.getContext()),
    )


def _client_certificate(params: ConnectionParameters) -> PrivateCertificate | None:
    """
    The client certificate and key from C{certfile} and C{keyfile}, if
    any.
    """
    if params.certfile is None:
        return None
    from twisted.internet.ssl import PrivateCertificate

    pem = _read_file(params.certfile)
    source = f"certfile {params.certfile}"
    if params.keyfile is not None:
        pem = pem + b"\n" + _read_file(params.keyfile)
        source = f"{source} and keyfile {params.keyfile}"
    try:
        certificate: PrivateCertificate = PrivateCertificate.loadPEM(pem)
    except Exception as exc:  # noqa: BLE001 - OpenSSL raises several kinds
        raise ValueError(f"cannot load a client certificate and private key from {source}: {exc}") from None
    return certificate


def _read_file(path: str) -> bytes:
    """
    The bytes of the file at C{path}.
    """
    with open(path, "rb") as file:
        return file.read()


def _load_ca_certificates(path: str) -> list[Certificate]:
    """
    Every certificate in the PEM file C{path}.

    @raise ValueError: the file holds no certificate, or a bad one.
    """
    from twisted.internet.ssl import Certificate

    blocks = _PEM_CERTIFICATE.findall(_read_file(path))
    if not blocks:
        raise ValueError(f"cacertfile {path} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as exc:  # noqa: BLE001 - OpenSSL raises several kinds
        raise ValueError(f"cannot load the certificates in cacertfile {path}: {exc}") from None
