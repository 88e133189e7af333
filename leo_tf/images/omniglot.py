"""Omniglot images for stage 1: the Vinyals split, rotations as classes, 28x28.

Omniglot (Lake et al., Science 2015) has 1,623 handwritten characters from 50
alphabets, each drawn once by 20 people. The few-shot literature (Vinyals et
al. 2016, followed by MAML, Prototypical Networks, Meta-SGD, Relation
Networks) resizes the 105x105 drawings to 28x28 and makes each rotation of a
character by 0, 90, 180 or 270 degrees a class of its own, split by character:

  split  characters  classes (x4 rotations)  images (x20 drawers)
  train  1,028       4,112                   82,240
  val    172         688                     13,760
  test   423         1,692                   33,840

The split files list one class per line as "Alphabet/characterNN/rotDDD".

Sources of the pixels:
  - the npz files of the shared data folder (`images_background.npz`,
    `images_evaluation.npz`: bool [C, 20, 105, 105], True is background, with
    `index.csv` mapping "Alphabet/characterNN" to (set, row)), read by
    `load_characters`;
  - the official zips `images_background.zip` and `images_evaluation.zip`
    (github.com/brendenlake/omniglot, PNG files
    `<set>/<Alphabet>/<characterNN>/<id>_<drawer>.png`), read by
    `load_characters_from_zips`;
  - TensorFlow Datasets' "omniglot" (`tfds.load`, where the machine is
    online or the dataset is already prepared), read by
    `load_characters_from_tfds` (its "label" is the character id - 1, and
    "alphabet" / "alphabet_char_id" give "Alphabet/characterNN").
All give the same `Characters` (ink 1.0 on background 0.0, resized with area
averaging), from which `make_split` builds the classes of a split.

Class names used in embeddings keys are `char<id>_rot<deg>` (the Omniglot
character id, 1..1623, and the rotation): they hold no '-', as the LEO key
format "<anything>-<class>-<class>_<file>" needs, and `split_names` maps them
back to "Alphabet/characterNN/rotDDD".
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
import re
import zipfile
from typing import Iterable, Sequence

import numpy as np

NUM_DRAWERS = 20
ORIGINAL_SIZE = 105
IMAGE_SIZE = 28  # as the literature
ROTATIONS = (0, 90, 180, 270)
SPLITS = ("train", "val", "test")
NPZ_FILES = {"background": "images_background.npz", "evaluation": "images_evaluation.npz"}
# The Vinyals split's sizes, in characters (each has 4 rotation classes).
VINYALS_CHARACTERS = {"train": 1028, "val": 172, "test": 423}

_CLASS_LINE = re.compile(r"^(?P<character>[^/]+/character\d+)/rot(?P<deg>\d{3})$")
_PNG_NAME = re.compile(r"^(?P<id>\d{4})_(?P<drawer>\d{2})\.png$")


@dataclasses.dataclass(frozen=True, eq=False)
class Characters:
  """Drawings of some Omniglot characters, resized, before rotation.

  Attributes:
    images: float32 [C, 20, S, S], ink 1.0 on background 0.0; axis 1 is the
      drawer (file XXXX_YY.png -> YY - 1). Read-only.
    names: C character names "Alphabet/characterNN", one per row.
    char_ids: int [C], the Omniglot character ids (1..1623).
  """

  images: np.ndarray
  names: tuple[str, ...]
  char_ids: np.ndarray

  def __post_init__(self):
    c = len(self.names)
    if (self.images.ndim != 4 or self.images.shape[:2] != (c, NUM_DRAWERS)
        or self.char_ids.shape != (c,)):
      raise ValueError(
          f"Characters fields disagree: images must be [C, {NUM_DRAWERS}, S, S] with C = "
          f"{c} names and char_ids [C]; got images {self.images.shape} and char_ids "
          f"{self.char_ids.shape}. Build it with load_characters().")

  @property
  def image_size(self) -> int:
    return int(self.images.shape[-1])

  def row(self, name: str) -> int:
    """The row of character "Alphabet/characterNN"."""
    rows = self._rows()
    if name not in rows:
      raise ValueError(
          f"character {name!r} is not among the {len(self.names)} loaded characters; load "
          "it (load_characters(..., names=...)) or check the split file.")
    return rows[name]

  def _rows(self) -> dict[str, int]:
    cached = self.__dict__.get("_row_cache")
    if cached is None:
      cached = {n: i for i, n in enumerate(self.names)}
      object.__setattr__(self, "_row_cache", cached)
    return cached


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotSplit:
  """The classes of one split: rotated characters, 20 images each.

  Attributes:
    images: float32 [C, 20, S, S], ink 1.0 on background 0.0. Read-only.
    class_names: C names "Alphabet/characterNN/rotDDD" as in the split files.
    class_keys: C key-safe names "char<id>_rot<deg>" for embeddings keys.
  """

  images: np.ndarray
  class_names: tuple[str, ...]
  class_keys: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_size(self) -> int:
    return int(self.images.shape[-1])

  def flat(self) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [C * 20, S, S, 1] (class-major) and labels int64 [C * 20]."""
    c, n, s, _ = self.images.shape
    images = self.images.reshape(c * n, s, s, 1)  # [C, 20, S, S] -> [C*20, S, S, 1]
    labels = np.repeat(np.arange(c, dtype=np.int64), n)  # [C*20]
    return images, labels

  def keys(self, prefix: str) -> list[str]:
    """C * 20 embeddings keys "<prefix>-<class>-<class>_<drawer>.png" in flat() order."""
    if "-" in prefix:
      raise ValueError(f"prefix {prefix!r} must not contain '-' (the key separator).")
    return [f"{prefix}-{key}-{key}_{d + 1:02d}.png" for key in self.class_keys
            for d in range(NUM_DRAWERS)]


def class_key(char_id: int, degrees: int) -> str:
  """The key-safe class name of a rotated character, e.g. 'char0001_rot090'."""
  return f"char{int(char_id):04d}_rot{int(degrees):03d}"


def parse_class_line(line: str, source: str = "<split file>") -> tuple[str, int]:
  """"Alphabet/characterNN/rotDDD" -> ("Alphabet/characterNN", DDD).

  Raises:
    ValueError: the line is not of that form or DDD is not 0, 90, 180 or 270.
  """
  match = _CLASS_LINE.match(line.strip())
  if match is None or int(match.group("deg")) not in ROTATIONS:
    raise ValueError(
        f"{source}: line {line!r} is not 'Alphabet/characterNN/rotDDD' with DDD one of "
        "000, 090, 180, 270; use the split files of the shared Omniglot folder.")
  return match.group("character"), int(match.group("deg"))


def read_split_file(data_dir: str, split: str, split_name: str = "vinyals") -> list[str]:
  """The class lines of `<data_dir>/splits/<split_name>/<split>.txt`, in file order."""
  path = os.path.join(data_dir, "splits", split_name, f"{split}.txt")
  if not os.path.isfile(path):
    raise ValueError(
        f"{path}: no such split file; data_dir must be the Omniglot folder that holds "
        f"splits/{split_name}/{{train,val,test}}.txt (e.g. ../shared/data/omniglot).")
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  for line in lines:
    parse_class_line(line, path)
  return lines


def read_index(data_dir: str) -> dict[str, tuple[str, int, int]]:
  """`index.csv`: "Alphabet/characterNN" -> (npz set, row, Omniglot character id)."""
  path = os.path.join(data_dir, "index.csv")
  if not os.path.isfile(path):
    raise ValueError(
        f"{path}: no such file; data_dir must be the shared Omniglot folder (with index.csv "
        "and the npz files), or use load_characters_from_zips for the official zips.")
  index = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      index[f"{row['alphabet']}/{row['character']}"] = (
          row["set"], int(row["row"]), int(row["char_id"]))
  return index


def resize(images: np.ndarray, image_size: int) -> np.ndarray:
  """Drawings [M, H, W] (bool, True = background) -> float32 [M, S, S], ink 1.0.

  Area averaging (each output pixel is the ink fraction of its footprint), in
  chunks to bound memory. S == H returns the inverted drawings unresized.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}.")
  ink = 1.0 - np.asarray(images, dtype=np.float32)  # [M, H, W], ink 1.0
  if ink.shape[-1] == image_size and ink.shape[-2] == image_size:
    return ink
  out = []
  for start in range(0, ink.shape[0], 4096):
    chunk = tf.convert_to_tensor(ink[start:start + 4096, :, :, None])  # [m, H, W, 1]
    resized = tf.image.resize(chunk, (image_size, image_size), method="area")  # [m, S, S, 1]
    out.append(resized.numpy()[:, :, :, 0])
  return np.concatenate(out, axis=0).astype(np.float32)  # [M, S, S]


def load_characters(data_dir: str, image_size: int = IMAGE_SIZE,
                    names: Iterable[str] | None = None) -> Characters:
  """Characters from the shared npz files, resized to image_size.

  Args:
    data_dir: the folder with images_background.npz, images_evaluation.npz and
      index.csv.
    image_size: S, the side of the resized images.
    names: "Alphabet/characterNN" to load (default: every character of index.csv,
      in its order). Loading fewer is faster (tests).

  Returns:
    Characters in the order of `names`.
  """
  index = read_index(data_dir)
  names = list(index) if names is None else list(dict.fromkeys(names))
  missing = [n for n in names if n not in index]
  if missing:
    raise ValueError(
        f"{len(missing)} character(s) not in {data_dir}/index.csv, e.g. {missing[0]!r}; "
        "character names are 'Alphabet/characterNN' as in the split files.")
  drawings = []
  for set_name, filename in NPZ_FILES.items():
    rows = [index[n][1] for n in names if index[n][0] == set_name]
    if not rows:
      continue
    path = os.path.join(data_dir, filename)
    if not os.path.isfile(path):
      raise ValueError(f"{path}: no such file; data_dir must be the shared Omniglot folder.")
    with np.load(path, allow_pickle=False) as npz:
      images = npz["images"]  # bool [C_set, 20, 105, 105]
    if images.ndim != 4 or images.shape[1] != NUM_DRAWERS:
      raise ValueError(f"{path}: images must be [C, {NUM_DRAWERS}, H, W], got {images.shape}.")
    drawings.append((set_name, rows, images[rows]))  # [c, 20, 105, 105]
  by_name = {}
  for set_name, rows, images in drawings:
    c, n, h, w = images.shape
    small = resize(images.reshape(c * n, h, w), image_size)  # [c*20, S, S]
    small = small.reshape(c, n, image_size, image_size)  # [c*20, S, S] -> [c, 20, S, S]
    row_to_i = {r: i for i, r in enumerate(rows)}
    for name in names:
      if index[name][0] == set_name:
        by_name[name] = small[row_to_i[index[name][1]]]
  images = np.stack([by_name[n] for n in names], axis=0)  # [C, 20, S, S]
  images.setflags(write=False)
  return Characters(images=images, names=tuple(names),
                    char_ids=np.array([index[n][2] for n in names], dtype=np.int64))


def load_characters_from_zips(zip_paths: Sequence[str], image_size: int = IMAGE_SIZE,
                              names: Iterable[str] | None = None) -> Characters:
  """Characters from the official Omniglot zips (images_background.zip, images_evaluation.zip).

  Reads every `<top>/<Alphabet>/<characterNN>/<id>_<drawer>.png` (105x105
  binary PNGs, white background) without unpacking the zips.

  Args:
    zip_paths: the zip files.
    image_size: S.
    names: "Alphabet/characterNN" to load (default: every character found, sorted).

  Returns:
    Characters in the order of `names`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  wanted = None if names is None else set(names)
  found: dict[str, dict[int, tuple[int, bytes]]] = {}
  for zip_path in zip_paths:
    if not os.path.isfile(zip_path):
      raise ValueError(f"{zip_path}: no such zip; pass the official images_*.zip files.")
    with zipfile.ZipFile(zip_path) as archive:
      for member in archive.namelist():
        parts = member.split("/")
        if len(parts) < 4 or not parts[-1]:
          continue
        match = _PNG_NAME.match(parts[-1])
        name = f"{parts[-3]}/{parts[-2]}"
        if match is None or (wanted is not None and name not in wanted):
          continue
        drawer = int(match.group("drawer")) - 1
        found.setdefault(name, {})[drawer] = (int(match.group("id")), archive.read(member))
  names = sorted(found) if names is None else list(dict.fromkeys(names))
  images, char_ids = [], []
  for name in names:
    drawers = found.get(name, {})
    if sorted(drawers) != list(range(NUM_DRAWERS)):
      raise ValueError(
          f"character {name!r}: found drawers {sorted(d + 1 for d in drawers)} in "
          f"{list(zip_paths)}, expected 1..{NUM_DRAWERS}; are these the official zips?")
    ids = {drawers[d][0] for d in drawers}
    if len(ids) != 1:
      raise ValueError(f"character {name!r}: files carry several character ids {sorted(ids)}.")
    pixels = [tf.io.decode_png(drawers[d][1], channels=1).numpy()[:, :, 0]
              for d in range(NUM_DRAWERS)]  # 20 x [H, W] uint8
    images.append(np.stack(pixels, axis=0) > 127)  # [20, H, W] bool, True = background
    char_ids.append(ids.pop())
  return _resized_characters(images, names, char_ids, image_size)


def _resized_characters(drawings: Sequence[np.ndarray], names: Sequence[str],
                        char_ids: Sequence[int], image_size: int) -> Characters:
  """Characters from C drawings bool [20, H, W] (True = background), resized to S."""
  stacked = np.stack(drawings, axis=0)  # [C, 20, H, W]
  c, n, h, w = stacked.shape
  small = resize(stacked.reshape(c * n, h, w), image_size).reshape(c, n, image_size, image_size)
  small.setflags(write=False)
  return Characters(images=small, names=tuple(names), char_ids=np.array(char_ids, np.int64))


def tfds_examples(data_dir: str | None = None, download: bool = True):
  """TFDS Omniglot's background and evaluation sets: (numpy examples, alphabet names).

  Calls tfds.load("omniglot", split="train+test") (train: images_background,
  test: images_evaluation); needs the network the first time unless the
  dataset is already prepared in `data_dir`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset, info = tfds.load("omniglot", split="train+test", data_dir=data_dir, with_info=True,
                            download=download, shuffle_files=False)
  return tfds.as_numpy(dataset), tuple(info.features["alphabet"].names)


def load_characters_from_tfds(examples: Iterable[dict], alphabet_names: Sequence[str],
                              image_size: int = IMAGE_SIZE,
                              names: Iterable[str] | None = None) -> Characters:
  """Characters from TFDS Omniglot examples (see `tfds_examples`).

  Args:
    examples: dicts with "image" uint8 [105, 105, 3] (or [.., 1]; 255 is
      background), "alphabet" (index into `alphabet_names`), "alphabet_char_id"
      (NN - 1 of characterNN) and "label" (Omniglot character id - 1).
    alphabet_names: the names of TFDS's "alphabet" class label.
    image_size: S.
    names: "Alphabet/characterNN" to load (default: every character found, sorted).

  Returns:
    Characters in the order of `names`. TFDS does not keep the drawer (the file
    name), so axis 1 holds a character's 20 drawings in the order TFDS yields
    them: the same images as the other sources, possibly in another order.
  """
  wanted = None if names is None else set(names)
  found: dict[str, list[np.ndarray]] = {}
  char_id_of: dict[str, int] = {}
  for example in examples:
    alphabet = int(example["alphabet"])
    if not 0 <= alphabet < len(alphabet_names):
      raise ValueError(f"TFDS example with alphabet index {alphabet}, but only "
                       f"{len(alphabet_names)} alphabet names; pass info.features['alphabet']"
                       ".names of the same dataset.")
    name = f"{alphabet_names[alphabet]}/character{int(example['alphabet_char_id']) + 1:02d}"
    if wanted is not None and name not in wanted:
      continue
    char_id = int(example["label"]) + 1
    if char_id_of.setdefault(name, char_id) != char_id:
      raise ValueError(f"character {name!r}: TFDS labels {char_id_of[name] - 1} and "
                       f"{char_id - 1} disagree; is this TFDS's omniglot dataset?")
    image = np.asarray(example["image"])
    found.setdefault(name, []).append(image[:, :, 0] > 127)  # [H, W] bool, True = background
  names = sorted(found) if names is None else list(dict.fromkeys(names))
  images = []
  for name in names:
    drawings = found.get(name, [])
    if len(drawings) != NUM_DRAWERS:
      raise ValueError(f"character {name!r}: {len(drawings)} drawings in the TFDS examples, "
                       f"expected {NUM_DRAWERS}; load split='train+test' of 'omniglot'.")
    images.append(np.stack(drawings, axis=0))  # [20, H, W]
  return _resized_characters(images, names, [char_id_of[n] for n in names], image_size)


def rotate(images: np.ndarray, degrees: int) -> np.ndarray:
  """Rotates [..., S, S] counter-clockwise by degrees (a multiple of 90), as np.rot90."""
  if degrees not in ROTATIONS:
    raise ValueError(f"degrees must be one of {ROTATIONS}, got {degrees!r}.")
  return np.rot90(images, k=degrees // 90, axes=(-2, -1))


def make_split(characters: Characters, class_lines: Sequence[str]) -> OmniglotSplit:
  """The classes `class_lines` ("Alphabet/characterNN/rotDDD") from loaded characters.

  Returns:
    OmniglotSplit with images [C, 20, S, S] in the order of class_lines.
  """
  images, keys = [], []
  for line in class_lines:
    name, degrees = parse_class_line(line)
    row = characters.row(name)
    images.append(rotate(characters.images[row], degrees))  # [20, S, S]
    keys.append(class_key(characters.char_ids[row], degrees))
  if len(set(keys)) != len(keys):
    raise ValueError("class_lines list a class twice; each rotated character is one class.")
  stacked = np.ascontiguousarray(np.stack(images, axis=0))  # [C, 20, S, S]
  stacked.setflags(write=False)
  return OmniglotSplit(images=stacked, class_names=tuple(class_lines), class_keys=tuple(keys))


def evenly_spaced(items: Sequence[str], count: int | None) -> list[str]:
  """count items at evenly spaced positions (first and last included), in order; all if None."""
  if count is None or count >= len(items):
    return list(items)
  positions = np.linspace(0, len(items) - 1, count).round().astype(int)  # [count], increasing
  return [items[i] for i in positions]


def hold_out_alphabets(class_lines: Sequence[str], count: int
                       ) -> tuple[list[str], list[str], list[str]]:
  """Splits a split file's classes by alphabet, for features the backbone never saw.

  Args:
    class_lines: "Alphabet/characterNN/rotDDD" lines, alphabet by alphabet.
    count: how many alphabets to hold out, evenly spaced in file order; 1 to
      the number of alphabets - 1.

  Returns:
    (the held-out alphabets' lines, the other lines, the held-out alphabets'
    names), lines in file order. Every rotation of a character goes with its
    alphabet, so no held-out class is a rotation of a kept one.
  """
  alphabets = list(dict.fromkeys(line.split("/")[0] for line in class_lines))  # file order
  if not 1 <= count < len(alphabets):
    raise ValueError(
        f"heldout_alphabets must be between 1 and {len(alphabets) - 1} (the training split has "
        f"{len(alphabets)} alphabets, and stage 1 needs at least one), got {count}.")
  held = set(evenly_spaced(alphabets, count))
  heldout = [l for l in class_lines if l.split("/")[0] in held]
  kept = [l for l in class_lines if l.split("/")[0] not in held]
  return heldout, kept, [a for a in alphabets if a in held]


def load_vinyals_splits(data_dir: str, image_size: int = IMAGE_SIZE,
                        max_classes: int | None = None, characters: Characters | None = None,
                        max_eval_classes: int | None = None,
                        heldout_alphabets: int = 0) -> dict[str, OmniglotSplit]:
  """The train, val and test splits of Vinyals et al. from the shared folder.

  Args:
    data_dir: the shared Omniglot folder (npz files, index.csv, splits/vinyals).
    image_size: S.
    max_classes: if set, keep only so many classes of each split, evenly spaced
      in the split file (so that they span its alphabets; the split files list
      alphabet by alphabet), for quick runs and tests; the full split otherwise.
    max_eval_classes: if set, keep only so many classes of val and test, likewise.
    characters: already loaded characters to take the images from (default:
      loaded from the npz files in data_dir).
    heldout_alphabets: if > 0, "train" holds only the training classes of so
      many alphabets (hold_out_alphabets), and "backbone_train" the others':
      stage 1 trains on those, so the features LEO meta-trains on come from
      alphabets the backbone never saw, as the test classes' do.

  Returns:
    {"train": ..., "val": ..., "test": ...} (and "backbone_train" with
    heldout_alphabets); no character is in two of train, val and test.
  """
  for name, value in (("max_classes", max_classes), ("max_eval_classes", max_eval_classes)):
    if value is not None and value < 1:
      raise ValueError(f"{name} must be >= 1 or None, got {value}.")
  lines = {s: evenly_spaced(read_split_file(data_dir, s), max_classes) for s in SPLITS}
  for s in ("val", "test"):
    lines[s] = evenly_spaced(lines[s], max_eval_classes)
  if heldout_alphabets:
    lines["train"], lines["backbone_train"], _ = hold_out_alphabets(lines["train"],
                                                                     heldout_alphabets)
  chars_of = {s: {parse_class_line(l)[0] for l in lines[s]} for s in lines}
  for a, b in itertools.combinations(lines, 2):
    shared = chars_of[a] & chars_of[b]
    if shared:
      raise ValueError(
          f"the {a} and {b} split files share character(s) {sorted(shared)[:3]}; a few-shot "
          "split must keep meta-test characters out of meta-training.")
  if characters is None:
    needed = [c for s in lines for c in sorted(chars_of[s])]
    characters = load_characters(data_dir, image_size, names=needed)
  return {s: make_split(characters, lines[s]) for s in lines}
