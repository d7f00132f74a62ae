"""Probes against brute-force NumPy loops on small hand-made data."""
import numpy as np
import pytest

from cliplite_jax.probes import linear, modality_gap, retrieval, zeroshot


def _cosine(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


def _brute_force_recall(img, txt, owner, k):
  """Recall@k with ties broken against the query: on equal scores the
  query's own candidates sort after everyone else's."""
  sim = _cosine(img, txt)
  i2t_hits = 0
  for i in range(len(img)):
    order = sorted(range(len(txt)), key=lambda j: (-sim[i, j], owner[j] == i))
    i2t_hits += any(owner[j] == i for j in order[:k])
  t2i_hits = 0
  for j in range(len(txt)):
    order = sorted(range(len(img)), key=lambda i: (-sim[i, j], i == owner[j]))
    t2i_hits += owner[j] in order[:k]
  return i2t_hits / len(img), t2i_hits / len(txt)


@pytest.mark.parametrize("chunk", [1024, 5], ids=["whole", "chunked"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_several_captions(seed, chunk):
  rng = np.random.default_rng(seed)
  num_images, dim = 12, 6
  # 1 to 5 captions per image, noisy copies of the image embedding.
  counts = rng.integers(1, 6, size=num_images)
  owner = np.repeat(np.arange(num_images), counts).astype(np.int32)
  img = rng.normal(size=(num_images, dim))
  txt = img[owner] + rng.normal(size=(len(owner), dim)) * 1.2
  got = retrieval.recall_at_k(img.astype(np.float32), txt.astype(np.float32),
                              owner, ks=(1, 3, 5), chunk=chunk)
  for k in (1, 3, 5):
    i2t, t2i = _brute_force_recall(img, txt, owner, k)
    assert float(got[f"i2t_r{k}"]) == pytest.approx(i2t)
    assert float(got[f"t2i_r{k}"]) == pytest.approx(t2i)


@pytest.mark.parametrize("chunk", [1024, 3], ids=["whole", "chunked"])
def test_recall_counts_ties_against_the_query(chunk):
  """Word-for-word identical captions embed identically: another image's
  copy of a caption ties with the image's own and must push it down."""
  rng = np.random.default_rng(3)
  num_images, dim = 8, 5
  # Every image has two captions: an unrelated one, and one of three shared
  # template captions (identical rows across images) close to the image.
  templates = rng.normal(size=(3, dim))
  img = (templates[np.arange(num_images) % 3]
         + rng.normal(size=(num_images, dim)) * 0.3).astype(np.float32)
  own = rng.normal(size=img.shape)
  shared = templates[np.arange(num_images) % 3]
  txt = np.concatenate([own, shared]).astype(np.float32)
  owner = np.concatenate([np.arange(num_images)] * 2).astype(np.int32)
  got = retrieval.recall_at_k(img, txt, owner, ks=(1, 2, 5), chunk=chunk)
  optimistic_differs = False
  for k in (1, 2, 5):
    i2t, t2i = _brute_force_recall(img, txt, owner, k)
    assert float(got[f"i2t_r{k}"]) == pytest.approx(i2t)
    assert float(got[f"t2i_r{k}"]) == pytest.approx(t2i)
    # The rule that counts only strictly higher scores gives more hits here.
    sim = _cosine(img, txt)
    strict = np.mean([
        np.sum(sim[i] > sim[i][owner == i].max()) < k
        for i in range(num_images)])
    optimistic_differs |= strict > i2t
  assert optimistic_differs, "the case should separate the two tie rules"
  # Identical images tie for every caption: t2i Recall@1 is then 0.
  twins = retrieval.recall_at_k(np.stack([img[0], img[0]]), txt[:2],
                                np.array([0, 1], np.int32), ks=(1,))
  assert float(twins["t2i_r1"]) == 0.0


def _ulps_apart(x, ulps, rng):
  """x with each row nudged by `ulps` float32 ulps in random components:
  what another code path inside one jitted batch can do to equal rows."""
  x = np.array(x, np.float32)
  for row in x:
    for d in rng.choice(row.size, size=2, replace=False):
      for _ in range(ulps):
        row[d] = np.nextafter(row[d], np.float32(np.inf), dtype=np.float32)
  return x


@pytest.mark.parametrize("chunk", [1024, 7], ids=["whole", "chunked"])
def test_duplicates_a_few_ulps_apart_still_tie(chunk):
  """Random embeddings, every caption also given to other images word for
  word: copies that differ in the last bits must rank as exact copies do
  (the exact-equality rule lets one copy win by an ulp)."""
  rng = np.random.default_rng(5)
  num_images, dim = 60, 8
  img = rng.normal(size=(num_images, dim)).astype(np.float32)
  captions = rng.normal(size=(20, dim)).astype(np.float32)
  # Each image owns 3 captions drawn from 20 shared ones: many exact twins.
  picks = np.stack([rng.choice(20, 3, replace=False) for _ in img])
  owner = np.repeat(np.arange(num_images), 3).astype(np.int32)
  exact = captions[picks.reshape(-1)]
  nudged = _ulps_apart(exact, 3, rng)
  want = retrieval.recall_at_k(img, exact, owner, ks=(1, 5, 10), chunk=chunk)
  got = retrieval.recall_at_k(img, nudged, owner, ks=(1, 5, 10), chunk=chunk)
  for key in want:
    assert float(got[key]) == float(want[key]), key
  # The same for zero-shot: two classes whose prompts embed a few ulps apart
  # tie for every image, so neither is ever a top-1 hit.
  classes = np.stack([captions[0], captions[1], captions[1]])
  classes = np.concatenate([classes[:2], _ulps_apart(classes[2:], 3, rng)])
  labels = np.array([1, 2] * 5, np.int32)
  img_near = captions[1] + rng.normal(size=(10, dim)).astype(np.float32) * 0.01
  assert float(zeroshot.accuracy(img_near, classes, labels)["top1"]) == 0.0


def test_a_real_score_difference_is_not_a_tie():
  """The tolerance is ulps, not a model's margin: 1e-4 apart ranks."""
  classes = np.array([[1.0, 0.0], [0.99995, 0.01]], np.float32)
  img = np.array([[1.0, 0.0]], np.float32)
  assert float(zeroshot.accuracy(img, classes,
                                 np.array([0], np.int32))["top1"]) == 1.0


def test_nan_embeddings_are_never_hits():
  img = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, 1.0]], np.float32)
  txt = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
  got = retrieval.recall_at_k(img, txt, np.arange(3, dtype=np.int32), ks=(1,))
  assert float(got["i2t_r1"]) == pytest.approx(2 / 3)
  classes = np.eye(2, dtype=np.float32)
  acc = zeroshot.accuracy(img, classes, np.array([0, 0, 1], np.int32))
  assert float(acc["top1"]) == pytest.approx(2 / 3)


def test_recall_hand_checked_case():
  img = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  # Image 0 owns captions 0, 1; image 1 owns caption 2. Caption 1 looks like
  # image 1, so image 0 is still a hit through caption 0.
  txt = np.array([[1.0, 0.1], [0.1, 1.0], [0.0, 1.0]], np.float32)
  got = retrieval.recall_at_k(img, txt, np.array([0, 0, 1], np.int32), ks=(1,))
  assert float(got["i2t_r1"]) == 1.0
  assert float(got["t2i_r1"]) == pytest.approx(2 / 3)


def test_zeroshot_accuracy_matches_numpy():
  rng = np.random.default_rng(0)
  classes = rng.normal(size=(5, 8))
  labels = rng.integers(0, 5, size=40)
  img = classes[labels] * rng.uniform(0.5, 3) + rng.normal(size=(40, 8)) * 1.5
  got = zeroshot.accuracy(img, classes, labels.astype(np.int32), ks=(1, 3))
  sim = _cosine(img, classes)
  np.testing.assert_allclose(got["top1"], np.mean(sim.argmax(1) == labels),
                             rtol=1e-6)
  top3 = np.argsort(-sim, axis=1)[:, :3]
  np.testing.assert_allclose(
      got["top3"], np.mean([l in row for l, row in zip(labels, top3)]),
      rtol=1e-6)


def test_zeroshot_counts_tied_classes_against_the_image():
  # Classes 1 and 2 have identical prompt embeddings: an image of either
  # ties between them, and neither counts as a top-1 hit.
  classes = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
  img = np.array([[1.0, 0.1], [0.1, 1.0], [0.1, 1.0]], np.float32)
  got = zeroshot.accuracy(img, classes, np.array([0, 1, 2], np.int32),
                          ks=(1, 2))
  assert float(got["top1"]) == pytest.approx(1 / 3)
  assert float(got["top2"]) == 1.0


def test_prompt_ensemble_averages_unit_template_embeddings():
  rng = np.random.default_rng(1)
  prompts = rng.normal(size=(3, 4, 6)) * rng.uniform(0.1, 9, size=(3, 4, 1))
  unit = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
  np.testing.assert_allclose(zeroshot.class_embeddings(prompts),
                             unit.mean(axis=1), rtol=1e-5, atol=1e-6)
  # One template: the class embedding points along the prompt embedding.
  single = zeroshot.class_embeddings(prompts[:, :1])
  np.testing.assert_allclose(single, unit[:, 0], rtol=1e-5, atol=1e-6)


def test_modality_gap_against_numpy():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(7, 5)) + 2.0, rng.normal(size=(11, 5)) - 1.0
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  expected = np.linalg.norm(unit(img).mean(0) - unit(txt).mean(0))
  np.testing.assert_allclose(modality_gap.modality_gap(img, txt), expected, rtol=1e-5)
  assert float(modality_gap.modality_gap(img, img)) < 1e-6


def test_linear_probe_separates_a_separable_set_and_fails_on_noise():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8)) * 4
  y = rng.integers(0, 3, 600).astype(np.int32)
  x = (centres[y] + rng.normal(size=(600, 8))).astype(np.float32)
  out = linear.train_and_score(x[:400], y[:400], x[400:], y[400:],
                               num_classes=3, epochs=30, batch_size=64)
  # Bayes-optimal here is ~1.0: the classes are 4σ apart.
  assert float(out["top1"]) >= 0.99
  shuffled = rng.permutation(y)
  noise = linear.train_and_score(x[:400], shuffled[:400], x[400:],
                                 shuffled[400:], num_classes=3, epochs=30,
                                 batch_size=64)
  assert float(noise["top1"]) < 0.5  # labels unrelated to x: chance is 1/3
