"""
One benchmark run in its own process: ``python -m bench.child CLIENT SCENARIO
PARAMS_JSON``.  Prints ``READY`` when a server or subscriber is ready, then
``RESULT {json}`` with the client's figures, its CPU seconds and peak RSS.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys

CLIENTS = {
    "txmsg": "bench.clients.txmsg_client",
    "pika-twisted": "bench.clients.pika_twisted",
    "pika-blocking": "bench.clients.pika_blocking",
    "aio-pika": "bench.clients.aio_pika_client",
    "txamqp": "bench.clients.txamqp_client",
}


def main() -> None:
    client, scenario, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    module = importlib.import_module(CLIENTS[client])
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = module.run(scenario, params)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # the timed part's CPU if the client measured it, else the whole run's
    result.setdefault("cpu", (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss may still be the parent's
    with open("/proc/self/status") as status:
        hwm = [line for line in status if line.startswith("VmHWM:")]
    result["maxrss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else after.ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
