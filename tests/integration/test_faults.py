"""
Fault injection through a TCP proxy: connections cut while messages flow, and a
blackholed connection.  The bar: no confirmed message is ever lost.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import LoopingCall, deferLater

from txmsg import Binding, Connection, Consumer, Exchange, Producer, Queue

from .report import Tally, record, scaled
from .support import PikaPeer, eventually, proxied, rabbitmqctl, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_proxy_forwards_and_cuts(pika_peer: PikaPeer) -> None:
    """
    The proxy carries AMQP both ways; cut_all drops the connection and txmsg
    reconnects through it; refuse keeps it out until lifted.
    """
    proxy, url = await proxied()
    conn = Connection(url, reactor=reactor, name=unique("proxied"))
    name = unique("proxy")
    try:
        await conn.declare(Queue(name))
        first = conn.protocol
        assert proxy.cut_all() == 2  # both legs of the one connection
        proxy.refuse = True
        await eventually(lambda: proxy.refused >= 1, timeout=20)
        assert not conn.is_connected
        proxy.refuse = False
        await eventually(lambda: conn.is_connected, timeout=30)
        assert conn.protocol is not first
        await Producer(conn).publish("", name, b"after the cut")
        assert await pika_peer.depth(name) == 1
    finally:
        await conn.stopService()
        proxy.stop()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_cuts_every_second_lose_no_confirmed_message(pika_peer: PikaPeer) -> None:
    """
    Scenario 1: 20,000 persistent messages, each with its own message_id, are
    published with confirms while the proxy cuts every connection about once a
    second (every 0.75 s; the flow is paced to at most 5,000 messages a second
    so it spans several cuts), to a fanout exchange with two durable queues; two
    consumers with manual acks read them through the same proxy, the second with
    a de-duplication window.  Every confirmed id is consumed by both (0 lost);
    the plain consumer's duplicates are counted, the de-duplicating one sees
    none; the publisher's reconnect times are reported.
    """
    total = scaled(20_000)
    proxy, url = await proxied()
    name = unique("cuts")
    queue = Queue(name, durable=True)
    dedupe_queue = Queue(name + "-dedupe", durable=True)
    exchange = Exchange(name, "fanout")
    pub = Connection(url, reactor=reactor, name=unique("cut-pub"))
    sub = Connection(url, reactor=reactor, name=unique("cut-sub"))
    plain = Tally()
    deduped = Tally()

    await pub.declare(
        exchange, queue, dedupe_queue, Binding(queue, exchange, ""), Binding(dedupe_queue, exchange, "")
    )
    consumer = Consumer(sub, queue, plain.delivered, prefetch=200)
    dedupe_consumer = Consumer(sub, dedupe_queue, deduped.delivered, prefetch=200, dedupe_window=total)
    for c in (consumer, dedupe_consumer):
        c.startService()
        await c.when_ready()
    producer = Producer(pub)
    confirmed = plain.confirmed
    failed: list[Any] = []
    reconnects: list[float] = []

    cut_at: list[float] = []

    def cut() -> None:
        if proxy.cut_all():
            cut_at[:] = [time.monotonic()]

    def ready_again(_: Any) -> None:
        # the publisher's connection is ready again: how long since the cut
        if cut_at:
            reconnects.append(time.monotonic() - cut_at.pop())

    pub.add_ready_hook(ready_again)

    cutter = LoopingCall(cut)
    cutter.clock = reactor
    start = time.monotonic()
    try:
        cutter.start(0.75, now=False)
        for batch in range(0, total, 1000):
            ids = [f"m{i}" for i in range(batch, batch + 1000)]
            results = await DeferredList(
                [
                    producer.publish(name, "", b"x" * 100, message_id=i, persistent=True, timeout=120)
                    for i in ids
                ],
                consumeErrors=True,
            )
            for i, (ok, value) in zip(ids, results, strict=True):
                (confirmed.add(i) if ok else failed.append(value))
            # at most 1,000 messages per 0.2 s, so the flow spans several cuts
            # however fast the machine publishes
            pause = start + (batch // 1000 + 1) * 0.2 - time.monotonic()
            if pause > 0:
                await deferLater(reactor, pause, lambda: None)
        cutter.stop()
        deduped.confirmed = confirmed
        await eventually(lambda: plain.all_consumed and deduped.all_consumed, timeout=120)
        elapsed = time.monotonic() - start
        detail = f"{proxy.cuts} cuts in {elapsed:.0f} s; {len(failed)} publishes failed"
        record("1 cuts every 0.75 s", plain, reconnects=reconnects, detail=detail)
        record(
            "1 cuts, consumer with dedupe_window",
            deduped,
            reconnects=reconnects,
            detail=f"{dedupe_consumer.deduplicated} duplicates skipped",
        )
        assert not plain.lost and not deduped.lost
        assert all(n == 1 for n in deduped.consumed.values())
        assert proxy.cuts >= 2
        assert len(confirmed) == total, failed[:3]
    finally:
        if cutter.running:
            cutter.stop()
        await consumer.stopService()
        await dedupe_consumer.stopService()
        await pub.stopService()
        await sub.stopService()
        proxy.stop()
        await pika_peer.delete_queue(name)
        await pika_peer.delete_queue(name + "-dedupe")
        await pika_peer.delete_exchange(name)


@pytest_twisted.ensureDeferred
async def test_blackholed_connection_is_detected_within_two_heartbeats(pika_peer: PikaPeer) -> None:
    """
    Scenario 4: the proxy keeps the sockets open but drops every byte; with a
    1 s heartbeat txmsg gives the connection up within two intervals (plus
    scheduling slack) and connects again once the path is clear.
    """
    proxy, url = await proxied()
    url = url.replace("heartbeat=5", "heartbeat=1")
    conn = Connection(url, reactor=reactor, name=unique("blackhole"))
    try:
        await conn.when_ready()
        first = conn.protocol
        proxy.blackhole = True
        start = time.monotonic()
        await eventually(lambda: not conn.is_connected, timeout=10, interval=0.02)
        detected = time.monotonic() - start
        record("4 blackhole, heartbeat 1 s", detail=f"detected after {detected:.2f} s", detected_s=detected)
        assert detected <= 2.5
        proxy.blackhole = False
        proxy.cut_all()  # the old sockets are still open on the broker's side
        await eventually(lambda: conn.is_connected, timeout=30)
        assert conn.protocol is not first
    finally:
        await conn.stopService()
        proxy.stop()


@pytest_twisted.ensureDeferred
async def test_rpc_under_cuts_answers_each_call_once_or_times_out(pika_peer: PikaPeer) -> None:
    """
    Scenario 7: calls (400 at least, 50 at a time) through the proxy while it
    cuts every connection every 0.75 s, until it has cut three times.  Each
    call ends exactly once, with its own correct answer or RpcTimeout;
    afterwards no reply queue is left on the broker.
    """
    from txmsg import RpcClient, RpcServer, RpcTimeout

    proxy, url = await proxied()
    name = unique("rpc-cuts")
    server_conn = Connection(url, reactor=reactor, name=unique("rpc-srv"))
    client_conn = Connection(url, reactor=reactor, name=unique("rpc-cli"))
    server = RpcServer(server_conn, name, lambda m: m.payload * 2, prefetch=50)
    server.startService()
    await server.when_ready()
    client = RpcClient(client_conn, reply_queue=True)
    reply_queue = client.reply_to
    cutter = LoopingCall(proxy.cut_all)
    cutter.clock = reactor
    outcomes: dict[int, list[Any]] = {}
    try:
        cutter.start(0.75, now=False)
        batch = 0
        # at least 400 calls, and on until the proxy has cut three times
        while batch < scaled(400) or (proxy.cuts < 3 and batch < 20_000):
            calls = {i: client.call(name, i, timeout=5) for i in range(batch, batch + 50)}
            batch += 50
            for i, d in calls.items():
                d.addBoth(lambda r, i=i: outcomes.setdefault(i, []).append(r))
            await DeferredList(list(calls.values()), consumeErrors=True)
        cutter.stop()
        answered = [i for i, rs in outcomes.items() if rs == [i * 2]]
        timed_out = [
            i
            for i, rs in outcomes.items()
            if len(rs) == 1 and getattr(rs[0], "check", None) and rs[0].check(RpcTimeout)
        ]
        record(
            "7 RPC under cuts",
            detail=f"{batch} calls, {proxy.cuts} cuts: {len(answered)} answered, {len(timed_out)} RpcTimeout",
            calls=batch,
            answered=len(answered),
            timed_out=len(timed_out),
        )
        assert sorted(outcomes) == list(range(batch))
        assert all(len(rs) == 1 for rs in outcomes.values())
        assert len(answered) + len(timed_out) == batch
        assert proxy.cuts >= 3 and answered
    finally:
        if cutter.running:
            cutter.stop()
        await server.stopService()
        await client_conn.stopService()
        await server_conn.stopService()
        proxy.stop()
        await pika_peer.delete_queue(name)
    await eventually(
        lambda: reply_queue not in rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split(),
        timeout=15,
    )


@pytest_twisted.ensureDeferred
async def test_peer_groups_under_cuts_hear_every_confirmed_shout(pika_peer: PikaPeer) -> None:
    """
    Scenario 8: three durable peers shout numbered shouts (300 each at least)
    through the proxy while it cuts every connection every 0.75 s, until it has
    cut three times; every peer hears every
    confirmed shout at least once.
    """
    from txmsg import PeerGroup

    proxy, url = await proxied()
    group = unique("peer-cuts")
    conns = [Connection(url, reactor=reactor, name=unique(f"peer{i}")) for i in range(3)]
    confirmed: set[str] = set()
    heard = [Tally(confirmed=confirmed) for _ in range(3)]
    peers = [PeerGroup(conns[i], group, heard[i].delivered, peer_id=f"p{i}", durable=True) for i in range(3)]
    for p in peers:
        p.startService()
    for p in peers:
        await p.when_ready()
    cutter = LoopingCall(proxy.cut_all)
    cutter.clock = reactor
    try:
        cutter.start(0.75, now=False)
        round_ = 0
        while round_ < scaled(300) or (proxy.cuts < 3 and round_ < 20_000):
            ds = {
                f"p{i}-{n}": peers[i].shout(n, message_id=f"p{i}-{n}", persistent=True, timeout=60)
                for i in range(3)
                for n in range(round_, round_ + 50)
            }
            round_ += 50
            results = await DeferredList(list(ds.values()), consumeErrors=True)
            confirmed.update(mid for mid, (ok, _) in zip(ds, results, strict=True) if ok)
        cutter.stop()
        await eventually(lambda: all(h.all_consumed for h in heard), timeout=60)
        record(
            "8 peer group under cuts",
            confirmed=len(confirmed),
            consumed=min(len(h.consumed) for h in heard),
            lost=len(set().union(*(h.lost for h in heard))),
            flagged=sum(h.flagged for h in heard),
            unflagged=sum(h.unflagged for h in heard),
            detail=f"3 peers, {proxy.cuts} cuts; consumed: the fewest shouts one peer heard",
        )
        assert len(confirmed) == 3 * round_
        assert proxy.cuts >= 3
    finally:
        if cutter.running:
            cutter.stop()
        for p in peers:
            await p.leave(discard=True)
        for c in conns:
            await c.stopService()
        proxy.stop()
        await pika_peer.delete_exchange(group)


@pytest_twisted.ensureDeferred
async def test_password_never_appears_in_logs_or_reprs(pika_peer: PikaPeer) -> None:
    """
    Scenario 12: across an authentication failure, connection cuts and
    reconnects, no log event (formatted, or any of its fields) and no repr
    holds the password.
    """
    from twisted.internet.threads import deferToThread
    from twisted.logger import formatEvent, globalLogPublisher

    from txmsg.errors import AuthenticationError

    secret = "s3cr3t-" + unique("pw")[-8:]
    user = "nobody"
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    proxy, url = await proxied()
    try:
        bad = Connection(url.replace("guest:guest", f"guest:{secret}"), reactor=reactor, name=unique("bad"))
        with pytest.raises(AuthenticationError) as e:
            await bad.when_ready()
        assert secret not in str(e.value) and secret not in repr(bad)
        # a user of our own whose password is the secret: its reconnects are checked too
        user = unique("user")
        await deferToThread(rabbitmqctl, "add_user", user, secret)
        await deferToThread(rabbitmqctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        good = Connection(
            url.replace("guest:guest", f"{user}:{secret}"), reactor=reactor, name=unique("good")
        )
        await good.when_ready()
        for _ in range(2):
            before = good.protocol
            proxy.cut_all()
            await eventually(
                lambda before=before: good.is_connected and good.protocol is not before, timeout=30
            )
        assert secret not in repr(good) and secret not in repr(good.protocol)
        await good.stopService()
        await bad.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
        proxy.stop()
        if user != "nobody":
            await deferToThread(rabbitmqctl, "delete_user", user)
    assert len(events) > 5
    for event in events:
        text = formatEvent(event) + " " + " ".join(repr(v) for v in event.values())
        assert secret not in text, text
