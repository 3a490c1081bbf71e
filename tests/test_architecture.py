"""The architecture's rules, checked on the source: one owner for each piece of knowledge.

- Method, model-family and adapter-type names appear as literals only inside their registries (sdtune_ui/methods,
  sdtune_ui/families, sdtune_ui/methods/adapters): everything else asks the registry, so adding a method, a
  family or an adapter type is one class.
- Nothing outside sdtune_ui/ui imports gradio (the core, the CLI and the tests drive the same functions).
- Packages do not import each other in a circle at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sdtune_ui.families import family_names
from sdtune_ui.methods import method_names
from sdtune_ui.methods.adapters import adapter_names

PACKAGE = Path(__file__).resolve().parent.parent / "sdtune_ui"
REGISTRIES = (PACKAGE / "methods", PACKAGE / "families")
ADAPTER_REGISTRY = PACKAGE / "methods" / "adapters"


def source_files(exclude: tuple[Path, ...] = ()) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(p.is_relative_to(root) for root in exclude)]


def string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_method_and_family_names_are_literals_only_in_their_registries():
    names = set(method_names()) | set(family_names())
    assert {"lora", "dreambooth", "sd1", "sdxl"} <= names  # the check below would pass vacuously otherwise
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} {value!r}"
             for path in source_files(exclude=REGISTRIES) for line, value in string_literals(path) if value in names]
    assert not found, "ask the registry instead of naming a method or family:\n" + "\n".join(found)


def test_adapter_type_names_are_literals_only_in_the_adapter_registry():
    # Plain LoRA's name is also the LoRA method's and the artifact kind's (checked above); its variants' are not.
    names = set(adapter_names()) - set(method_names())
    assert {"dora", "lokr", "loha"} <= names
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} {value!r}"
             for path in source_files(exclude=(ADAPTER_REGISTRY,)) for line, value in string_literals(path)
             if value in names]
    assert not found, "ask the adapter registry instead of naming an adapter type:\n" + "\n".join(found)


def test_only_the_ui_package_imports_gradio():
    offenders = []
    for path in source_files(exclude=(PACKAGE / "ui",)):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(PACKAGE.parent)}" for m in modules if m.split(".")[0] == "gradio"]
    assert not offenders


def _module_level_imports(path: Path) -> set[str]:
    """sdtune_ui modules a file imports at module level (imports inside functions are deliberate and lazy)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sdtune_ui"):
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("sdtune_ui"))
    return imported


def test_no_import_cycles_between_modules():
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in source_files()}
    graph = {name: {m for m in _module_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how registries register; not a cycle of meaning.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "\n".join(cycles)
