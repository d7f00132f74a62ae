"""A trained model outside its workdir: `cliplite_jax.load` and the embed
command, checked against the model applied directly."""
import io
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

import cliplite_jax
from cliplite_jax import config_io, inference, run_dir
from cliplite_jax.data import augment, decode, sources, text as text_lib
from cliplite_jax.models import cliplite
from conftest import run_module
import photos


@pytest.fixture(scope="module")
def trained(eight_step_run):
  """(loaded Model, and the run's model, variables, tokenizer restored the
  way evaluation restores them)."""
  model = cliplite_jax.load(eight_step_run)
  config = config_io.load_saved(eight_step_run)
  _, module, variables, tokenizer, _ = run_dir.restore(eight_step_run, config)
  return model, module, variables, tokenizer


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _direct_images(trained, images):
  _, module, variables, _ = trained
  features, embeddings = jax.jit(lambda v, x: module.apply(
      v, augment.normalize(x), method=cliplite.CLIPLite.encode_image))(
          variables, images)
  return np.asarray(features), _unit(embeddings)


def test_images_and_texts_match_the_model_applied_directly(trained, tmp_path):
  model, module, variables, tokenizer = trained
  assert model.step == 8 and model.image_size == 32
  rng = np.random.default_rng(0)
  # 5 rows on 4 devices: the last batch is padded, the padding dropped.
  images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  features, want = _direct_images(trained, images)
  got = model.encode_images(images)
  assert got.shape == (5, model.embed_dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(model.encode_images(images, pooled=True),
                             features, rtol=1e-5, atol=1e-5)

  # Files of other sizes: centre square, resized as evaluation does.
  big = rng.integers(0, 256, (3, 48, 80, 3), dtype=np.uint8)
  paths = []
  for i, image in enumerate(big):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(image).save(paths[-1])
  resized = np.stack([augment.center_crop_resize(b, 32) for b in big])
  np.testing.assert_allclose(model.encode_images(paths),
                             _direct_images(trained, resized)[1], atol=2e-5)
  np.testing.assert_allclose(model.encode_images(big[0])[0],
                             _direct_images(trained, resized[:1])[1][0],
                             atol=2e-5)

  texts = ["A red circle.", "two small blue squares", ""]
  ids, mask = text_lib.tokenize(tokenizer, [text_lib.clean_caption(t)
                                            for t in texts])
  want_text = _unit(jax.jit(lambda v, i, m: module.apply(
      v, i, m, method=cliplite.CLIPLite.encode_text)[1])(variables, ids, mask))
  got_text = model.encode_texts(texts)
  np.testing.assert_allclose(got_text, want_text, atol=2e-5)
  np.testing.assert_allclose(model.encode_texts(texts[0])[0], want_text[0],
                             atol=2e-5)
  np.testing.assert_allclose(model.similarity(got, got_text),
                             want @ want_text.T, atol=5e-5)
  assert model.encode_texts([]).shape == (0, model.embed_dim)


def test_clear_errors(trained, eight_step_run, tmp_path):
  model = trained[0]
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  with pytest.raises(inference.UnreadableImageError, match="broken.jpg"):
    model.encode_images([str(broken)])
  with pytest.raises(TypeError, match="uint8"):
    model.encode_images(np.zeros((1, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="no pixels"):
    model.encode_images(np.zeros((0, 5, 3), np.uint8))
  with pytest.raises(config_io.UserError, match="batch_size"):
    cliplite_jax.load(eight_step_run, batch_size=0)
  with pytest.raises(config_io.UserError, match="available steps"):
    cliplite_jax.load(eight_step_run, step=5)
  with pytest.raises(config_io.UserError):
    cliplite_jax.load(str(tmp_path / "nowhere"))


def test_single_images_and_wide_or_huge_files(trained, tmp_path, monkeypatch):
  model = trained[0]
  grey = np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)
  path = str(tmp_path / "grey.png")
  Image.fromarray(grey).save(path)
  as_rgb = np.repeat(grey[..., None], 3, axis=-1)
  want = model.encode_images(as_rgb[None])
  # One path, one [H, W] array: one image each, not a batch.
  np.testing.assert_allclose(model.encode_images(path), want, atol=1e-6)
  np.testing.assert_allclose(model.encode_images(grey), want, atol=1e-6)
  # A 16-bit PNG is scaled from its full range (PIL's RGB clips it white).
  wide = grey.astype(np.uint16) * 257
  Image.fromarray(wide).save(tmp_path / "wide.png")
  np.testing.assert_array_equal(
      inference.read_image(tmp_path / "wide.png"), as_rgb)
  # An image over PIL's decompression-bomb limit is an unreadable file.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  with pytest.raises(inference.UnreadableImageError, match="grey.png"):
    inference.read_image(path)


def _ranking(stdout: str) -> dict[str, list[tuple[float, str]]]:
  """The embed command's printed results: {query: [(score, name)]}."""
  out, query = {}, None
  for line in stdout.splitlines():
    if line.startswith("“"):
      query = line.strip("“”")
      out[query] = []
    elif query is not None and re.match(r"\s+\d+\. ", line):
      _, score, name = line.split(maxsplit=3)[:3]
      out[query].append((float(score), name))
  return out


def test_embed_folder_texts_and_query(trained, eight_step_run, tmp_path):
  model = trained[0]
  root = tmp_path / "photos"
  photos.write_images(str(root))
  os.makedirs(root / "sub")
  Image.fromarray(photos._pixels("coffee")).save(root / "sub" / "cup.png")
  texts = tmp_path / "texts.txt"
  texts.write_text("a cup of coffee\n\n  an astronaut \n")
  out = tmp_path / "out"
  result = run_module(
      "cliplite_jax.embed", f"--workdir={eight_step_run}",
      f"--images={root}", f"--texts={texts}", f"--out={out}",
      "--query=a cup of coffee", "--query=a rocket", "--top_k=3",
      devices=1)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "skipped 1 unreadable file(s)" in result.stderr

  names = (out / "images.txt").read_text().splitlines()
  want_names = sorted([f"img/{n}.jpg" for n in photos.CAPTIONS]
                      + ["sub/cup.png"])
  assert names == want_names
  embeddings = np.load(out / "images.npy")
  want = model.encode_images([str(root / n) for n in names])
  np.testing.assert_allclose(embeddings, want, atol=2e-5)
  assert (out / "texts.txt").read_text().splitlines() == [
      "a cup of coffee", "an astronaut"]
  np.testing.assert_allclose(
      np.load(out / "texts.npy"),
      model.encode_texts(["a cup of coffee", "an astronaut"]), atol=2e-5)

  ranking = _ranking(result.stdout)
  queries = ["a cup of coffee", "a rocket"]
  assert list(ranking) == queries
  scores = model.similarity(want, model.encode_texts(queries)).T
  for query, row in zip(queries, scores):
    top = np.argsort(-row, kind="stable")[:3]
    assert [n for _, n in ranking[query]] == [names[i] for i in top]
    np.testing.assert_allclose([s for s, _ in ranking[query]], row[top],
                               atol=2e-3)
  with Image.open(out / "queries.png") as sheet:
    assert sheet.size[0] > 300 and sheet.size[1] > 200


def test_embed_dataset_query_and_bad_flags(eight_step_run, tmp_path):
  result = run_module(
      "cliplite_jax.embed", f"--workdir={eight_step_run}",
      "--dataset=shapes_captions/tiny:validation", "--query=a red circle",
      f"--sheet={tmp_path / 'sheet.png'}", devices=2)
  assert result.returncode == 0, result.stderr[-2000:]
  ranking = _ranking(result.stdout)["a red circle"]
  assert len(ranking) == 5
  assert all(re.fullmatch(r"validation/\d+", name) for _, name in ranking)
  assert [s for s, _ in ranking] == sorted([s for s, _ in ranking],
                                           reverse=True)
  assert (tmp_path / "sheet.png").exists()

  bad = run_module("cliplite_jax.embed", f"--workdir={eight_step_run}",
                   "--texts=/nonexistent.txt", f"--out={tmp_path}", devices=1)
  assert bad.returncode == 1
  line, = bad.stderr.strip().splitlines()
  assert line == ("cliplite_jax.embed: error: --texts /nonexistent.txt: no "
                  "such file")


def _with_orientation(pixels: np.ndarray, turn: int, fmt: str) -> bytes:
  """`pixels` encoded as `fmt` with EXIF orientation `turn`."""
  exif = Image.Exif()
  exif[0x0112] = turn
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format=fmt, exif=exif.tobytes(),
                               **({"quality": 95} if fmt == "JPEG" else {}))
  return out.getvalue()


def _upright(data: bytes) -> np.ndarray:
  """What PIL's ImageOps.exif_transpose shows: the reference."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _every_decoder(data: bytes, tmp_path, size: int = 24, seeds=range(3)):
  """The pixels of the evaluation and inference decoders, and training's
  crops of them (seeded) against the crops `random_resized_crop` takes of
  the evaluation pixels."""
  path = tmp_path / "image"
  path.write_bytes(data)
  source = sources.SOURCES["shapes_captions"]
  evaluation, _ = sources.decode(source, {"image": data, "captions": []})
  assert evaluation is not None
  np.testing.assert_array_equal(inference.read_image(path), evaluation)
  crops = [(augment.decode_random_resized_crop(
      data, np.random.default_rng(seed), size),
            augment.random_resized_crop(
                evaluation, np.random.default_rng(seed), size))
           for seed in seeds]
  return evaluation, crops


def test_one_decoder_for_training_evaluation_and_inference(tmp_path):
  """EXIF orientation applied and 16-bit grey reduced to its high byte, on
  every path."""
  photo = np.asarray(Image.fromarray(photos._pixels("chelsea")).resize(
      (45, 30)))  # wide: a quarter turn makes it tall
  for turn in range(1, 9):
    for fmt in ("JPEG", "PNG"):  # simplejpeg's path and PIL's
      data = _with_orientation(photo, turn, fmt)
      pixels, crops = _every_decoder(data, tmp_path)
      np.testing.assert_array_equal(pixels, _upright(data))
      assert pixels.shape[:2] == ((45, 30) if turn >= 5 else (30, 45))
      for fast, want in crops:
        np.testing.assert_array_equal(fast, want, err_msg=f"{fmt} {turn}")
  # Rotated and decoded at a reduced DCT scale: within a grey level.
  big = _with_orientation(photos._pixels("coffee"), 6, "JPEG")
  pixels, crops = _every_decoder(big, tmp_path, size=32, seeds=range(6))
  assert pixels.shape == (600, 400, 3)
  for fast, want in crops:
    assert np.abs(fast.astype(float) - want).mean() <= 1.0

  wide = (np.arange(30 * 45, dtype=np.uint16).reshape(30, 45) * 48) + 7
  out = io.BytesIO()
  Image.fromarray(wide).save(out, format="PNG")
  with Image.open(io.BytesIO(out.getvalue())) as image:
    assert image.mode.startswith("I")  # read as 16-bit
  pixels, crops = _every_decoder(out.getvalue(), tmp_path)
  np.testing.assert_array_equal(
      pixels, np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, -1))
  assert pixels.min() == 0 and pixels.max() == 252  # not clipped to white
  for fast, want in crops:
    np.testing.assert_array_equal(fast, want)


def test_plain_jpegs_skip_the_orientation_read():
  """The fast path opens a JPEG's header with PIL only when an APP1 segment
  (EXIF or XMP) could hold an orientation."""
  photo = photos._pixels("coffee")[:40, :60]
  out = io.BytesIO()
  Image.fromarray(photo).save(out, format="JPEG")
  assert not decode.jpeg_may_turn(out.getvalue())
  assert decode.jpeg_may_turn(_with_orientation(photo, 1, "JPEG"))
  assert decode.jpeg_may_turn(b"\xff\xd8 not a jpeg")


def test_using_a_model_imports_neither_the_pipeline_nor_the_evaluator(
    eight_step_run):
  """The library apart from the trainer: load + encode in a fresh process
  leave grain, TFDS, the input pipeline and the probes unimported."""
  import subprocess
  import sys
  import textwrap
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      import cliplite_jax
      model = cliplite_jax.load({eight_step_run!r})
      model.encode_images([np.zeros((40, 30, 3), np.uint8)])
      model.encode_texts(["a red circle"])
      print(sorted(m for m in sys.modules
                   if m.split(".")[0] in ("grain", "tensorflow_datasets")
                   or m.startswith(("cliplite_jax.evaluate",
                                    "cliplite_jax.probes",
                                    "cliplite_jax.validation",
                                    "cliplite_jax.data.pipeline",
                                    "cliplite_jax.data.sources",
                                    "cliplite_jax.training.train"))))
      """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
