"""
``twistd txmsg`` options and what they build, without a broker.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from txmsg import Binding, Exchange, Queue
from txmsg._declaring_service import DeclaringService
from txmsg._startup import explain
from txmsg.errors import DeprecatedFeature, PreconditionFailed
from txmsg.tap import (
    ROLES,
    Built,
    Options,
    Role,
    bindings_from,
    echo,
    log_message,
    make_services,
    parse_value,
    queue_from,
)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--url", "amqp://guest:guest@localhost/%2F", *args])
    return options


def test_queue_is_declared_with_exactly_the_flags_given() -> None:
    """
    No flags: a durable queue that adopts an existing one whatever its flags
    (RabbitMQ 4 refuses transient shared queues); any queue flag declares it
    exactly so: --transient a transient one, --durable a durable one (the
    same as the default but not adopting), --quorum a durable one with
    x-queue-type; --dead-letter and --arg become arguments with typed values.
    """
    plain = queue_from(parse("--role", "consumer", "--queue", "q"))
    assert plain == Queue("q", durable=True, adopt=True)
    assert queue_from(parse("--role", "consumer", "--queue", "q", "--durable")) == Queue("q", durable=True)
    transient = queue_from(parse("--role", "consumer", "--queue", "q", "--transient"))
    assert transient == Queue("q", durable=False) and not transient.adopt
    with pytest.raises(usage.UsageError, match="--transient contradicts"):
        parse("--role", "consumer", "--queue", "q", "--transient", "--quorum")
    q = queue_from(
        parse(
            "--role",
            "consumer",
            "--queue",
            "q",
            "--quorum",
            "--dead-letter",
            "dlx",
            "--arg",
            "x-max-length=10",
            "--arg",
            "x-single-active-consumer=true",
        )
    )
    assert q.durable and not q.exclusive
    assert dict(q.arguments) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "dlx",
        "x-max-length": 10,
        "x-single-active-consumer": True,
    }


def test_exchange_without_queue_is_a_server_named_subscriber() -> None:
    """
    --exchange without --queue: an exclusive server-named queue bound with
    each --bind key (fanout: the empty key).
    """
    options = parse(
        "--role",
        "consumer",
        "--exchange",
        "logs",
        "--exchange-type",
        "topic",
        "--bind",
        "a.*",
        "--bind",
        "b.#",
    )
    q = queue_from(options)
    assert q.server_named and q.exclusive and q.auto_delete
    exchange = Exchange("logs", "topic")
    assert bindings_from(options, q) == [exchange, Binding(q, exchange, "a.*"), Binding(q, exchange, "b.#")]
    fan = parse("--role", "consumer", "--exchange", "news", "--exchange-type", "fanout")
    q2 = queue_from(fan)
    assert bindings_from(fan, q2)[1:] == [Binding(q2, Exchange("news", "fanout"), "")]


def test_headers_binding_carries_x_match() -> None:
    """
    --bind-header pairs and --match become the binding's arguments.
    """
    options = parse(
        "--role",
        "consumer",
        "--queue",
        "q",
        "--exchange",
        "h",
        "--exchange-type",
        "headers",
        "--bind-header",
        "format=pdf",
        "--match",
        "any",
    )
    items = bindings_from(options, queue_from(options))
    assert dict(items[1].arguments) == {"x-match": "any", "format": "pdf"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--role", "nope"], "--role must be one of"),
        (["--role", "consumer"], "needs --queue"),
        (["--role", "consumer", "--queue", "q", "--bind", "k"], "need --exchange"),
        (["--role", "consumer", "--queue", "q", "--arg", "x"], "KEY=VALUE"),
        (["--role", "consumer", "--queue", "q", "--prefetch", "70000"], "--prefetch"),
        (["--role", "consumer", "--queue", "q", "--handler", "txmsg.nothing_here:f"], "cannot find"),
        (["--role", "rpc-server"], "needs --queue or --broadcast"),
        (["--role", "rpc-server", "--broadcast", "k"], "need --exchange"),
        (["--role", "fanout"], "needs --group"),
        (["--role", "worker", "--queue", "jobs"], "needs --handler"),
        (["--role", "worker", "--handler", "txmsg.tap:echo"], "needs --queue"),
        (["--role", "producer"], "needs --listen"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    """
    Each mistake is a UsageError whose one line says what is wrong.
    """
    with pytest.raises(usage.UsageError) as e:
        parse(*args)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_handler_is_resolved_from_a_dotted_name() -> None:
    """
    --handler pkg.module:callable resolves to that callable.
    """
    options = parse("--role", "consumer", "--queue", "q", "--handler", "txmsg.tap:parse_value")
    assert options["handler_callable"] is parse_value


def test_explain_names_the_flag_that_differs() -> None:
    """
    A 406 for an inequivalent 'durable' is explained with our --durable flag.
    """
    err = PreconditionFailed(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': "
        "received 'false' but current is 'true'",
    )
    line = explain(Failure(err))
    assert "--durable" in line and "inequivalent arg 'durable'" in line
    quorum = PreconditionFailed(406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'")
    assert "--quorum" in explain(Failure(quorum))


def test_explain_a_refused_transient_queue_names_the_flag() -> None:
    """
    RabbitMQ 4.3's 541 for a transient shared queue is one line naming the
    queue and --transient, the flag that asked for it; another refused
    feature keeps the library's own advice.
    """
    text = "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\nIts use is not permitted"
    refused = DeprecatedFeature(541, text).about("queue 'hello' (transient)")
    line = explain(Failure(refused))
    assert "\n" not in line
    assert line.startswith("the broker refuses transient non-exclusive queues (queue 'hello' (transient))")
    assert "drop --transient" in line
    other = DeprecatedFeature(541, "INTERNAL_ERROR - Feature `queue_master_locator` is deprecated.")
    assert explain(Failure(other)) == str(other) and "x-queue-leader-locator" in str(other)


def test_consumer_role_builds_a_declared_consumer_after_the_connection() -> None:
    """
    The consumer role is a MultiService: the connection first (it stops last),
    then the consumer with its declarations.
    """
    top = make_services(parse("--role", "consumer", "--queue", "q", "--prefetch", "7"), Clock())
    services = list(top)
    assert type(services[0]).__name__ == "Connection"
    role = services[1]
    assert isinstance(role, DeclaringService)
    assert role.topology == [Queue("q", adopt=True)]
    assert role.consumers[0].prefetch == 7


# --- start-up failures and their exit statuses -------------------------------


class _Reactor(Clock):
    """
    A Clock that is running and records being stopped.
    """

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class _Connection:
    """
    What watch_startup looks at: when_ready(), running, protocol, safe_urls.
    """

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        from txmsg.url import parse_url

        self.ready: Deferred[object] = Deferred()
        self.running = True
        self.protocol: object | None = None
        self.params = [parse_url("amqp://guest:s3cret@broker:5672/%2F")]

    def when_ready(self) -> object:
        return self.ready

    @property
    def safe_urls(self) -> str:
        return ", ".join(p.safe_url for p in self.params)


def _watch(**kwargs: object) -> tuple[_Reactor, _Connection, object, list[object]]:
    from txmsg._startup import _ExitStatus, watch_startup

    at_exit: list[object] = []
    status = _ExitStatus(at_exit=at_exit.append)
    reactor, connection = _Reactor(), _Connection()
    watch_startup(reactor, connection, None, status=status, **kwargs)  # type: ignore[arg-type]
    return reactor, connection, status, at_exit


@pytest.mark.parametrize(
    "error, code",
    [
        ("AuthenticationError", 77),
        ("VhostNotFound", 77),
        ("TLSError", 76),
        ("ProtocolError", 76),
    ],
)
def test_fatal_connection_errors_stop_with_their_exit_status(error: str, code: int) -> None:
    """
    A refused login or vhost ends the process with 77, a TLS or protocol
    failure with 76: the reactor is stopped and the status is set at exit.
    """
    import txmsg.errors

    reactor, connection, status, at_exit = _watch()
    connection.ready.errback(getattr(txmsg.errors, error)("refused"))
    assert status.code == code  # type: ignore[attr-defined]
    assert reactor.stopped == 1 and len(at_exit) == 1


def test_refused_declaration_exits_1() -> None:
    """
    A queue the broker holds with other flags is exit 1 (not a connection error).
    """
    from twisted.internet.defer import Deferred

    from txmsg._startup import _ExitStatus, watch_startup

    status = _ExitStatus(at_exit=lambda _: None)
    declared: Deferred[object] = Deferred()
    watch_startup(_Reactor(), _Connection(), declared, status=status)  # type: ignore[arg-type]
    declared.errback(PreconditionFailed(406, "PRECONDITION_FAILED - inequivalent arg 'durable'"))
    assert status.code == 1


def test_connect_timeout_exits_69_when_no_broker_answered() -> None:
    """
    With --connect-timeout, no connection by then is exit 69; the line names the
    URL without its password.
    """
    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, _, status, _ = _watch(connect_timeout=5.0)
        reactor.advance(4.9)
        assert status.code is None  # type: ignore[attr-defined]
        reactor.advance(0.2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status.code == 69  # type: ignore[attr-defined]
    [line] = [str(e["line"]) for e in events if "line" in e]
    assert "no broker reachable within 5 s at amqp://guest:***@broker:5672/%2F" in line
    assert "s3cret" not in line


def test_connect_timeout_is_disarmed_once_connected() -> None:
    """
    A connection made in time cancels the timer: nothing happens later.
    """
    reactor, connection, status, _ = _watch(connect_timeout=5.0)
    connection.protocol = object()
    connection.ready.callback(connection.protocol)
    assert not reactor.getDelayedCalls()
    reactor.advance(60)
    assert status.code is None  # type: ignore[attr-defined]


def test_stopped_before_connecting_is_not_a_failure() -> None:
    """
    SIGTERM while still waiting for the broker: the connection stops and its
    waiters fail with ConnectionLost, which is a shutdown, not a failure.
    """
    from twisted.internet.defer import Deferred

    from txmsg._startup import _ExitStatus, watch_startup
    from txmsg.errors import ConnectionLost

    status = _ExitStatus(at_exit=lambda _: None)
    connection = _Connection()
    declared: Deferred[object] = Deferred()
    watch_startup(_Reactor(), connection, declared, status=status)  # type: ignore[arg-type]
    connection.running = False
    declared.errback(ConnectionLost("the connection was stopped"))
    connection.ready.errback(ConnectionLost("the connection was stopped"))
    assert status.code is None


def test_twistd_help_lists_its_exit_statuses_from_the_one_table() -> None:
    """
    twistd txmsg --help ends with the statuses a twistd process exits with,
    made from txmsg.exits.TABLE (none of the txmsg call statuses).
    """
    from txmsg import exits

    text = " ".join(Options().getUsage().split())
    for code, meaning in exits.TABLE:
        assert (f"{code} {meaning}" in text) == (code in exits.TWISTD), code


# --- each role is one record ---------------------------------------------------


def test_every_role_is_one_record_listed_by_the_role_help() -> None:
    """
    ROLES holds one record per role under its own name, each with its check,
    build and default handler; --role's help and --help's description list
    exactly those names, in that order, and --role refuses any other.
    """
    assert list(ROLES) == ["consumer", "worker", "rpc-server", "fanout", "producer"]
    for name, role in ROLES.items():
        assert isinstance(role, Role) and role.name == name
        assert callable(role.check) and callable(role.build) and callable(role.default_handler)
        assert role.summary and f"{name} ({role.summary})" in Options.longdesc
    listed = Options().docs["role"].removeprefix("What to run: ").removesuffix(".").split(", ")
    assert listed == list(ROLES)
    with pytest.raises(usage.UsageError) as e:
        parse("--role", "nope")
    assert str(e.value) == "--role must be one of: " + ", ".join(ROLES)


def test_default_handler_comes_from_the_role_record() -> None:
    """
    Without --handler a role's messages go to its record's default handler:
    rpc-server echoes, the others log one line per message.
    """
    assert ROLES["rpc-server"].default_handler is echo
    assert parse("--role", "rpc-server", "--queue", "q")["handler_callable"] is echo
    assert parse("--role", "consumer", "--queue", "q")["handler_callable"] is log_message
    assert parse("--role", "fanout", "--group", "g")["handler_callable"] is log_message


def test_a_role_is_checked_and_built_only_from_its_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A record added to ROLES is a role: --role accepts it after the checks
    common to every role, its check sees the options, its default handler is
    used, and make_services adds its service after the connection, with
    nothing else to change (neither names any role).
    """
    import inspect

    from twisted.application.service import Service

    for function in (Options.postOptions, make_services):
        source = inspect.getsource(function)
        assert [name for name in ROLES if f'"{name}"' in source] == [], function

    checked: list[Options] = []
    built: list[Built] = []

    def check(options: Options) -> None:
        checked.append(options)
        if not options["queue"]:
            raise usage.UsageError("--role made-up needs --queue")

    def build(options: Options, connection: object, reactor: object) -> Built:
        built.append(Built(Service()))
        return built[-1]

    def handler(message: object) -> None:
        return None

    monkeypatch.setitem(ROLES, "made-up", Role("made-up", "a role of this test", check, build, handler))
    with pytest.raises(usage.UsageError, match="--prefetch"):
        parse("--role", "made-up", "--queue", "q", "--prefetch", "70000")
    assert not checked
    with pytest.raises(usage.UsageError, match="--role made-up needs --queue"):
        parse("--role", "made-up")
    options = parse("--role", "made-up", "--queue", "q")
    assert checked[-1] is options and options["handler_callable"] is handler
    services = list(make_services(options, Clock()))
    assert type(services[0]).__name__ == "Connection"
    assert services[1] is built[0].service


@pytest.mark.parametrize(
    "args, consumers, producer",
    [
        (["--role", "consumer", "--queue", "q"], 1, False),
        (["--role", "worker", "--queue", "jobs", "--handler", "txmsg.tap:echo"], 1, True),
        (["--role", "rpc-server", "--queue", "q"], 1, True),
        (["--role", "fanout", "--group", "g"], 1, True),
        (["--role", "producer", "--listen", "tcp:0:interface=127.0.0.1"], 0, True),
    ],
    ids=["consumer", "worker", "rpc-server", "fanout", "producer"],
)
def test_each_role_builds_its_service_consumers_and_producer(
    args: list[str], consumers: int, producer: bool
) -> None:
    """
    Each role's build gives the service make_services adds after the
    connection, and the consumers and producer --metrics watches.
    """
    from txmsg import Connection

    options = parse(*args)
    connection = Connection(options["urls"], reactor=Clock())
    result = ROLES[options["role"]].build(options, connection, Clock())
    assert isinstance(result, Built)
    assert len(result.consumers) == consumers
    assert (result.producer is not None) == producer
    services = list(make_services(options, Clock()))
    assert type(services[1]) is type(result.service)


def test_retry_flags_make_the_consumers_retry_policy() -> None:
    """
    C{--retry 3 --retry-delay 1s..5m} gives the consumer role's consumer a
    backoff policy; the last attempt goes to --dead-letter when given.
    """
    options = parse("--role", "consumer", "--queue", "jobs", "--retry", "3", "--retry-delay", "1s..5m")
    role = list(make_services(options, Clock()))[1]
    consumer = role.consumers[0]
    assert consumer.retry is not None and consumer.retry.delays() == (1.0, 2.0, 4.0)
    assert consumer.retry.dead_letter is None
    with_dlx = parse("--role", "consumer", "--queue", "jobs", "--retry", "1", "--dead-letter", "dlx")
    assert with_dlx["retry_policy"].dead_letter == "dlx" and with_dlx["retry_policy"].delays() == (1.0,)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--retry", "2", "--retry-delay", "soon"], "--retry-delay"),
        (["--retry", "-1"], "--retry must not be negative"),
        (["--retry", "2", "--retry-delay", "5m..1s"], "--retry-delay"),
    ],
)
def test_bad_retry_flags_are_one_usage_error(args: list[str], needle: str) -> None:
    """
    A wrong --retry or --retry-delay is a usage error naming the flag.
    """
    with pytest.raises(usage.UsageError, match=needle):
        parse("--role", "consumer", "--queue", "jobs", *args)


def test_retry_needs_a_named_queue() -> None:
    """
    Retries come back to a queue by its name: --retry with only --exchange is refused.
    """
    with pytest.raises(usage.UsageError, match="--retry needs --queue"):
        parse("--role", "consumer", "--exchange", "logs", "--retry", "2")


def test_twistds_options_exit_1_with_the_usage_and_one_line_on_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    The options the plugin gives twistd exit 1 on a mistake on the command
    line, on every Twisted (twistd itself exited 0 before 26.10), after the
    usage text and one line naming the mistake.
    """
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    from txmsg import _twistd

    [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "txmsg"]
    assert maker.options is _twistd.Options
    with pytest.raises(SystemExit) as exited:
        _twistd.Options().parseOptions(["--role", "nope"])
    assert exited.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "twistd txmsg: --role must be one of: consumer, worker, rpc-server, fanout, producer"
    assert any("--role" in line for line in out[:-1])


@pytest.mark.parametrize("role", ["worker", "rpc-server"])
def test_worker_and_rpc_server_roles_take_retry_flags(role: str) -> None:
    """
    --retry reaches the worker's and the RPC server's queue consumer.
    """
    options = parse(
        "--role", role, "--queue", "tasks", "--handler", "tests.integration.tap_handlers:fib", "--retry", "2"
    )
    server = list(make_services(options, Clock()))[1]
    assert server.retry is not None and server.retry.retries == 2
    assert server.consumers[0].retry is server.retry


def test_batch_and_no_ack_flags_shape_the_consumer() -> None:
    """
    --batch 50 --batch-wait 2 makes a batch consumer (its prefetch raised to
    let a batch in, its default handler logging each message); --no-ack one
    without acks; the two together are refused.
    """
    role = list(
        make_services(
            parse("--role", "consumer", "--queue", "q", "--batch", "50", "--batch-wait", "2"), Clock()
        )
    )[1]
    consumer = role.consumers[0]
    assert (consumer.batch_size, consumer.batch_wait, consumer.prefetch) == (50, 2.0, 50)
    assert consumer.acks == "manual"
    fast = list(make_services(parse("--role", "consumer", "--queue", "q", "--no-ack"), Clock()))[1].consumers[
        0
    ]
    assert fast.acks == "none"
    with pytest.raises(usage.UsageError, match="--no-ack"):
        parse("--role", "consumer", "--queue", "q", "--batch", "5", "--no-ack")
