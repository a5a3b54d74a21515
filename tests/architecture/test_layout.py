"""The architecture: the import contracts of pyproject.toml (import-linter) hold on the installed layout, each one
fails when broken, every package is installed under its own name, and every module path written as a string
imports."""
from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stgt_pipeline import stages
from stgt_pipeline.sources import SOURCES
from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
CONTRACTS = {c["id"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def package_folder(package: str) -> Path:
    """Where setuptools takes `package` from: the longest package-dir prefix, else the package's own path."""
    mapping = SETUPTOOLS.get("package-dir", {})
    prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        return REPO_ROOT / package.replace(".", "/")
    return REPO_ROOT / mapping[prefix] / package[len(prefix):].lstrip(".").replace(".", "/")


def stage_installed_layout(target: Path) -> Path:
    """The Python files of every listed package, laid out as `pip install .` installs them (components/ becomes
    stgt_pipeline/components/): import-linter reads the import graph from files, and an editable install keeps
    components/ outside stgt_pipeline/."""
    for package in SETUPTOOLS["packages"]:
        folder = target / package.replace(".", "/")
        folder.mkdir(parents=True, exist_ok=True)
        for source in package_folder(package).glob("*.py"):
            shutil.copyfile(source, folder / source.name)
    shutil.copyfile(REPO_ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def lint_imports(tree: Path, *contracts: str) -> subprocess.CompletedProcess:
    args = [str(LINT_IMPORTS), "--no-cache", *(arg for c in contracts for arg in ("--contract", c))]
    return subprocess.run(args, cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    return stage_installed_layout(tmp_path_factory.mktemp("installed"))


def test_the_import_contracts_hold(installed_layout):
    result = lint_imports(installed_layout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


# (contract, file in the installed layout, a line that breaks it, the import the report must name)
BREAKS = [
    ("library", "stgt_model/data.py", "import stgt_pipeline.training", "stgt_model.data -> stgt_pipeline.training"),
    ("library", "stgt_model/engine.py", "import mlflow", "stgt_model.engine -> mlflow"),
    ("stages", "stgt_pipeline/components/evaluate/stage.py", "from stgt_pipeline.components.pretrain import stage",
     "stgt_pipeline.components.evaluate.stage -> stgt_pipeline.components.pretrain"),
    ("platform", "stgt_pipeline/training.py", "import stgt_pipeline.components.pretrain.stage",
     "stgt_pipeline.training -> stgt_pipeline.components.pretrain.stage"),
    ("kfp-sides", "stgt_pipeline/kfp/run/stage_task.py", "import stgt_pipeline.kfp.build.params",
     "stgt_pipeline.kfp.run.stage_task -> stgt_pipeline.kfp.build.params"),
    ("acyclic", "stgt_pipeline/params.py", "import stgt_pipeline.stages", ".stages -> .params"),
]


@pytest.mark.parametrize("contract, path, line, named", BREAKS, ids=[f"{b[0]}:{b[1]}" for b in BREAKS])
def test_a_broken_contract_fails_naming_the_import(installed_layout, tmp_path, contract, path, line, named):
    tree = tmp_path / "tree"
    shutil.copytree(installed_layout, tree)
    with open(tree / path, "a", encoding="utf-8") as fh:
        fh.write(f"\n{line}  # breaks {contract}\n")
    result = lint_imports(tree, contract)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and named in " ".join(result.stdout.split()), result.stdout


def test_every_package_is_listed_and_nothing_generic_is_installed():
    listed = set(SETUPTOOLS["packages"])
    found = set()
    for name, folder in (("stgt_model", "stgt_model"), ("stgt_pipeline", "stgt_pipeline"),
                         ("stgt_pipeline.components", "components"), ("stgt_pipeline.pipelines", "pipelines")):
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO_ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found == listed, f"unlisted: {sorted(found - listed)}; listed without __init__.py: {sorted(listed - found)}"
    assert {p.split(".")[0] for p in listed} == {"stgt_model", "stgt_pipeline"}


def python_files() -> list[Path]:
    skip = {".venv", ".git", "data", "local_outputs"}
    return [p for p in REPO_ROOT.rglob("*.py") if not skip & set(p.relative_to(REPO_ROOT).parts)]


def test_no_code_imports_the_folders_by_their_generic_names():
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("components", "pipelines")]
    assert not offenders, offenders


def module_strings() -> list[str]:
    """Every module path the code names as a string: the stage table's, the sources', and the pod-side imports
    of the generated components in the compiled pipeline."""
    names = [m for s in stages.STAGES for m in (s.module, s.component_module, *s.code)]
    names += [s.sharding.merge.split(":")[0] for s in stages.STAGES if s.sharding]
    names += list(SOURCES.values())
    compiled = (REPO_ROOT / "pipelines" / "stgt_pipeline.yaml").read_text(encoding="utf-8")
    names += re.findall(r"from (stgt_pipeline[\w.]*) import", compiled.replace("\\\n", "").replace("\\ ", " "))
    return sorted(set(names))


def test_every_stage_folder_holds_its_run_and_its_kubeflow_component():
    for stage in stages.STAGES:
        assert (package_folder(stage.package) / "stage.py").is_file(), stage.name
        component = importlib.import_module(stage.component_module).component
        assert component.stage_name == stage.name and component.stage is stage


def test_every_module_named_as_a_string_imports():
    strings = module_strings()
    assert "stgt_pipeline.kfp.run.stage_task" in strings and "stgt_pipeline.components.prepare.stage" in strings
    for name in strings:
        importlib.import_module(name)
    for stage in stages.STAGES:
        assert callable(stage.load().run), stage.name
        if stage.sharding:
            module, function = stage.sharding.merge.split(":")
            assert callable(getattr(importlib.import_module(module), function)), stage.name
