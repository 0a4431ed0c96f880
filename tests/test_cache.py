"""atlas._cache: one entry per kind, replaced when the key changes, dropped by clear_cache; and
the modules that keep something per process keep it there (no module-level memo of their own)."""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Iterator

import pytest

from atlas._cache import cached, clear_cache
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    clear_cache("test.a")
    clear_cache("test.b")
    yield
    clear_cache("test.a")
    clear_cache("test.b")


def _counter() -> tuple[list[str], Callable[[str], Callable[[], str]]]:
    built: list[str] = []

    def maker(value: str) -> Callable[[], str]:
        def make() -> str:
            built.append(value)
            return value

        return make

    return built, maker


def test_the_same_key_is_built_once() -> None:
    built, make = _counter()
    assert cached("test.a", ("run", 1), make("v1")) == "v1"
    assert cached("test.a", ("run", 1), make("other")) == "v1"
    assert built == ["v1"]


def test_a_new_key_replaces_the_kinds_entry() -> None:
    built, make = _counter()
    cached("test.a", "k1", make("v1"))
    assert cached("test.a", "k2", make("v2")) == "v2"
    assert cached("test.a", "k1", make("v1 again")) == "v1 again"  # k1 was dropped when k2 came: one entry per kind
    assert built == ["v1", "v2", "v1 again"]


def test_kinds_are_independent() -> None:
    built, make = _counter()
    cached("test.a", "k", make("a"))
    cached("test.b", "k", make("b"))
    assert cached("test.a", "k", make("x")) == "a" and cached("test.b", "k", make("y")) == "b"
    assert built == ["a", "b"]


def test_clear_drops_one_kind_or_every_kind() -> None:
    built, make = _counter()
    cached("test.a", "k", make("a"))
    cached("test.b", "k", make("b"))
    clear_cache("test.a")
    assert cached("test.a", "k", make("a2")) == "a2" and cached("test.b", "k", make("b2")) == "b"
    clear_cache()
    assert cached("test.b", "k", make("b3")) == "b3"
    assert built == ["a", "b", "a2", "b3"]


def test_a_failed_build_leaves_no_entry() -> None:
    def boom() -> str:
        raise OSError("unreadable")

    cached("test.a", "k1", lambda: "v1")
    with pytest.raises(OSError, match="unreadable"):
        cached("test.a", "k2", boom)
    assert cached("test.a", "k1", lambda: "rebuilt") == "rebuilt"  # the old entry went before the build


def test_threads_agree_on_one_value_per_key() -> None:
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(cached("test.a", "k", lambda: "v"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["v"] * 8


def _module_memos(source: str, path: str) -> list[str]:
    """``path:line`` of module-level assignments named like a cache, and of functools cache decorators."""
    tree = ast.parse(source, filename=path)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                name = ast.unparse(dec)
                if "cache" in name and "cached_property" not in name:
                    hits.append(f"{path}:{node.lineno} @{name}")
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and "CACHE" in t.id.upper() and path != "atlas/_cache.py":
                hits.append(f"{path}:{node.lineno} {t.id}")
    return hits


def test_no_module_keeps_a_memo_of_its_own() -> None:
    """Per-process caches live in atlas._cache, under one invalidation rule (the key)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "atlas").rglob("*.py"))
    found = [hit for f in files for hit in _module_memos((ROOT / f).read_text(), f)]
    assert not found, "use atlas._cache.cached(kind, key, make):\n" + "\n".join(found)


def test_the_memo_check_finds_one() -> None:
    source = ("import functools\n_HASH_CACHE: dict = {}\n\n\n@functools.lru_cache(maxsize=1)\n"
              "def f():\n    return 1\n")
    assert _module_memos(source, "m.py") == ["m.py:6 @functools.lru_cache(maxsize=1)", "m.py:2 _HASH_CACHE"]
    assert _module_memos(source.replace("functools.lru_cache(maxsize=1)", "functools.cached_property"), "m.py") == \
        ["m.py:2 _HASH_CACHE"]
