"""
The AMQP 0-9-1 engine: framing, the handshake, heartbeats, channels and the
wire codec, built from the spec file (C{amqp0-9-1.xml}).

Its public face is this module's names; only L{txmsg.connection} imports the
engine (and L{txmsg.testing}'s wire server, which is a broker, not a client),
and the layers above see channels through the connection.

    - L{protocol}: one AMQP connection over one transport
    - L{channel}: one channel; typed methods for what txmsg sends
    - L{writer}: big messages to the socket as it drains (Twisted's private write path)
    - L{codec}, L{methods}, L{spec}: the wire format, from the spec file
    - L{handshake}: client properties, tune negotiation, TLS failure text
"""

from txmsg._amqp.channel import Channel, DeliverCallback, Link
from txmsg._amqp.protocol import AMQPProtocol

__all__ = ["AMQPProtocol", "Channel", "DeliverCallback", "Link"]
