"""The nearest-other-class search against a float64 brute force, in fp32 and with bf16 candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facecleaner.scoring.search import OtherClassSearch

BF16_ERROR = 3 * 2**-8  # the worst-case |approximate − exact| cosine the search's docstring derives


def unit_rows(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random unit vectors along the last axis, in float64."""
    vectors = rng.normal(size=shape)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def random_scene(seed: int, num_classes: int, per_class: int, dim: int,
                 samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random unit sub-centers (C, K, D), unit embeddings (B, D) and their classes, drawn in that order."""
    rng = np.random.default_rng(seed)
    subcenters = unit_rows(rng, num_classes, per_class, dim)
    embeddings = unit_rows(rng, samples, dim)
    return subcenters, embeddings, rng.integers(0, num_classes, size=samples)


def other_class_cosines(embeddings: np.ndarray, subcenters: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float64 brute force: (B, C) max cosine over each class's sub-centers, the own class at -inf."""
    per_class = np.einsum("bd,ckd->bck", embeddings, subcenters).max(axis=2)
    per_class[np.arange(len(classes)), classes] = -np.inf
    return per_class


def search(subcenters: np.ndarray, embeddings: np.ndarray, classes: np.ndarray,
           **options: object) -> tuple[np.ndarray, np.ndarray]:
    found, cosine = OtherClassSearch(torch.from_numpy(subcenters).float(), **options)(
        torch.from_numpy(embeddings).float(), torch.from_numpy(classes))
    return found.numpy(), cosine.numpy()


@pytest.mark.parametrize("per_class", [1, 3])
@pytest.mark.parametrize("chunk_classes", [7, 64, 1000])
@pytest.mark.parametrize("candidates", [1, 8])
def test_fp32_search_matches_float64_brute_force(per_class: int, chunk_classes: int, candidates: int) -> None:
    subcenters, embeddings, classes = random_scene(per_class, 300, per_class, 32, 100)
    # Half the samples sit on one of their own sub-centers, so the own class is the nearest and must be skipped.
    embeddings[:50] = subcenters[classes[:50], per_class - 1]
    reference = other_class_cosines(embeddings, subcenters, classes)
    ranked = np.sort(reference, axis=1)
    assert (ranked[:, -1] - ranked[:, -2]).min() > 1e-5  # no near-ties that fp32 could reorder
    found, cosine = search(subcenters, embeddings, classes, precision="fp32", candidates=candidates,
                           chunk_classes=chunk_classes)
    assert found.tolist() == reference.argmax(axis=1).tolist()
    assert cosine == pytest.approx(reference.max(axis=1), abs=1e-6)


def test_own_class_at_chunk_edges_and_in_a_chunk_of_its_own() -> None:
    rng = np.random.default_rng(3)
    subcenters = unit_rows(rng, 41, 3, 16)  # chunks of 10: the last chunk holds class 40 alone
    classes = np.array([0, 9, 10, 15, 19, 20, 39, 40, 40])
    embeddings = subcenters[classes, 1]  # each sample right on its own class's second sub-center
    reference = other_class_cosines(embeddings, subcenters, classes)
    for precision in ("fp32", "bf16"):
        found, cosine = search(subcenters, embeddings, classes, precision=precision, candidates=3, chunk_classes=10)
        assert found.tolist() == reference.argmax(axis=1).tolist()
        assert cosine == pytest.approx(reference.max(axis=1), abs=1e-6)


def test_fewer_other_classes_than_candidates() -> None:
    rng = np.random.default_rng(4)
    subcenters = unit_rows(rng, 2, 3, 8)
    embeddings = unit_rows(rng, 5, 8)
    classes = np.array([0, 1, 0, 1, 1])
    found, cosine = search(subcenters, embeddings, classes, candidates=8, chunk_classes=1)
    assert found.tolist() == (1 - classes).tolist()
    assert cosine == pytest.approx(other_class_cosines(embeddings, subcenters, classes).max(axis=1), abs=1e-6)


def test_bf16_candidates_rescored_give_the_fp32_answer_without_near_ties() -> None:
    subcenters, embeddings, classes = random_scene(5, 2000, 3, 64, 200)
    reference = other_class_cosines(embeddings, subcenters, classes)
    # The docstring's guarantee holds where fewer than M=8 other classes lie within 2ε of the best (the best
    # itself counted, at most 8 in that band): nearly every sample, even with the worst-case ε.
    no_near_tie = (reference >= reference.max(axis=1, keepdims=True) - 2 * BF16_ERROR).sum(axis=1) <= 8
    assert no_near_tie.mean() > 0.95
    exact_class, exact_cos = search(subcenters, embeddings, classes, precision="fp32", chunk_classes=300)
    found, cosine = search(subcenters, embeddings, classes, precision="bf16", chunk_classes=300)
    assert exact_class.tolist() == reference.argmax(axis=1).tolist()
    assert found[no_near_tie].tolist() == exact_class[no_near_tie].tolist()
    # rescored in fp32, not bf16's three digits
    assert cosine[no_near_tie] == pytest.approx(exact_cos[no_near_tie], abs=1e-6)


def test_bf16_near_tie_reports_an_exact_cosine_within_the_bound() -> None:
    # In 2-d against x = (1, 0): class 1 at cos 0.4996 and class 2 at cos 0.5014 both round to 0.5 in bf16;
    # class 0 is the sample's own (cos 1), class 3 is far (cos -0.9).
    cosines = np.array([1.0, 0.4996, 0.5014, -0.9])
    subcenters = np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)[:, None, :]
    embeddings = np.array([[1.0, 0.0]])
    classes = np.array([0])
    found, cosine = search(subcenters, embeddings, classes, precision="bf16", candidates=2)
    assert found.tolist() == [2] and cosine == pytest.approx([0.5014], abs=1e-6)
    # One candidate cannot tell the tie apart: either class, but its own exact cosine, at most 2ε below the best.
    found, cosine = search(subcenters, embeddings, classes, precision="bf16", candidates=1)
    assert found[0] in (1, 2)
    assert cosine[0] == pytest.approx(cosines[found[0]], abs=1e-6)
    assert cosine[0] >= 0.5014 - 2 * BF16_ERROR


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        OtherClassSearch(torch.zeros(2, 1, 4), precision="fp8")


def test_single_class_in_chunks_has_no_other_class() -> None:
    found, cosine = search(np.eye(3)[None], np.eye(3), np.zeros(3, dtype=np.int64), precision="bf16",
                           chunk_classes=1)
    assert found.tolist() == [-1] * 3 and cosine.tolist() == [-math.inf] * 3


def test_rescored_cosines_stay_fp32_under_autocast() -> None:
    # Autocast turns the candidate matmul into bf16; the rescoring must still give fp32 cosines.
    subcenters, embeddings, classes = random_scene(6, 50, 3, 32, 20)
    reference = other_class_cosines(embeddings, subcenters, classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found, cosine = search(subcenters, embeddings, classes, precision="fp32")
    assert found.tolist() == reference.argmax(axis=1).tolist()
    assert cosine == pytest.approx(reference.max(axis=1), abs=1e-6)
