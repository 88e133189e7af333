"""The documentation's code runs as written: every ```python block of README.md and
export/README.md, and the `python export/make_request.py` commands of export/README.md.

Each block runs in a fresh Python process with the repository importable, in a temporary
folder that stands for the reader's checkout: it holds the synthetic embeddings that the
README's first command writes (`python -m leo_tf.data.synthetic
--output_path=data/embeddings`: dataset_name="synthetic", D = 640), here with few classes
and images so that they take a fraction of a second. TMPDIR is that folder too, so a
block that writes to the temporary folder (tempfile.gettempdir(), /tmp on Linux) writes
there.
"""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from leo_tf.data import synthetic
from tests.paths import REPO

DOCS = ("README.md", os.path.join("export", "README.md"))
# The README's data, small: 5 classes per split (N = 5), 16 images per class (K + V = 1 + 15).
READER_DATA = synthetic.SyntheticConfig(
    num_train_classes=5, num_val_classes=5, num_test_classes=5, images_per_class=16,
    signal_dim=8, nuisance_dim=8)


def code_blocks(doc, language):
  """The ```<language> blocks of a documentation file, in order, as their text."""
  with open(os.path.join(REPO, doc), encoding="utf-8") as f:
    text = f.read()
  return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def shell_commands(doc):
  """The commands of a file's ```sh blocks, one string each (backslash continuations joined)."""
  commands = []
  for block in code_blocks(doc, "sh"):
    commands.extend(line.strip() for line in re.sub(r"\\\n\s*", "", block).splitlines())
  return [command for command in commands if command and not command.startswith("#")]


PYTHON_BLOCKS = [(doc, i, block) for doc in DOCS
                 for i, block in enumerate(code_blocks(doc, "python"))]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
  """A folder like the reader's checkout after the README's first command: data/embeddings."""
  folder = tmp_path_factory.mktemp("reader")
  synthetic.generate(READER_DATA, str(folder / "data" / "embeddings"), num_eval_tasks=2)
  (folder / "export").mkdir()
  return folder


def run_block(block, folder, doc):
  """Runs one block in a fresh process in folder; fails with the block if it raises."""
  env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(folder), TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  result = subprocess.run([sys.executable, "-c", block], cwd=str(folder), env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  if result.returncode != 0:
    pytest.fail(f"This ```python block of {doc} raised:\n\n{block}\n{result.stderr[-3000:]}",
                pytrace=False)
  return result


def test_the_docs_have_the_blocks_tested_here():
  # A block whose fence is mistyped would silently escape the test below.
  assert [(doc, i) for doc, i, _ in PYTHON_BLOCKS] == [("README.md", 0),
                                                       (os.path.join("export", "README.md"), 0)]
  for doc in DOCS:
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
      fences = re.findall(r"^```(\S*)", f.read(), flags=re.MULTILINE)
    assert len(fences) % 2 == 0, f"{doc} has an unclosed ``` block"


@pytest.mark.parametrize("doc, index, block", PYTHON_BLOCKS,
                         ids=[f"{doc}[{i}]" for doc, i, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_written(reader, doc, index, block):
  run_block(block, reader, doc)


def test_make_request_commands_run_as_written(reader):
  """export/README.md's task block, then its make_request commands, with /tmp/ as TMPDIR."""
  doc = os.path.join("export", "README.md")
  task_block, = [block for block in code_blocks(doc, "python") if "task.npz" in block]
  printed = run_block(task_block, reader, doc).stdout
  assert printed == (f"wrote {reader / 'task.npz'}: support (5, 1, 640), query (75, 640)\n")
  with np.load(reader / "task.npz") as task:
    assert task["support"].shape == (5, 1, 640) and task["query"].shape == (75, 640)

  with open(os.path.join(REPO, doc), encoding="utf-8") as f:
    shown, = re.findall(r"^make_request: wrote /tmp/request\.json: .*$", f.read(), re.MULTILINE)
  commands = [c for c in shell_commands(doc) if c.startswith("python export/make_request.py")]
  assert len(commands) == 2, commands
  printed = []
  for command in commands:
    argv = shlex.split(command.replace("/tmp/", f"{reader}/"))
    argv[:2] = [sys.executable, os.path.join(REPO, "export", "make_request.py")]
    result = subprocess.run(argv, cwd=str(reader), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    printed.append(result.stdout)
  # The line that export/README.md shows for the task's body, and that body.
  assert shown.replace("/tmp/", f"{reader}/") + "\n" in printed
  with open(reader / "request.json") as f:
    assert f.read().startswith('{"signature_name":"serving_default","inputs":{"support":[[[')
  # The command that wrote export/request.json writes it again, byte for byte.
  with open(reader / "export" / "request.json") as written, open(
      os.path.join(REPO, "export", "request.json")) as committed:
    assert written.read() == committed.read()
