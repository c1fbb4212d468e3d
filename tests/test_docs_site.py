"""The documentation site: ``mkdocs build --strict`` passes, and fails when it should.

The real build runs once, in this process, into a temporary directory (never the
repository). The missing-docstring check (``scripts/docstring_check.py``) is tested on
its own and inside a tiny strict build that must fail, so a check that cannot fail
would show.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "griffe"):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.skip(f"{module} is not installed (pip install '.[docs]')", allow_module_level=True)

sys.path.insert(0, str(SCRIPTS))
try:
    import docstring_check
    import griffe_roles
finally:
    sys.path.remove(str(SCRIPTS))


class Collect(logging.Handler):
    """Keeps the build's warnings (what ``--strict`` counts) for the assertion message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def mkdocs_build(config: Path, site: Path) -> tuple[bool, str]:
    """``mkdocs build --strict -f config -d site`` in this process (the second build
    reuses the first one's imports); returns whether it passed and its warnings."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    collect = Collect()
    logger = logging.getLogger("mkdocs")
    logger.addHandler(collect)
    try:
        cfg = load_config(config_file=str(config), site_dir=str(site), strict=True)
        cfg.plugins.on_startup(command="build", dirty=False)
        try:
            build(cfg)
        finally:
            cfg.plugins.on_shutdown()
    except Abort as exc:
        return False, "\n".join([*collect.lines, str(exc)])
    finally:
        logger.removeHandler(collect)
    return not collect.lines, "\n".join(collect.lines)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    passed, warnings = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert passed, warnings
    return site


def test_site_builds_strictly_with_every_page(site: Path) -> None:
    nav_pages = re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav_pages) >= 20
    for page in nav_pages:
        assert (site / page.replace(".md", ".html")).is_file(), page


def test_reference_renders_the_compiled_modules_from_their_stubs(site: Path) -> None:
    reference = (site / "reference.html").read_text(encoding="utf-8")
    internals = (site / "internals.html").read_text(encoding="utf-8")
    # ServerWebSocket's send methods live in the compiled WebSocketCore: they come from
    # bunws/_wscore.pyi, with the stub's docstring.
    assert 'id="bunws.websocket.ServerWebSocket.send_text"' in reference
    assert "Send a text frame" in reference
    for name in ("bunws._wscore.WebSocketCore", "bunws._frame.FrameParser", "bunws._deflate.Inflater"):
        assert f'id="{name}"' in internals, name
    # Sphinx roles were rewritten to code spans, not printed.
    assert not re.search(r":(class|meth|func|mod):<code>", reference + internals)


def test_every_public_object_has_a_docstring() -> None:
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    identifiers = docstring_check.directives(pages)
    assert {"bunws.server", "bunws.websocket", "bunws._wscore"} <= set(identifiers)
    assert docstring_check.missing_docstrings(identifiers, [ROOT]) == []


def write_package(root: Path) -> None:
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        """A package."""
        from ._core import Core
        from .helpers import helper, undocumented_export

        __all__ = ["Core", "Thing", "helper", "undocumented_export"]
        LIMIT = 3

        def documented():
            """Has one."""

        def undocumented():
            pass

        def _private():
            pass

        class Thing(Core):
            """A class."""

            size: int = 0

            def method(self):
                pass

            @property
            def prop(self):
                return 1
    '''))
    (pkg / "helpers.py").write_text(
        '"""Helpers."""\n\ndef helper():\n    """Documented."""\n\ndef undocumented_export():\n    pass\n'
    )
    # A compiled module is read from its stub only: there is no .py and no .so.
    (pkg / "_core.pyi").write_text(
        '"""Stub."""\n\nclass Core:\n    """Compiled."""\n    def fast(self) -> int: ...\n'
        '    def quick(self) -> int:\n        """Documented in the stub."""\n'
    )


def test_checker_finds_each_kind_of_missing_docstring(tmp_path: Path) -> None:
    write_package(tmp_path)
    missing = docstring_check.missing_docstrings(["pkg"], [tmp_path])
    names = sorted(entry.split(" ")[0] for entry in missing)
    assert names == sorted([
        "pkg._core.Core.fast",  # from the stub, inherited by Thing: reported once
        "pkg.Thing.method",
        "pkg.Thing.prop",
        "pkg.helpers.undocumented_export",  # exported through __all__
        "pkg.undocumented",
    ])
    assert any("pkg/__init__.py:" in entry for entry in missing)


def test_strict_build_fails_on_a_missing_docstring_and_a_broken_link(tmp_path: Path) -> None:
    write_package(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# API\n\nSee [nowhere](missing.md).\n\n::: pkg\n")
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""
        site_name: tiny
        hooks: [{SCRIPTS / 'docstring_check.py'}]
        plugins:
          - mkdocstrings:
              handlers:
                python:
                  paths: [.]
                  options: {{allow_inspection: false}}
    """))
    passed, output = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert not passed, output
    assert "missing docstring: pkg.undocumented (" in output
    assert "missing docstring: pkg.Thing.prop (" in output
    assert "missing.md" in output
    assert "Aborted with" in output


def test_sphinx_roles_become_code_spans() -> None:
    text = "Use :meth:`~bunws.Server.stop`, :class:`Server` and :py:func:`bunws.run`; `x` stays."
    assert griffe_roles.strip_roles(text) == "Use `stop`, `Server` and `bunws.run`; `x` stays."


def test_readme_links_the_site_pages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link
    assert "pip install '.[docs]' && mkdocs serve" in readme
