"""Fuzzing leo_tf.data.embeddings with Hypothesis: mutated published-format pickles.

Each example takes a valid file of the published format (the Python-2 style that
write_split writes, or what Python 3's pickle writes for the same dict) and applies
one to four mutations: bit flips, truncations, inserted bytes (random ones, or a
pickle fragment that would create a canary file if it ran), deleted bytes, and
swapped dict entries. Loading it must either give a well-formed split (shapes, keys
and labels consistent, every value finite) or raise EmbeddingsError naming the file;
never another exception, never more than the deadline, never the canary file.
Seeded (derandomize) and bounded (max_examples, deadline), no example database.
"""

import atexit
import os
import pickle
import shutil
import struct
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from leo_tf.core.config import DataConfig
from leo_tf.data import embeddings as emb

D = 16  # embedding size of the fuzzed files
NUM_EXAMPLES = 1000
FOLDER = tempfile.mkdtemp(prefix="leo_fuzz_")
atexit.register(shutil.rmtree, FOLDER, True)
CANARY_NAME = "leo_fuzz_canary"  # created in the working folder (FOLDER while fuzzing)
CANARY = os.path.join(FOLDER, CANARY_NAME)
PATH = os.path.join(FOLDER, "fuzz", "center", "train_embeddings.pkl")
CONFIG = DataConfig(data_path=FOLDER, dataset_name="fuzz", embedding_crop="center")


def _valid_dict():
  rng = np.random.default_rng(0)
  class_of_row = [0, 0, 1, 1, 2, 2, 2]
  keys = [f"tr-1-n0{c}-n0{c}_{i}.JPEG".encode() for i, c in enumerate(class_of_row)]
  return {"embeddings": rng.normal(size=(len(keys), D)).astype(np.float32),
          "keys": np.array(keys, dtype=f"S{max(map(len, keys))}"),
          "labels": np.array(class_of_row, np.int64)}


def _python2_style(data):
  emb.write_split(PATH, data["embeddings"], [k.decode() for k in data["keys"]], data["labels"])
  with open(PATH, "rb") as f:
    return f.read()


VALID = _valid_dict()
BASES = [_python2_style(VALID), pickle.dumps(VALID, protocol=2),
         pickle.dumps({**VALID, "labels": VALID["labels"].tolist()}, protocol=2)]
# GLOBAL posix.system, then the command, REDUCE: what a payload in a pickle looks like.
# The same bytes in every run (a relative name), so the seeded draws are the same too.
PAYLOAD = (b"cposix\nsystem\n(X" + struct.pack("<I", len(f"touch {CANARY_NAME}"))
           + f"touch {CANARY_NAME}".encode() + b"tR")
ENTRIES = ("embeddings", "keys", "labels")


@st.composite
def mutated_pickles(draw):
  """(bytes, description) of a valid file after 1 to 4 mutations."""
  base = draw(st.sampled_from(range(len(BASES))))
  data = bytearray(BASES[base])
  steps = [f"base {base}"]
  if draw(st.booleans()) and draw(st.booleans()):  # a quarter: swap two dict entries first
    a, b = draw(st.permutations(ENTRIES))[:2]
    swapped = dict(VALID)
    swapped[a], swapped[b] = VALID[b], VALID[a]
    data = bytearray(pickle.dumps(swapped, protocol=2))
    steps.append(f"swap {a} {b}")
  for _ in range(draw(st.integers(1, 4))):
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "payload", "delete"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip" and data:
      data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
      del data[at:]
    elif kind == "insert":
      data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "payload":  # half of them right after the protocol header: a valid spot
      data[at:at] = PAYLOAD if draw(st.booleans()) else b""
      if not data.startswith(PAYLOAD, at):
        data[2:2] = PAYLOAD
        at = 2
    elif kind == "delete":
      length = draw(st.integers(1, 16))
      del data[at:at + length]
      kind = f"delete {length}"
    steps.append(f"{kind} at {at}")
  return bytes(data), ", ".join(steps)


def _check_well_formed(split):
  m = split.num_images
  assert split.embeddings.shape == (m, D) and split.embeddings.dtype == np.float32
  assert np.isfinite(split.embeddings).all()
  assert len(split.image_names) == len(set(split.image_names)) == m
  sizes = split.class_sizes
  assert sizes.shape == (split.num_classes,) and int(sizes.sum()) == m and (sizes > 0).all()
  indices = split.class_image_indices
  rows = np.concatenate([indices[c, :sizes[c]] for c in range(split.num_classes)])
  assert sorted(rows.tolist()) == list(range(m))  # each row in exactly one class
  assert (indices[indices >= 0] < m).all()
  for c, name in enumerate(split.class_names):  # each row's key names its class
    assert all(split.image_names[r].startswith(name + "_") for r in indices[c, :sizes[c]])


def test_mutated_pickles_load_well_formed_or_raise_embeddings_error(monkeypatch):
  monkeypatch.chdir(FOLDER)
  outcomes = {"loaded": 0, "EmbeddingsError": 0, "UnsafePickleError": 0}

  @settings(max_examples=NUM_EXAMPLES, deadline=2000, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
  @given(mutated_pickles())
  def load(mutated):
    data, description = mutated
    with open(PATH, "wb") as f:
      f.write(data)
    try:
      split = emb.load_split(CONFIG, "train", embedding_dim=D)
    except emb.EmbeddingsError as e:
      assert PATH in str(e), (description, str(e))
      outcomes[type(e).__name__] += 1
    else:
      _check_well_formed(split)
      outcomes["loaded"] += 1
    assert not os.path.exists(CANARY), description  # the payload never ran

  load()
  assert sum(outcomes.values()) >= 1000, outcomes
  assert min(outcomes.values()) > 0, outcomes  # each outcome occurred
  print(f"fuzzed {sum(outcomes.values())} pickles: {outcomes}")


def test_the_canary_payload_runs_under_plain_pickle(monkeypatch):
  monkeypatch.chdir(FOLDER)
  # The canary is a real one: plain pickle runs the payload that the fuzzer inserts.
  assert not os.path.exists(CANARY)
  pickle.loads(b"\x80\x02" + PAYLOAD + b".")
  assert os.path.exists(CANARY)
  os.remove(CANARY)
