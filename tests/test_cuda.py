"""The CUDA paths (marked `cuda`, skipped without a GPU; `tests/gpu_check.sh` runs them): every parity row
with per-row masks and cached decoding, the many-mask engine in its three modes (one row per family), the
greedy head, the memory check of loading and the trainer's frozen columns, on the GPU in fp32 and bf16,
against the CPU in fp32.

TF32 is switched off for these tests (matmul and cuDNN), so fp32 products differ from the CPU's only by
the order of their sums: logits agree to 1e-5. bf16 results lie within the bound its rounding allows
(`rounding.bf16_bound`), and where the engine's bf16 answer differs from the plain protocol's, the two
letters must be a tie the test proves: their scores within that bound. `minipss pss --device cuda` runs
once end to end and equals the CPU's result."""

import json
import subprocess

import pytest
import torch

import minipss
from minipss.method import many_masks
from minipss.method.benchmark import load_benchmark
from minipss.method.controls import random_ranking
from minipss.method.prompts import letter_decided, mcq_prompt
from minipss.method.pss import cloze_scores, cloze_tokens, letter_vocab, mask_for, mcq_answers
from minipss.model.generate import GreedyHead, generate
from minipss.run.trainer import TrainSettings, train
from builders import strip_timing, training_text
from cli_process import command, cli_env
from hf_models import CONFIGS, make_hf_model, make_method_model, one_row_per_family, padded_batch
from rounding import bf16_bound
from tiny import make_bench, make_tiny_model

pytestmark = pytest.mark.cuda
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 products in full fp32 (TF32 rounds their inputs to 10 bits), as on the CPU; restored after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


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


def close(a, b, dtype, real, layers) -> bool:
    """fp32: within 1e-5 (relative, or absolute near 0); bf16: within `bf16_bound` of the fp32 values `b`."""
    a, b = a.float().cpu()[real], b.float().cpu()[real]
    if dtype == torch.float32:
        return bool(((a - b).abs() <= 1e-5 + 1e-5 * b.abs()).all())
    return (a - b).abs().max().item() <= bf16_bound(b, layers)


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
    assert close(got, want, dtype, real, c.num_layers), name
    for r in range(ids.shape[0]):  # each masked row as that row alone, on the GPU, against the CPU's
        n = int(mask[r].sum())
        alone = gpu(ids[r:r + 1, -n:].cuda(), mlp_mask=masks[r].to("cuda", dtype)).logits[0]
        assert close(alone, want[r, -n:], dtype, slice(None), c.num_layers), (name, r)


def test_cached_decoding_on_the_gpu_equals_the_cpu(row_folder):
    """fp32 greedy tokens of left-padded prompts equal the CPU's (random weights: no near-ties)."""
    name, folder, questions = row_folder
    cpu, gpu = cpu_and_gpu(folder, torch.float32)
    tok = minipss.load_tokenizer(folder)
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
    assert generate(gpu, prompts, 30, pad_id=tok.pad_id) == generate(cpu, prompts, 30, pad_id=tok.pad_id), name


def letter_scores(model, tok, q, mask, mode) -> dict:
    """The plain protocol's score of each letter for one question under `mask`, computed one question at a
    time: logits mode, the best logit among the letter's spellings at the prompt's last token; cloze mode,
    the option's summed log-prob."""
    with torch.no_grad():
        if mode == "cloze":
            ctx, opts = cloze_tokens(tok, q)
            return dict(zip(q.options, cloze_scores(model, [ctx], [opts], mask)[0]))
        vocab, owner = letter_vocab(tok)
        logits = model(torch.tensor([tok.encode(mcq_prompt(q))], device=mask.device), mlp_mask=mask).logits[0, -1]
    return {L: logits[vocab[owner == i].to(mask.device)].float().max().item() for i, L in enumerate("ABCD")}


def proven_tie(model, tok, q, mask, mode, a, b, fast=None, plain=None) -> bool:
    """Whether answers `a` and `b` (engine and plain, bf16) are a tie of the plain computation: in logits and
    cloze mode their letters' scores lie within `bf16_bound`; in generate mode the two decodings (`fast`
    and `plain`, their tokens) part at a step where the two tokens' logits do."""
    layers = model.config.num_layers
    if mode != "generate":
        scores = letter_scores(model, tok, q, mask, mode)
        if a is None or b is None:
            return False
        return abs(scores[a] - scores[b]) <= bf16_bound(torch.tensor(list(scores.values())), layers)
    step = next((i for i, (x, y) in enumerate(zip(fast, plain)) if x != y), None)
    if step is None:
        return False  # one decoding a prefix of the other: the same letter, or a stop that is no tie
    prompt = tok.encode(mcq_prompt(q))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + plain[:step]], device=mask.device), mlp_mask=mask).logits[0, -1].float()
    return abs(logits[fast[step]] - logits[plain[step]]).item() <= bf16_bound(logits, layers)


@pytest.mark.parametrize("mode", ["logits", "cloze", "generate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_engine_on_the_gpu_equals_one_mask_at_a_time(family_folder, mode, dtype):
    """On the GPU the engine gives, mask by mask, the answers of the plain protocol on the GPU; in fp32
    also the CPU's. In bf16 the engine and the plain batches round differently, so an answer may differ,
    but only where the test proves a tie (`proven_tie`)."""
    name, folder, questions = family_folder
    cpu, gpu = cpu_and_gpu(folder, dtype)
    tok = minipss.load_tokenizer(folder)
    L, d_ff = cpu.config.num_layers, cpu.config.intermediate_size
    masks = torch.stack([mask_for(random_ranking((L, d_ff), s), r, 1) for s, r in enumerate((0.0, 0.3, 0.7))])
    fast = many_masks.answers(gpu, tok, questions, masks.to("cuda", dtype), 1, mode)
    plain = [mcq_answers(gpu, tok, questions, mode, m.to("cuda", dtype)) for m in masks]
    if dtype == torch.float32:
        assert fast == plain, (name, mode)
        assert fast == many_masks.answers(cpu, tok, questions, masks, 1, mode), (name, mode)
        return
    fast_tokens = plain_tokens = None
    if mode == "generate":  # the tokens behind each letter, from the same batches as above
        fast_tokens = many_masks.generate_answers(gpu, tok, questions, masks.to("cuda", dtype), 1,
                                                  return_tokens=True)[1]
        prompts = [tok.encode(mcq_prompt(q)) for q in questions]
        decided = lambda ids: letter_decided(tok.decode(ids))
        plain_tokens = [generate(gpu, prompts, 30, tok.eos_ids, tok.pad_id, mlp_mask=m.to("cuda", dtype),
                                 stop_when=decided) for m in masks]
    for m, (row_a, row_b) in enumerate(zip(fast, plain)):
        for i, (q, a, b) in enumerate(zip(questions, row_a, row_b)):
            tokens = (fast_tokens[m][i], plain_tokens[m][i]) if mode == "generate" else (None, None)
            assert a == b or proven_tie(gpu, tok, q, masks[m].to("cuda", dtype), mode, a, b, *tokens), \
                (name, mode, m, a, b)


def test_greedy_head_on_the_gpu(tmp_path):
    """The greedy head never screens on CUDA (bf16 products may be summed in reduced precision there, which
    its bound does not cover): unforced it runs the full product, and insisting is refused."""
    model = minipss.load_model(make_tiny_model(tmp_path / "m"), device="cuda")
    x = torch.randn(300, model.config.hidden_size, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    assert GreedyHead(model).screen is False
    with pytest.raises(ValueError, match="needs fp32 output weights on a CPU"):
        GreedyHead(model, screen=True)
    assert torch.equal(GreedyHead(model)(x), model.head(x).argmax(-1))


def test_pss_on_the_gpu_end_to_end_equals_the_cpu(tmp_path):
    """`minipss pss --device cuda` as a process, fp32 (TF32 is off in minipss's own products: torch's
    default), gives the CPU's result."""
    model = make_tiny_model(tmp_path / "m")
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7, n_mcq=2)
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        done = subprocess.run(command("pss", "--model", model, "--bench", bench, "--out", out, "--mode", "cloze",
                                      "--ratios", "0.1,0.5", "--skip-layers", "1", "--control", "--dtype", "float32",
                                      "--device", device, "--quiet"),
                              env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[device] = json.loads(out.read_text())
    assert results["cuda"]["settings"]["device"] == "cuda"
    assert strip_timing(results["cuda"])["concepts"] == strip_timing(results["cpu"])["concepts"]
    assert results["cuda"]["pss"] == results["cpu"]["pss"]


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
