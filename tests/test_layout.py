"""The house rules of docs/writing-a-claim.md ("Where things go"), read from the source.

Kernels import nothing of the harness; an experiment defines no claim and imports no
theorem sheet; no test reaches into a sheet for a private name. Read with ``ast``: nothing
is imported or run.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = sorted((ROOT / "cgeom_verify" / "kernels").glob("*.py"))
EXPERIMENTS = sorted((ROOT / "cgeom_verify" / "experiments").glob("*.py"))
TESTS = sorted(Path(__file__).resolve().parent.glob("*.py"))


def _imports(path: Path) -> list[tuple[str, int, list[str]]]:
    """``(module as written, relative level, imported names)`` of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_kernels_import_nothing_of_the_harness(path):
    for module, level, _ in _imports(path):
        assert level <= 1, f"{path.name} imports from {'.' * level}{module}: above the kernels"
        assert not module.startswith(("cgeom_verify", "claims")), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiments_define_no_claim_and_import_no_sheet(path):
    for module, level, names in _imports(path):
        assert level == 0 and not module.startswith("claims"), f"{path.name} imports {module}"
        assert "Claim" not in names, f"{path.name} imports Claim"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "Claim" not in calls, f"{path.name} builds a Claim"


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_no_test_imports_a_private_name_of_a_sheet(path):
    sheets = set()  # the names this file binds to claims modules
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "claims":
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name}:{node.lineno} imports {private} from {node.module}"
            if node.module == "claims":
                sheets |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            sheets |= {a.asname or a.name.split(".")[0] for a in node.names
                       if a.name.split(".")[0] == "claims"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and _root(node.value) in sheets):
            raise AssertionError(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
