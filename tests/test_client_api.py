"""The client's public surface: exports, stubs of bunws._client, README coverage."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import bunws
from bunws.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLIENT_ERRORS = ["ConnectionClosed", "ConnectionClosedOK", "ConnectionClosedError",
                 "InvalidHandshake", "InvalidStatus", "InvalidURI", "OpenTimeout",
                 "ConcurrencyError"]


def test_exports_and_error_tree() -> None:
    assert bunws.connect is connect and bunws.ClientConnection is ClientConnection
    for name in CLIENT_ERRORS:
        assert issubclass(getattr(bunws, name), bunws.WebSocketError), name
        assert name in bunws.__all__
    assert issubclass(bunws.ConnectionClosed, bunws.ClosedError)
    assert issubclass(bunws.InvalidStatus, bunws.HandshakeError)
    assert issubclass(bunws.OpenTimeout, TimeoutError)
    assert issubclass(bunws.InvalidURI, ValueError)


def test_readme_mentions_every_client_name() -> None:
    public = {n for n in vars(ClientConnection) if not n.startswith("_")}
    public |= {n for n in vars(connect) if not n.startswith("_")}
    public |= set(CLIENT_ERRORS) | {"process_exception"}
    params = set(inspect.signature(connect).parameters) - {"uri"}
    missing = sorted(n for n in public | params if not re.search(rf"\b{n}\b", README))
    assert not missing, f"README does not mention {missing}"
    assert "## Client" in README and "Migrating from websockets" in README
    assert (ROOT / "docs" / "client.md").exists()


def test_every_public_client_member_has_a_docstring() -> None:
    for owner in (ClientConnection, connect):
        for name, member in vars(owner).items():
            if name.startswith("_") or not callable(member) and not isinstance(member, property):
                continue
            assert inspect.getdoc(member), f"{owner.__name__}.{name} has no docstring"


def test_client_stub_matches_the_compiled_module() -> None:
    compiled = importlib.import_module("bunws._client")
    stub = (ROOT / "bunws" / "_client.pyi").read_text()
    for name in re.findall(r"^    def (\w+)", stub, re.M):
        assert hasattr(compiled.ClientCore, name), name
    assert (ROOT / "bunws" / "_client.pxd").exists()
