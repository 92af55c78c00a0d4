"""
``twistd txmsg`` options and what they build, without a broker.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from txmsg import Binding, Exchange, Queue
from txmsg._declare import DeclaringService
from txmsg.errors import PreconditionFailed
from txmsg.tap import (
    Options,
    bindings_from,
    explain,
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
    No flags: a plain queue; --quorum makes it durable with x-queue-type;
    --dead-letter and --arg become arguments with typed values.
    """
    assert queue_from(parse("--role", "consumer", "--queue", "q")) == Queue("q")
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
    assert role.topology == [Queue("q")]
    assert role.consumers[0].prefetch == 7
