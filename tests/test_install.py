"""The repository alone, built and installed, has its data and recipes: every benchmark and GSM8K load from the
installed package with no `shared/` folder anywhere near it (issue 10, item 1); every recipe is there too (`kelvin demo`
reads its recipe from the package). `.ci/install-check` goes further: a clean venv, the demo and `kelvin eval`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Rows per file (kelvin/data/README.md); the installed copy must load every one of them.
EXPECTED_ROWS = {"aime24": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675, "gsm8k": 1319}

_LOAD_EVERYTHING = """
import json, kelvin
from kelvin.tasks.benchmarks import BENCHMARK_NAMES, read_benchmark
from kelvin.tasks.gsm8k import gsm8k_folder, read_gsm8k_split
rows = {name: len(read_benchmark(name).examples) for name in BENCHMARK_NAMES}
rows["gsm8k_train"] = len(read_gsm8k_split(gsm8k_folder(None) / "train.jsonl", "train").examples)
from kelvin.experiments.demo import RECIPE
recipes = sorted(str(p) for p in RECIPE.parent.rglob("*.yaml"))
print(json.dumps({"file": kelvin.__file__, "rows": rows, "recipes": recipes}))
"""


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test copies the repository's tracked files with git; run it from a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line and ((REPO / line).is_file() or (REPO / line).is_symlink())]


def test_wheel_from_a_bare_copy_ships_the_data(tmp_path: Path) -> None:
    # The repository alone: tracked (and not-ignored new) files, in a folder with no sibling shared/.
    copy = tmp_path / "clone" / "kelvin-src"
    archive = tmp_path / "repo.tar"
    with tarfile.open(archive, "w") as tar:
        for name in _tracked_files():
            tar.add(REPO / name, arcname=name, recursive=False)  # a link stays a link (kelvin/recipes)
    with tarfile.open(archive) as tar:
        tar.extractall(copy, filter="data")
    assert not (copy.parent / "shared").exists()

    wheels = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=copy,
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("kelvin-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "kelvin/data/gsm8k/LICENSE" in names and "kelvin/data/README.md" in names

    # Installed into a folder of its own; the test interpreter's site-packages provide torch & co. Run from an
    # unrelated folder so neither the checkout nor its neighbours can be found.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KELVIN_DATA", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_EVERYTHING], cwd=elsewhere, env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(target.resolve()), result["file"]
    assert result["rows"] == {**EXPECTED_ROWS, "gsm8k_train": 7473}
    # `kelvin demo` reads its recipe from the installed package; every recipe of the repository is there.
    shipped = sorted(str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.yaml"))
    assert [str(Path(p).relative_to(target / "kelvin" / "recipes")) for p in result["recipes"]] == shipped
    assert "demo.yaml" in shipped and "papers/tampo-table1.yaml" in shipped


def test_kelvin_data_overrides_the_shipped_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kelvin.tasks.benchmarks import read_benchmark
    from kelvin.tasks.data import PACKAGE_DATA, default_data_root

    monkeypatch.delenv("KELVIN_DATA", raising=False)
    assert default_data_root() == PACKAGE_DATA
    (tmp_path / "math_eval").mkdir()
    (tmp_path / "math_eval" / "amc23.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": 2.0}) + "\n")
    monkeypatch.setenv("KELVIN_DATA", str(tmp_path))
    load = read_benchmark("amc23")
    assert load.path == tmp_path / "math_eval" / "amc23.jsonl"
    assert [e.answer for e in load.examples] == ["2"]
