"""The published LEO embeddings format: safe loading, validation and writing.

Rusu et al. (2019) meta-learn on top of fixed features from a WRN-28-10 trained
on the meta-training classes; the features ship as one pickle per split:

  <data_path>/<dataset_name>/<embedding_crop>/<split>_embeddings.pkl

with dataset_name miniImageNet or tieredImageNet (any other folder in the same
layout loads the same way: the project's synthetic set, later Omniglot),
embedding_crop center or multiview (multiview exists for miniImageNet only) and
split train, val or test. Each file is a Python-2 pickle (protocol 2) of a dict

  embeddings: float32 [n, 640]
  keys:       n strings "<anything>-<class>-<image_file>", image_file starting
              with "<class>_", as a numpy fixed-width byte-string array (S dtype)
  labels:     n integers

Pickles can run arbitrary code when loaded, so the files are read with an
unpickler that admits only the few numpy globals this format needs
(`UnsafePickleError` otherwise, before anything of the payload runs). Every
other defect is an `EmbeddingsError` naming the file and what is wrong.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib
import io
import os
import pickle
import struct
from typing import Any, Sequence

import numpy as np

from leo_tf.core.config import DataConfig
from leo_tf.data import atomic

SPLITS = ("train", "val", "test")
EMBEDDING_CROPS = ("center", "multiview")
DEFAULT_EMBEDDING_DIM = 640  # WRN-28-10 features
_PAD_INDEX = -1  # padding in EmbeddingSplit.class_image_indices
# Squared norms below this are treated as this when normalising, as
# tf.nn.l2_normalize does (its epsilon): a zero row stays a zero row.
_L2_EPSILON = 1e-12

_HOW_TO_GET_DATA = (
    "Download embeddings.zip from the LEO paper's repository (github.com/deepmind/leo), unzip "
    "it and set data_path to the folder that holds miniImageNet/ and tieredImageNet/; or "
    "generate the project's synthetic set with `python -m leo_tf.data.synthetic "
    "--output_path=data/embeddings` and use dataset_name=synthetic.")


class EmbeddingsError(ValueError):
  """An embeddings file is missing, malformed or inconsistent."""


class UnsafePickleError(EmbeddingsError):
  """A pickle asked for a global outside the embeddings format's allow-list."""


# ----------------------------------------------------------------------------
# Restricted unpickling.
# ----------------------------------------------------------------------------


def _numpy_multiarray():
  """numpy's multiarray module: numpy._core in numpy 2, numpy.core before."""
  try:
    return importlib.import_module("numpy._core.multiarray")
  except ImportError:  # numpy < 1.26 has no numpy._core alias.
    return importlib.import_module("numpy.core.multiarray")


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
  """Stands in for `_codecs.encode` in Python-3-written protocol-2 pickles.

  Protocol 2 has no bytes opcode, so Python 3 writes bytes b as
  `_codecs.encode(b.decode("latin1"), "latin1")`. Only that use is allowed.
  """
  if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
    raise UnsafePickleError(
        f"_codecs.encode is admitted only as encode(<str>, 'latin1') (how Python 3 stores "
        f"bytes in protocol 2), got encode({type(obj).__name__}, {encoding!r}, {errors!r}).")
  return codecs.encode(obj, "latin1")


def _check_array_size(shape: Any, size: int) -> None:
  """Refuses a shape of more elements than the file has bytes (a corrupt size field)."""
  try:
    count = float(np.prod(np.asarray(shape, dtype=np.float64), axis=None))
  except (TypeError, ValueError) as e:
    raise EmbeddingsError(f"an array's shape is not a tuple of sizes: {shape!r}.") from e
  if count > size:
    raise EmbeddingsError(f"an array of {count:.0f} elements, more than the file's {size} "
                          "bytes.")


class _NdarrayClass:
  """Stands in for numpy.ndarray: the class argument of _reconstruct, or called directly."""

  def __init__(self, size: int):
    self._size = size

  def __call__(self, shape, *args, **kwargs):
    _check_array_size(shape, self._size)
    return np.ndarray(shape, *args, **kwargs)


def _bounded_reconstruct(size: int):
  """numpy's _reconstruct, refusing an array of more elements than the file has bytes.

  The published files call it with shape (0,) and fill the array from the
  pickle's bytes; a corrupt shape could ask numpy for terabytes first.
  """
  reconstruct = _numpy_multiarray()._reconstruct

  def checked(subtype, shape, dtype):
    if not isinstance(subtype, _NdarrayClass):
      raise EmbeddingsError(f"_reconstruct of {subtype!r}, not of numpy.ndarray.")
    _check_array_size(shape, size)
    return reconstruct(np.ndarray, shape, dtype)

  return checked


def _new_dtype(size: int):
  """numpy.dtype that always makes a new object (copy=True).

  The pickle's BUILD opcode then sets the state of that copy: with copy=False
  numpy returns its own shared dtype (np.dtype("f4") itself), whose state a
  corrupt pickle would change for the whole process (found by the fuzz: later
  loads failed with SystemError from numpy's descriptor.c).
  """
  del size

  def dtype(obj, align=False, copy=False):
    del copy
    return np.dtype(obj, bool(align), True)

  return dtype


# (module, name) -> how to resolve it, given the file's size in bytes. What numpy
# needs to rebuild ndarrays of numbers and byte strings, found by pickling such a dict
# with numpy (Python 2 writes numpy.core.multiarray, numpy >= 2 writes
# numpy._core.multiarray), plus numpy scalars (labels may be a list of numpy ints) and
# Python 3's way of writing bytes in protocol 2. No builtins are needed: dicts, lists,
# tuples, strings and ints have their own opcodes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _bounded_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _bounded_reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda size: _numpy_multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): lambda size: _numpy_multiarray().scalar,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _new_dtype,
    ("_codecs", "encode"): lambda size: _latin1_encode,
}


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Unpickler that resolves only the globals in `_ALLOWED_GLOBALS`.

  Python's own unpickler (pickle._Unpickler) rather than the C one: its memo is
  a dict, so a corrupt memo index (LONG_BINPUT 1970089573) is one entry, where
  the C unpickler grows an array to that size first (MemoryError). The format's
  data is in a few long strings, so both read a file at the same speed.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, path: str, size: int):
    super().__init__(file, encoding="latin1")  # Python-2 str -> latin1 str.
    self._path = path
    self._size = size

  def _load_bytearray8(self) -> None:
    """BYTEARRAY8 (protocol 5) as pickle's, but a length beyond the file is refused.

    pickle allocates the whole bytearray before reading into it (MemoryError
    for a corrupt 8-byte length; found by the fuzz).
    """
    length, = struct.unpack("<Q", self.read(8))
    if length > self._size:
      raise EmbeddingsError(f"a bytearray of {length} bytes, more than the file's {self._size}.")
    data = bytearray(length)
    self.readinto(data)
    self.append(data)

  dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

  def _load_build(self) -> None:
    """BUILD as pickle's, but a numpy dtype's state must be the plain one numpy writes.

    numpy 2.4's dtype.__setstate__ crashes the process (a segmentation fault)
    on some malformed states, e.g. (3, '<', None, -1, -1, 0), and a corrupt
    flags field makes an int64 dtype claim to hold objects (RuntimeError
    "get_clear_loop not set" when the array is freed) (both found by fuzzing).
    So the state must be the one numpy writes for the dtype just made from its
    name, (3, <byte order>, None, None, None, <size>, <alignment>, <flags>),
    with any byte order.
    """
    if len(self.stack) >= 2 and isinstance(self.stack[-2], np.dtype):
      state, own = self.stack[-1], self.stack[-2].__reduce__()[2]
      if not (isinstance(state, tuple) and len(state) == len(own) == 8
              and state[1] in ("<", ">", "|", "=") and state[:1] + state[2:] == own[:1] + own[2:]
              and all(type(v) is type(w) for v, w in zip(state, own))):  # pylint: disable=unidiomatic-typecheck
        raise EmbeddingsError(f"a numpy dtype with the state {str(state)[:100]}, not the one "
                              f"numpy writes for {self.stack[-2]} ({own}).")
    pickle._Unpickler.load_build(self)  # pylint: disable=protected-access

  dispatch[pickle.BUILD[0]] = _load_build

  def find_class(self, module: str, name: str) -> Any:
    resolve = _ALLOWED_GLOBALS.get((module, name))
    if resolve is None:
      raise UnsafePickleError(
          f"{self._path}: refused to load global {module}.{name}; an embeddings pickle "
          "needs only numpy arrays. The file is not in the LEO embeddings format or has "
          "been tampered with: do not load it with plain pickle.")
    return resolve(self._size)


class _SizedFile:
  """A file whose reads never ask for more bytes than it has left.

  A corrupt length (a FRAME, BINBYTES8 or BINUNICODE8 size of 2**50) would make
  pickle ask the file for that many bytes, which Python allocates before
  reading (MemoryError; found by the fuzz); asked for what is left, the read
  comes back short and pickle says the data was truncated.
  """

  def __init__(self, f: io.BufferedIOBase):
    self._f = f
    self.size = os.fstat(f.fileno()).st_size

  def _left(self, n: int | None) -> int:
    left = max(self.size - self._f.tell(), 0)
    return left if n is None or n < 0 else min(n, left)

  def read(self, n: int | None = -1) -> bytes:
    return self._f.read(self._left(n))

  def readline(self, n: int | None = -1) -> bytes:
    return self._f.readline(self._left(n))

  def readinto(self, buffer) -> int:
    view = memoryview(buffer).cast("B")
    return self._f.readinto(view[:self._left(len(view))])


def _unpickle(path: str) -> Any:
  try:
    with open(path, "rb") as f:
      sized = _SizedFile(f)
      return _RestrictedUnpickler(sized, path, sized.size).load()
  except UnsafePickleError as e:
    if str(e).startswith(path):
      raise
    raise UnsafePickleError(f"{path}: {e}") from None  # _codecs.encode's, say: name the file
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError,
          SystemError) as e:  # SystemError: numpy's C code refusing a malformed dtype state
    raise EmbeddingsError(
        f"{path}: not a readable embeddings pickle (truncated or corrupt?): "
        f"{type(e).__name__}: {e}. Re-download or regenerate the file.") from e


# ----------------------------------------------------------------------------
# One file, validated.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingFile:
  """The validated contents of one `<split>_embeddings.pkl`, as stored.

  Attributes:
    path: the file.
    embeddings: float32 [n, D], not normalised.
    keys: n key strings "<anything>-<class>-<image_file>".
    class_names: n class names, one per row (parsed from the keys).
    image_names: n image file names, one per row (parsed from the keys), unique.
    labels: int64 [n], as stored (not used for episodes: classes come from keys).
  """

  path: str
  embeddings: np.ndarray
  keys: tuple[str, ...]
  class_names: tuple[str, ...]
  image_names: tuple[str, ...]
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return int(self.embeddings.shape[0])


def parse_key(key: str, source: str = "<keys>") -> tuple[str, str]:
  """Splits "<anything>-<class>-<image_file>" into (class, image_file).

  Splits from the right, so <anything> may hold dashes.

  Raises:
    EmbeddingsError: the key does not have three parts, or the image file name
      does not start with "<class>_".
  """
  parts = key.rsplit("-", 2)
  if len(parts) != 3 or not parts[1] or not parts[2]:
    raise EmbeddingsError(
        f"{source}: key {key!r} is not of the form '<anything>-<class>-<image_file>'.")
  _, class_name, image_name = parts
  if not image_name.startswith(class_name + "_"):
    raise EmbeddingsError(
        f"{source}: key {key!r}: image file {image_name!r} does not start with its class "
        f"{class_name!r} followed by '_'; keys must read '<anything>-<class>-<class>_<file>'.")
  return class_name, image_name


def _decode_keys(raw_keys: Any, path: str) -> tuple[str, ...]:
  """Keys as str: bytes decoded (UTF-8), NUL padding stripped."""
  if isinstance(raw_keys, np.ndarray):
    if raw_keys.ndim != 1 or raw_keys.dtype.kind not in "SUO":
      raise EmbeddingsError(
          f"{path}: 'keys' must be a 1-D array of strings, got shape {raw_keys.shape} and "
          f"dtype {raw_keys.dtype}.")
    raw_keys = raw_keys.tolist()
  elif not isinstance(raw_keys, (list, tuple)):
    raise EmbeddingsError(
        f"{path}: 'keys' must be a numpy string array or a list of strings, got "
        f"{type(raw_keys).__name__}.")
  keys = []
  for i, key in enumerate(raw_keys):
    if isinstance(key, bytes):
      try:
        key = key.strip(b"\x00").decode("utf-8")
      except UnicodeDecodeError as e:
        raise EmbeddingsError(f"{path}: key {i} is not valid UTF-8: {e}.") from e
    elif isinstance(key, str):
      key = key.strip("\x00")
    else:
      raise EmbeddingsError(
          f"{path}: key {i} must be a string, got {type(key).__name__}.")
    keys.append(key)
  return tuple(keys)


def _check_unique(image_names: Sequence[str], source: str) -> None:
  if len(set(image_names)) != len(image_names):
    seen = {}
    for i, name in enumerate(image_names):
      if name in seen:
        raise EmbeddingsError(
            f"{source}: image {name!r} appears twice (rows {seen[name]} and {i}); each "
            "image must have one embedding.")
      seen[name] = i


def _check_embeddings(embeddings: Any, embedding_dim: int, source: str) -> np.ndarray:
  """Returns embeddings as float32 [n, D] or raises EmbeddingsError."""
  if not isinstance(embeddings, np.ndarray):
    raise EmbeddingsError(
        f"{source}: 'embeddings' must be a numpy array, got {type(embeddings).__name__}.")
  if embeddings.dtype.kind != "f":
    raise EmbeddingsError(
        f"{source}: 'embeddings' must be floating point, got dtype {embeddings.dtype}.")
  if embeddings.ndim != 2:
    raise EmbeddingsError(
        f"{source}: 'embeddings' must have rank 2 [n, {embedding_dim}], got shape "
        f"{embeddings.shape}.")
  if embeddings.shape[1] != embedding_dim:
    raise EmbeddingsError(
        f"{source}: embeddings have size {embeddings.shape[1]}, expected {embedding_dim}; "
        f"the features are {embeddings.shape[1]}-dimensional: pass "
        f"--embedding_dim={embeddings.shape[1]} (embedding_dim={embeddings.shape[1]} in the "
        "library).")
  if embeddings.shape[0] == 0:
    raise EmbeddingsError(f"{source}: the file holds no embeddings.")
  embeddings = embeddings.astype(np.float32, copy=False)  # [n, D]
  finite_rows = np.isfinite(embeddings).all(axis=1)  # [n]
  if not finite_rows.all(axis=0):
    bad = np.flatnonzero(~finite_rows)
    raise EmbeddingsError(
        f"{source}: {bad.size} embedding row(s) hold NaN or Inf, first row {bad[0]}; "
        "the features are corrupt: re-download or regenerate them.")
  return embeddings


def _check_labels(labels: Any, num_examples: int, source: str) -> np.ndarray:
  labels_array = np.asarray(labels)
  if labels_array.dtype.kind not in "iu" or labels_array.ndim != 1:
    raise EmbeddingsError(
        f"{source}: 'labels' must be a 1-D sequence of integers, got dtype "
        f"{labels_array.dtype} and shape {labels_array.shape}.")
  if labels_array.shape[0] != num_examples:
    raise EmbeddingsError(
        f"{source}: {labels_array.shape[0]} labels for {num_examples} embeddings; "
        "there must be one label per embedding.")
  return labels_array.astype(np.int64)


def read_embeddings_file(path: str, embedding_dim: int = DEFAULT_EMBEDDING_DIM) -> EmbeddingFile:
  """Reads and validates one embeddings pickle, with the restricted unpickler.

  Args:
    path: a `<split>_embeddings.pkl`.
    embedding_dim: D, the expected feature size (640 for the published files).

  Returns:
    The file's contents as stored (embeddings not normalised).

  Raises:
    UnsafePickleError: the pickle asks for anything but numpy arrays.
    EmbeddingsError: the file is missing, unreadable or does not hold a valid
      dict of embeddings, keys and labels (the message says which).
  """
  if not os.path.isfile(path):
    raise EmbeddingsError(f"{path}: no such embeddings file. {_HOW_TO_GET_DATA}")
  data = _unpickle(path)
  if not isinstance(data, dict):
    raise EmbeddingsError(
        f"{path}: the pickle holds a {type(data).__name__}, expected a dict with keys "
        "'embeddings', 'keys' and 'labels'.")
  for name in ("embeddings", "keys", "labels"):
    if name not in data:
      raise EmbeddingsError(
          f"{path}: the dict has no {name!r} entry (it has {sorted(map(str, data))}); "
          "expected 'embeddings', 'keys' and 'labels'.")
  embeddings = _check_embeddings(data["embeddings"], embedding_dim, path)  # [n, D]
  keys = _decode_keys(data["keys"], path)
  if len(keys) != embeddings.shape[0]:
    raise EmbeddingsError(
        f"{path}: {len(keys)} keys for {embeddings.shape[0]} embeddings; there must be "
        "one key per embedding.")
  labels = _check_labels(data["labels"], embeddings.shape[0], path)
  parsed = [parse_key(key, path) for key in keys]
  class_names = tuple(c for c, _ in parsed)
  image_names = tuple(i for _, i in parsed)
  _check_unique(image_names, path)
  return EmbeddingFile(path=path, embeddings=embeddings, keys=keys, class_names=class_names,
                       image_names=image_names, labels=labels)


# ----------------------------------------------------------------------------
# A split ready for episodes.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingSplit:
  """The images of one split, grouped by class, ready for episode sampling.

  Attributes:
    embeddings: float32 [M, D], each row L2-normalised (a zero row stays zero).
      Read-only.
    class_names: the C class names, in file order of first appearance.
    class_image_indices: int32 [C, max_images]; row c lists the rows of
      `embeddings` of class c in file order, padded with -1. Read-only.
    class_sizes: int32 [C], images per class (the unpadded length of each row).
    image_names: the M image file names, one per row of `embeddings`.
    paths: the files (or dataset) the split was read from.
  """

  embeddings: np.ndarray
  class_names: tuple[str, ...]
  class_image_indices: np.ndarray
  class_sizes: np.ndarray
  image_names: tuple[str, ...]
  paths: tuple[str, ...]

  def __post_init__(self):
    m = self.embeddings.shape[0]
    c = len(self.class_names)
    if (self.embeddings.ndim != 2 or self.embeddings.dtype != np.float32
        or self.class_image_indices.shape[0] != c or self.class_sizes.shape != (c,)
        or len(self.image_names) != m or int(self.class_sizes.sum(axis=0)) != m):
      raise ValueError(
          "EmbeddingSplit fields disagree (embeddings [M, D] float32, C class names, "
          "class_image_indices [C, max_images], class_sizes [C] summing to M, M image "
          "names); build it with build_split() or load_split().")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def embedding_dim(self) -> int:
    return int(self.embeddings.shape[1])

  @property
  def num_images(self) -> int:
    return int(self.embeddings.shape[0])


def l2_normalize_rows(embeddings: np.ndarray) -> np.ndarray:
  """Returns float32 [M, D] rows scaled to unit L2 norm.

  As tf.nn.l2_normalize(x, axis=-1): x / sqrt(max(sum(x**2), 1e-12)), so a zero
  row stays zero instead of becoming NaN.
  """
  embeddings = np.asarray(embeddings, dtype=np.float32)  # [M, D]
  squared_norms = np.einsum("md,md->m", embeddings, embeddings)  # [M, D] x2 -> [M]
  scale = 1.0 / np.sqrt(np.maximum(squared_norms, _L2_EPSILON))  # [M]
  return (embeddings * scale[:, None]).astype(np.float32, copy=False)  # [M, D]


def build_split(embeddings: np.ndarray, row_class_names: Sequence[str],
                image_names: Sequence[str], paths: Sequence[str]) -> EmbeddingSplit:
  """Groups rows by class and normalises them; the one way a split is built.

  Args:
    embeddings: float [M, D], not normalised.
    row_class_names: M class names, one per row.
    image_names: M unique image names, one per row.
    paths: where the rows come from (for messages and provenance).

  Returns:
    An EmbeddingSplit with classes in order of first appearance and each
    class's rows in their original order.
  """
  source = ", ".join(paths) or "<arrays>"
  embeddings = np.asarray(embeddings)
  if (embeddings.ndim != 2 or embeddings.shape[0] == 0
      or not embeddings.shape[0] == len(row_class_names) == len(image_names)):
    raise EmbeddingsError(
        f"{source}: expected embeddings [M, D] (M > 0) with M class names and M image names, "
        f"got shape {embeddings.shape}, {len(row_class_names)} class names and "
        f"{len(image_names)} image names.")
  _check_unique(image_names, source)
  names, first_rows, class_of_row = np.unique(
      np.asarray(row_class_names, dtype=object).astype(str), return_index=True,
      return_inverse=True)
  order = np.argsort(first_rows, kind="stable")  # sorted-name ids -> appearance order
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  class_of_row = rank[class_of_row.reshape(-1)]  # [M], ids in order of appearance
  class_names = tuple(str(names[i]) for i in order)

  class_sizes = np.bincount(class_of_row, minlength=len(class_names)).astype(np.int32)  # [C]
  rows_by_class = np.argsort(class_of_row, kind="stable").astype(np.int32)  # [M]
  starts = np.concatenate([[0], np.cumsum(class_sizes, axis=0)[:-1]], axis=0)  # [C]
  position = np.arange(class_of_row.size) - starts[class_of_row[rows_by_class]]  # [M]
  indices = np.full((len(class_names), int(class_sizes.max(axis=0))), _PAD_INDEX, np.int32)
  indices[class_of_row[rows_by_class], position] = rows_by_class  # [C, max_images]

  normalized = l2_normalize_rows(embeddings)  # [M, D]
  for array in (normalized, indices, class_sizes):
    array.setflags(write=False)
  return EmbeddingSplit(embeddings=normalized, class_names=class_names,
                        class_image_indices=indices, class_sizes=class_sizes,
                        image_names=tuple(image_names), paths=tuple(paths))


def split_path(data_path: str, dataset_name: str, embedding_crop: str, split: str) -> str:
  """Returns `<data_path>/<dataset_name>/<embedding_crop>/<split>_embeddings.pkl`.

  Raises:
    ValueError: split or embedding_crop is not one of the published ones, or
      tieredImageNet is asked with the multiview crop (it has none).
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if embedding_crop not in EMBEDDING_CROPS:
    raise ValueError(f"embedding_crop must be one of {EMBEDDING_CROPS}, got {embedding_crop!r}.")
  if dataset_name == "tieredImageNet" and embedding_crop == "multiview":
    raise ValueError(
        "embedding_crop='multiview' exists for miniImageNet only; use "
        "embedding_crop='center' with tieredImageNet.")
  return os.path.join(data_path, dataset_name, embedding_crop, f"{split}_embeddings.pkl")


def _missing_data_message(path: str, data_path: str) -> str:
  found = ""
  if os.path.isdir(data_path):
    found = f" {data_path} holds: {sorted(os.listdir(data_path)) or 'nothing'}."
  else:
    found = f" {data_path} does not exist."
  return f"{path}: no such embeddings file.{found} {_HOW_TO_GET_DATA}"


def load_split(config: DataConfig, split: str,
               embedding_dim: int = DEFAULT_EMBEDDING_DIM) -> EmbeddingSplit:
  """Loads one split for episode sampling.

  Args:
    config: where the data is (data_path, dataset_name, embedding_crop) and
      whether to meta-train on train + val (train_on_val).
    split: "train", "val" or "test". With config.train_on_val, "train" is the
      train and val files concatenated (train rows first), as the original does.
    embedding_dim: D, the expected feature size.

  Returns:
    The split, rows L2-normalised.

  Raises:
    ValueError: bad split or crop (see split_path).
    EmbeddingsError: a file is missing or invalid (see read_embeddings_file), or
      train and val share a class under train_on_val.
  """
  splits = ("train", "val") if (config.train_on_val and split == "train") else (split,)
  files = []
  for name in splits:
    path = split_path(config.data_path, config.dataset_name, config.embedding_crop, name)
    if not os.path.isfile(path):
      raise EmbeddingsError(_missing_data_message(path, config.data_path))
    files.append(read_embeddings_file(path, embedding_dim))
  if len(files) == 2:
    shared = set(files[0].class_names) & set(files[1].class_names)
    if shared:
      raise EmbeddingsError(
          f"{files[0].path} and {files[1].path} share class(es) {sorted(shared)[:5]}; "
          "train_on_val needs disjoint classes: set train_on_val=False.")
  embeddings = np.concatenate([f.embeddings for f in files], axis=0)  # [M, D]
  return build_split(embeddings,
                     row_class_names=sum((f.class_names for f in files), ()),
                     image_names=sum((f.image_names for f in files), ()),
                     paths=tuple(f.path for f in files))


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------


class _Python2StylePickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol-2 pickler that writes what Python 2 + numpy wrote.

  bytes become Python-2 str opcodes (read back as latin1 str, which numpy
  accepts as array data) instead of Python 3's `_codecs.encode` call, and
  numpy's multiarray functions are named numpy.core.multiarray (numpy 1.x and
  2.x both read that name; numpy 1.x cannot read numpy._core). The published
  files use exactly the globals numpy.core.multiarray._reconstruct,
  numpy.ndarray and numpy.dtype.
  """

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def _save_bytes_as_str(self, obj: bytes) -> None:
    n = len(obj)
    if n < 256:
      self.write(pickle.SHORT_BINSTRING + struct.pack("<B", n) + obj)
    elif n < 2**31:
      self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
    else:
      raise EmbeddingsError(
          f"cannot write {n} bytes in one protocol-2 string (limit 2 GiB); write the "
          "split in several files.")
    self.memoize(obj)

  dispatch[bytes] = _save_bytes_as_str

  def save_global(self, obj: Any, name: str | None = None) -> None:
    if getattr(obj, "__module__", None) in ("numpy._core.multiarray", "numpy.core.multiarray"):
      self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + obj.__name__.encode("ascii")
                 + b"\n")
      self.memoize(obj)
      return
    super().save_global(obj, name)


def write_split(path: str, embeddings: np.ndarray, keys: Sequence[str],
                labels: Sequence[int]) -> None:
  """Writes one split in the published format, atomically.

  The file is a protocol-2 pickle of {"embeddings": float32 [n, D],
  "keys": S-dtype [n] (UTF-8, NUL-padded to the longest key), "labels": int64
  [n]}, readable by the original Python-2 code and by read_embeddings_file.

  Args:
    path: the `<split>_embeddings.pkl` to write (folders are created).
    embeddings: float [n, D], stored as float32.
    keys: n keys "<anything>-<class>-<class>_<image>", unique image names.
    labels: n integer labels.

  Raises:
    EmbeddingsError: the inputs would make an invalid file (the message says why).
  """
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2:
    raise EmbeddingsError(f"{path}: embeddings must be [n, D], got shape {embeddings.shape}.")
  embeddings = _check_embeddings(embeddings, embeddings.shape[1], path)  # [n, D]
  keys = tuple(keys)
  if len(keys) != embeddings.shape[0]:
    raise EmbeddingsError(
        f"{path}: {len(keys)} keys for {embeddings.shape[0]} embeddings; pass one key per row.")
  labels = _check_labels(labels, embeddings.shape[0], path)
  image_names = [parse_key(key, path)[1] for key in keys]
  _check_unique(image_names, path)
  encoded = [key.encode("utf-8") for key in keys]
  data = {
      "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),  # [n, D]
      "keys": np.array(encoded, dtype=f"S{max(len(k) for k in encoded)}"),  # [n]
      "labels": labels,  # [n]
  }
  atomic.atomic_write(path, lambda f: _Python2StylePickler(f, protocol=2).dump(data))
