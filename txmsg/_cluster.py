"""
Reaching a cluster: the first of several brokers that accepts a TCP
connection (L{ClusterEndpoint}), and what is known when one does not
(L{FailedAttempt}, L{NoBrokerAvailable}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from txmsg._guard import GuardedFactory, LostGuard
from txmsg.url import ConnectionParameters


def safe_urls(params: Sequence[ConnectionParameters]) -> str:
    return ", ".join(p.safe_url for p in params)


@dataclass(frozen=True)
class FailedAttempt:
    """
    Why an attempt to connect failed: the broker's URL (password masked) and
    the error (a refused TCP connection, a failed handshake, a lost connection).
    """

    url: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.url}: {self.error}"


class NoBrokerAvailable(ConnectError):
    """
    No URL of the cluster accepted a TCP connection.
    """


@implementer(IStreamClientEndpoint)
class ClusterEndpoint:
    """
    Connect to the first of several brokers that answers, in the order given.

    @ivar current: the parameters of the broker being tried (or connected) now.
    """

    _log = Logger()

    def __init__(
        self,
        params: Sequence[ConnectionParameters],
        reactor: Any,
        on_failure: Callable[[FailedAttempt], None] | None = None,
    ) -> None:
        if not params:
            raise ValueError("at least one broker URL is needed")
        self.params = list(params)
        self.reactor = reactor
        self.current = self.params[0]
        #: called with each URL that did not accept a connection
        self.on_failure = on_failure
        #: the next attempt tries only the broker of the connection just lost
        #: (replacing a cut connection at once must not fail over to a node
        #: whose queues are still electing a leader)
        self.current_only = False

    def __repr__(self) -> str:
        return f"<ClusterEndpoint {safe_urls(self.params)}>"

    @inlineCallbacks
    def connect(self, protocolFactory: Any) -> Any:
        """
        Connect C{protocolFactory} to the first broker that accepts (C{IStreamClientEndpoint}).
        """
        errors = []
        candidates = [self.current] if self.current_only else self.params
        self.current_only = False
        for params in candidates:
            self.current = params
            self._log.info("connecting to {url}", url=params.safe_url)
            try:
                protocol = yield params.endpoint(self.reactor).connect(GuardedFactory(protocolFactory))
            except CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - refused, unreachable, unresolvable: try the next
                self._log.info("{url} did not answer: {error}", url=params.safe_url, error=e)
                if self.on_failure is not None:
                    self.on_failure(FailedAttempt(params.safe_url, e))
                errors.append(f"{params.safe_url}: {e}")
            else:
                # the transport talks to the guard; ClientService gets its own proxy
                return protocol._wrapped if isinstance(protocol, LostGuard) else protocol
        raise NoBrokerAvailable(string="; ".join(errors))
