"""Tests for leo_tf.images.omniglot: split files, rotations, resizing, npz, zip and TFDS sources."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.data import embeddings
from leo_tf.images import omniglot

from tests.paths import REPO

DATA = os.path.join(REPO, "..", "shared", "data", "omniglot")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "index.csv")),
                                reason="the shared Omniglot folder is not here")


def test_parse_class_line_and_refusals():
  assert omniglot.parse_class_line("Angelic/character01/rot090") == ("Angelic/character01", 90)
  assert omniglot.parse_class_line(" Malay_(Jawi_-_Arabic)/character40/rot270\n") == (
      "Malay_(Jawi_-_Arabic)/character40", 270)
  for bad in ("Angelic/character01/rot045", "Angelic/character01", "Angelic/char01/rot000"):
    with pytest.raises(ValueError, match="Alphabet/characterNN/rotDDD"):
      omniglot.parse_class_line(bad)


def test_class_keys_parse_as_leo_keys():
  # An alphabet with '-' in its name must not leak into the key.
  split = omniglot.OmniglotSplit(images=np.zeros((1, 20, 2, 2), np.float32),
                                 class_names=("Malay_(Jawi_-_Arabic)/character01/rot180",),
                                 class_keys=(omniglot.class_key(556, 180),))
  keys = split.keys("omniglot_test")
  assert keys[0] == "omniglot_test-char0556_rot180-char0556_rot180_01.png"
  assert keys[19].endswith("_20.png") and len(keys) == 20
  assert embeddings.parse_key(keys[3]) == ("char0556_rot180", "char0556_rot180_04.png")
  with pytest.raises(ValueError, match="must not contain '-'"):
    split.keys("bad-prefix")


def test_rotate_is_counter_clockwise_by_multiples_of_90():
  image = np.array([[1, 2], [3, 4]])
  np.testing.assert_array_equal(omniglot.rotate(image, 0), [[1, 2], [3, 4]])
  np.testing.assert_array_equal(omniglot.rotate(image, 90), [[2, 4], [1, 3]])
  np.testing.assert_array_equal(omniglot.rotate(image, 180), [[4, 3], [2, 1]])
  np.testing.assert_array_equal(omniglot.rotate(image, 270), [[3, 1], [4, 2]])
  with pytest.raises(ValueError, match="degrees must be one of"):
    omniglot.rotate(image, 45)


def test_evenly_spaced_subsets_span_the_list():
  # linspace(0, 9, 4) = 0, 3, 6, 9
  assert omniglot.evenly_spaced(list("abcdefghij"), 4) == ["a", "d", "g", "j"]
  assert omniglot.evenly_spaced(list("abc"), None) == ["a", "b", "c"]
  assert omniglot.evenly_spaced(list("abc"), 5) == ["a", "b", "c"]


def test_hold_out_alphabets_keeps_every_rotation_with_its_alphabet():
  # Four alphabets of one or two characters, four rotations each, alphabet by alphabet.
  chars = ["A/character01", "A/character02", "B/character01", "C/character01",
           "C/character02", "D/character01"]
  lines = [f"{c}/rot{d:03d}" for c in chars for d in omniglot.ROTATIONS]
  heldout, kept, names = omniglot.hold_out_alphabets(lines, 2)
  # evenly_spaced over [A, B, C, D] with 2: positions 0 and 3.
  assert names == ["A", "D"]
  assert heldout == lines[:8] + lines[20:]
  assert kept == lines[8:20]
  heldout, kept, names = omniglot.hold_out_alphabets(lines, 3)  # positions 0, 2 (1.5), 3
  assert names == ["A", "C", "D"] and kept == lines[8:12]
  for count in (0, 4):
    with pytest.raises(ValueError, match="heldout_alphabets must be between 1 and 3 .* 4 alphabets"):
      omniglot.hold_out_alphabets(lines, count)


@needs_data
def test_hold_out_alphabets_on_the_vinyals_training_split():
  lines = omniglot.read_split_file(DATA, "train")
  heldout, kept, names = omniglot.hold_out_alphabets(lines, 16)
  assert len(names) == 16 and sorted(heldout + kept) == sorted(lines)
  alphabets = lambda ls: {l.split("/")[0] for l in ls}
  assert alphabets(heldout) == set(names) and not alphabets(kept) & set(names)
  assert len(alphabets(lines)) == 33
  # No character has a rotation on both sides.
  chars = lambda ls: {omniglot.parse_class_line(l)[0] for l in ls}
  assert not chars(heldout) & chars(kept)


def test_resize_averages_ink_over_each_footprint():
  # 4x4 drawing, True = background; ink in the top-left 2x2 and one pixel of
  # the bottom-right 2x2 -> area resize to 2x2 gives ink fractions 1 and 1/4.
  drawing = np.ones((1, 4, 4), bool)
  drawing[0, :2, :2] = False
  drawing[0, 3, 3] = False
  out = omniglot.resize(drawing, 2)
  np.testing.assert_allclose(out, [[[1.0, 0.0], [0.0, 0.25]]], atol=1e-6)
  assert out.dtype == np.float32
  # Same size: just inverted.
  np.testing.assert_array_equal(omniglot.resize(drawing, 4)[0, 3], [0, 0, 0, 1])


@needs_data
def test_vinyals_split_sizes_and_disjoint_characters():
  chars = {}
  for split, n_chars in omniglot.VINYALS_CHARACTERS.items():
    lines = omniglot.read_split_file(DATA, split)
    assert len(lines) == 4 * n_chars
    chars[split] = {omniglot.parse_class_line(l)[0] for l in lines}
    assert len(chars[split]) == n_chars
  assert not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
  assert not chars["train"] & chars["val"]
  assert len(chars["train"] | chars["val"] | chars["test"]) == 1623


@needs_data
def test_load_real_characters_and_rotated_classes():
  lines = omniglot.read_split_file(DATA, "test")[:8]  # two characters x 4 rotations
  names = sorted({omniglot.parse_class_line(l)[0] for l in lines})
  chars = omniglot.load_characters(DATA, 28, names=names)
  assert chars.images.shape == (2, 20, 28, 28)
  assert 0.0 <= chars.images.min() and chars.images.max() <= 1.0
  # Ink covers a few percent of a drawing; the border is background.
  assert 0.02 < chars.images.mean() < 0.25
  assert chars.images[:, :, 0, :].mean() < 0.05  # the top row is mostly background
  index = omniglot.read_index(DATA)
  assert list(chars.char_ids) == [index[n][2] for n in names]
  split = omniglot.make_split(chars, lines)
  assert split.images.shape == (8, 20, 28, 28)
  base = [i for i, l in enumerate(lines) if l.endswith("rot000")][0]
  for offset, degrees in ((1, 90), (2, 180), (3, 270)):
    assert lines[base + offset].endswith(f"rot{degrees:03d}")
    np.testing.assert_array_equal(split.images[base + offset],
                                  np.rot90(split.images[base], k=degrees // 90, axes=(1, 2)))
  images, labels = split.flat()
  assert images.shape == (160, 28, 28, 1) and list(labels[18:22]) == [0, 0, 1, 1]
  with pytest.raises(ValueError, match="not among the 2 loaded characters"):
    omniglot.make_split(chars, ["Latin/character01/rot000"])


def _zip_of(path, characters, drawings):
  """A zip in the official layout: images_x/<Alphabet>/<characterNN>/<id>_<drawer>.png."""
  with zipfile.ZipFile(path, "w") as archive:
    for (name, char_id), images in zip(characters, drawings):
      for d, image in enumerate(images):
        png = tf.io.encode_png(np.where(image, 255, 0).astype(np.uint8)[:, :, None]).numpy()
        archive.writestr(f"images_x/{name}/{char_id:04d}_{d + 1:02d}.png", png)


@needs_data
def test_zips_give_the_same_pixels_as_the_npz(tmp_path):
  name = "Latin/character03"
  set_name, row, char_id = omniglot.read_index(DATA)[name]
  with np.load(os.path.join(DATA, omniglot.NPZ_FILES[set_name])) as npz:
    drawings = npz["images"][row]  # bool [20, 105, 105]
  _zip_of(tmp_path / "images_background.zip", [(name, char_id)], [drawings])
  from_zip = omniglot.load_characters_from_zips([str(tmp_path / "images_background.zip")], 28)
  from_npz = omniglot.load_characters(DATA, 28, names=[name])
  assert from_zip.names == (name,) and list(from_zip.char_ids) == [char_id]
  np.testing.assert_array_equal(from_zip.images, from_npz.images)


def test_zip_with_a_missing_drawer_is_refused(tmp_path):
  drawings = np.ones((19, 8, 8), bool)
  _zip_of(tmp_path / "z.zip", [("Alpha/character01", 7)], [drawings])
  with pytest.raises(ValueError, match=r"expected 1\.\.20"):
    omniglot.load_characters_from_zips([str(tmp_path / "z.zip")], 4)


def _tfds_examples(drawings_by_name, char_ids, alphabet_names, order):
  """Examples shaped as TFDS's omniglot yields them (RGB uint8, 255 = background)."""
  for name, d in order:
    alphabet, character = name.split("/")
    rgb = np.repeat(np.where(drawings_by_name[name][d], 255, 0).astype(np.uint8)[:, :, None], 3, 2)
    yield {"image": rgb, "alphabet": alphabet_names.index(alphabet),
           "alphabet_char_id": int(character[len("character"):]) - 1,
           "label": char_ids[name] - 1}


@needs_data
def test_tfds_examples_give_the_same_pixels_as_the_npz():
  # TFDS's omniglot (tfds.load needs the network; its builder's record layout is
  # reproduced here from the npz): alphabet names sorted, label = id - 1.
  index = omniglot.read_index(DATA)
  names = ["Latin/character03", "Korean/character11"]
  alphabet_names = sorted({n.split("/")[0] for n in index})
  drawings, char_ids = {}, {}
  for name in names:
    set_name, row, char_ids[name] = index[name]
    with np.load(os.path.join(DATA, omniglot.NPZ_FILES[set_name])) as npz:
      drawings[name] = npz["images"][row]  # bool [20, 105, 105]
  # Interleaved, and one character's drawings in reverse: the drawer is not in TFDS.
  order = [(n, d) for d in range(20) for n in names]
  order = [(n, 19 - d if n == names[1] else d) for n, d in order]
  from_tfds = omniglot.load_characters_from_tfds(
      _tfds_examples(drawings, char_ids, alphabet_names, order), alphabet_names, 28, names=names)
  from_npz = omniglot.load_characters(DATA, 28, names=names)
  assert from_tfds.names == tuple(names)
  assert list(from_tfds.char_ids) == list(from_npz.char_ids)
  np.testing.assert_array_equal(from_tfds.images[0], from_npz.images[0])
  np.testing.assert_array_equal(from_tfds.images[1], from_npz.images[1][::-1])
  # A character with a drawing missing is refused, naming the fix.
  short = [(n, d) for n, d in order if (n, d) != (names[0], 5)]
  with pytest.raises(ValueError, match=r"19 drawings.*train\+test"):
    omniglot.load_characters_from_tfds(
        _tfds_examples(drawings, char_ids, alphabet_names, short), alphabet_names, 28, names=names)


def test_missing_folder_names_the_fix(tmp_path):
  with pytest.raises(ValueError, match="splits/vinyals"):
    omniglot.read_split_file(str(tmp_path), "train")
  with pytest.raises(ValueError, match="index.csv"):
    omniglot.load_characters(str(tmp_path))
