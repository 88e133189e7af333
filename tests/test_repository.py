"""The README's commands and CI agree, and the flagfiles parse."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.mark.parametrize("name", ["demo", "mini", "mini_5shot", "tiered", "tiered_5shot"])
def test_flagfiles_name_only_known_flags(name):
  from absl import flags
  from leo_tf import train  # pylint: disable=unused-import  (defines the flags)
  with open(os.path.join(REPO, f"{name}.flags")) as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  for line in lines:
    flag = line[2:].split("=", 1)[0]
    assert flag in flags.FLAGS, f"{name}.flags: unknown flag {flag}"
