"""The package's import graph: arrows point down the layers ARCHITECTURE.md declares, and no module is in a circle.

Every ``import`` / ``from ... import`` of the package is read from the source (module level and inside functions alike:
a deferred import is still an arrow), so the check cannot be dodged by moving an import into a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "openpack_vlm"

# lowest first; a module may import its own layer and the layers below it (ARCHITECTURE.md, "Layers")
LAYERS: list[tuple[str, ...]] = [
    ("labels", "schema", "io_utils", "cli", "platform_check"),  # core: names, output contracts, writers, CLI
    ("prompt", "grammar", "contract", "metrics"),  # the rules every phase shares
    ("data",),
    ("testing",),  # stand-ins in the real formats: synthetic root, tiny models, smoke shards
    ("model",),
    ("timeline",),
    ("evaluation",),
    ("serving", "hub"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import of the package in ``path``; ``from X import Y`` counts X.Y when
    Y is a module of the package, else X."""
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "openpack_vlm":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if _exists(sub) else target, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "openpack_vlm"]
    return out


def _exists(module: str) -> bool:
    p = PACKAGE.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "openpack_vlm"
    if key not in LAYER_OF:
        raise AssertionError(f"{module}: {key} is in no layer; add it to LAYERS here and in ARCHITECTURE.md")
    return LAYER_OF[key]


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward(g: dict) -> list[str]:
    return [f"{m}:{line} imports {t} ({LAYERS[layer(t)][0]}… layer {layer(t)} > {layer(m)})"
            for m, deps in g.items() if m != "openpack_vlm" for t, line in deps
            if t != "openpack_vlm" and layer(t) > layer(m)]


def cycles(g: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    edges = {m: sorted({t for t, _ in deps if t in g and t != m and not m.startswith(t + ".")}) for m, deps in g.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_imports_point_down_the_layers():
    bad = upward(graph())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circles():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_look_for():
    """The rules fail on a made-up graph with an upward arrow and a circle (a test that cannot fail proves nothing)."""
    g = {"openpack_vlm.data.a": [("openpack_vlm.serving.app", 3)], "openpack_vlm.serving.app": [],
         "openpack_vlm.model.x": [("openpack_vlm.model.y", 1)], "openpack_vlm.model.y": [("openpack_vlm.model.x", 2)]}
    assert upward(g) == ["openpack_vlm.data.a:3 imports openpack_vlm.serving.app (serving… layer 7 > 2)"]
    assert cycles(g) == [["openpack_vlm.model.x", "openpack_vlm.model.y"]]


def test_layers_are_the_documented_ones():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- layers:start -->\n", 1)[1].split("\n<!-- layers:end -->", 1)[0]
    assert block == "\n".join(f"{i}. " + ", ".join(f"`{n}`" for n in names) for i, names in enumerate(LAYERS))


def test_every_console_script_is_a_main_of_the_package():
    """pyproject's [project.scripts]: each command names a ``main`` in the package (what the top-level scripts call)."""
    import importlib
    import inspect
    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"openpack-data", "openpack-train", "openpack-evaluate", "openpack-serve", "openpack-timeline"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module.startswith("openpack_vlm.") and func == "main", name
        fn = getattr(importlib.import_module(module), func)
        assert callable(fn) and len(inspect.signature(fn).parameters) <= 1, name


def test_deferred_imports_say_why():
    """An import of the package inside a function is deferred on purpose — a heavy library it would load on import,
    or a cycle — and says so in a comment on its line or the line above; every other import is at module level, where
    this test's graph and a reader see it."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = path.read_text()
        lines = src.split("\n")
        for fn in ast.walk(ast.parse(src)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("openpack_vlm")):
                    if "#" not in lines[node.end_lineno - 1] and not lines[node.lineno - 2].lstrip().startswith("#"):
                        silent.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not silent, "imports inside functions without a reason (move them to module level, or say why):\n" + \
        "\n".join(sorted(set(silent)))
