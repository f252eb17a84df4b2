"""The package's layers import downward only (the contract in pyproject.toml), and
Lightning's privates are used in one module only."""

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "genmodels"
PRIVATE_MODULE = PACKAGE / "engine" / "lightning_private.py"


def test_layers_import_downward_only():
    lint_imports = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    result = subprocess.run([sys.executable, "-c", lint_imports],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def lightning_private_uses(path: Path) -> list[str]:
    """Underscored names taken from Lightning, or read as attributes of Lightning objects
    (trainers, loops, optimizers, strategies, connectors), in one file."""
    tree = ast.parse(path.read_text())
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning"):
            uses += [alias.name for alias in node.names if alias.name.startswith("_")]
            if any(part.startswith("_") for part in node.module.split(".")):
                uses.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = ast.unparse(node.value)
            if owner.split(".")[0] in {"trainer", "self.trainer", "optimizer", "strategy",
                                       "loop", "epoch_loop", "connector"} \
                    or "trainer" in owner or "loop" in owner:
                uses.append(f"{owner}.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "lightning\\.pytorch" in node.value and "\\._" in node.value:
            uses.append(node.value)
    return uses


def test_lightning_privates_live_in_one_module():
    found = {str(path.relative_to(ROOT)): uses for path in sorted(PACKAGE.rglob("*.py"))
             if path != PRIVATE_MODULE and (uses := lightning_private_uses(path))}
    assert found == {}
    assert lightning_private_uses(PRIVATE_MODULE)  # the scan does see them
