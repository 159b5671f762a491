"""The package's layering, read from the source with `ast` (nothing is imported).

- The core (everything under ``redistill_diffusion/`` that is neither a task nor the composition root) imports
  no task (``diffusion/``, ``classification/``), except the student file ``diffusion/model.py``: the one
  definition of the RED block and the tap names, which saved students carry, so it imports nothing from the
  package (a leaf) and ``diffusion/__init__.py`` imports nothing but it.
- The tasks never import each other.
- The composition root, which may import both tasks: the package ``__init__``, ``cli.py``, ``commands/`` and
  ``deploy/`` (it exports saved models of either task). The package ``__init__`` imports both tasks, so what
  they register with the core (the ``classifier`` feature-extractor loader, the earlier spellings of names
  that moved from evaluation/ to diffusion/) is in place whatever is imported first: importing any submodule
  runs the package ``__init__`` first.
- ``models/`` only keeps earlier import paths working (deprecation shims); nothing in the package imports it.
- No import cycles, among module-level imports or through function-level ones (a deferred import does not
  make a cycle acceptable; move the shared piece instead, as `training/outputs.check_output_dir` was).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "redistill_diffusion"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
TASKS = (f"{PACKAGE}.diffusion", f"{PACKAGE}.classification")
STUDENT_FILE = f"{PACKAGE}.diffusion.model"
COMPOSITION_ROOT = (PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.commands", f"{PACKAGE}.deploy")
SHIMS = f"{PACKAGE}.models"
# Core -> task imports that are allowed, each with its reason (none: what a task lends the core, it registers).
ALLOWED_CORE_TO_TASK: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported package module, line, module-level) for every import of the package inside ``module``."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []

    def add(target: str | None, names: list[str], line: int, top: bool) -> None:
        if not target or not _in(target, PACKAGE):
            return
        for name in names or [None]:
            candidate = f"{target}.{name}" if name else target
            found.append((candidate if candidate in MODULES else target, line, top))

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_top = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_type_checking(child):
                child_top = False
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, [], child.lineno, top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                add(target, [alias.name for alias in child.names], child.lineno, top)
            visit(child, child_top)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


IMPORTS = {module: _imports(module) for module in MODULES}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT.parent)}:{line}"


def test_the_graph_is_read():
    assert STUDENT_FILE in MODULES and f"{PACKAGE}.red" in MODULES
    assert any(target == STUDENT_FILE for target, _, _ in IMPORTS[f"{PACKAGE}.red"])
    assert any(target == f"{PACKAGE}.diffusion.task" for target, _, _ in IMPORTS[f"{PACKAGE}.diffusion.run"])


def test_the_student_file_is_a_leaf():
    offending = [
        _where(STUDENT_FILE, line) + f" imports {target}" for target, line, _ in IMPORTS[STUDENT_FILE]
    ]
    assert not offending, "the student file must import nothing from the package: " + "; ".join(offending)
    init = f"{PACKAGE}.diffusion"
    extra = [_where(init, line) + f" imports {t}" for t, line, _ in IMPORTS[init] if t != STUDENT_FILE]
    assert not extra, (
        "diffusion/__init__.py may import only the student file (core imports it): " + "; ".join(extra)
    )


def test_the_core_imports_no_task_and_the_tasks_not_each_other():
    offending = []
    for module, imports in IMPORTS.items():
        if any(_in(module, root) for root in COMPOSITION_ROOT if root != PACKAGE) or module == PACKAGE:
            continue
        if _in(module, SHIMS):
            continue
        own_task = next((task for task in TASKS if _in(module, task)), None)
        for target, line, _ in imports:
            if _in(target, SHIMS) and not _in(module, SHIMS):
                offending.append(f"{_where(module, line)} imports the deprecated {target}")
            target_task = next((task for task in TASKS if _in(target, task)), None)
            if target_task is None or target_task == own_task:
                continue
            if own_task is None and (target == STUDENT_FILE or (module, target) in ALLOWED_CORE_TO_TASK):
                continue
            kind = "core" if own_task is None else own_task.rsplit(".", 1)[1]
            offending.append(f"{_where(module, line)} ({kind}) imports {target}")
    assert not offending, "layering broken:\n" + "\n".join(offending)


def test_the_package_init_imports_both_tasks():
    """Their registrations with the core happen on `import redistill_diffusion`, before any submodule."""
    imported = {target for target, _, top in IMPORTS[PACKAGE] if top}
    assert f"{PACKAGE}.classification" in imported, "the package __init__ must import classification/"
    assert f"{PACKAGE}.diffusion.evaluate" in imported and f"{PACKAGE}.diffusion.sampling" in imported


def test_the_composition_root_does_not_use_the_shims():
    offending = [
        f"{_where(module, line)} imports the deprecated {target}"
        for module, imports in IMPORTS.items()
        if not _in(module, SHIMS)
        for target, line, _ in imports
        if _in(target, SHIMS)
    ]
    assert not offending, "\n".join(offending)


def _cycles(module_level_only: bool) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {
        module: {t for t, _, top in imports if t != module and (top or not module_level_only)}
        for module, imports in IMPORTS.items()
    }
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return components


def _describe(component: set[str]) -> str:
    edges = [
        f"{_where(module, line)} imports {target}"
        for module in sorted(component)
        for target, line, _ in IMPORTS[module]
        if target in component and target != module
    ]
    return "; ".join(edges)


def test_no_import_cycles_among_module_level_imports():
    cycles = _cycles(module_level_only=True)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c) for c in cycles)


def test_function_level_imports_close_no_cycle():
    cycles = _cycles(module_level_only=False)
    assert not cycles, "import cycles (through function-level imports):\n" + "\n".join(
        _describe(c) for c in cycles
    )


def test_outputs_and_checkpointing_form_no_cycle():
    """The cycle once closed by function-level imports: checkpointing must not import outputs back."""
    outputs, checkpointing = f"{PACKAGE}.training.outputs", f"{PACKAGE}.training.checkpointing"
    assert any(target == checkpointing for target, _, _ in IMPORTS[outputs])
    assert not [line for target, line, _ in IMPORTS[checkpointing] if target == outputs]
