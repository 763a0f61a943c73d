"""No import circle among the modules of ``training/``.

train, distill and export once imported each other in a circle, held together by imports
deferred into function bodies. The graph here is read from the source (every module parsed,
imports inside functions included, nothing imported), so the check is fast and a deferred
import cannot hide a circle. Run as a script to print the graph's cycles.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "training"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is its
    ``__init__.py``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> tuple[set[str], set[str]]:
    """(explicit, implied) modules an import statement runs: the modules named, and the
    packages Python imports on the way to them."""
    if isinstance(node, ast.Import):
        named = {a.name for a in node.names}
    else:
        if node.level:  # relative: the importer's package, then level - 1 up
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join([*pkg, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        subs = {f"{base}.{a.name}" for a in node.names}
        named = (subs & modules) or {base}
        if subs - modules:  # a name taken from the package's own namespace
            named.add(base)
    implied = {a for n in named for a in _ancestors(n)} - named
    return named & modules, implied & modules


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions.

    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so those count too, except the
    packages enclosing the importer (already being imported when it runs); an explicit
    ``from a.b import x`` of a name ``a.b`` defines still counts inside ``a.b.c``."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        enclosing = set(_ancestors(name)) | ({name} if is_package else set())
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                explicit, implied = _targets(node, name, is_package, set(modules))
                edges |= explicit | (implied - enclosing)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_training_has_no_import_cycle():
    graph = import_graph()
    assert cycles(graph) == [], "import cycles among training modules (see the test's doc)"


def test_the_graph_sees_imports_at_every_level():
    """Guards against a graph that finds nothing: module-level, in-function and package
    imports are all edges."""
    graph = import_graph()
    assert "training.distill" in graph["training.train"]
    assert "training.export.runtime" in graph["training.distill"]
    assert "training.export" in graph["training.distill"]  # the package runs first
    assert "training.export.bundle" in graph["training.export"]
    assert "training.export" not in graph["training.export.bundle"]  # its own package
    assert "training.config" in graph["training.distill"]  # inside check_held_out


def test_a_cycle_is_reported(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import a\n")
    (pkg / "b.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}  # relative, inside a function
    assert cycles(graph) == [["pkg.a", "pkg.sub.c"]]


# The public names of training/export.py before it became a package: callers may still import
# any of them from ``training.export``.
EXPORT_NAMES = [
    "LAYER_NORMS",
    "OPSET",
    "RECIPES",
    "SELF_CHECK_TEXTS",
    "SESSION_CONFIG",
    "WEIGHT_INPUTS",
    "ExportCheckFailed",
    "ExportGate",
    "ExportReport",
    "Recipe",
    "agreement",
    "apply_recipe",
    "batch_flip_rate",
    "best_zero_point",
    "build_bundle",
    "centered_rms_layer_norms",
    "choose_recipe",
    "dir_mb",
    "export_onnx",
    "feeds",
    "fit_lexical",
    "gather_before_dequantize",
    "gptq_int8",
    "input_hessians",
    "layer_norm_fed",
    "lexical_parity",
    "optimize",
    "ort_predictor",
    "output_names",
    "per_token_int8",
    "quantize",
    "recipe_nodes",
    "row_zero_points",
    "self_check",
    "session",
    "smoothing_factors",
    "tokenizer_json",
    "weight_only_int8",
]


def test_the_export_package_keeps_the_names_callers_import():
    pytest.importorskip("torch")
    export = importlib.import_module("training.export")
    assert set(EXPORT_NAMES) <= set(export.__all__)
    for name in export.__all__:
        value = getattr(export, name)
        home = getattr(value, "__module__", None)
        assert home is None or home.startswith("training.export."), (name, home)


if __name__ == "__main__":
    g = import_graph()
    for name in sorted(g):
        print(f"{name}: {', '.join(sorted(g[name])) or '-'}")
    found = cycles(g)
    print("cycles:", found or "none")
    sys.exit(1 if found else 0)
