"""The CUDA paths (marked `cuda`, skipped without a GPU; `tests/gpu_check.sh` runs them): every parity row
with per-row masks and cached decoding, the many-mask engine in its three modes (one row per family), the
greedy head, the memory check of loading and the trainer's frozen columns, on the GPU in fp32 and bf16,
against the CPU in fp32.

On the GPU fp32 matrix products sum in another order than on the CPU (TF32 stays off: torch's default),
so logits agree to 1e-3 rather than 1e-4; bf16 keeps about 3 significant digits."""

import json

import pytest
import torch

import minipss
from minipss.method import many_masks
from minipss.method.benchmark import load_benchmark
from minipss.method.controls import random_ranking
from minipss.method.pss import mask_for
from minipss.method.prompts import mcq_prompt
from minipss.method.pss import mcq_answers
from minipss.model.generate import GreedyHead, generate
from minipss.run.trainer import TrainSettings, train
from builders import training_text
from hf_models import CONFIGS, make_hf_model, make_method_model, one_row_per_family, padded_batch
from tiny import make_bench, make_tiny_model

pytestmark = pytest.mark.cuda
DTYPES = [torch.float32, torch.bfloat16]


def cpu_and_gpu(folder, dtype):
    return minipss.load_model(folder), minipss.load_model(folder, dtype=dtype, device="cuda")


def method_folder(name, tmp_path_factory):
    """(row name, folder of the parity row as the method runs it, 5 questions)."""
    d = tmp_path_factory.mktemp(name)
    make_method_model(name, d / "m")
    bench = load_benchmark(make_bench(d / "b.jsonl", n_concepts=12, n_mcq=1))
    return name, d / "m", [bench[c].mcq[0] for c in (0, 3, 10, 7, 11)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def row_folder(request, tmp_path_factory):
    """Every row of the parity table (see `method_folder`)."""
    return method_folder(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=one_row_per_family())
def family_folder(request, tmp_path_factory):
    """One row per family (see `method_folder`): the engine's tests, the longest, run on these."""
    return method_folder(request.param, tmp_path_factory)


def close(a, b, dtype, real) -> bool:
    """fp32: within 1e-3; bf16: the error small against the logits' spread (as test_parity's bf16 test)."""
    a, b = a.float().cpu()[real], b.float().cpu()[real]
    if dtype == torch.float32:
        return (a - b).abs().max().item() <= 1e-3
    return ((a - b).abs().max() / b.std()).item() < 0.1


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def parity_folder(request, tmp_path_factory):
    """(row name, folder): the parity row as test_parity builds it."""
    folder = tmp_path_factory.mktemp(request.param)
    make_hf_model(request.param, folder)
    return request.param, folder


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_parity_rows_and_per_row_masks_on_the_gpu(parity_folder, dtype):
    name, folder = parity_folder
    cpu, gpu = cpu_and_gpu(folder, dtype)
    ids, mask, pos = padded_batch()
    c = cpu.config
    masks = (torch.rand(ids.shape[0], c.num_layers, c.intermediate_size, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    real = mask.bool()
    want = cpu(ids, attention_mask=mask, position_ids=pos, mlp_mask=masks).logits
    got = gpu(ids.cuda(), attention_mask=mask.cuda(), position_ids=pos.cuda(), mlp_mask=masks.to("cuda", dtype)).logits
    assert got.device.type == "cuda" and got.dtype == dtype
    assert close(got, want, dtype, real), name
    for r in range(ids.shape[0]):  # each masked row as that row alone, on the GPU
        n = int(mask[r].sum())
        alone = gpu(ids[r:r + 1, -n:].cuda(), mlp_mask=masks[r].to("cuda", dtype)).logits[0]
        assert close(alone, got[r, -n:], dtype, slice(None)), (name, r)


def test_cached_decoding_on_the_gpu_equals_the_cpu(row_folder):
    """fp32 greedy tokens of left-padded prompts equal the CPU's (random weights: no near-ties)."""
    name, folder, questions = row_folder
    cpu, gpu = cpu_and_gpu(folder, torch.float32)
    tok = minipss.load_tokenizer(folder)
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
    assert generate(gpu, prompts, 30, pad_id=tok.pad_id) == generate(cpu, prompts, 30, pad_id=tok.pad_id), name


@pytest.mark.parametrize("mode", ["logits", "cloze", "generate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_engine_on_the_gpu_equals_one_mask_at_a_time(family_folder, mode, dtype):
    """On the GPU the engine gives, mask by mask, the answers of the plain protocol on the GPU; in fp32
    also the CPU's. (bf16: engine and plain batches round alike only up to near-ties, so at least 90%.)"""
    name, folder, questions = family_folder
    cpu, gpu = cpu_and_gpu(folder, dtype)
    tok = minipss.load_tokenizer(folder)
    L, d_ff = cpu.config.num_layers, cpu.config.intermediate_size
    masks = torch.stack([mask_for(random_ranking((L, d_ff), s), r, 1) for s, r in enumerate((0.0, 0.3, 0.7))])
    fast = many_masks.answers(gpu, tok, questions, masks.to("cuda", dtype), 1, mode)
    plain = [mcq_answers(gpu, tok, questions, mode, m.to("cuda", dtype)) for m in masks]
    pairs = [(a, b) for row_a, row_b in zip(fast, plain) for a, b in zip(row_a, row_b)]
    if dtype == torch.float32:
        assert fast == plain, (name, mode)
        assert fast == many_masks.answers(cpu, tok, questions, masks, 1, mode), (name, mode)
    else:
        assert sum(a == b for a, b in pairs) >= 0.9 * len(pairs), (name, mode)


def test_greedy_head_on_the_gpu(tmp_path):
    """Unforced, the greedy head does not screen on CUDA (bf16 products may be summed in reduced
    precision there); every setting gives the full argmax."""
    model = minipss.load_model(make_tiny_model(tmp_path / "m"), device="cuda")
    x = torch.randn(300, model.config.hidden_size, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    full = model.head(x).argmax(-1)
    assert GreedyHead(model).screen is False
    assert GreedyHead(model, screen=False).screen is False
    assert torch.equal(GreedyHead(model)(x), full)


def test_loading_refuses_a_model_larger_than_the_gpu(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    total = torch.cuda.mem_get_info()[1]
    cfg.update(hidden_size=8192, intermediate_size=32768, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
               num_hidden_layers=max(1, int(total / (3 * 8192 * 32768 * 4)) + 8))
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: the config describes about .* GiB of memory on cuda"):
        minipss.load_model(folder, device="cuda")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trainer_on_the_gpu_moves_only_the_chosen_columns(tmp_path, dtype):
    folder = make_tiny_model(tmp_path / "m")
    data = tmp_path / "data.txt"
    data.write_text(training_text())
    before = minipss.load_model(folder).state_dict()
    sets = {0: [1, 5], 2: [0, 3, 31], 3: []}
    settings = TrainSettings(steps=4, lr=1e-2, weight_decay=0.1, batch_size=3, seq_len=24, warmup=1,
                             device="cuda", dtype=dtype)
    trained = {k: v.cpu() for k, v in train(folder, data, tmp_path / "out", settings, sets, quiet=True).state_dict().items()}
    for name, w in before.items():
        if name.endswith("mlp.down_proj.weight"):
            cols = torch.zeros(w.shape[1], dtype=torch.bool)
            cols[sets.get(int(name.split(".")[2]), [])] = True
            assert torch.equal(trained[name][:, ~cols], w[:, ~cols]), name
            assert cols.any() == (not torch.equal(trained[name][:, cols], w[:, cols])), name
        else:
            assert torch.equal(trained[name], w), name
