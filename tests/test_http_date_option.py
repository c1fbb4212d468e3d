"""The ``Date`` field of the 101: one by default (the caller's if it gives one), none
when the front is told to send none (``bunws.http.without_date``, which the uvicorn
adapter applies for uvicorn's ``date_header=False``: tests/test_uvicorn_suite.py)."""

from __future__ import annotations

from conftest import running
from rawclient import RawClient

import bunws
from bunws.http import build_101, without_date

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def fields(head: bytes, name: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if line.lower().startswith(name.lower() + b":")]


def test_the_101_has_one_date_by_default_and_the_callers_replaces_it() -> None:
    plain = build_101(KEY, [], None, None)
    assert len(fields(plain, b"date")) == 1
    given = build_101(KEY, [("date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("X-Date", "kept")], None, None)
    assert fields(given, b"date") == [b"date: Thu, 01 Jan 2026 00:00:00 GMT"]
    assert fields(given, b"x-date") == [b"X-Date: kept"]


def test_without_date_drops_only_the_date_field_and_keeps_the_head_well_formed() -> None:
    head = build_101(KEY, [("X-Date", "kept"), ("X-Other", "date: not a field")], "chat", None)
    stripped = without_date(head)
    assert fields(stripped, b"date") == []
    assert stripped.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert stripped.endswith(b"\r\n\r\n") and stripped.count(b"\r\n\r\n") == 1
    assert b"X-Date: kept\r\n" in stripped and b"X-Other: date: not a field\r\n" in stripped
    assert b"Sec-WebSocket-Protocol: chat\r\n" in stripped
    assert without_date(stripped) == stripped


async def test_a_native_upgrade_with_a_date_header_sends_exactly_that_one() -> None:
    def fetch(req: bunws.Request, server: bunws.Server) -> None:
        headers = {"Date": "Thu, 01 Jan 2026 00:00:00 GMT"} if req.path == "/given" else None
        server.upgrade(req, headers=headers)

    async with running(fetch=fetch) as server:
        plain = await RawClient.connect(server.port, "/")
        plain.close()
        given = await RawClient.connect(server.port, "/given")
        given.close()
    assert len(fields(plain.head, b"date")) == 1
    assert fields(given.head, b"date") == [b"Date: Thu, 01 Jan 2026 00:00:00 GMT"]
