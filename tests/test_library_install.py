"""`pip install vtsel` is the library (torch, safetensors, huggingface_hub); the app lives in
extras. These tests hold pyproject.toml to what the code imports, and the bare library to
loading and selecting."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import Exported
from vtsel.extras import IMPORT_NAMES, normalized

REPO = Path(__file__).resolve().parents[1]
SELECT_SCRIPT = """
import torch
import vtsel
selector = vtsel.TokenSelector.from_pretrained({directory!r})
tokens = torch.randn(2, 16, 32)  # (B, L, C) of the demo twin's contract
kept = selector.select(tokens, keep=0.25)
assert kept.indices.shape == (2, 4), kept.indices.shape
print("selected", tuple(kept.features.shape))
"""


def declared() -> dict[str, set[str]]:
    """Each distribution vtsel requires (normalised) -> the extras naming it ("" is core); the
    demo extra's ``vtsel[train,hf]`` is vtsel itself, not a distribution."""
    found: dict[str, set[str]] = {}
    for requirement in metadata.requires("vtsel") or []:
        name, _, marker = requirement.partition(";")
        dist = normalized(name.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip())
        extra = marker.split("==")[-1].strip().strip("'\"") if "extra" in marker else ""
        if dist == "vtsel":
            continue
        found.setdefault(dist, set()).add(extra)
    return found


def installed_with(dists: set[str]) -> set[str]:
    """``dists`` and every installed distribution their requirements pull in, extras aside."""
    found, todo = set(), list(dists)
    while todo:
        dist = todo.pop()
        if dist in found:
            continue
        found.add(dist)
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:  # another platform's (colorama on Windows)
            continue
        for requirement in requirements:
            if "extra ==" not in requirement.partition(";")[2]:
                todo.append(normalized(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]))
    return found


def import_names(dist: str) -> list[str]:
    """The top-level modules an installed distribution provides."""
    names = [
        module
        for module, dists in metadata.packages_distributions().items()
        if dist in {normalized(d) for d in dists}
    ]
    return [name for name in names if not name.startswith("_")]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names ``path`` imports, at module level or inside functions, that are neither
    the standard library nor vtsel."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"vtsel"}}


def test_every_package_vtsel_imports_is_declared_in_pyproject() -> None:
    requirements = declared()
    undeclared = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "vtsel").rglob("*.py"))
        for name in third_party_imports(path)
        if normalized(IMPORT_NAMES.get(name, name)) not in requirements
    }
    assert not undeclared, sorted(undeclared)
    assert requirements["torch"] == {""} and requirements["safetensors"] == {""}
    core = {dist for dist, extras in requirements.items() if "" in extras}
    # the library is what inference and sharing need (folder or Hub id, save, push)
    assert core == {"torch", "safetensors", "huggingface-hub"}, core
    assert "train" in requirements["lightning"] and "hf" in requirements["transformers"]


def test_the_library_selects_and_the_app_names_its_extra_without_any_extra(
    exported: Exported,
) -> None:
    """Every module an extra provides is made unimportable (``sys.modules[name] = None``), so
    the run is what a ``pip install vtsel`` environment can do; a distribution the library's
    own dependencies install (filelock, which an extra also pins) stays."""
    core = {dist for dist, extras in declared().items() if "" in extras}
    blocked = sorted(
        {
            name
            for dist, extras in declared().items()
            if "" not in extras and dist not in installed_with(core)
            for name in import_names(dist)
        }
    )
    assert {"lightning", "webdataset", "transformers", "PIL", "numpy"} <= set(blocked)
    script = (
        f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        + SELECT_SCRIPT.format(directory=str(exported.directory))
        + textwrap.dedent(
            """
            from vtsel.cli import main
            for command in (["fit", "--help"], ["export", "--help"], ["demo-data"]):
                try:
                    main(command)
                except SystemExit as stop:
                    print(stop.code)
            """
        )
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "selected (2, 4, 32)"
    assert lines[1].startswith("`vtsel fit` needs '")  # the first app module it imports
    assert lines[1].endswith("which comes with vtsel's [train] extra: pip install 'vtsel[train]'")
    assert lines[2].startswith("`vtsel export` needs ") and lines[2].endswith("'vtsel[train]'")
    assert lines[3].startswith("`vtsel demo-data` needs ")


@pytest.mark.slow
def test_a_real_bare_install_loads_an_export_and_selects(
    exported: Exported, tmp_path: Path
) -> None:
    """``pip install .`` into a fresh venv (torch comes from the local wheel store, ~2 min):
    no extra is installed, yet an export loads and selects, and ``vtsel fit`` says what to
    install."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)], check=True, timeout=1200
    )
    missing = subprocess.run(
        [str(python), "-c", "import lightning"], capture_output=True, text=True
    )
    assert missing.returncode != 0  # the bare install really lacks the app's packages
    selected = subprocess.run(
        [str(python), "-c", SELECT_SCRIPT.format(directory=str(exported.directory))],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout, so the installed vtsel is the one imported
    )
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.strip() == "selected (2, 4, 32)"
    fit = subprocess.run(
        [str(venv / "bin" / "vtsel"), "fit", "--help"], capture_output=True, text=True
    )
    assert fit.returncode == 1
    assert "pip install 'vtsel[train]'" in fit.stderr
