"""`--help` of the three command-line tools: what each does, its options and examples."""

import subprocess
import sys

import pytest

from genmodels.jobs.generate import TASKS

from .conftest import CONF, ROOT

DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
TRAIN_GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def help_text(tool: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / f"{tool}.py"), "--help"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {tool: help_text(tool) for tool in ("train", "generate", "evaluate")}


def examples(page: str) -> list[str]:
    """The lines of the page's Examples section."""
    section = page.split("== Examples ==\n", 1)[1].split("\n\n", 1)[0]
    return section.splitlines()


@pytest.mark.parametrize("tool", ["train", "generate", "evaluate"])
def test_help_has_a_summary_examples_from_the_docs_and_where_options_live(pages, tool):
    page = pages[tool]
    assert page.startswith(f"python {tool}.py ")  # the usage line, then what it does
    found = examples(page)
    assert all(line.startswith(f"python {tool}.py ") for line in found), found
    assert 5 <= len(found) <= 8, found
    for example in found:
        assert example in DOCS, f"not in README.md or docs/: {example}"
    assert f"conf/{'config' if tool == 'train' else tool}.yaml" in page
    assert "is powered by Hydra" not in page


def test_train_help_lists_every_group_with_its_options(pages):
    page = pages["train"]
    for group in TRAIN_GROUPS:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in page, group
    assert "_target_" not in page  # no config dump


@pytest.mark.parametrize("tool", ["generate", "evaluate"])
def test_generate_and_evaluate_help_say_run_or_ckpt_is_required(pages, tool):
    page = pages[tool]
    assert "run= or ckpt= is required" in page
    for group in TRAIN_GROUPS:  # train's groups do not apply to these tools
        assert f"\n{group}: " not in page, group
    if tool == "generate":
        for task in TASKS:
            assert f"\n{task} " in page, task


ANSWER_HELP_AND_LIST_MODULES = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print(sorted({name.split(".")[0] for name in sys.modules} & {"torch", "lightning"}))
"""


@pytest.mark.parametrize("tool", ["train", "generate", "evaluate"])
def test_help_answers_without_loading_pytorch_or_lightning(tool):
    # (They take seconds to import: --help answered in 9 s, now in under 1.)
    result = subprocess.run([sys.executable, "-c", ANSWER_HELP_AND_LIST_MODULES,
                             str(ROOT / f"{tool}.py")], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert "== Examples ==" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-300:]
