"""Build leo_serve and talk to it from Python: what the C loader's tests and benchmark share.

    import client                                        # this file, loaded by path
    binary = client.build("/tmp/leo_serve")              # export/c_loader/build.sh
    with client.Loader(binary, "models/leo/1") as loader:
      outputs = loader.run("serving_default", {"support": support, "query": query})
      replies = loader.warmup()                          # every warmup record, in order

A request's inputs are written as serialized TensorProto files (tf.make_tensor_proto)
into a private temporary folder, and leo_serve is sent one line per request
(leo_serve.c describes the lines). A refused request raises LoaderError with
TensorFlow's status code and message; the process stays up for the next one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Mapping, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_SCRIPT = os.path.join(HERE, "build.sh")

_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "uint8": np.uint8,
           "int16": np.int16, "int8": np.int8, "int64": np.int64, "bool": np.bool_}


class BuildError(RuntimeError):
  """build.sh failed; the message is its own (e.g. how to install a C compiler)."""


class LoaderError(RuntimeError):
  """A request that leo_serve answered with an error status.

  Attributes:
    code: TensorFlow's status code name, e.g. "INVALID_ARGUMENT".
    message: the status message.
  """

  def __init__(self, code: str, message: str):
    super().__init__(f"{code}: {message}")
    self.code = code
    self.message = message


def build(output: str, python: str = sys.executable) -> str:
  """Compiles leo_serve.c to `output` with build.sh; returns `output`.

  Raises:
    BuildError: no C compiler (the message says how to get one), no
      tensorflow wheel for `python`, or a compile error.
  """
  result = subprocess.run(["bash", BUILD_SCRIPT, output], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=python), check=False)
  if result.returncode != 0:
    raise BuildError(f"{BUILD_SCRIPT} failed (exit {result.returncode}): "
                     f"{result.stderr.strip() or result.stdout.strip()}")
  return output


def tensor_proto_bytes(value) -> bytes:
  """A numpy array (numeric, bool, or bytes/object for strings) as a serialized TensorProto."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.make_tensor_proto(value).SerializeToString()


def _unescape(word: str) -> bytes:
  """leo_serve's printing of a string element: bytes, with \\xHH for the rest."""
  out, i = bytearray(), 0
  while i < len(word):
    if word[i] == "\\" and word[i + 1:i + 2] == "x":
      out.append(int(word[i + 2:i + 4], 16))
      i += 4
    else:
      out.append(ord(word[i]))
      i += 1
  return bytes(out)


def parse_output(line: str) -> tuple[str, np.ndarray]:
  """'<key> <dtype> <rank> <dims...> <values...>' -> (key, array)."""
  words = line.split()
  key, dtype, rank = words[0], words[1], int(words[2])
  shape = tuple(int(d) for d in words[3:3 + rank])
  values = words[3 + rank:]
  if dtype == "string":
    array = np.array([_unescape(v) for v in values], dtype=object)
  elif dtype in _DTYPES:
    array = np.array([float(v) if dtype.startswith("float") else int(v) for v in values],
                     dtype=_DTYPES[dtype])
  else:
    raise ValueError(f"leo_serve printed output {key} of dtype {dtype}, which is not read here")
  return key, array.reshape(shape)


class Loader:
  """One leo_serve process serving one SavedModel version folder.

  Args:
    binary: the built leo_serve.
    version_dir: the SavedModel folder (<export_dir>/<version>).
    intra_op_threads, inter_op_threads: TensorFlow's thread pools (0: its default).
  """

  def __init__(self, binary: str, version_dir: str, intra_op_threads: int = 0,
               inter_op_threads: int = 0):
    self._folder = tempfile.mkdtemp(prefix="leo_serve_")
    self._stderr = open(os.path.join(self._folder, "stderr.txt"), "w+")
    self._files = 0
    self.process = subprocess.Popen(
        [binary, f"--intra_op_threads={intra_op_threads}",
         f"--inter_op_threads={inter_op_threads}", version_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")))
    first = self._line()
    if not first.startswith("loaded "):
      self.close()
      raise LoaderError(*first.split(" ", 2)[1:3]) if first.startswith("error ") else \
          RuntimeError(f"leo_serve did not load {version_dir}: {first!r}")

  def __enter__(self) -> "Loader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Ends the process (quit, then wait) and removes the request files."""
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
      except BrokenPipeError:
        pass
      self.process.wait(timeout=60)
    self.process.stdout.close()
    self._stderr.close()
    shutil.rmtree(self._folder, ignore_errors=True)

  def _line(self) -> str:
    line = self.process.stdout.readline()
    if not line:
      self._stderr.flush()
      self._stderr.seek(0)
      tail = self._stderr.read()[-2000:]
      raise RuntimeError(f"leo_serve ended (exit {self.process.wait(timeout=60)}): {tail}")
    return line.rstrip("\n")

  def _send(self, line: str) -> None:
    self.process.stdin.write(line + "\n")
    self.process.stdin.flush()

  def _request_words(self, inputs: Mapping[str, np.ndarray | bytes],
                     outputs: Sequence[str] | None) -> list[str]:
    """The input files of one request (arrays, or TensorProto bytes as they are)."""
    words = ["-o", ",".join(outputs)] if outputs else []
    for key, value in inputs.items():
      self._files += 1
      path = os.path.join(self._folder, f"{self._files}.pb")
      with open(path, "wb") as f:
        f.write(value if isinstance(value, bytes) else tensor_proto_bytes(value))
      words.append(f"{key}={path}")
    return words

  def _response(self) -> tuple[dict[str, np.ndarray], float]:
    """Reads one response: (outputs, microseconds), or raises LoaderError."""
    header = self._line()
    if header.startswith("error "):
      _, code, message = (header.split(" ", 2) + [""])[:3]
      raise LoaderError(code, message)
    _, _, count, micros = header.split(" ")
    return dict(parse_output(self._line()) for _ in range(int(count))), float(micros)

  def signatures(self) -> dict[str, dict[str, dict[str, str]]]:
    """{signature: {"inputs": {key: dtype}, "outputs": {key: dtype}}}."""
    self._send("signatures")
    found: dict[str, dict[str, dict[str, str]]] = {}
    while (line := self._line()) != "end":
      words = line.split(" ")
      if words[0] == "signature":
        current = found.setdefault(words[1], {"inputs": {}, "outputs": {}})
      else:
        current[words[0] + "s"][words[1]] = words[3]
    return found

  def run(self, signature: str, inputs: Mapping[str, np.ndarray | bytes],
          outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One request: its outputs as arrays (all of the signature's, or those named).

    Raises:
      LoaderError: the request was refused (e.g. code INVALID_ARGUMENT).
    """
    return self.run_timed(signature, inputs, outputs)[0]

  def run_timed(self, signature: str, inputs: Mapping[str, np.ndarray | bytes],
                outputs: Sequence[str] | None = None
                ) -> tuple[dict[str, np.ndarray], float]:
    """run(), and the microseconds leo_serve measured (input tensors and TF_SessionRun)."""
    self._send(" ".join(["run", signature] + self._request_words(inputs, outputs)))
    return self._response()

  def time(self, repeats: int, signature: str, inputs: Mapping[str, np.ndarray | bytes],
           outputs: Sequence[str] | None = None) -> list[float]:
    """The same request `repeats` times in leo_serve: each one's seconds."""
    self._send(" ".join(["time", str(repeats), signature] +
                        self._request_words(inputs, outputs)))
    header = self._line()
    if header.startswith("error "):
      _, code, message = (header.split(" ", 2) + [""])[:3]
      raise LoaderError(code, message)
    return [1e-6 * float(v) for v in self._line().split()]

  def warmup(self, path: str | None = None
             ) -> list[tuple[str, dict[str, np.ndarray] | LoaderError]]:
    """Replays a warmup file (default: the model's own): (signature, outputs or error) each."""
    self._send("warmup" + (f" {path}" if path else ""))
    replies, damaged = [], None
    while True:
      line = self._line()
      if line.startswith("warmup "):  # the end of the answer
        if damaged:
          raise damaged
        return replies
      if line.startswith("error "):  # the file itself: missing or damaged
        _, code, message = (line.split(" ", 2) + [""])[:3]
        damaged = LoaderError(code, message)
        continue
      signature = line.split(" ")[2]  # record <i> <signature>
      try:
        replies.append((signature, self._response()[0]))
      except LoaderError as e:
        replies.append((signature, e))
