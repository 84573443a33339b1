"""The README matches the code it documents: the options table lists every option of the one definition,
in order, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.options import option_facts

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_the_options_table_is_the_options_definition() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", _section("Options"), re.MULTILINE)
    assert [name for name, _ in rows] == [fact.name for fact in option_facts()]
    documented = dict(rows)
    for fact in option_facts():
        if isinstance(fact.default, float | int) and not isinstance(fact.default, bool):
            assert (
                documented[fact.name].strip() == f"{fact.default:g}"
                or float(documented[fact.name]) == fact.default
            )


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv[^\n]+)\n```", _section("Set up"))
    assert len(commands) == 2
    main_job, tests = commands
    assert "faceswap-serve demo" in main_job and "pytest" in tests
    assert (
        (REPO / ".ci" / "run")
        .read_text(encoding="utf-8")
        .rstrip()
        .endswith(tests.replace("pip install -e", "pip install -q -e"))
    )
