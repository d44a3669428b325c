"""The README opens with two fresh-machine commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    return [line for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_starts_with_a_main_job_and_a_test_command() -> None:
    main_job, test_command = _readme_commands()[:2]
    assert main_job.startswith("bash tools/setup.sh && ") and "conva-mlx extract" in main_job
    assert test_command == ("bash tools/setup.sh && bash tools/setup-tests.sh && "
                            "bash tools/test.sh")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line for line in ci.splitlines()
             if line.strip() and not line.startswith("#") and not line.startswith("cd ")]
    assert steps == [test_command]
