"""The import graph of the package runs one way (docs/contracts.md, "Layers"): no module imports a module
of a higher layer, and no chain of imports comes back to where it started.

Every ``import`` and ``from ... import`` of ``sfda_deploy`` is read with ``ast``, function-level (lazy)
imports included: a lazy import still couples the two modules. ``from package import name`` counts as an
import of the submodule ``package.name`` where one exists, else of the package's ``__init__``.
Inside a layer, two folders (``adapt/``, ``runtime/``, ...) may depend on each other one way only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sfda_deploy"

# Ground → top. A module takes the layer of its longest listed prefix (``adapt`` covers ``adapt.*``).
LAYERS = (
    ("errors", "metrics", "classes", "device", "messages", "assets", "threads", "progress", "version", "disk"),
    ("runs", "run_folders", "config", "config_values", "config_build", "models", "data"),
    ("checkpoint", "pth_import", "pth_layouts", "state_dict", "metadata", "evaluate", "report", "onnxrt"),
    ("runtime", "adapt", "export"),
    ("commands",),
    ("demo", "cli", "__main__", ""),  # "": the package's own __init__ (the ``load_model`` facade)
)


def layer_of(module: str) -> int:
    """The layer (0 = ground) of a module named relative to the package (``adapt.loop``; ``""``: the package)."""
    best, depth = None, -1
    for level, names in enumerate(LAYERS):
        for name in names:
            covers = module == name or (name and module.startswith(name + "."))
            if covers and len(name) > depth:
                best, depth = level, len(name)
    if best is None:
        raise AssertionError(f"module {module!r} has no layer: add it to LAYERS (and to docs/contracts.md)")
    return best


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """``{"adapt.loop": path, ...}``; a package is named by its folder (``adapt`` for adapt/__init__.py)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The dotted name (``sfda_deploy.x.y``) a possibly relative ``from`` import refers to."""
    if not node.level:
        return node.module or ""
    here = ["sfda_deploy", *filter(None, module.split("."))]
    base = here if is_package else here[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports, anywhere in its file."""
    def known(dotted: str) -> str | None:
        name = dotted[len("sfda_deploy"):].lstrip(".")
        while name not in modules:
            if not name:
                return "" if dotted.startswith("sfda_deploy") else None
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            names = [f"{base}.{a.name}" for a in node.names] if base else []
        else:
            continue
        for dotted in names:
            if dotted == "sfda_deploy" or dotted.startswith("sfda_deploy."):
                target = known(dotted)
                if target is not None and target != module:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a (layer i) imports b (layer j > i)"`` for every import that goes up."""
    return [f"{a or 'sfda_deploy'} (layer {layer_of(a) + 1}) imports {b or 'sfda_deploy'} (layer {layer_of(b) + 1})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def folder_of(module: str) -> str | None:
    """The top-level folder (sub-package) a module lives in (``adapt`` for ``adapt.online.session``), or None
    for a module at the package's top (``config``) and the package itself."""
    head, _, rest = module.partition(".")
    return head if rest or (head and (PACKAGE / head).is_dir()) else None


def mutual_folders(graph: dict[str, set[str]]) -> list[str]:
    """``"a ⇄ b (a.x → b.y, b.z → a.w)"`` for every two folders that import each other."""
    arrows: dict[tuple[str, str], str] = {}
    for a in sorted(graph):
        for b in sorted(graph[a]):
            fa, fb = folder_of(a), folder_of(b)
            if fa and fb and fa != fb:
                arrows.setdefault((fa, fb), f"{a} → {b}")
    return [f"{fa} ⇄ {fb} ({arrows[fa, fb]}, {arrows[fb, fa]})"
            for fa, fb in sorted(arrows) if fa < fb and (fb, fa) in arrows]


# ------------------------------------------------------------------------------------- the checks
def test_every_module_has_a_layer():
    for name in package_modules():
        layer_of(name)  # raises for a module nobody placed


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_import_goes_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_no_two_folders_import_each_other():
    assert mutual_folders(import_graph()) == []


def command_configs(config: Path = PACKAGE / "config.py") -> set[str]:
    """The command configs of ``config.py``: its classes named ``*Config`` (one per command; a settings
    class two commands share, such as ``SelectionSettings``, is not one)."""
    return {node.name for node in ast.walk(ast.parse(config.read_text(), str(config)))
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config")}


# Library modules (below commands/) allowed to name a command config, and why. Keep it empty.
READS_A_COMMAND_CONFIG: dict[str, str] = {}


def command_config_uses(module: str, path: Path, configs: set[str]) -> list[str]:
    """``"module:line Name"`` for each command config the module imports from ``sfda_deploy.config`` or
    reads as an attribute of it (``config.AdaptConfig``, ``C.AdaptConfig``)."""
    found, aliases = [], set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and _absolute(node, module, path.name == "__init__.py") == "sfda_deploy.config":
            found += [f"{module}:{node.lineno} {a.name}" for a in node.names if a.name in configs]
        elif isinstance(node, ast.ImportFrom) and _absolute(node, module, path.name == "__init__.py") == "sfda_deploy":
            aliases |= {a.asname or a.name for a in node.names if a.name == "config"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "sfda_deploy.config" and a.asname}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr in configs and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            found.append(f"{module}:{node.lineno} {node.attr}")
    return found


def test_no_library_reads_a_command_config():
    # the libraries below commands/ take plain arguments or settings objects of their own: a command's
    # config (its flags) is read by its entry point in commands/ only
    configs, commands = command_configs(), layer_of("commands")
    offenders = [use for name, path in sorted(package_modules().items())
                 if layer_of(name) < commands and name not in READS_A_COMMAND_CONFIG
                 for use in command_config_uses(name, path, configs)]
    assert offenders == []


# Library functions that are still a command's entry point (``run_<x>(cfg)``), and why. Keep it short.
ENTRY_POINTS_BELOW_COMMANDS: dict[str, str] = {}


def entry_points(module: str, path: Path) -> list[str]:
    """``"module.run_x"`` for each top-level ``run_*`` function whose first parameter is ``cfg``: a command's
    entry point, by the package's own convention."""
    return [f"{module}.{node.name}" for node in ast.parse(path.read_text(), str(path)).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("run_")
            and node.args.args and node.args.args[0].arg == "cfg"]


def test_every_command_entry_point_is_in_commands():
    commands = layer_of("commands")
    found = [entry for name, path in sorted(package_modules().items()) if layer_of(name) < commands
             for entry in entry_points(name, path)]
    assert sorted(found) == sorted(ENTRY_POINTS_BELOW_COMMANDS)


# ------------------------------------------------------------------------- the checker itself
def test_the_checker_finds_cycles_and_upward_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert upward_imports({"errors": {"adapt.loop"}, "adapt.loop": {"errors"}}) == [
        "errors (layer 1) imports adapt.loop (layer 4)"]
    assert layer_of("adapt.losses.entropy") == 3 and layer_of("") == 5 and layer_of("runs") == 1
    assert layer_of("commands.adapt") == 4 and layer_of("cli.base") == 5
    assert upward_imports({"adapt.loop": {"commands.adapt"}, "commands.adapt": {"adapt.loop"}}) == [
        "adapt.loop (layer 4) imports commands.adapt (layer 5)"]
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("nowhere")
    assert mutual_folders({"adapt.x": {"runtime.y"}, "runtime.z": {"adapt.w"}, "export.a": {"runtime.y"}}) == [
        "adapt ⇄ runtime (adapt.x → runtime.y, runtime.z → adapt.w)"]
    assert mutual_folders({"adapt.x": {"runtime.y", "config"}, "config": {"adapt.x"}}) == []  # a module, not a folder
    assert folder_of("adapt.online.session") == "adapt" and folder_of("adapt") == "adapt"
    assert folder_of("config") is None and folder_of("") is None


def test_the_checker_finds_command_configs_in_libraries(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("class SelectionSettings:\n    pass\n\n\nclass AdaptConfig(SelectionSettings):\n    pass\n")
    assert command_configs(config) == {"AdaptConfig"}
    lib = tmp_path / "lib.py"
    lib.write_text("from sfda_deploy.config import AdaptConfig, SelectionSettings\n"
                   "import sfda_deploy.config as C\nfrom sfda_deploy import config\n\n\n"
                   "def f():\n    return C.AdaptConfig, config.AdaptConfig, C.SelectionSettings\n")
    assert command_config_uses("adapt.lib", lib, {"AdaptConfig"}) == [
        "adapt.lib:1 AdaptConfig", "adapt.lib:7 AdaptConfig", "adapt.lib:7 AdaptConfig"]
    lib.write_text("from ..config import AdaptConfig\n")
    assert command_config_uses("adapt.lib", lib, {"AdaptConfig"}) == ["adapt.lib:1 AdaptConfig"]


def test_the_checker_finds_entry_points(tmp_path):
    lib = tmp_path / "lib.py"
    lib.write_text("def run_x(cfg):\n    pass\n\n\ndef run_y(path, cfg):\n    pass\n\n\n"
                   "def helper(cfg):\n    pass\n")
    assert entry_points("adapt.lib", lib) == ["adapt.lib.run_x"]


def test_the_checker_reads_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "sfda_deploy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from ..mid import h\n\n\ndef f():\n    from sfda_deploy.top import g\n")
    (pkg / "mid.py").write_text("h = 1\n")
    (pkg / "top.py").write_text("import os\nfrom sfda_deploy.sub.leaf import f\n")
    modules = package_modules(pkg)
    assert imports_of("sub.leaf", modules["sub.leaf"], modules) == {"top", "mid"}
    assert imports_of("sub", modules["sub"], modules) == {"sub.leaf"}
    assert imports_of("top", modules["top"], modules) == {"sub.leaf"}


def test_the_library_reports_through_one_channel():
    # outside cli/, nothing prints or imports click: results, notes and warnings go through messages.say
    # (progress bars through sfda_deploy.progress, which owns stderr's bar lines)
    offenders = []
    for name, path in package_modules().items():
        if name in ("messages", "progress") or name == "cli" or name.startswith("cli.") or name == "__main__":
            continue
        if name.startswith("export.samples."):  # stand-alone programs export copies out for users, never imported
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{name}:{node.lineno} print")
            elif isinstance(node, ast.Import) and any(a.name == "click" for a in node.names):
                offenders.append(f"{name}:{node.lineno} import click")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("click"):
                offenders.append(f"{name}:{node.lineno} from click")
    assert offenders == []


# A module name may repeat across folders only for one concept in different roles (the folder names the role).
SHARED_NAMES = {
    "__init__": "a package",
    "base": "what every member of its folder shares (the contract of models/, methods/, losses/, data/'s readers, cli/)",
    "distill": "distillation from a black-box source: the loss (losses/) and stage D (methods/)",
    "prototypes": "class prototypes: their losses (losses/) and their update and labels (pseudo_labels/)",
    "mit": "the Mix Transformer: the network (models/) and its released checkpoints' key layouts (pth_layouts/)",
    "evaluate": "evaluation: the loops (evaluate.py) and the command (commands/)",
    "verify": "one model file against another: the fidelity report (export/) and the command (commands/)",
}


def test_a_module_name_repeats_only_for_one_concept():
    seen: dict[str, list[str]] = {}
    for name in package_modules():
        path = package_modules()[name]
        seen.setdefault(path.stem, []).append(name or "sfda_deploy")
    repeated = {stem: sorted(names) for stem, names in seen.items() if len(names) > 1}
    assert set(repeated) <= set(SHARED_NAMES), {s: n for s, n in repeated.items() if s not in SHARED_NAMES}
