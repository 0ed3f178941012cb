"""The package's import graph runs one way: lower rooms never import higher ones, and no two rooms import each other.

Every module's imports are read with ast, function-local ones included (a lazy import is still a dependency),
plus the names the lazy package fronts (`_EXPORTS` in elip_jax/__init__.py and elip_jax/data/__init__.py) load.
A room is a subpackage (elip_jax/train/) or a top-level module (elip_jax/fileio.py); 'elip_jax' is the package's
own front (elip_jax/__init__.py: create_model, tokenize, load_pretrained).
The README's "Map of the code" shows the same graph; a failure prints it.
"""
import ast
import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "elip_jax"

# Each room's layer: a room imports only rooms of lower layers (never its own layer, never higher ones).
LAYERS = {
    "tokenizer": 0, "fileio": 0, "command_line": 0, "reduction": 0,
    "models": 1, "data": 1,
    "checkpoints": 2, "accounting": 2,
    "convert": 3, "evaluate": 3,
    "train": 4,
    "elip_jax": 5,  # the package front: what `import elip_jax` offers
    "patch_ranking": 5,  # Patch Ranking's commands (golden rankings, the predictor's training, tokens): use train
    "benchmark": 6, "visualize": 6, "study": 6,
}
# Rules the layers alone do not say.
FORBIDDEN = {
    "data": {"models", "reduction", "checkpoints", "convert", "evaluate", "train"},  # data workers run no model code
    "evaluate": {"train", "convert"},  # the trainer uses evaluators, never the other way round
    "train": {"convert"},  # converted folders are read through checkpoints
}
BOTTOM = ("models", "reduction", "tokenizer", "data", "fileio")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "elip_jax"


def lazy_exports(tree: ast.Module, package: str) -> set:
    """The modules a lazy front's `_EXPORTS = {name: module}` loads."""
    targets = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            for value in ast.literal_eval(node.value).values():
                targets.add(value if value.startswith("elip_jax") else f"{package}.{value}")
    return targets


def module_imports() -> dict:
    """{module: {imported elip_jax modules}}, function-local imports included."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = collections.defaultdict(set)
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges[module] |= lazy_exports(tree, package)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges[module] |= {alias.name for alias in node.names if alias.name.split(".")[0] == "elip_jax"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "elip_jax":
                    continue
                for alias in node.names:  # `from elip_jax import data` imports the module elip_jax.data
                    edges[module].add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in paths else source)
    return edges


def room_graph() -> dict:
    graph = collections.defaultdict(set)
    for module, targets in module_imports().items():
        graph[room(module)]  # every room appears, importing nothing or not
        for target in targets:
            if room(target) != room(module):
                graph[room(module)].add(room(target))
    return dict(graph)


def render(graph: dict) -> list:
    """One line per room, lowest layer first: 'room -> what it imports'."""
    order = sorted(graph, key=lambda r: (LAYERS.get(r, 99), r))
    width = max(map(len, order))
    return [f"{r:<{width}} -> {', '.join(sorted(graph[r], key=lambda t: (LAYERS.get(t, 99), t))) or '(nothing)'}"
            for r in order]


def find_cycle(graph: dict):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def fail_with_graph(problems: list, graph: dict):
    pytest.fail("\n".join(problems) + "\n\nthe package's import graph (room -> rooms it imports):\n  "
                + "\n  ".join(render(graph)), pytrace=False)


def test_every_room_has_a_layer():
    graph = room_graph()
    unknown = sorted(set(graph) - set(LAYERS))
    if unknown:
        fail_with_graph([f"new room(s) {unknown}: give each a layer in tests/test_import_graph.py LAYERS and a line "
                         "in the README's 'Map of the code'"], graph)


def layer_problems(graph: dict) -> list:
    """Each import that goes sideways, upwards or against a FORBIDDEN rule, in words."""
    problems = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in FORBIDDEN.get(source, ()):
                problems.append(f"{source} imports {target}, which it must never import")
            elif source in LAYERS and target in LAYERS and LAYERS[target] >= LAYERS[source]:
                problems.append(f"{source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]}): "
                                "imports must go to lower layers")
    return problems


def test_imports_run_one_way():
    graph = room_graph()
    problems = layer_problems(graph)
    for module, targets in sorted(module_imports().items()):
        if room(module) != "elip_jax" and "elip_jax" in targets and LAYERS.get(room(module), 99) < LAYERS["elip_jax"]:
            problems.append(f"{module} imports the package front (`import elip_jax`): import the room it needs")
    if problems:
        fail_with_graph(problems, graph)


def test_the_checks_catch_what_they_guard():
    """The graph as it was before the checkpoints room: train <-> evaluate, data -> the package front."""
    before = {"train": {"evaluate", "convert"}, "evaluate": {"train", "elip_jax"}, "data": {"elip_jax"},
              "checkpoints": {"convert"}, "convert": {"checkpoints"}}
    problems = "\n".join(layer_problems(before))
    assert "evaluate imports train, which it must never import" in problems
    assert "train imports convert, which it must never import" in problems
    assert "checkpoints (layer 2) imports convert (layer 3)" in problems
    assert "data (layer 1) imports elip_jax (layer 5)" in problems
    assert find_cycle(before) in (["evaluate", "train", "evaluate"], ["checkpoints", "convert", "checkpoints"])
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert module_imports()["elip_jax.data.captions"] >= {"elip_jax.tokenizer"}  # a function-local import counts


def test_no_cycles_between_rooms():
    graph = room_graph()
    cycle = find_cycle(graph)
    if cycle:
        fail_with_graph(["import cycle between rooms: " + " -> ".join(cycle)], graph)


def test_the_bottom_rooms_and_checkpoints_sit_where_the_design_says():
    graph = room_graph()
    upper = {"checkpoints", "convert", "evaluate", "train", "benchmark", "visualize", "elip_jax", "accounting"}
    problems = [f"{r} (a bottom room) imports {sorted(graph.get(r, set()) & upper)}"
                for r in BOTTOM if graph.get(r, set()) & upper]
    if "models" in graph.get("checkpoints", ()) and "checkpoints" in graph.get("models", ()):
        problems.append("checkpoints and models import each other")
    for higher in ("convert", "evaluate", "train"):
        if "checkpoints" not in graph.get(higher, ()) and higher != "evaluate":
            problems.append(f"{higher} does not read checkpoints through elip_jax.checkpoints")
    if problems:
        fail_with_graph(problems, graph)


def test_the_readme_map_shows_this_graph():
    text = (ROOT / "README.md").read_text()
    section = re.search(r"## Map of the code\n(.*?)(?=\n## |\Z)", text, re.S)
    assert section, "README.md has no '## Map of the code' section"
    block = re.search(r"Import graph.*?\n```\n(.*?)```", section.group(1), re.S)
    graph = room_graph()
    expected = render(graph)
    if block is None or [line.strip() for line in block.group(1).strip().splitlines()] != expected:
        fail_with_graph(["README.md's 'Map of the code' must show the import graph as it is, in a block after a "
                         "line starting 'Import graph'; paste:\n```\n" + "\n".join(expected) + "\n```"], graph)
