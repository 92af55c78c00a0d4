"""
``twistd txmsg``: options and the service they make.

This first version hosts the ``consumer`` role; the other roles arrive with the
services issue.  ``twistd -n txmsg --role consumer --queue hello`` consumes
``hello`` and logs each message as one line (or calls ``--handler``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import reflect, usage

from txmsg.connection import Connection
from txmsg.consumer import DEFAULT_PREFETCH, Consumer, Handler
from txmsg.errors import TxmsgError
from txmsg.message import Message
from txmsg.topology import Queue
from txmsg.url import InvalidURL, parse_urls

ROLES = ("consumer",)

_log = Logger(namespace="txmsg")


def log_message(message: Message) -> None:
    """
    The default handler: one readable line per message.
    """
    try:
        shown: Any = message.payload
    except TxmsgError:
        shown = message.body
    _log.info(
        "{exchange}/{routing_key}: {payload!r}",
        exchange=message.exchange or "(default)",
        routing_key=message.routing_key,
        payload=shown,
    )


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Host a txmsg service on RabbitMQ.  Roles: " + ", ".join(ROLES) + "."

    optParameters = [
        ["role", None, None, "What to run: " + ", ".join(ROLES) + "."],
        ["queue", "q", None, "Queue to consume (declared if missing)."],
        ["handler", None, None, "pkg.module:callable called with each Message."],
        ["prefetch", None, DEFAULT_PREFETCH, "Unacked messages the broker may send at once.", int],
        ["name", None, "txmsg", "Connection name shown in the management UI."],
    ]
    optFlags = [["durable", None, "Declare the queue durable."]]

    def __init__(self) -> None:
        super().__init__()
        self["urls"] = []

    def opt_url(self, url: str) -> None:
        """
        Broker URL; repeat for a cluster.  Default: $TXMSG_URL or amqp://localhost.
        """
        self["urls"].append(url)

    def postOptions(self) -> None:
        if self["role"] not in ROLES:
            raise usage.UsageError(f"--role must be one of: {', '.join(ROLES)}")
        if not self["queue"]:
            raise usage.UsageError("--role consumer needs --queue")
        try:
            self["params"] = parse_urls(self["urls"] or None)
        except InvalidURL as e:
            raise usage.UsageError(str(e)) from None
        self["handler_callable"] = resolve_handler(self["handler"]) if self["handler"] else log_message


def resolve_handler(spec: str) -> Handler:
    """
    Resolve C{pkg.module:callable} (or a dotted name), as a one-line UsageError if wrong.
    """
    dotted = spec.replace(":", ".")
    try:
        handler = reflect.namedAny(dotted)
    except (reflect.ObjectNotFound, reflect.InvalidName, AttributeError, ValueError) as e:
        raise usage.UsageError(f"--handler {spec}: cannot find it ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed to import
        raise usage.UsageError(f"--handler {spec}: importing it failed: {e!r}") from None
    if not callable(handler):
        raise usage.UsageError(f"--handler {spec}: not callable")
    return handler


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    top = MultiService()
    connection = Connection(options["urls"] or None, reactor=reactor, name=options["name"])
    queue = Queue(options["queue"], durable=bool(options["durable"]))
    connection.topology.append(queue)
    connection.setServiceParent(top)
    consumer = Consumer(connection, queue, options["handler_callable"], prefetch=options["prefetch"])
    consumer.setServiceParent(top)
    return top
