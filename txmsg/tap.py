"""
``twistd txmsg``: the options of every role and the services they make::

    twistd -n txmsg --role consumer --queue hello
    twistd -n txmsg --role rpc-server --queue rpc_queue --handler myapp.rpc:answer
    twistd -n txmsg --role fanout --group chat
    twistd -n txmsg --role producer --listen tcp:8080

Each role is a thin layer over txmsg's public services (L{Consumer},
L{RpcServer}, L{PeerGroup}, L{txmsg.web.PublishResource}) in one
C{MultiService} with the L{Connection}; C{--metrics ENDPOINT} adds Prometheus
text at C{/metrics} and a JSON C{/health}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import reflect, usage

from txmsg._declaring_service import DeclaringService
from txmsg._render import readable_line
from txmsg._startup import StartupWatch
from txmsg.connection import Connection
from txmsg.consumer import DEFAULT_PREFETCH, Consumer, Handler
from txmsg.exits import TWISTD, help_text
from txmsg.message import Message
from txmsg.peers import PeerGroup
from txmsg.retry import RetryPolicy
from txmsg.rpc import RpcServer
from txmsg.topology import Binding, Exchange, Queue
from txmsg.url import InvalidURL, parse_urls

if TYPE_CHECKING:
    from txmsg.producer import Producer

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")

_log = Logger(namespace="txmsg")


def log_message(message: Message) -> None:
    """
    The default handler: one readable line per message.
    """
    _log.info("{line}", line=readable_line(message))


def log_messages(messages: list[Message]) -> None:
    """
    The default handler of a batch: one readable line per message.
    """
    for message in messages:
        log_message(message)


def echo(message: Message) -> Any:
    """
    The default RPC handler: log the request and answer with its payload.
    """
    log_message(message)
    return message.payload


def parse_value(text: str) -> Any:
    """
    A queue argument's value from the command line: integers and booleans as
    such (C{x-max-length=10}, C{x-single-active-consumer=true}), else text.
    """
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _pair(flag: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise usage.UsageError(f"{flag} takes KEY=VALUE, not {text!r}")
    return key, value


# ---------------------------------------------------------------------------
# the roles: one record each, whence the --role help, checks, default handler and services


@dataclass(frozen=True)
class Built:
    """
    What a role's L{Role.build} made: its service (added after the connection;
    its C{declared}, if any, is watched at start-up), and the consumers and
    producer (C{None}: none) that C{--metrics} watches.
    """

    service: IService
    consumers: Sequence[Consumer] = ()
    producer: Producer | None = None


@dataclass(frozen=True)
class Role:
    """
    One C{--role}, everything about it in one place.

    @ivar name: the value of C{--role}.
    @ivar summary: what it does, in a few words for C{--help}.
    @ivar check: raises C{usage.UsageError} if the options do not suit the
        role (after the checks common to every role).
    @ivar build: makes the role's services on the connection, with the reactor.
    @ivar default_handler: called with each message without C{--handler}.
    """

    name: str
    summary: str
    check: Callable[[Options], None]
    build: Callable[[Options, Connection, Any], Built]
    default_handler: Handler = log_message


def _check_consumer(options: Options) -> None:
    if not options["queue"] and not options["exchange"]:
        raise usage.UsageError("--role consumer needs --queue, or --exchange for a subscriber queue")
    if (options["binds"] or options["bind_headers"]) and not options["exchange"]:
        raise usage.UsageError("--bind and --bind-header need --exchange")
    if options["bind_headers"] and options["exchange-type"] != "headers":
        raise usage.UsageError("--bind-header needs --exchange-type headers")
    _check_retry(options)
    if options["batch"] is not None:
        if options["batch"] < 1 or not options["batch-wait"] > 0:
            raise usage.UsageError("--batch must be at least 1 and --batch-wait positive")
        if options["no-ack"]:
            raise usage.UsageError("--batch acks a batch together: it contradicts --no-ack")
        if options["prefetch"] and options["prefetch"] < options["batch"]:
            options["prefetch"] = options["batch"]  # a whole batch must be let in


def _check_retry(options: Options) -> None:
    """
    C{--retry N --retry-delay D} as a L{RetryPolicy} in C{options["retry_policy"]}.
    """
    if options["retry"] is None:
        return
    if not options["queue"]:
        raise usage.UsageError("--retry needs --queue (retries come back to a queue by its name)")
    if options["retry"] < 0:
        raise usage.UsageError("--retry must not be negative")
    try:
        options["retry_policy"] = RetryPolicy.from_text(
            options["retry"], options["retry-delay"], dead_letter=options["dead-letter"]
        )
    except ValueError as e:
        raise usage.UsageError(f"--retry-delay: {e}") from None


def _build_consumer(options: Options, connection: Connection, reactor: Any) -> Built:
    queue, handler = queue_from(options), options["handler_callable"]
    if options["batch"] is not None and handler is log_message:
        handler = log_messages
    consumer = Consumer(
        connection,
        queue,
        handler,
        prefetch=options["prefetch"],
        concurrency=options["concurrency"],
        retry=options.get("retry_policy"),
        acks="none" if options["no-ack"] else "auto",
        batch_size=options["batch"],
        batch_wait=options["batch-wait"],
    )
    service = DeclaringService(connection, [queue, *bindings_from(options, queue)], [consumer])
    return Built(service, [consumer])


def _check_worker(options: Options) -> None:
    if not options["queue"]:
        raise usage.UsageError("--role worker needs --queue (the jobs' work queue)")
    if not options["handler"]:
        raise usage.UsageError("--role worker needs --handler (what a task computes)")
    _check_retry(options)


def _build_worker(options: Options, connection: Connection, reactor: Any) -> Built:
    from txmsg.jobs import Worker

    worker = Worker(
        connection,
        options["queue"],
        options["handler_callable"],
        prefetch=options["worker-prefetch"],
        concurrency=options["concurrency"],
        worker_id=options["server-id"],
        retry=options.get("retry_policy"),
    )
    return Built(worker, worker.consumers, worker.producer)


def _check_rpc_server(options: Options) -> None:
    if not options["queue"] and not options["broadcast"]:
        raise usage.UsageError("--role rpc-server needs --queue or --broadcast")
    if (options["binds"] or options["broadcast"]) and not options["exchange"]:
        raise usage.UsageError("--bind and --broadcast need --exchange")
    _check_retry(options)
    if options["no-ack"] and options["retry"] is not None:
        raise usage.UsageError("--no-ack takes no --retry: a request is gone once it is delivered")


def _build_rpc_server(options: Options, connection: Connection, reactor: Any) -> Built:
    exchange = Exchange(options["exchange"], options["exchange-type"]) if options["exchange"] else None
    server = RpcServer(
        connection,
        queue_from(options) if options["queue"] else None,
        options["handler_callable"],
        exchange=exchange,
        bindings=options["binds"],
        broadcast=options["broadcast"],
        server_id=options["server-id"],
        prefetch=options["prefetch"],
        concurrency=options["concurrency"],
        retry=options.get("retry_policy"),
        auto_ack=bool(options["no-ack"]),
    )
    return Built(server, server.consumers, server.producer)


def _check_fanout(options: Options) -> None:
    if not options["group"]:
        raise usage.UsageError("--role fanout needs --group")


def _build_fanout(options: Options, connection: Connection, reactor: Any) -> Built:
    peer = PeerGroup(
        connection,
        options["group"],
        options["handler_callable"],
        peer_id=options["peer"],
        durable=bool(options["durable"]),
        ignore_self=bool(options["ignore-self"]),
        prefetch=options["prefetch"],
    )
    return Built(peer, [peer.consumer], peer.producer)


def _check_producer(options: Options) -> None:
    if not options["listen"]:
        raise usage.UsageError("--role producer needs --listen ENDPOINT (e.g. tcp:8080)")
    if options["publish-timeout"] <= 0:
        raise usage.UsageError("--publish-timeout must be positive")
    if options["max-body"] < 0:
        raise usage.UsageError("--max-body must not be negative")


def _build_producer(options: Options, connection: Connection, reactor: Any) -> Built:
    from txmsg.producer import Producer
    from txmsg.web import PublishResource, web_service

    producer = Producer(connection)
    resource = PublishResource(
        producer, max_body=options["max-body"], publish_timeout=options["publish-timeout"]
    )
    return Built(web_service(options["listen"], resource, reactor), producer=producer)


#: every role by its C{--role} name, in the order C{--help} lists them
ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("consumer", "consume a queue", _check_consumer, _build_consumer),
        Role("worker", "process a job's tasks", _check_worker, _build_worker),
        Role("rpc-server", "answer requests", _check_rpc_server, _build_rpc_server, default_handler=echo),
        Role("fanout", "join a peer group", _check_fanout, _build_fanout),
        Role("producer", "an HTTP publishing endpoint", _check_producer, _build_producer),
    )
}


class Options(usage.Options):
    synopsis = "--role ROLE [--url URL]... [options]"
    longdesc = (
        "Host a txmsg service on RabbitMQ.  Roles: "
        + ", ".join(f"{role.name} ({role.summary})" for role in ROLES.values())
        + ".  "
        + help_text(TWISTD, compact=True)
    )

    optParameters = [
        ["role", None, None, "What to run: " + ", ".join(ROLES) + "."],
        ["name", None, "txmsg", "Connection name shown in the management UI."],
        [
            "handler",
            None,
            None,
            "pkg.module:callable called with each Message (value, Deferred or coroutine).",
        ],
        ["metrics", None, None, "Endpoint (e.g. tcp:9100) serving /metrics (Prometheus) and /health (JSON)."],
        [
            "connect-timeout",
            None,
            None,
            "Exit 69 if no broker answered within this many seconds of starting (default: keep trying).",
            float,
        ],
        # consumer / rpc-server
        [
            "queue",
            "q",
            None,
            "Queue to consume: used as it is if it exists and no queue flag is given, else declared "
            "(durable by default) with exactly the flags given.",
        ],
        ["exchange", "e", None, "Exchange to bind the queue to (declared)."],
        ["exchange-type", None, "direct", "Type of --exchange: " + "|".join(EXCHANGE_TYPES) + "."],
        ["match", None, "all", "For headers exchanges: all|any of the --bind-header pairs."],
        ["dead-letter", None, None, "Dead-letter exchange of the queue (x-dead-letter-exchange)."],
        [
            "retry",
            None,
            None,
            "consumer, worker, rpc-server: retry a failed message N times, later, held by the broker; "
            "then dead-letter it (to --dead-letter, else the queue QUEUE.dlq; worker and rpc-server: "
            "answer the last attempt with its error).",
            int,
        ],
        ["retry-delay", None, "1s", "With --retry: the wait, e.g. 5s, or a backoff 1s..5m."],
        [
            "batch",
            None,
            None,
            "consumer: hand --handler lists of up to N messages, acked together once it returns.",
            int,
        ],
        ["batch-wait", None, 1.0, "consumer, with --batch: seconds to wait for a batch to fill.", float],
        ["prefetch", None, DEFAULT_PREFETCH, "Unacked messages the broker may send at once.", int],
        ["concurrency", None, None, "Handlers running at once (default: as prefetch lets in).", int],
        ["server-id", None, None, "rpc-server, worker: this server's id in replies (default: generated)."],
        ["worker-prefetch", None, 1, "worker: tasks taken at once (1: fair dispatch of long tasks).", int],
        # fanout
        ["group", None, None, "fanout: the peer group (a fanout exchange) to join."],
        ["peer", None, None, "fanout: this peer's id (default: generated)."],
        # producer
        ["listen", None, None, "producer: endpoint of the HTTP publishing service (e.g. tcp:8080)."],
        ["publish-timeout", None, 30.0, "producer: seconds to wait for the broker before 503.", float],
        ["max-body", None, 1048576, "producer: largest request body in bytes (larger: 413).", int],
    ]
    optFlags = [
        [
            "durable",
            None,
            "Declare the queue durable, as by default (fanout: keep this peer's queue while it is away; "
            "also makes --exchange durable).",
        ],
        [
            "transient",
            None,
            "Declare the queue transient (not durable); RabbitMQ 4 may refuse that for a shared queue.",
        ],
        ["quorum", None, "Declare a quorum queue (x-queue-type quorum; durable)."],
        ["ignore-self", None, "fanout: do not hear this peer's own shouts."],
        [
            "no-ack",
            None,
            "consumer, rpc-server: consume without acks (fast; a message in flight when it fails is lost).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["urls"] = []
        self["args"] = {}
        self["binds"] = []
        self["bind_headers"] = {}
        self["broadcast"] = []

    def opt_url(self, url: str) -> None:
        """
        Broker URL; repeat for a cluster.  Default: $TXMSG_URL or amqp://localhost.
        """
        self["urls"].append(url)

    def opt_arg(self, text: str) -> None:
        """
        Queue argument KEY=VALUE (e.g. x-max-length=1000); repeatable.
        """
        key, value = _pair("--arg", text)
        self["args"][key] = parse_value(value)

    def opt_bind(self, key: str) -> None:
        """
        Bind the queue to --exchange with this routing key; repeatable.
        """
        self["binds"].append(key)

    def opt_bind_header(self, text: str) -> None:
        """
        For a headers exchange: bind matching header K=V; repeatable.
        """
        key, value = _pair("--bind-header", text)
        self["bind_headers"][key] = value

    def opt_broadcast(self, key: str) -> None:
        """
        rpc-server: bind a queue of this server's own with this key, so every server gets it.
        """
        self["broadcast"].append(key)

    def postOptions(self) -> None:
        role = self["role"]
        if role not in ROLES:
            raise usage.UsageError(f"--role must be one of: {', '.join(ROLES)}")
        try:
            self["params"] = parse_urls(self["urls"] or None)
        except InvalidURL as e:
            raise usage.UsageError(str(e)) from None
        if self["connect-timeout"] is not None and not self["connect-timeout"] > 0:
            raise usage.UsageError("--connect-timeout must be positive")
        if self["exchange-type"] not in EXCHANGE_TYPES:
            raise usage.UsageError(f"--exchange-type must be one of: {', '.join(EXCHANGE_TYPES)}")
        if self["match"] not in ("all", "any"):
            raise usage.UsageError("--match must be all or any")
        if not 0 <= self["prefetch"] <= 65535:
            raise usage.UsageError("--prefetch must be between 0 and 65535")
        if self["concurrency"] is not None and self["concurrency"] < 1:
            raise usage.UsageError("--concurrency must be at least 1")
        if self["transient"] and (self["durable"] or self["quorum"]):
            raise usage.UsageError("--transient contradicts --durable and --quorum")
        ROLES[role].check(self)
        self["handler_callable"] = (
            resolve_handler(self["handler"]) if self["handler"] else ROLES[role].default_handler
        )


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


# ---------------------------------------------------------------------------
# building the services


#: the options that shape a queue: given any, it is declared exactly so
QUEUE_FLAGS = ("durable", "transient", "quorum", "dead-letter", "args")


def queue_from(options: Options) -> Queue:
    """
    The queue the options ask for: (no --queue) a server-named exclusive
    subscriber queue; else a named queue, durable unless --transient.
    Without any queue flag (L{QUEUE_FLAGS}) an existing queue is used as it
    is, whatever its flags ("consume hello" means the queue that is there);
    with flags it is declared exactly so, and a queue that exists otherwise
    is an error naming the flag.
    """
    args: dict[str, Any] = dict(options["args"])
    if options["quorum"]:
        args["x-queue-type"] = "quorum"
    if options["dead-letter"]:
        args["x-dead-letter-exchange"] = options["dead-letter"]
    if not options["queue"]:
        return Queue("", exclusive=True, auto_delete=True, arguments=args)
    shaped = any(options[flag] for flag in QUEUE_FLAGS)
    return Queue(options["queue"], durable=not options["transient"], arguments=args, adopt=not shaped)


def bindings_from(options: Options, queue: Queue) -> list[Any]:
    """
    The exchange and bindings the options ask for (none without --exchange).
    """
    if not options["exchange"]:
        return []
    exchange = Exchange(options["exchange"], options["exchange-type"], durable=bool(options["durable"]))
    items: list[Any] = [exchange]
    if options["exchange-type"] == "headers":
        arguments = {"x-match": options["match"], **options["bind_headers"]}
        items.append(Binding(queue, exchange, "", arguments))
    else:
        keys = options["binds"] or ([""] if options["exchange-type"] == "fanout" else [queue.name or "#"])
        items.extend(Binding(queue, exchange, key) for key in keys)
    return items


def make_services(options: Options, reactor: Any) -> MultiService:
    """
    The role's services, with the reactor given (the testable core of L{makeService}).
    """
    top = MultiService()
    connection = Connection(options["urls"] or None, reactor=reactor, name=options["name"])
    connection.setServiceParent(top)
    built = ROLES[options["role"]].build(options, connection, reactor)
    built.service.setServiceParent(top)
    # after the role's service, so that its declarations have begun
    StartupWatch(reactor, connection, built.service, options["connect-timeout"]).setServiceParent(top)
    if options["metrics"]:
        from txmsg.metrics import Metrics, watch_connection, watch_consumer, watch_producer
        from txmsg.web import MonitorResource, web_service

        metrics = Metrics()
        watch_connection(metrics, connection)
        if built.producer is not None:
            watch_producer(metrics, built.producer)
        for c in built.consumers:
            watch_consumer(metrics, c)
        web_service(options["metrics"], MonitorResource(metrics, connection), reactor).setServiceParent(top)
    return top


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    return make_services(options, reactor)
