"""The public surface: exports, type stubs of the compiled modules, README coverage."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import bunws

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_all_names_exist_and_are_unique() -> None:
    assert len(set(bunws.__all__)) == len(bunws.__all__)
    for name in bunws.__all__:
        assert hasattr(bunws, name), name


def test_errors_derive_from_one_base() -> None:
    for name in ("ProtocolError", "MessageTooBig", "HandshakeError", "InvalidArgument", "InvalidType", "ClosedError"):
        assert issubclass(getattr(bunws, name), bunws.WebSocketError)
    assert issubclass(bunws.InvalidArgument, ValueError)
    assert issubclass(bunws.InvalidType, TypeError)
    assert bunws.MessageTooBig().close_code == 1009


def stub_names(module: str) -> set[str]:
    tree = ast.parse((ROOT / "bunws" / f"{module}.pyi").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        # Plain assignments in a stub are type aliases: not runtime names.
    return {n for n in names if not n.startswith("_") and n != "T"}


@pytest.mark.parametrize("module", ["_frame", "_deflate", "_wscore"])
def test_stubs_match_the_compiled_module(module: str) -> None:
    compiled = importlib.import_module(f"bunws.{module}")
    for name in stub_names(module):
        assert hasattr(compiled, name), f"{module}.pyi declares {name}, the module lacks it"
    assert (ROOT / "bunws" / f"{module}.pxd").exists()


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "bunws" / "py.typed").exists()


def public_members(cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name in vars(klass):
            if not name.startswith("_"):
                names.add(name)
    return names


@pytest.mark.parametrize("cls", [bunws.ServerWebSocket, bunws.Server, bunws.Request])
def test_readme_documents_every_public_member(cls: type) -> None:
    missing = [name for name in sorted(public_members(cls)) if not re.search(rf"\b{name}\b", README)]
    assert not missing, f"README does not mention {cls.__name__}.{missing}"


def test_readme_documents_every_handler_option() -> None:
    params = inspect.signature(bunws.WebSocketHandler.__init__).parameters
    missing = [p for p in params if p != "self" and f"`{p}" not in README and f"{p}=" not in README]
    assert not missing


def test_readme_documents_every_serve_option() -> None:
    params = inspect.signature(bunws.serve).parameters
    missing = [p for p in params if p not in ("fetch", "websocket") and p not in README]
    assert not missing


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[0].strip() == "pip install . && python -m bunws"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run exactly the README's test command"
