"""The README's commands and CI agree."""

import os
import re

from tests.paths import REPO


def _readme_commands():
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  block = re.search(r"```\n(.*?)\n```", text, re.S).group(1)
  return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
  commands = _readme_commands()
  assert len(commands) == 2
  assert "leo_tf.train" in commands[0] and "pytest" in commands[1]
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  assert commands[1] in ci
