r"""Write the JSON body of a TF Serving REST request that classifies images: a folder of PNGs.

    python export/make_image_request.py --folder=/tmp/drawings --output=/tmp/image_request.json

The folder holds the task:

    <folder>/support/<class>.png            one image per new class (1-shot), or
    <folder>/support/<class>/<image>.png    K images per class (the same K for every class)
    <folder>/query/<image>.png              the images to classify

(PNG or JPEG files). Classes are numbered in the order of their names, queries in the order of
their file names; the line printed says both. The body is for the `image_bytes` signature of
an export with a backbone (`python -m leo_tf.export ... --backbone_dir=...`), in REST's
columnar format, each file as {"b64": "<base64>"}:

    {"signature_name": "image_bytes", "inputs": {"support_image_bytes": [N][K],
     "query_image_bytes": [Q]}}

`--signature_name=image_bytes_batched` writes the same task as one instance of the row format
(`{"instances": [{...}]}`), which TF Serving's batcher can put beside other requests.

    python export/make_image_request.py --write_omniglot_example=/tmp/drawings \
        --data_dir=../shared/data/omniglot --num_classes=20 --num_queries=2

writes such a folder from real drawings: the first drawer's drawing of num_classes characters
of the Vinyals meta-test split (unrotated, evenly spaced over the split file) as the support
set, and num_queries other drawers' drawings of each as queries, named
<class>_<drawer>.png so that the answer can be checked. Needs only numpy.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import struct
import sys
import zlib
from typing import Any

from absl import app
from absl import flags
import numpy as np

SIGNATURES = ("image_bytes", "image_bytes_batched")
_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder) if f.lower().endswith(_EXTENSIONS))


def read_task(folder: str) -> tuple[list[str], list[list[bytes]], list[str], list[bytes]]:
  """(class names, support files [N][K], query names, query files [Q]) of a task folder."""
  support_dir, query_dir = os.path.join(folder, "support"), os.path.join(folder, "query")
  for path in (support_dir, query_dir):
    if not os.path.isdir(path):
      raise ValueError(f"{path}: no such folder; the task folder must hold support/ (one image, "
                       "or one folder of images, per class) and query/.")
  classes, support = [], []
  for name in sorted(os.listdir(support_dir)):
    path = os.path.join(support_dir, name)
    if os.path.isdir(path):
      paths = [os.path.join(path, f) for f in _files(path)]
    elif name.lower().endswith(_EXTENSIONS):
      paths, name = [path], os.path.splitext(name)[0]
    else:
      continue
    classes.append(name)
    support.append([open(p, "rb").read() for p in paths])
  shots = {len(files) for files in support}
  if len(classes) < 2 or shots != {max(shots)} or not min(shots):
    raise ValueError(f"{support_dir}: found {len(classes)} classes with "
                     f"{sorted(shots)} images each; a task needs >= 2 classes and the same K >= 1 "
                     "images of every class.")
  queries = _files(query_dir)
  return classes, support, queries, [open(os.path.join(query_dir, q), "rb").read()
                                     for q in queries]


def rest_request(support: list[list[bytes]], query: list[bytes],
                 signature_name: str = "image_bytes") -> dict[str, Any]:
  """The body: files [N][K] and [Q] as {"b64": ...}; columnar, or one row-format instance."""
  def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}

  inputs = {"support_image_bytes": [[b64(f) for f in files] for files in support],
            "query_image_bytes": [b64(f) for f in query]}
  if signature_name == "image_bytes_batched":
    return {"signature_name": signature_name, "instances": [inputs]}
  return {"signature_name": signature_name, "inputs": inputs}


def png(pixels: np.ndarray) -> bytes:
  """An 8-bit grayscale PNG file of uint8 pixels [H, W]."""
  height, width = pixels.shape
  rows = b"".join(b"\x00" + pixels[r].tobytes() for r in range(height))  # filter 0 per row

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def write_omniglot_example(data_dir: str, folder: str, num_classes: int, num_queries: int
                           ) -> list[str]:
  """Writes a task folder of real Omniglot drawings (module docstring); returns its classes."""
  with open(os.path.join(data_dir, "splits", "vinyals", "test.txt")) as f:
    characters = [line.strip()[:-len("/rot000")] for line in f if line.strip().endswith("rot000")]
  chosen = [characters[i] for i in np.linspace(0, len(characters) - 1, num_classes).astype(int)]
  with open(os.path.join(data_dir, "index.csv"), newline="") as f:
    index = {f"{row['alphabet']}/{row['character']}": (row["set"], int(row["row"]))
             for row in csv.DictReader(f)}
  arrays = {}
  os.makedirs(os.path.join(folder, "support"), exist_ok=True)
  os.makedirs(os.path.join(folder, "query"), exist_ok=True)
  names = []
  for character in chosen:
    set_name, row = index[character]
    if set_name not in arrays:
      with np.load(os.path.join(data_dir, f"images_{set_name}.npz"), allow_pickle=False) as npz:
        arrays[set_name] = npz["images"]  # bool [C, 20, 105, 105], True = background
    drawings = np.where(arrays[set_name][row], 255, 0).astype(np.uint8)  # [20, 105, 105]
    name = character.replace("/", "_")
    names.append(name)
    with open(os.path.join(folder, "support", f"{name}.png"), "wb") as f:
      f.write(png(drawings[0]))
    for drawer in range(1, 1 + num_queries):
      with open(os.path.join(folder, "query", f"{name}_{drawer + 1:02d}.png"), "wb") as f:
        f.write(png(drawings[drawer]))
  return names


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  f = flags.FLAGS
  try:
    if f.write_omniglot_example:
      names = write_omniglot_example(f.data_dir, f.write_omniglot_example, f.num_classes,
                                     f.num_queries)
      print(f"make_image_request: wrote {f.write_omniglot_example}: support/ {len(names)} "
            f"classes x 1 drawing, query/ {len(names) * f.num_queries} drawings")
      return
    if not f.folder:
      raise ValueError("pass --folder=<task folder> (or --write_omniglot_example=<folder>).")
    classes, support, query_names, query = read_task(f.folder)
  except (ValueError, OSError, KeyError) as e:
    sys.exit(f"make_image_request: error: {e}")
  text = json.dumps(rest_request(support, query, f.signature_name), separators=(",", ":")) + "\n"
  where = f.output or "stdout"
  line = (f"make_image_request: wrote {where}: {f.signature_name} request, N = {len(classes)} "
          f"classes x K = {len(support[0])}, Q = {len(query)} queries\n"
          f"  classes 0..{len(classes) - 1}: " + ", ".join(classes) + "\n"
          f"  queries 0..{len(query) - 1}: " + ", ".join(query_names))
  if f.output:
    with open(f.output, "w") as out:
      out.write(text)
    print(line)
  else:
    sys.stdout.write(text)
    print(line, file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_string("folder", "", "The task folder: support/ and query/ (module docstring).")
  flags.DEFINE_string("output", "", "Where to write the JSON body (empty: stdout).")
  flags.DEFINE_enum("signature_name", "image_bytes", SIGNATURES, "The signature to call.")
  flags.DEFINE_string("write_omniglot_example", "",
                      "Instead: write a task folder of real Omniglot drawings here.")
  flags.DEFINE_string("data_dir", "../shared/data/omniglot", "The shared Omniglot folder.")
  flags.DEFINE_integer("num_classes", 20, "N of the Omniglot example.")
  flags.DEFINE_integer("num_queries", 2, "Queries per class of the Omniglot example.")
  app.run(main)
