"""Hallucination metrics (METHOD.md §8): semantic entropy over answer clusters, Levina-Bickel LID, and the
model-side pieces (seeded sampling, last-token hidden states)."""

import math

import pytest
import torch

import minipss
from minipss.finetune.hallucination import (cluster_answers, hidden_at_last_token, levina_bickel, lid_for_questions, sample_answers, semantic_entropy)
from tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    return minipss.load_model(folder), minipss.load_tokenizer(folder)


def test_identical_samples_have_zero_entropy():
    assert semantic_entropy(["Paris"] * 10)["discrete"] == 0.0


def test_distinct_unrelated_answers_have_log_n_entropy():
    answers = ["Paris", "Berlin", "Madrid", "Rome", "Oslo"]
    assert semantic_entropy(answers)["discrete"] == pytest.approx(math.log(5))


def test_contained_answers_share_a_cluster():
    assert cluster_answers(["Paris", "paris, France", "Lyon", "The city of Paris"]) == [0, 0, 1, 0]


def test_weighted_entropy_with_equal_logprobs_equals_discrete():
    answers = ["Paris", "Paris.", "Berlin", "Rome", "Rome"]
    out = semantic_entropy(answers, logprobs=[-0.7] * len(answers))
    assert out["weighted"] == pytest.approx(out["discrete"])


def test_weighted_entropy_is_none_without_logprobs():
    assert semantic_entropy(["a b", "c"])["weighted"] is None


def subspace(dim, n, ambient=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(ambient, dim, generator=g)).Q.T  # [dim, ambient], orthonormal
    return torch.randn(n, dim, generator=g) @ basis


@pytest.mark.parametrize("dim, tol", [(2, 0.5), (5, 1.0)])
def test_lid_of_a_linear_subspace_is_its_dimension(dim, tol):
    reference = subspace(dim, 2100)
    points, reference = reference[:100], reference[100:]
    lid = levina_bickel(points, reference, k=20)
    assert lid.shape == (100,)
    assert abs(float(lid.mean()) - dim) < tol


def test_lid_ignores_the_point_itself_in_the_reference():
    reference = subspace(2, 500)
    with_self = levina_bickel(reference[:1], reference, k=20)
    without = levina_bickel(reference[:1], reference[1:], k=20)
    torch.testing.assert_close(with_self, without)


def test_lid_needs_k_reference_points():
    with pytest.raises(ValueError):
        levina_bickel(torch.randn(3, 4), torch.randn(5, 4), k=20)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    a = sample_answers(model, tok, "Name a city?", n=4, max_new_tokens=8, seed=3)
    b = sample_answers(model, tok, "Name a city?", n=4, max_new_tokens=8, seed=3)
    c = sample_answers(model, tok, "Name a city?", n=4, max_new_tokens=8, seed=4)
    assert a == b
    assert a[0] != c[0]
    assert all("\n" not in t for t in a[0]) and all(lp <= 0 for lp in a[1])


def test_hidden_at_last_token_matches_single_sequence_forward(tiny):
    model, tok = tiny
    texts = ["Question: short?\nAnswer: x", "Question: a much longer question here?\nAnswer: yes it is", "Hi"]
    batched = hidden_at_last_token(model, tok, texts, layer=1)
    for row, text in zip(batched, texts):
        ids = torch.tensor([tok.encode(text)])
        alone = model.run_blocks(model.embed(ids), 0, 2)[0, -1]  # after blocks 0 and 1
        torch.testing.assert_close(row, alone.float(), atol=1e-5, rtol=0)


def test_lid_for_questions_clips_k_to_the_other_questions(tiny):
    model, tok = tiny
    questions = [{"question": f"What is item {i}?", "answer": f"thing {i}"} for i in range(5)]
    lids = lid_for_questions(model, tok, questions, [f"stuff {i}" for i in range(5)], k=20)
    assert len(lids) == 5 and all(math.isfinite(x) and x > 0 for x in lids)
    assert lids == lid_for_questions(model, tok, questions, [f"stuff {i}" for i in range(5)], k=4)  # 4 others
