"""The client against other servers on loopback: Node's ``ws`` and Bun's
``Bun.serve`` (both from npm, installed by ``test_interop.node_modules`` when
missing), with and without permessage-deflate."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_interop import node_modules  # noqa: F401  (the session fixture that installs npm packages)

import bunws

pytestmark = [pytest.mark.asyncio(loop_factories=["asyncio"]), pytest.mark.timeout(900)]

# One echo server for both runtimes: Bun.serve under bun, the ws package under node.
# It prints the port it listens on; the client checks the negotiated extension.
ECHO_SERVER = r"""
if (typeof Bun !== "undefined") {
  const server = Bun.serve({
    hostname: "127.0.0.1", port: 0,
    fetch(req, srv) { return srv.upgrade(req) ? undefined : new Response("no", { status: 400 }); },
    websocket: { perMessageDeflate: true, maxPayloadLength: 16 * 1024 * 1024,
                 message(ws, msg) { ws.send(msg, true); } },
  });
  console.log("PORT " + server.port);
} else {
  const { WebSocketServer } = require("ws");
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0,
                                    perMessageDeflate: { threshold: 0 } });
  wss.on("connection", (ws) => ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary })));
  wss.on("listening", () => console.log("PORT " + wss.address().port));
}
"""


async def start(cmd: list[str], env: dict[str, str], script: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, str(script), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.startswith(b"PORT "):
        proc.kill()
        err = await proc.stderr.read() if proc.stderr else b""
        pytest.fail(f"{cmd[0]} server did not start: {line!r} {err[-500:]!r}")
    return proc, int(line.split()[1])


@pytest.fixture(params=["node-ws", "bun"])
async def peer(request: pytest.FixtureRequest, node_modules: Path, tmp_path: Path) -> AsyncIterator[int]:  # noqa: F811
    script = tmp_path / "echo_server.js"
    script.write_text(ECHO_SERVER)
    if request.param == "bun":
        bun = node_modules / ".bin" / "bun"
        probe = subprocess.run([str(bun), "--version"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"the bun npm package gave no working binary: {probe.stderr.strip()}")
        cmd = [str(bun)]
    else:
        cmd = ["node"]
    proc, port = await start(cmd, dict(os.environ, NODE_PATH=str(node_modules)), script)
    try:
        yield port
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_through_other_servers(peer: int, compression: str | None) -> None:
    async with bunws.connect(f"ws://127.0.0.1:{peer}/", compression=compression,
                             ping_interval=None, proxy=None, max_size=1 << 24) as ws:
        assert bool(ws.extensions) == (compression is not None)
        messages = ["hello", "ünïcödé " * 500, b"\x00\x01" * 100, b"z" * (3 << 20), ""]
        for message in messages:
            await ws.send(message)
        for message in messages:
            assert await ws.recv() == message
        await ws.send(["frag", "ment"])
        assert await ws.recv() == "fragment"
        assert await (await ws.ping(b"rtt")) >= 0
    assert ws.close_code in (1000, 1005)
