"""A real-photo caption set for tests: scikit-image's and scikit-learn's
bundled sample photographs, each with captions written by hand, written out
in each format `cliplite_jax.prepare` reads."""
import csv
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

# name → (loader, captions); every caption describes what the photo shows.
CAPTIONS = {
    "astronaut": (
        "an astronaut in a white space suit in front of an american flag",
        "portrait of a smiling woman astronaut with a flag behind her",
        "a nasa astronaut in her white suit"),
    "coffee": (
        "a cup of coffee with latte art on a saucer",
        "a red coffee cup on a saucer with a spoon",
        "a cappuccino seen from above on a table"),
    "chelsea": (
        "an orange tabby cat looking to the side",
        "close up of a ginger cat with long whiskers",
        "a striped cat indoors"),
    "rocket": (
        "a rocket launching into the sky with a trail of smoke",
        "a space shuttle lifting off from the launch pad",
        "bright flames under a rocket at liftoff"),
    "hubble_deep_field": (
        "a telescope image of many distant galaxies in black space",
        "hundreds of small colourful galaxies on a dark background",
        "the deep sky full of galaxies"),
    "retina": (
        "a medical photograph of the back of a human eye",
        "an orange retina with red blood vessels spreading out",
        "a fundus image of an eye with its optic disc"),
    "motorcycle": (
        "a red motorcycle parked indoors",
        "a sport motorbike seen from the side",
        "a motorcycle with black wheels in a room"),
    "camera": (
        "a black and white photo of a man with a camera on a tripod",
        "a photographer standing in a field with his camera",
        "a grey photograph of a cameraman outdoors"),
    "coins": (
        "old coins laid out in rows on a dark surface",
        "a grey picture of many round coins",
        "a collection of small metal coins"),
    "moon": (
        "the surface of the moon covered in craters",
        "a grey close view of lunar craters",
        "a rough moon landscape in black and white"),
    "china": (
        "a chinese temple with a red roof among green trees",
        "an old pagoda building under a blue sky",
        "a traditional chinese palace with trees in front"),
    "flower": (
        "a pink dahlia flower in close up",
        "a single flower with many pink petals",
        "a bright blossom with a yellow centre"),
}
# The photos of the test split (the rest are train).
TEST = ("coins", "flower", "rocket")


def _pixels(name: str) -> np.ndarray:
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_image
    return load_sample_image(f"{name}.jpg")
  import skimage.data
  if name == "motorcycle":
    return skimage.data.stereo_motorcycle()[0]
  return getattr(skimage.data, name)()


def jpeg(name: str) -> bytes:
  """The photo as a JPEG, shorter side at most 160 px (fast to decode)."""
  image = Image.fromarray(_pixels(name)).convert("RGB")
  image.thumbnail((160 * image.width // min(image.size),
                   160 * image.height // min(image.size)))
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=90)
  return out.getvalue()


def write_images(root: str) -> dict[str, bytes]:
  """root/img/NAME.jpg for every photo, plus img/broken.jpg (not an
  image); returns {name: bytes}."""
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  photos = {name: jpeg(name) for name in CAPTIONS}
  for name, data in photos.items():
    with open(os.path.join(root, "img", f"{name}.jpg"), "wb") as f:
      f.write(data)
  with open(os.path.join(root, "img", "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8 this is not a JPEG")
  return photos


def _split(name):
  return "test" if name in TEST else "train"


def write_jsonl(root: str) -> str:
  """root/captions.jsonl with a "split" per line, one photo given as
  several one-caption lines, one missing and one broken image."""
  write_images(root)
  path = os.path.join(root, "captions.jsonl")
  with open(path, "w") as f:
    for name, captions in CAPTIONS.items():
      if name == "chelsea":  # several rows of one image are one example
        for caption in captions:
          f.write(json.dumps({"image": f"img/{name}.jpg", "caption": caption,
                              "split": _split(name)}) + "\n")
      else:
        f.write(json.dumps({"image": f"img/{name}.jpg",
                            "captions": list(captions),
                            "split": _split(name)}) + "\n")
    f.write(json.dumps({"image": "img/missing.jpg", "caption": "gone",
                        "split": "train"}) + "\n")
    f.write(json.dumps({"image": "img/broken.jpg", "caption": "broken",
                        "split": "train"}) + "\n")
  return path


def write_csv(root: str, delimiter: str = ",") -> str:
  """root/captions.csv: one caption per row (columns filepath, title,
  split, as open_clip names them), rows of one image scattered."""
  write_images(root)
  rows = [(f"img/{name}.jpg", caption, _split(name))
          for i in range(3) for name, captions in CAPTIONS.items()
          for caption in captions[i:i + 1]]
  rows += [("img/missing.jpg", "gone", "train"),
           ("img/broken.jpg", "broken", "train")]
  path = os.path.join(root, "captions.csv")
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(["filepath", "title", "split"])
    writer.writerows(rows)
  return path


def write_webdataset(root: str) -> dict[str, str]:
  """img2dataset-style shards: root/train/0000{0,1}.tar and
  root/test/00000.tar, KEY.jpg with KEY.txt (the first caption) and
  KEY.json (all of them); train's second shard also holds a broken image
  and a caption without its image."""
  photos = {name: jpeg(name) for name in CAPTIONS}
  names = {"train": [n for n in CAPTIONS if n not in TEST], "test": list(TEST)}
  for split in names:
    os.makedirs(os.path.join(root, split), exist_ok=True)

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  shards = {"train": [names["train"][:5], names["train"][5:]],
            "test": [names["test"]]}
  for split, parts in shards.items():
    for number, part in enumerate(parts):
      path = os.path.join(root, split, f"{number:05d}.tar")
      with tarfile.open(path, "w") as tar:
        for name in part:
          add(tar, f"{name}.jpg", photos[name])
          add(tar, f"{name}.txt", CAPTIONS[name][0].encode())
          add(tar, f"{name}.json",
              json.dumps({"captions": list(CAPTIONS[name])}).encode())
        if split == "train" and number == 1:
          add(tar, "broken.jpg", b"\xff\xd8 this is not a JPEG")
          add(tar, "broken.txt", b"broken")
          add(tar, "missing.txt", b"gone")
  return {split: os.path.join(root, split) for split in shards}
