"""The package layout: no import circle anywhere in harmonix, and one public surface for
harmonix.iguane (what its __init__ exports is what docs/api.rst lists)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import harmonix
import harmonix.iguane

PACKAGE = Path(harmonix.__file__).parent
API = PACKAGE.parent / "docs" / "api.rst"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """For every module of harmonix, the harmonix modules it imports anywhere in its code
    (at the top, in functions, under TYPE_CHECKING): for ``from a.b import c``, module
    ``a.b.c`` when it exists, else ``a.b``. A package's ``__init__`` run implicitly by
    importing one of its submodules does not count (it only hands names on)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module) :], module]
        if module in done:
            return None
        for dep in sorted(graph[module]):
            cycle = visit(dep, [*stack, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_no_import_cycle_in_harmonix():
    graph = _imports()
    # the walk sees submodules imported from their package and imports inside functions
    assert "harmonix.iguane._fitting" in graph["harmonix.iguane.estimator"]
    assert "harmonix._threads" in graph["harmonix.preprocessing.chain"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_a_cycle_through_a_function_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_low_modules_do_not_import_up():
    # the thread policy and the BIDS entity table sit below what uses them
    graph = _imports()
    assert graph["harmonix._threads"] == set()
    io_modules = [m for m in graph if m == "harmonix.io" or m.startswith("harmonix.io.")]
    assert len(io_modules) > 1
    for name in io_modules:
        assert not any(m.startswith("harmonix.bids") for m in graph[name]), name
    assert not any(m.startswith("harmonix.iguane") for m in graph["harmonix.preprocessing.chain"])


def test_iguane_public_surface_is_what_the_api_page_lists():
    text = API.read_text()
    section = text.split(".. currentmodule:: harmonix.iguane\n", 1)[1]
    section = section.split(".. currentmodule::", 1)[0]  # up to the next section
    listed = set(re.findall(r"^   (\w+)$", section, re.M))
    listed |= set(re.findall(r"autodata:: harmonix\.iguane\.(\w+)", text))
    assert listed == set(harmonix.iguane.__all__)
    for name in harmonix.iguane.__all__:  # each defined in a submodule, handed on here
        obj = getattr(harmonix.iguane, name)
        home = getattr(obj, "__module__", None)
        assert home is None or home.startswith("harmonix.iguane."), (name, home)


def test_model_files_written_before_the_regrouping_load():
    # the shipped model was saved by an earlier layout: the class name it stores still
    # names the estimator's home, and load_model (which imports that name) returns the
    # same model as the class's own loader
    import numpy as np

    from harmonix import IGUANeHarmonizer
    from harmonix.datasets import make_multisite
    from harmonix.iguane.pretrained import DEMO_MODEL_PATH
    from harmonix.persistence import _torch_model_class, load_model

    assert _torch_model_class(DEMO_MODEL_PATH) == "harmonix.iguane.estimator.IGUANeHarmonizer"
    model = load_model(DEMO_MODEL_PATH)
    assert type(model) is IGUANeHarmonizer
    ds = make_multisite(n_subjects=1, n_sites=2, resolution=4, random_state=1)
    expected = IGUANeHarmonizer.load(DEMO_MODEL_PATH).transform(ds.imgs, ds.sites)
    np.testing.assert_array_equal(model.transform(ds.imgs, ds.sites), expected)


def test_every_harmonix_import_of_scripts_and_docs_resolves():
    # benchmarks, docs and examples are not imported by the tests: a module that moved
    # must not leave them importing its old path
    import importlib

    root = PACKAGE.parent
    built = ("docs/_build", "docs/auto_examples")  # copies the docs build writes
    files = [
        path
        for pattern in ("benchmarks/**/*.py", "docs/**/*.py", "tests/*.py")
        for path in root.glob(pattern)
        if not path.relative_to(root).as_posix().startswith(built)
    ]
    stale = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module.split(".")[0] != "harmonix":
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                if exc.name and exc.name.startswith("harmonix"):
                    stale.append(f"{path.relative_to(root)}:{node.lineno} {node.module}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        stale.append(f"{path.relative_to(root)}:{node.lineno} {alias.name}")
    assert files and not stale, stale
