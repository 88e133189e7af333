"""leo_tf.data.embeddings: the published format, safe loading and errors naming the file.

The atomicity of write_split (through leo_tf.data.atomic) is tested in test_atomic.py.
"""

import io
import os
import pathlib
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest

from leo_tf.data import embeddings as emb
from leo_tf.core.config import DataConfig
from tests.paths import REPO

D = 640


def _keys(class_of_row, prefix="tr-1"):
  """Keys "<prefix>-<class>-<class>_<row>.JPEG"; the prefix holds a dash on purpose."""
  return [f"{prefix}-{c}-{c}_{i}.JPEG" for i, c in enumerate(class_of_row)]


def _write_dict(path, data):
  """Writes `data` as Python 3 would with protocol 2 (bytes via _codecs.encode)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=2)


def _valid_dict(n=6, d=D):
  rng = np.random.default_rng(0)
  classes = ["n01", "n02"] * (n // 2)
  return {
      "embeddings": rng.random((n, d), dtype=np.float32),
      "keys": np.array([k.encode() for k in _keys(classes)]),
      "labels": np.arange(n) % 2,
  }


def _globals(path):
  with open(path, "rb") as f:
    return sorted(arg for op, arg, _ in pickletools.genops(f.read()) if op.name == "GLOBAL")


# ---------------------------------------------------------------------------
# Round trip and structure.
# ---------------------------------------------------------------------------


def test_split_path_layout():
  assert emb.split_path("/d", "miniImageNet", "multiview", "val") == (
      "/d/miniImageNet/multiview/val_embeddings.pkl")
  assert emb.split_path("/d", "omniglot", "center", "test") == "/d/omniglot/center/test_embeddings.pkl"


def test_write_then_load_split_groups_classes_in_order_of_appearance(tmp_path):
  # Rows: b a b c a b -> classes in first-appearance order (b, a, c), sizes 3, 2, 1.
  classes = ["nb", "na", "nb", "nc", "na", "nb"]
  x = np.arange(6 * D, dtype=np.float32).reshape(6, D) + 1.0
  x[3] = 0.0  # a zero row must stay zero, not become NaN
  path = emb.split_path(str(tmp_path), "toy", "center", "train")
  emb.write_split(path, x, _keys(classes, prefix="a-b-c"), labels=[1, 0, 1, 2, 0, 1])

  split = emb.load_split(DataConfig(data_path=str(tmp_path), dataset_name="toy"), "train")

  assert split.class_names == ("nb", "na", "nc")
  np.testing.assert_array_equal(split.class_sizes, [3, 2, 1])
  np.testing.assert_array_equal(split.class_image_indices, [[0, 2, 5], [1, 4, -1], [3, -1, -1]])
  assert split.class_image_indices.dtype == np.int32 and split.class_sizes.dtype == np.int32
  assert split.image_names[:2] == ("nb_0.JPEG", "na_1.JPEG")
  assert split.paths == (path,)
  assert (split.num_classes, split.embedding_dim, split.num_images) == (3, D, 6)
  assert split.embeddings.dtype == np.float32
  expected = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), 1e-6)
  np.testing.assert_allclose(split.embeddings, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(split.embeddings[3], np.zeros(D))
  np.testing.assert_allclose(np.linalg.norm(split.embeddings[[0, 1, 2, 4, 5]], axis=1), 1.0,
                             rtol=1e-6)


def test_split_arrays_are_read_only(tmp_path):
  path = emb.split_path(str(tmp_path), "toy", "center", "val")
  emb.write_split(path, np.ones((2, D), np.float32), _keys(["na", "nb"]), [0, 1])
  split = emb.load_split(DataConfig(data_path=str(tmp_path), dataset_name="toy"), "val")
  with pytest.raises(ValueError):
    split.embeddings[0, 0] = 5.0
  with pytest.raises(ValueError):
    split.class_image_indices[0, 0] = 1


def test_written_file_is_python2_style_protocol2_with_numpy_globals_only(tmp_path):
  path = str(tmp_path / "train_embeddings.pkl")
  emb.write_split(path, np.ones((3, D), np.float32), ["x-na-na_1.JPEG", "x-na-na_22.JPEG",
                                                       "x-nb-nb_333.JPEG"], [0, 0, 1])
  with open(path, "rb") as f:
    raw = f.read()
  assert raw[:2] == b"\x80\x02"  # protocol 2
  assert _globals(path) == ["numpy dtype", "numpy ndarray", "numpy.core.multiarray _reconstruct"]
  data = pickle.loads(raw, encoding="latin1")
  assert data["keys"].dtype == np.dtype("S16")  # the longest key; shorter ones NUL-padded
  assert data["keys"][0] == b"x-na-na_1.JPEG"
  np.testing.assert_array_equal(data["labels"], [0, 0, 1])
  assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (3, D)


def test_reads_python3_protocol2_pickle_with_list_labels_and_nul_padded_keys(tmp_path):
  data = _valid_dict()
  data["keys"] = np.array([k + b"\x00\x00" for k in data["keys"].tolist()], dtype="S40")
  data["keys"] = np.array([b"\x00" + k for k in data["keys"].tolist()], dtype="S40")
  data["labels"] = [np.int64(i % 2) for i in range(6)]  # numpy scalars: needs `scalar`
  path = str(tmp_path / "test_embeddings.pkl")
  _write_dict(path, data)
  assert "_codecs encode" in _globals(path)
  assert "numpy._core.multiarray scalar" in _globals(path)
  f = emb.read_embeddings_file(path)
  assert f.keys[0] == "tr-1-n01-n01_0.JPEG"
  assert f.class_names == ("n01", "n02") * 3
  assert f.image_names[5] == "n02_5.JPEG"
  np.testing.assert_array_equal(f.labels, [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(f.embeddings, data["embeddings"])


def test_embedding_dim_argument_allows_other_sizes(tmp_path):
  path = str(tmp_path / "train_embeddings.pkl")
  emb.write_split(path, np.ones((2, 8), np.float32), _keys(["na", "nb"]), [0, 1])
  assert emb.read_embeddings_file(path, embedding_dim=8).embeddings.shape == (2, 8)
  with pytest.raises(emb.EmbeddingsError, match="size 8, expected 640"):
    emb.read_embeddings_file(path)


def test_wrong_embedding_dim_says_which_value_to_pass(tmp_path):
  # --embedding_dim=512 on the published 640-d features: the message names 640.
  path = emb.split_path(str(tmp_path), "toy", "center", "train")
  emb.write_split(path, np.ones((2, D), np.float32), _keys(["na", "nb"]), [0, 1])
  with pytest.raises(emb.EmbeddingsError) as info:
    emb.load_split(DataConfig(data_path=str(tmp_path), dataset_name="toy"), "train",
                   embedding_dim=512)
  assert str(info.value) == (
      f"{path}: embeddings have size 640, expected 512; the features are 640-dimensional: "
      "pass --embedding_dim=640 (embedding_dim=640 in the library).")


def test_train_on_val_concatenates_train_then_val(tmp_path):
  root = str(tmp_path)
  emb.write_split(emb.split_path(root, "toy", "center", "train"), np.ones((3, D)),
                  _keys(["na", "na", "nb"]), [0, 0, 1])
  emb.write_split(emb.split_path(root, "toy", "center", "val"), 2 * np.ones((4, D)),
                  _keys(["nc", "nc", "nc", "nd"], prefix="val"), [0, 0, 0, 1])
  config = DataConfig(data_path=root, dataset_name="toy", train_on_val=True)
  split = emb.load_split(config, "train")
  assert split.class_names == ("na", "nb", "nc", "nd")
  np.testing.assert_array_equal(split.class_sizes, [2, 1, 3, 1])
  np.testing.assert_array_equal(split.class_image_indices,
                                [[0, 1, -1], [2, -1, -1], [3, 4, 5], [6, -1, -1]])
  assert len(split.paths) == 2 and split.paths[1].endswith("val_embeddings.pkl")
  assert emb.load_split(config, "val").num_classes == 2  # only "train" is merged


# ---------------------------------------------------------------------------
# Unsafe pickles.
# ---------------------------------------------------------------------------


class _SystemPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _OpenPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


class _PathPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("payload_cls,refused", [
    (_SystemPayload, "posix.system"),
    (_OpenPayload, "io.open"),  # builtins.open is io.open
    (_PathPayload, "__builtin__.getattr"),  # getattr(Path, "touch") comes first
])
def test_unsafe_pickle_is_refused_and_payload_never_runs(tmp_path, payload_cls, refused):
  marker = tmp_path / "pwned"
  data = _valid_dict()
  data["labels"] = payload_cls(str(marker))  # hidden inside an otherwise valid dict
  path = str(tmp_path / "train_embeddings.pkl")
  _write_dict(path, data)
  # Plain pickle would run it: check the payload is real, then remove its trace.
  with open(path, "rb") as f:
    loaded = pickle.load(f, encoding="latin1")
  if hasattr(loaded["labels"], "close"):
    loaded["labels"].close()
  assert marker.exists()
  marker.unlink()
  with pytest.raises(emb.UnsafePickleError) as info:
    emb.read_embeddings_file(path)
  assert refused in str(info.value) and path in str(info.value)
  assert isinstance(info.value, ValueError)
  assert not marker.exists()


def test_codecs_encode_is_admitted_only_for_latin1_strings(tmp_path):
  # A hand-written protocol-2 pickle calling _codecs.encode("x", "rot13").
  raw = (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
  path = str(tmp_path / "train_embeddings.pkl")
  with open(path, "wb") as f:
    f.write(raw)
  with pytest.raises(emb.UnsafePickleError, match="rot13"):
    emb.read_embeddings_file(path)


# A shape of 2**50 elements (LONG1), as a corrupt size field could make it.
_HUGE = b"\x8a\x07" + (2**50).to_bytes(7, "little") + b"\x85"


@pytest.mark.parametrize("raw", [
    # numpy.core.multiarray._reconstruct(ndarray, (2**50,), "b"): 1 PiB of int8
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _HUGE
    + b"U\x01b\x87R.",
    # numpy.ndarray((2**50,)): 8 PiB of float64
    b"\x80\x02cnumpy\nndarray\n" + _HUGE + b"\x85R.",
], ids=["reconstruct", "ndarray"])
def test_an_array_larger_than_the_file_is_refused_before_numpy_allocates_it(tmp_path, raw):
  path = str(tmp_path / "train_embeddings.pkl")
  with open(path, "wb") as f:
    f.write(raw)
  with pytest.raises(emb.EmbeddingsError, match=r"train_embeddings.pkl: not a readable .*an "
                                                r"array of 1125899906842624 elements, more than "
                                                rf"the file's {len(raw)} bytes"):
    emb.read_embeddings_file(path)  # plain pickle: MemoryError, "Unable to allocate 1.00 PiB"


@pytest.mark.parametrize("opcode", [b"\x96", b"\x95", b"\x8e", b"\x8d"],
                         ids=["BYTEARRAY8", "FRAME", "BINBYTES8", "BINUNICODE8"])
def test_a_length_beyond_the_file_is_refused_before_it_is_allocated(tmp_path, opcode):
  path = tmp_path / "train_embeddings.pkl"  # protocol 5, a length of 2**50 bytes
  path.write_bytes(b"\x80\x05" + opcode + (2**50).to_bytes(8, "little") + b"abc.")
  with pytest.raises(emb.EmbeddingsError, match=r"train_embeddings.pkl: not a readable"):
    emb.read_embeddings_file(str(path))  # plain pickle: MemoryError


def test_a_pickled_dtype_is_a_copy_never_numpy_s_own(tmp_path):
  # numpy.dtype("i8", False, False) is numpy's shared int64 dtype; the BUILD that follows
  # sets the state of what it returned, which must be a copy.
  raw = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00i8\x89\x89\x87R(K\x03X\x01\x00\x00\x00>"
         b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
  assert pickle._loads(raw) is np.dtype("i8")  # plain pickle: numpy's own, changed in place
  loaded = emb._RestrictedUnpickler(io.BytesIO(raw), "x.pkl", len(raw)).load()
  assert loaded is not np.dtype("i8") and loaded == np.dtype(">i8")


_DTYPE_F4 = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"


@pytest.mark.parametrize("state", [
    (None, 0, "<", b"z", 0, 1, 4, "|", ("a",)),  # numpy: SystemError
    (3, "<", None, None, None, -1, -1, 63),  # flags of an object dtype on float32
    (3, "<", None, None, None, 8, 8, 0),  # another size
])
def test_a_dtype_state_other_than_numpy_s_own_is_refused(tmp_path, state):
  path = tmp_path / "train_embeddings.pkl"
  path.write_bytes(_DTYPE_F4 + pickle.dumps(state, protocol=2)[2:-1] + b"b.")
  with pytest.raises(emb.EmbeddingsError, match=r"train_embeddings.pkl: not a readable .*a "
                                                r"numpy dtype with the state"):
    emb.read_embeddings_file(str(path))


def test_a_dtype_state_that_crashes_numpy_is_refused(tmp_path):
  # numpy 2.4's dtype.__setstate__((3, '<', None, -1, -1, 0)) is a segmentation fault: load
  # it in a process of its own (without the check, that process dies with -11).
  path = tmp_path / "train_embeddings.pkl"
  path.write_bytes(_DTYPE_F4 + pickle.dumps((3, "<", None, -1, -1, 0), protocol=2)[2:-1]
                   + b"b.")
  result = subprocess.run(
      [sys.executable, "-c", "import sys\nfrom leo_tf.data import embeddings as emb\ntry:\n"
       "  emb.read_embeddings_file(sys.argv[1])\nexcept emb.EmbeddingsError as e:\n"
       "  print(e)\n", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
  assert result.returncode == 0, result
  assert "a numpy dtype with the state (3, '<', None, -1, -1, 0)" in result.stdout


# ---------------------------------------------------------------------------
# Every other defect: EmbeddingsError naming the file.
# ---------------------------------------------------------------------------


def test_missing_file_says_how_to_get_the_data(tmp_path):
  with pytest.raises(emb.EmbeddingsError) as info:
    emb.load_split(DataConfig(data_path=str(tmp_path / "nowhere")), "train")
  message = str(info.value)
  assert "miniImageNet/center/train_embeddings.pkl" in message
  assert "embeddings.zip" in message and "python -m leo_tf.data.synthetic" in message


def _mutated(**changes):
  data = _valid_dict()
  for key, value in changes.items():
    if value is None:
      del data[key]
    else:
      data[key] = value
  return data


_NAN = np.ones((6, D), np.float32)
_NAN[4, 7] = np.nan
_INF = np.ones((6, D), np.float32)
_INF[2, 0] = -np.inf


@pytest.mark.parametrize("data,message", [
    ([1, 2, 3], "holds a list, expected a dict"),
    (_mutated(keys=None), "no 'keys' entry"),
    (_mutated(labels=None), "no 'labels' entry"),
    (_mutated(embeddings=np.ones((6, 10, 64), np.float32)), "must have rank 2"),
    (_mutated(embeddings=np.ones((6, 512), np.float32)), "size 512, expected 640"),
    (_mutated(embeddings=np.ones((6, D), np.int32)), "must be floating point"),
    (_mutated(keys=np.array([b"x-n01-n01_0.JPEG"] * 2 + [b"x-n01-n01_1.JPEG"] * 4)),
     "'n01_0.JPEG' appears twice"),
    (_mutated(keys=np.array([b"x-n01-n01_%d.JPEG" % i for i in range(5)])), "5 keys for 6"),
    (_mutated(labels=np.arange(4)), "4 labels for 6"),
    (_mutated(keys=np.array([b"x-n01-n02_%d.JPEG" % i for i in range(6)])),
     "does not start with its class 'n01'"),
    (_mutated(keys=np.array([b"n01_%d.JPEG" % i for i in range(6)])), "not of the form"),
    (_mutated(embeddings=_NAN), "NaN or Inf, first row 4"),
    (_mutated(embeddings=_INF), "NaN or Inf, first row 2"),
])
def test_defects_raise_embeddings_error_naming_the_file(tmp_path, data, message):
  path = str(tmp_path / "train_embeddings.pkl")
  _write_dict(path, data)
  with pytest.raises(emb.EmbeddingsError, match=message) as info:
    emb.read_embeddings_file(path)
  assert path in str(info.value)


def test_truncated_file_is_embeddings_error(tmp_path):
  path = str(tmp_path / "train_embeddings.pkl")
  _write_dict(path, _valid_dict())
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(emb.EmbeddingsError, match="truncated or corrupt"):
    emb.read_embeddings_file(path)


@pytest.mark.parametrize("dataset,crop,split,message", [
    ("miniImageNet", "center", "training", "split must be one of"),
    ("miniImageNet", "random", "train", "embedding_crop must be one of"),
    ("tieredImageNet", "multiview", "train", "miniImageNet only"),
])
def test_bad_layout_arguments(dataset, crop, split, message):
  with pytest.raises(ValueError, match=message):
    emb.split_path("/d", dataset, crop, split)


def test_write_split_refuses_invalid_inputs(tmp_path):
  path = str(tmp_path / "train_embeddings.pkl")
  with pytest.raises(emb.EmbeddingsError, match="does not start with its class"):
    emb.write_split(path, np.ones((1, D)), ["x-na-nb_1.JPEG"], [0])
  with pytest.raises(emb.EmbeddingsError, match="2 keys for 1"):
    emb.write_split(path, np.ones((1, D)), ["x-na-na_1", "x-na-na_2"], [0])
  assert not os.path.exists(path)
