"""Greedy decoding with the KV cache equals a cache-free recomputation, stops rows at EOS, applies per-row
masks and samples reproducibly (its equality with transformers' generate in every family: test_decoding)."""

import pytest
import torch

import minipss
import minipss.model.generate
from minipss.model.generate import GreedyHead, generate
from hf_models import make_hf_model
from tiny import GPTJ_SHAPE, make_tiny_model


@pytest.fixture(scope="module", params=["gemma3", "llama3_bias", "gptj"])
def minipss_model(request, tmp_path_factory):
    """A parity row loaded by minipss."""
    folder = tmp_path_factory.mktemp(request.param)
    make_hf_model(request.param, folder)
    return minipss.load_model(folder)


PROMPTS = [[5, 9, 14, 3, 77, 21, 8, 90, 4], [11, 2, 6], [45, 46, 47, 48, 49, 50]]


def test_cache_equals_recomputing_every_step_with_a_mask(minipss_model):
    ours = minipss_model
    c = ours.config
    mask = (torch.rand(c.num_layers, c.intermediate_size, generator=torch.Generator().manual_seed(0)) > 0.5)
    mine = generate(ours, PROMPTS[:1], max_new_tokens=10, mlp_mask=mask.float())[0]
    seq = list(PROMPTS[0])
    for _ in range(10):
        logits = ours(torch.tensor([seq]), mlp_mask=mask.float()).logits[0, -1]
        seq.append(int(logits.argmax()))
    assert mine == seq[len(PROMPTS[0]):]


def test_rows_stop_at_eos_and_per_row_masks_apply(minipss_model):
    ours = minipss_model
    c = ours.config
    free = generate(ours, PROMPTS, max_new_tokens=6)
    eos = free[1][2]
    stopped = generate(ours, PROMPTS, max_new_tokens=6, eos_ids=[eos])
    for row, full in zip(stopped, free):
        cut = full.index(eos) if eos in full else len(full)
        assert row == full[:cut]
    assert generate(ours, PROMPTS, max_new_tokens=6, eos_ids=[eos], next_token=GreedyHead(ours)) == stopped
    masks = torch.ones(len(PROMPTS), c.num_layers, c.intermediate_size)
    masks[0, :, : c.intermediate_size // 2] = 0
    mixed = generate(ours, PROMPTS, max_new_tokens=6, mlp_mask=masks)
    alone = generate(ours, PROMPTS[:1], max_new_tokens=6, mlp_mask=masks[0])
    assert mixed[0] == alone[0] and mixed[1:] == free[1:]


def test_sampling_is_seeded(minipss_model):
    ours = minipss_model
    run = lambda s: generate(ours, PROMPTS, 6, temperature=1.0, generator=torch.Generator().manual_seed(s))
    assert run(3) == run(3)
    assert any(run(3) != run(s) for s in range(4, 8))


@pytest.mark.parametrize("model_type, extra, dtype, eligible", [
    ("llama", {}, torch.float32, True),
    ("gemma2", dict(final_logit_softcapping=30.0), torch.float32, False),  # a final softcap
    ("gptj", GPTJ_SHAPE, torch.float32, False),  # a head bias
    ("llama", {}, torch.bfloat16, False),  # no fp32 weights
])
def test_screening_is_on_exactly_where_the_head_allows_it(model_type, extra, dtype, eligible, tmp_path,
                                                         monkeypatch):
    """On the CPU the greedy head screens by default exactly when it may and the bf16 product is measured
    faster; True forces it (refused where the head is not eligible); False turns it off."""
    model = minipss.load_model(make_tiny_model(tmp_path / "m", model_type=model_type, **extra), dtype=dtype)
    for faster in (True, False):
        monkeypatch.setattr(minipss.model.generate, "bf16_faster", lambda device, shape: faster)
        assert GreedyHead(model).screen is (eligible and faster)
    assert GreedyHead(model, screen=False).screen is False
    if eligible:
        assert GreedyHead(model, screen=True).screen is True
    else:
        with pytest.raises(ValueError, match="needs fp32 output weights on a CPU, without bias or final softcap"):
            GreedyHead(model, screen=True)


def test_screened_greedy_head_picks_the_full_argmax(tmp_path):
    """The bf16-screened argmax equals the full fp32 argmax on many states of every scale, with exact
    ties (the lowest id wins) and with logits apart by less than bf16 can tell (where an argmax of the
    bf16 product alone picks the wrong token)."""
    model = minipss.load_model(make_tiny_model(tmp_path / "m", model_type="llama", d_ff=32))
    head = model.get_submodule(model.head_path).weight
    x = torch.randn(400, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    x = x * torch.logspace(-2, 2, 400)[:, None]
    with torch.no_grad():
        top = int(model.head(x).argmax(-1).mode().values)
        tie = 0 if top != 0 else 1
        head[tie] = head[top]
    full = model.head(x).argmax(-1)
    assert (full == min(top, tie)).sum() >= 5 and not (full == max(top, tie)).any()
    screened = GreedyHead(model, screen=True)
    assert screened.screen and torch.equal(screened(x), full)
    with torch.no_grad():
        head[250] = head[top] * (1 + 2 ** -20)  # the same in bf16, a little larger in fp32
    full = model.head(x).argmax(-1)
    rough = torch.nn.functional.linear(model.final_norm(x).bfloat16(), head.bfloat16()).argmax(-1)
    assert (full == 250).sum() >= 5 and (rough != full).sum() >= 5
    assert torch.equal(GreedyHead(model, screen=True)(x), full)
    assert torch.equal(GreedyHead(model, screen=False)(x), full)
