"""The package's shape: data flows one way through the layers, modules stay small, no name
outside ``simgen`` is claimed, and the public API is what the docs promise."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import simgen

ROOT = Path(simgen.__file__).parent

# A layer may import from its own layer and the ones before it, never from later ones.
LAYERS = [
    {"errors", "atomic", "terminal", "threads"},
    {"data"},
    {"models"},
    {"emulator"},
    {"train"},
    {"emulation", "inference"},
    {"diagnostics"},
    {"summary", "jobs", "field_jobs", "demo"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    return {
        ".".join(("simgen", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in ROOT.rglob("*.py")
        if "builtin" not in p.parts
    }


def _imports(path: Path) -> set[str]:
    """Every simgen module that ``path`` imports, at any depth (lazy imports in functions
    and imports under ``TYPE_CHECKING`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simgen"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("simgen"))
    return found


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_no_module_imports_a_later_layer():
    wrong = []
    for name, path in _modules().items():
        if name == "simgen":  # the package's lazy exports reach every layer
            continue
        for target in _imports(path):
            if target == "simgen" or target.startswith("simgen.builtin"):
                continue
            if _layer(target) > _layer(name):
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_no_import_circles():
    graph = {name: _imports(path) & set(_modules()) for name, path in _modules().items()}
    graph.pop("simgen")
    graph = {k: {t for t in v if t not in ("simgen", k)} for k, v in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_modules_stay_small():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > 400} == {}
    cli = sum(len(p.read_text().splitlines()) for p in (ROOT / "cli").glob("*.py"))
    assert cli < 400, f"the CLI package has {cli} lines"


def test_subpackages_follow_the_pipeline():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert {"data", "models", "train", "inference", "diagnostics", "cli"} <= packages


def test_builtin_simulators_install_under_simgen(tmp_path):
    from importlib.metadata import entry_points

    targets = {ep.value for ep in entry_points(group="simgen.simulators")}
    assert targets and all(t.startswith("simgen.builtin.") for t in targets if "example" not in t)
    for folder in (tmp_path, ROOT.parent):  # elsewhere, and the repository's root
        run = subprocess.run(
            [sys.executable, "-c", "import simulators"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode != 0 and "simulators" in run.stderr.splitlines()[-1]


@pytest.mark.parametrize("name", sorted(simgen.__all__))
def test_public_names_resolve(name):
    assert getattr(simgen, name) is not None


def test_check_is_the_function_in_any_import_order():
    code = (
        "import simgen.diagnostics.report, simgen; assert callable(simgen.check); "
        "assert simgen.check.__module__ == 'simgen.diagnostics.report'"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_api_reference_covers_every_public_name():
    text = (ROOT.parent / "docs" / "api.md").read_text()
    missing = []
    for name in simgen.__all__:
        if name == "__version__":
            continue
        obj = getattr(simgen, name)
        if f"::: {obj.__module__}.{obj.__qualname__}" not in text:
            missing.append(name)
    assert not missing, f"add to docs/api.md: {missing}"
