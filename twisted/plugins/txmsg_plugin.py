"""
The ``txmsg`` twistd plugin: ``twistd -n txmsg --role consumer --queue hello``.

This module is deliberately tiny; the options and the service live in
L{txmsg.tap} so that importing the plugin is cheap.
"""

from twisted.application.service import ServiceMaker

txmsg = ServiceMaker(
    "txmsg",
    "txmsg._twistd",
    "Host txmsg messaging services (consumer, producer, fanout, worker, rpc-server) for RabbitMQ.",
    "txmsg",
)
