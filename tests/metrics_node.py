"""A bunws app under ``run(workers=N)`` with a Prometheus endpoint, run as a
subprocess by tests/test_metrics.py.

Environment: ``WORKERS``, ``PORT``. Routes: ``/ws`` upgrades (open sends
``hello <pid>``; a text message ``close <code>`` closes with that code), ``/metrics``
the Prometheus text of :class:`bunws.metrics.PrometheusCollector`, ``/local`` this
worker's own ``server.stats()`` as JSON, ``/pid`` this process's pid.
"""

import json
import os

from prometheus_client import CollectorRegistry, generate_latest

import bunws
from bunws.metrics import PrometheusCollector

REGISTRY = CollectorRegistry()


def fetch(req, server):
    if req.path == "/ws":
        if server.upgrade(req):
            return None
        return bunws.Response("upgrade expected", status=400)
    if req.path == "/metrics":
        return bunws.Response(generate_latest(REGISTRY), headers={"Content-Type": "text/plain; version=0.0.4"})
    if req.path == "/local":
        return bunws.Response(json.dumps(server.stats()))
    if req.path == "/pid":
        return bunws.Response(str(os.getpid()))
    return bunws.Response("not found", status=404)


def message(ws, msg):
    if isinstance(msg, str) and msg.startswith("close "):
        ws.close(int(msg.split()[1]))


def on_start(server):
    REGISTRY.register(PrometheusCollector(server))


if __name__ == "__main__":
    bunws.run(
        fetch,
        bunws.WebSocketHandler(open=lambda ws: ws.send_text(f"hello {os.getpid()}"), message=message),
        port=int(os.environ["PORT"]),
        workers=int(os.environ.get("WORKERS", "2")),
        on_start=on_start,
        uvloop=False,
    )
