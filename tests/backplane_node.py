"""One bunws node with a RedisBackplane, run as a subprocess by tests/test_backplane.py.

Environment: ``REDIS_URL`` (with ``CLUSTER=1``: comma-separated cluster seeds), ``PREFIX`` (channel prefix), ``SHARDED=1``,
``PUBLISH_TO_SELF=1``, ``WORKERS`` (default 1), ``SOCKET_SHARING``, ``PORT``. Prints ``{"port": N}`` once
listening (single process). Routes:

- ``/ws?sub=a,b`` upgrades and subscribes to the listed topics on open. Text
  commands: ``P <topic> <payload>`` (ws.publish, text), ``X <topic> <payload>``
  (server.publish, text), ``S <topic>``, ``U <topic>``. A binary message
  ``<topic>\\0<payload>`` is published as binary (ws.publish).
- ``/confirmed?topic=t``: "1" when Redis confirmed this node's subscription to t.
- ``/gaps``: JSON list of the downtimes reported to on_gap.
- ``/pid``: this process's pid.
"""

import json
import os
import sys

import bunws

gaps: list[float] = []


def fetch(req, server):
    path = req.path
    if path == "/ws":
        topics = [t for t in req.query.get("sub", "").split(",") if t]
        if server.upgrade(req, data=topics):
            return None
        return bunws.Response("upgrade expected", status=400)
    if path == "/confirmed":
        ok = req.query.get("topic", "") in server.backplane.confirmed_channels
        return bunws.Response("1" if ok else "0")
    if path == "/gaps":
        return bunws.Response(json.dumps(gaps))
    if path == "/pid":
        return bunws.Response(str(os.getpid()))
    return bunws.Response("not found", status=404)


SERVERS: list = []  # this process's server, for the server-wide publish ("X")


def open_(ws):
    for topic in ws.data:
        ws.subscribe(topic)
    ws.send_text(f"hello {os.getpid()}")


def message(ws, msg):
    if isinstance(msg, str):
        cmd, _, rest = msg.partition(" ")
        topic, _, payload = rest.partition(" ")
        if cmd == "P":
            ws.publish(topic, payload)
        elif cmd == "X":
            SERVERS[0].publish(topic, payload)
        elif cmd == "S":
            ws.subscribe(topic)
        elif cmd == "U":
            ws.unsubscribe(topic)
    else:
        topic, _, payload = bytes(msg).partition(b"\0")
        ws.publish(topic.decode(), payload)


def main() -> None:
    def backplane():
        url = os.environ["REDIS_URL"]
        cluster = os.environ.get("CLUSTER") == "1"
        return bunws.RedisBackplane(
            url.split(",") if cluster else url,
            channel_prefix=os.environ.get("PREFIX", "bunws:"),
            sharded=os.environ.get("SHARDED") == "1",
            on_gap=gaps.append,
            **({"cluster": True} if cluster else {}),
        )

    workers = int(os.environ.get("WORKERS", "1"))

    def on_start(server):
        SERVERS.append(server)
        if workers == 1:
            print(json.dumps({"port": server.port}), flush=True)

    bunws.run(
        fetch,
        bunws.WebSocketHandler(
            open=open_,
            message=message,
            publish_to_self=os.environ.get("PUBLISH_TO_SELF") == "1",
            idle_timeout=0,
            send_pings=False,
        ),
        hostname="127.0.0.1",
        port=int(os.environ.get("PORT", "0")),
        backplane=backplane if workers > 1 else backplane(),
        on_start=on_start,
        close_timeout=3,
        **({"workers": workers, "socket_sharing": os.environ.get("SOCKET_SHARING", "auto")} if workers > 1 else {}),
    )


if __name__ == "__main__":
    sys.exit(main())
