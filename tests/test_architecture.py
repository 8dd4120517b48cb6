"""The structure the contributors' guide promises (docs/architecture.md): small functions, no import cycles,
no method names outside methods/, the demo's config file equal to the demo's defaults."""
import ast
from pathlib import Path

import pytest

from selfsup.config import PretrainConfig, load_yaml
from selfsup.demo import DEMO_PRETRAIN
from selfsup.methods import METHODS

PACKAGE = Path(__file__).parent.parent / "selfsup"
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): ast.parse(p.read_text())
            for p in PACKAGE.rglob("*.py")}


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 210


def imports_of(name: str, tree: ast.Module) -> set[str]:
    """selfsup modules that `name` imports, at module level or inside functions."""
    package = name if (PACKAGE.parent / name.replace(".", "/")).is_dir() else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("selfsup"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("selfsup")}
    return out


def test_no_import_cycles():
    mods = modules()
    graph = {m: {t for t in imports_of(m, tree) if t in mods and t != m} for m, tree in mods.items()}
    # a package imports its modules so that they register with it, and they take the registry from it: that
    # loop is by design; every other path back is a cycle (a module -> another package -> this package's face)
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, cycles[0]


def test_no_code_outside_methods_depends_on_a_particular_method():
    """No branch on a method's name, no method's metric or attribute read by name. (Defaults may name a method,
    and `simclr` is also the name of an augmentation preset.)"""
    metrics = {"rotation_acc", "ab_l1", "hole_l1", "variant", "net", "decoder_in"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "methods" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
                found += [f"{path.name}:{node.lineno} compares with {c!r}" for c in consts if c in METHODS]
            if isinstance(node, ast.Constant) and node.value in metrics:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in metrics:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, found


def test_the_demo_config_file_is_the_demo():
    yaml = PretrainConfig.from_dict(load_yaml(PACKAGE.parent / "configs" / "mnist_simclr.yaml"))
    assert yaml.to_dict() == DEMO_PRETRAIN.to_dict()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_the_contract(name):
    from selfsup.factory import build_method, encoder_spec
    from selfsup.methods import Method

    from conftest import smoke

    cfg = PretrainConfig(**{"backbone_args": {"width": 4}} | smoke(name))
    m = build_method(cfg, encoder_spec(cfg, 3, 16))
    assert isinstance(m, Method)
    spec = m.encoder_spec
    assert spec.in_channels == 3 and spec.image_size == 16 and m.backbone.image_size == 16
    groups = m.param_groups(0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(p.ndim > 1 for g in groups for p in g["params"] if id(p) in decayed)  # no decay on norms and biases
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in m.parameters() if p.requires_grad)
