"""The layout promises of the README: the tree matches its layout block, the "where to change what" table
names one existing file per row, imports point downwards (a task package never imports another task's,
shared modules never import a task package), torch is imported at module level only by ``predict.py``
modules and ``training/``, no module is over 400 lines, and no file named after a task lives outside
that task's folders."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from bids_app.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TASKS = tuple(REGISTRY)
MAX_LINES = 400
CODE_DIRS = ("bids_app", "training", "tests", "benchmarks")


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _layout_entries() -> list[str]:
    """Paths of the README's layout block: indentation (two spaces per level) nests under ``dir/`` lines."""
    block = re.search(r"```\n(.*?)```", _section("Layout"), re.S).group(1)
    stack: list[str] = []
    paths = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[depth:] = [name]
        paths.append("".join(stack))
    return paths


def _python_files(folder: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if (ROOT / line).exists()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        skip = {".git", ".venv", "__pycache__", "demo", "work", "training_runs"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_module_level)`` for every import statement of a file, lazy ones included."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
            found += [(f"{node.module}.{alias.name}", id(node) in top) for alias in node.names]
    return found


def _task_of(relpath: str) -> str | None:
    parts = Path(relpath).parts
    return parts[1] if len(parts) > 2 and parts[1] in TASKS else None


def test_readme_layout_lists_every_module_and_nothing_else():
    listed = _layout_entries()
    for top in ("bids_app", "training"):
        documented = {p for p in listed if p.startswith(f"{top}/") and p.endswith(".py")}
        actual = _python_files(top)
        assert actual - documented == set(), f"modules missing from the README's layout: {sorted(actual - documented)}"
        assert documented - actual == set(), f"README lists modules that do not exist: {sorted(documented - actual)}"
    for path in listed:
        if "<" not in path:  # models/<task>/ is a pattern
            assert (ROOT / path).exists(), f"README's layout lists {path}, which does not exist"


def test_where_to_change_what_names_one_existing_file_per_row():
    rows = [line for line in _section("Where to change what").splitlines() if line.startswith("| ")][1:]
    assert len(rows) >= 20
    for row in rows:
        edit = row.strip("|").split("|")[-1]
        files = re.findall(r"`([^`]+)`", edit)
        assert len(files) == 1, f"row names {len(files)} files, not one: {row}"
        assert (ROOT / files[0]).is_file(), f"row names {files[0]}, which is not a file: {row}"


@pytest.mark.parametrize("top", ["bids_app", "training"])
def test_imports_point_downwards(top):
    for relpath in sorted(_python_files(top) | {str(p.relative_to(ROOT)) for p in (ROOT / top).rglob("__init__.py")}):
        mine = _task_of(relpath)
        for module, _ in _imports(ROOT / relpath):
            parts = module.split(".")
            assert not (top == "bids_app" and parts[0] == "training"), f"{relpath} imports {module}: the app never imports training/"
            if parts[0] not in ("bids_app", "training") or len(parts) < 2 or parts[1] not in TASKS:
                continue
            assert mine is not None, f"{relpath} is shared but imports the task package {module}"
            assert parts[1] == mine, f"{relpath} (task {mine}) imports another task's package: {module}"


def test_torch_is_imported_at_module_level_only_where_inference_or_training_runs():
    for relpath in sorted(_python_files("bids_app")):
        for module, top_level in _imports(ROOT / relpath):
            if module.split(".")[0] in ("torch", "monai") and top_level:
                assert Path(relpath).name == "predict.py", f"{relpath} imports {module} at module level"


@pytest.mark.parametrize("folder", CODE_DIRS)
def test_no_module_is_over_the_line_limit(folder):
    long = {p: n for p in sorted(_python_files(folder)) if (n := len((ROOT / p).read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"


def test_no_file_named_after_a_task_outside_its_folder():
    names = {task: {task} | ({REGISTRY[task].label.lower()} if len(REGISTRY[task].label) >= 4 else set())
             for task in TASKS}
    stray = []
    for relpath in _tracked_files():
        if relpath.startswith("templateflow/"):
            continue
        base = Path(relpath).name.lower()
        for task, words in names.items():
            if any(word in base for word in words) and task not in Path(relpath).parts:
                stray.append(relpath)
    assert not stray, f"files named after a task outside its folders: {stray}"


@pytest.mark.parametrize("task", TASKS)
def test_every_task_package_has_the_same_shape(task):
    """The registry names each task's code by convention (``bids_app.<task>.workflow`` ...); each piece
    must exist, so that a new task is complete when its package is."""
    from bids_app.tasks import load_function

    spec = REGISTRY[task]
    assert callable(load_function(spec.workflow)) and callable(load_function(spec.aggregate))
    for name in ("render", "section", "summary"):
        assert callable(load_function(f"{spec.qc}.{name}"))
    assert isinstance(load_function(f"{spec.qc}.OUTLIER_MEASURES"), dict)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_ships_its_model(task):
    spec = REGISTRY[task]
    assert (ROOT / "models" / spec.model / "metadata.json").is_file(), f"models/{spec.model}/metadata.json is missing"
