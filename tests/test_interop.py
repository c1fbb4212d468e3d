"""Interoperability with the clients people use: Chromium, Node's ``ws``, Bun, ``websockets``.

Each client is installed by the test setup when missing, and a test is skipped
(with the reason) only when its client truly cannot be installed:

* Chromium: Debian's ``chromium`` package (``apt-get install``; we are root in CI),
  run headless on :data:`INTEROP_PAGE`, which puts the real demo page in two
  iframes (alice and bob), drives their UI through a scripted chat (text, binary,
  a large compressible message, publish from HTTP, echo, leave) and POSTs what it
  saw to ``/results``; pytest asserts on that report.
* Node's ``ws`` package and Bun's built-in ``WebSocket`` (the ``bun`` npm package
  ships the binary), installed with npm into a cache directory
  (``$BUNWS_INTEROP_CACHE`` or ``~/.cache/bunws-interop``); one script,
  :data:`NODE_CLIENT`, runs on both.
* Python's ``websockets`` (a test dependency).

The servers run in-process with the demo app (:class:`bunws.demo.ChatDemo`) and
``per_message_deflate`` on; every exchange checks that compression was negotiated.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import running
from installs import one_at_a_time

import bunws
from bunws.demo import ChatDemo, parse_binary_frame

INSTALL_TIMEOUT = 900  # seconds, per install command
CACHE = Path(os.environ.get("BUNWS_INTEROP_CACHE", Path.home() / ".cache" / "bunws-interop"))
BROWSER_TIMEOUT = 30.0
CLIENT_TIMEOUT = 20.0

# One loop is enough: the clients are what is under test here. The timeout leaves
# room for a first-time install (apt-get update + install, npm install).
pytestmark = [
    pytest.mark.asyncio(loop_factories=["asyncio"]),
    pytest.mark.timeout(3 * INSTALL_TIMEOUT + 120),
]


# ---------------------------------------------------------------- installers
def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _apt_install(package: str) -> tuple[bool, str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
        if result.returncode != 0:
            # The package lists may be missing or stale on a fresh machine.
            subprocess.run(
                ["apt-get", "update", "-q"], capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env
            )
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return False, f"apt-get install {package} took more than {INSTALL_TIMEOUT}s"
    return result.returncode == 0, _tail(result.stdout + result.stderr)


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Path and version of Debian's Chromium, installed when missing."""
    path = shutil.which("chromium")
    if path is None:
        if shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and there is no apt-get to install it")
        if os.geteuid() != 0:
            pytest.skip("chromium is not installed and apt-get needs root")
        with one_at_a_time():
            ok, log = (True, "") if shutil.which("chromium") else _apt_install("chromium")
        path = shutil.which("chromium")
        if not ok or path is None:
            pytest.skip(f"could not install Debian's chromium package:\n{log}")
    result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return path, result.stdout.strip()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """A node_modules with ``ws`` and ``bun``, installed with npm when missing."""
    with one_at_a_time():
        return _npm_install(CACHE / "node" / "node_modules")


def _npm_install(modules: Path) -> Path:
    if (modules / "ws" / "package.json").exists() and (modules / ".bin" / "bun").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed")
    (CACHE / "node").mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE / "node"), "ws@8", "bun@1"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install ws bun took more than {INSTALL_TIMEOUT}s")
    if not (modules / "ws" / "package.json").exists():
        pytest.skip(f"npm could not install ws:\n{_tail(result.stdout + result.stderr)}")
    return modules


# ---------------------------------------------------------------- test app
def interop_app(extra: dict[str, Any]) -> tuple[Any, bunws.WebSocketHandler]:
    """The demo app plus ``/interop`` (the scripted page) and ``/results`` (its report)."""
    app = ChatDemo()

    async def fetch(req: bunws.Request, server: bunws.Server) -> Any:
        if req.path == "/interop":
            return bunws.Response(INTEROP_PAGE, headers={"Content-Type": "text/html;charset=utf-8"})
        if req.path == "/results" and req.method == "POST":
            results: asyncio.Future[Any] = extra["results"]
            if not results.done():
                results.set_result(await req.json())
            return bunws.Response.json({"ok": True})
        answer = app.fetch(req, server)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    return fetch, app.websocket


def server_options() -> dict[str, Any]:
    return dict(ChatDemo.serve_options)


# ---------------------------------------------------------------- Chromium
async def test_chromium_two_pages_chat(chromium: tuple[str, str], tmp_path: Path) -> None:
    path, version = chromium
    extra: dict[str, Any] = {"results": asyncio.get_running_loop().create_future()}
    fetch, handler = interop_app(extra)
    room = "interop-" + uuid.uuid4().hex[:8]
    async with running(handler, fetch, **server_options()) as server:
        url = f"http://127.0.0.1:{server.port}/interop?room={room}"
        profile = tmp_path / "profile"
        profile.mkdir()
        log = (tmp_path / "chromium.log").open("w+")
        browser = subprocess.Popen(
            [
                path,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its helper processes share our kill below
        )
        try:
            report = await _wait_for_report(extra["results"], browser)
            if report is None:
                log.seek(0)
                pytest.fail(
                    f"{version}: no results from the page within {BROWSER_TIMEOUT}s "
                    f"(browser exit code {browser.poll()}); browser log:\n{_tail(log.read(), 30)}"
                )
        finally:
            _kill_group(browser)
            log.close()

    print(f"\n{version} | {report.get('userAgent')}")
    assert report["errors"] == [], report
    failed = {name: check for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, failed
    expected = {
        "pages joined",
        "extensions",
        "compression badge",
        "counter 2",
        "text via form",
        "text shown",
        "binary via form",
        "binary 0..255",
        "large compressible text",
        "http publish",
        "echo text",
        "echo binary",
        "echo extensions",
        "leave notice",
        "counter 1",
        "stats line",
    }
    assert set(report["checks"]) == expected
    assert "permessage-deflate" in report["checks"]["extensions"]["detail"][0]


async def _wait_for_report(results: asyncio.Future[Any], browser: subprocess.Popen[Any]) -> Any:
    """The page's report, or None on timeout or when the browser died first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BROWSER_TIMEOUT
    while loop.time() < deadline:
        try:
            return await asyncio.wait_for(asyncio.shield(results), 0.5)
        except asyncio.TimeoutError:
            if browser.poll() is not None and not results.done():
                return None
    return None


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process we started in its own session, with its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)


# ---------------------------------------------------------------- Node ws and Bun
async def _run_js_client(cmd: list[str], env: dict[str, str], tmp_path: Path, server: bunws.Server) -> dict[str, Any]:
    script = tmp_path / "client.cjs"
    script.write_text(NODE_CLIENT)
    room = "js-" + uuid.uuid4().hex[:8]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        str(script),
        f"ws://127.0.0.1:{server.port}",
        room,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{cmd[0]} client did not finish within {CLIENT_TIMEOUT}s")
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
    return json.loads(lines[-1])


def _assert_js_report(report: dict[str, Any]) -> None:
    assert report["error"] is None, report
    assert report["checks"] == {
        "echo text": True,
        "echo binary": True,
        "echo large": True,
        "welcome a": True,
        "welcome b": True,
        "join notice": True,
        "text relayed": True,
        "binary relayed": True,
        "leave notice": True,
    }, report
    for name in ("echo", "chat"):
        assert "permessage-deflate" in report["extensions"][name], report


async def test_node_ws_echo_and_pubsub(node_modules: Path, tmp_path: Path) -> None:
    fetch, handler = interop_app({})
    async with running(handler, fetch, **server_options()) as server:
        env = dict(os.environ, NODE_PATH=str(node_modules))
        report = await _run_js_client(["node"], env, tmp_path, server)
    print(f"\nnode {report['runtime']} ws {report['library']}")
    assert report["library"].startswith("ws ")
    _assert_js_report(report)


async def test_bun_websocket_echo_and_pubsub(node_modules: Path, tmp_path: Path) -> None:
    bun = node_modules / ".bin" / "bun"
    probe = subprocess.run([str(bun), "--version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the bun npm package did not give a working binary: {probe.stderr.strip()}")
    fetch, handler = interop_app({})
    async with running(handler, fetch, **server_options()) as server:
        report = await _run_js_client([str(bun)], dict(os.environ), tmp_path, server)
    print(f"\nbun {report['runtime']} ({report['library']})")
    assert report["library"] == "Bun WebSocket"
    _assert_js_report(report)


# ---------------------------------------------------------------- Python websockets
async def test_python_websockets_echo_and_pubsub() -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    fetch, handler = interop_app({})
    async with running(handler, fetch, **server_options()) as server:
        base = f"ws://127.0.0.1:{server.port}"
        async with websockets.connect(f"{base}/echo") as echo:
            assert any(isinstance(ext, PerMessageDeflate) for ext in echo.protocol.extensions)
            for msg in ("héllo", bytes(range(256)), "abc" * 20_000):
                await echo.send(msg)
                assert await asyncio.wait_for(echo.recv(), CLIENT_TIMEOUT) == msg
        async with websockets.connect(f"{base}/chat?name=a&room=py") as a, websockets.connect(
            f"{base}/chat?name=b&room=py"
        ) as b:
            for ws in (a, b, a):  # two welcomes, then b's join notice at a
                json.loads(await asyncio.wait_for(ws.recv(), CLIENT_TIMEOUT))
            await b.send(b"\x01\x02")
            assert parse_binary_frame(await asyncio.wait_for(a.recv(), CLIENT_TIMEOUT)) == ("b", b"\x01\x02")


# ---------------------------------------------------------------- client programs
# Runs on Node (with the ws package, found through NODE_PATH) and on Bun (built-in
# WebSocket); both expose the browser API. argv: base ws:// URL, room. Prints one
# JSON report line.
NODE_CLIENT = r"""
"use strict";
const isBun = typeof Bun !== "undefined";
const WS = isBun ? globalThis.WebSocket : require("ws");
const [base, room] = process.argv.slice(2);
const report = {
  runtime: isBun ? Bun.version : process.version,
  library: isBun ? "Bun WebSocket" : "ws " + require("ws/package.json").version,
  extensions: {}, checks: {}, error: null,
};
const timer = setTimeout(() => finish(new Error("timed out")), 15000);

function finish(err) {
  if (err) report.error = String(err && err.stack || err);
  clearTimeout(timer);
  console.log(JSON.stringify(report));
  process.exit(0);
}

// A socket with a queue of received messages (text as string, binary as Uint8Array).
function open(path) {
  return new Promise((resolve, reject) => {
    const ws = new WS(base + path);
    ws.binaryType = "arraybuffer";
    const queue = [], waiters = [];
    ws.addEventListener("message", (e) => {
      const msg = typeof e.data === "string" ? e.data : new Uint8Array(e.data);
      if (waiters.length) waiters.shift()(msg); else queue.push(msg);
    });
    ws.next = () => queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r));
    ws.nextJSON = async () => JSON.parse(await ws.next());
    ws.addEventListener("open", () => resolve(ws));
    ws.addEventListener("error", (e) => reject(new Error("socket error on " + path + ": " + (e.message || e.type))));
  });
}

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

async function main() {
  // Echo: text, all byte values, a large compressible text.
  const echo = await open("/echo");
  report.extensions.echo = echo.extensions;
  echo.send("héllo ✓");
  report.checks["echo text"] = (await echo.next()) === "héllo ✓";
  const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
  echo.send(bytes);
  const back = await echo.next();
  report.checks["echo binary"] = back instanceof Uint8Array && same(back, bytes);
  const big = "interop ".repeat(7000);
  echo.send(big);
  report.checks["echo large"] = (await echo.next()) === big;
  echo.close(1000);

  // Pub/sub through the demo's chat rooms.
  const a = await open(`/chat?name=a&room=${room}`);
  report.extensions.chat = a.extensions;
  report.checks["welcome a"] = (await a.nextJSON()).members === 1;
  const b = await open(`/chat?name=b&room=${room}`);
  report.checks["welcome b"] = (await b.nextJSON()).members === 2;
  const join = await a.nextJSON();
  report.checks["join notice"] = join.type === "join" && join.name === "b" && join.members === 2;
  a.send("hi from a");
  const line = await b.nextJSON();
  report.checks["text relayed"] = line.type === "message" && line.name === "a" && line.text === "hi from a";
  await a.next();  // a's own line
  b.send(Uint8Array.from([7, 8, 9]));
  const frame = await a.next();
  report.checks["binary relayed"] = frame instanceof Uint8Array && same(Array.from(frame), [1, 98, 7, 8, 9]);
  b.close(1000);
  let leave = await a.nextJSON();
  while (leave.type !== "leave") leave = await a.nextJSON();  // b's own line may come first
  report.checks["leave notice"] = leave.name === "b" && leave.members === 1;
  a.close(1000);
}

main().then(() => finish(null), finish);
"""

INTEROP_PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>bunws interop</title></head>
<body>
<iframe id="a" width="480" height="360"></iframe>
<iframe id="b" width="480" height="360"></iframe>
<script>
"use strict";
// Two real demo pages (alice, bob) in iframes of this page, driven through their UI.
const room = new URLSearchParams(location.search).get("room");
const results = { checks: {}, errors: [], userAgent: navigator.userAgent };
const check = (name, ok, detail) => { results.checks[name] = { ok: !!ok, detail: detail === undefined ? null : detail }; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(fn, what, ms = 8000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = fn();
    if (value) return value;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(20);
  }
}
const frame = (id) => document.getElementById(id);
const doc = (id) => frame(id).contentDocument;
const chatOf = (id) => { const w = frame(id).contentWindow; return w && w.bunwsChat && w.bunwsChat.ready ? w.bunwsChat : null; };
const utf8 = (bytes) => new TextDecoder().decode(Uint8Array.from(bytes));
const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
function submit(id, text, binary) {
  const d = doc(id);
  d.getElementById("text").value = text;
  d.getElementById("binary").checked = !!binary;
  d.getElementById("say").requestSubmit();
}

async function main() {
  frame("a").src = "/?name=alice&room=" + encodeURIComponent(room);
  const a = await until(() => chatOf("a"), "page a");
  await a.ready;
  frame("b").src = "/?name=bob&room=" + encodeURIComponent(room);
  const b = await until(() => chatOf("b"), "page b");
  await b.ready;
  await until(() => a.events.some((e) => e.type === "join" && e.name === "bob"), "bob's join notice at alice");
  check("pages joined", a.me === "alice" && b.me === "bob", [a.me, b.me]);
  check("extensions", a.ws.extensions.includes("permessage-deflate") && b.ws.extensions.includes("permessage-deflate"),
        [a.ws.extensions, b.ws.extensions]);
  check("compression badge", doc("a").getElementById("compression").textContent.includes("permessage-deflate"),
        doc("a").getElementById("compression").textContent);
  await until(() => doc("a").getElementById("members").dataset.count === "2", "counter 2 at alice");
  check("counter 2", doc("b").getElementById("members").dataset.count === "2", doc("a").getElementById("members").textContent);

  submit("a", "hello from alice ✓");
  await until(() => b.events.some((e) => e.type === "message" && e.name === "alice" && e.text === "hello from alice ✓"), "text at bob");
  check("text via form", a.events.some((e) => e.type === "message" && e.text === "hello from alice ✓"));
  check("text shown", doc("b").getElementById("log").textContent.includes("hello from alice ✓"));

  submit("b", "bytes from bob", true);
  await until(() => a.events.some((e) => e.type === "binary" && e.name === "bob" && utf8(e.bytes) === "bytes from bob"), "binary at alice");
  check("binary via form", doc("a").getElementById("log").textContent.includes("binary, 14 bytes"));

  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  b.send(all);
  await until(() => a.events.some((e) => e.type === "binary" && sameBytes(e.bytes, Array.from(all))), "0..255 at alice");
  check("binary 0..255", true);

  const big = "bunws interop ".repeat(4000);  // 56 000 bytes, under the demo's 64 KiB limit
  a.send(big);
  await until(() => b.events.some((e) => e.type === "message" && e.text === big), "large text at bob");
  check("large compressible text", true, big.length);

  const res = await fetch("/rooms/" + encodeURIComponent(room) + "/messages?name=http", { method: "POST", body: "from fetch()" });
  const body = await res.json();
  await until(() => [a, b].every((c) => c.events.some((e) => e.type === "message" && e.name === "http" && e.text === "from fetch()")), "HTTP publish at both");
  check("http publish", res.status === 200 && body.members === 2 && body.status > 0, body);

  const echo = new WebSocket("ws://" + location.host + "/echo");
  echo.binaryType = "arraybuffer";
  const echoed = [];
  echo.onmessage = (e) => echoed.push(e.data);
  await new Promise((resolve, reject) => { echo.onopen = resolve; echo.onerror = () => reject(new Error("echo socket failed")); });
  echo.send("echo ✓");
  echo.send(all);
  await until(() => echoed.length === 2, "echo replies");
  check("echo text", echoed[0] === "echo ✓", echoed[0]);
  check("echo binary", echoed[1] instanceof ArrayBuffer && sameBytes(Array.from(new Uint8Array(echoed[1])), Array.from(all)));
  check("echo extensions", echo.extensions.includes("permessage-deflate"), echo.extensions);
  echo.close();

  doc("b").getElementById("leave").click();
  await until(() => a.events.some((e) => e.type === "leave" && e.name === "bob"), "leave notice at alice");
  check("leave notice", a.events.find((e) => e.type === "leave").members === 1);
  check("counter 1", doc("a").getElementById("members").dataset.count === "1", doc("a").getElementById("members").textContent);
  // The live stats line shows GET /stats: wait for a refresh that counts alice's lines.
  await until(() => chatOf("a").stats && chatOf("a").stats.messages_received >= 2, "a stats refresh");
  check("stats line", doc("a").getElementById("stats").textContent.includes("open /"),
        doc("a").getElementById("stats").textContent);
}

async function report() {
  await fetch("/results", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(results) });
  document.title = "done";
}
main().catch((err) => results.errors.push(String(err && err.stack || err))).finally(report);
</script>
</body></html>
"""
