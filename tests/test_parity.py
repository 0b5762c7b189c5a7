"""Logits and coefficients match transformers (eager, fp32) for every family."""

import pytest
import torch

import minipss
from hf_models import CONFIGS, make_hf_model, padded_batch as batch, record_coefficients
from rounding import bf16_bound

transformers = pytest.importorskip("transformers")

FAMILIES = sorted(CONFIGS)


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(request.param, folder)
    ours = minipss.load_model(folder)
    return request.param, hf, ours, folder


def test_logits_and_coefficients_match_transformers(pair):
    name, hf, ours, _ = pair
    ids, mask, pos = batch()
    recs = record_coefficients(hf)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    out = ours(ids, attention_mask=mask, position_ids=pos, return_coefficients=True)
    real = mask.bool()
    assert (out.logits[real] - ref[real]).abs().max().item() <= 1e-4, name
    assert len(out.coefficients) == len(recs)
    for mine, rec in zip(out.coefficients, recs):
        assert (mine[real] - rec.seen[0][real]).abs().max().item() <= 1e-5, name


def test_mask_rows_equal_rows_run_alone(pair):
    name, _, ours, _ = pair
    c = ours.config
    ids, mask, pos = batch()
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(ids.shape[0], c.num_layers, c.intermediate_size, generator=g) > 0.3).float()
    together = ours(ids, attention_mask=mask, position_ids=pos, mlp_mask=masks).logits
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        alone = ours(ids[r:r + 1, -n:], mlp_mask=masks[r]).logits[0]
        assert (together[r, -n:] - alone).abs().max().item() <= 1e-4, (name, r)


def test_zero_mask_removes_value_vectors_from_coefficients(pair):
    _, _, ours, _ = pair
    c = ours.config
    ids, mask, pos = batch()
    m = torch.ones(c.num_layers, c.intermediate_size)
    m[1, :7] = 0
    out = ours(ids, attention_mask=mask, position_ids=pos, mlp_mask=m, return_coefficients=True)
    assert out.coefficients[1][..., :7].abs().max() == 0
    plain = ours(ids, attention_mask=mask, position_ids=pos, return_coefficients=True)
    assert torch.equal(out.coefficients[1][..., 7:], plain.coefficients[1][..., 7:])  # the others as unmasked
    assert (plain.logits - out.logits).abs().max() > 1e-4


def test_bf16_agrees_with_fp32(pair):
    name, _, ours, folder = pair
    ids, mask, pos = batch()
    low = minipss.load_model(folder, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    a = ours(ids, attention_mask=mask, position_ids=pos).logits.float()
    b = low(ids, attention_mask=mask, position_ids=pos).logits.float()
    real = mask.bool()
    assert (a - b)[real].abs().max().item() <= bf16_bound(a[real], ours.config.num_layers), name
