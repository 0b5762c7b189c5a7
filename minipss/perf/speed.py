"""`minipss perf`: the masked evaluation, through minipss and through the usual way, in one process; with
`--end-to-end`, the whole `minipss pss` job against the whole job done the usual way, as processes.

The workload is the PSS hot path: for each concept, every mask (ratios x located/random) scores the
concept's questions and its unrelated ones. Both paths run the same workload on the same weights; the
answers are compared on a sample; the report gives prompts/s for each and their ratio, achieved TFLOP/s
against this device's measured matmul rate, peak memory, and the projected time of a SpecWiki-sized run
(525 concepts x 5 ratios x 60 questions = 157,500 masked prompts). In `generate` mode minipss stops each
row once its letter is decided; the reference decodes its 30 tokens, as the paper's protocol does.

`--end-to-end` runs `python -m minipss pss` and `python -m minipss.perf.hf_reference` (the same job: coefficients
recorded at the value matrices' input of transformers, baseline, every masked cell one mask at a time) as
whole processes, alternating (minipss first in even rounds, the reference first in odd ones, so a change
in the machine's load hits both), and prints each process's wall time, the ratio per round and whether the
two found the same per-question correctness in every cell.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from .. import files
from ..method import many_masks
from ..method.benchmark import benchmark_path, load_benchmark, questions_of, unrelated_sets
from ..method.controls import random_ranking
from ..method.pss import mask_for
from ..model.families import from_hf, read_config
from ..model.fastest import machine, resolve_dtype
from ..model.load import build_model, checkpoint_state, load_model
from ..model.tokenizer import load_tokenizer
from ..run import checks
from ..run.options import dtype_option, numbers
from .hf_reference import answers, load_reference, set_mask


SPECWIKI_PROMPTS = 525 * 5 * 60


def matmul_rate(dtype, device, n: int = 2048, reps: int = 5) -> float:
    """Measured dense matmul TFLOP/s for this dtype and device (the roofline we compare against)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def workload(concepts: int, ratios: list[float], num_layers: int, d_ff: int, skip: int, seed: int = 0):
    """(questions per concept, masks per concept) from the bundled benchmark: each concept's own and
    unrelated questions, and one mask per ratio for located-like and random vectors (speed does not
    depend on which vectors are masked)."""
    cs = load_benchmark(benchmark_path("minispecwiki"))
    others = unrelated_sets(cs, 5, seed)
    jobs = []
    for i in range(concepts):
        orders = [random_ranking((num_layers, d_ff), seed * 7919 + 2 * i + k) for k in range(2)]
        masks = torch.stack([mask_for(o, r, skip) for o in orders for r in ratios])
        jobs.append((questions_of(cs, i, others[i]), masks))
    return jobs


def run_minipss(model, tok, jobs, mode, skip, batch_size):
    out = []
    for qs, masks in jobs:
        out += many_masks.answers(model, tok, qs, masks.to(model.device, model.dtype), skip, mode)
    return out


def run_reference(ref, tok, jobs, mode, batch_size):
    out = []
    dtype = next(ref.parameters()).dtype
    dev = next(ref.parameters()).device
    for qs, masks in jobs:
        for m in masks:
            set_mask(ref, m.to(dev, dtype))
            out.append(answers(ref, tok, qs, mode, batch_size))
    return out


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t


# real configs for `--config` (random weights: speed does not depend on them)
CONFIGS = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5,
                   "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False},
}


def random_checkpoint(config: str, tokenizer_dir, folder: Path, dtype) -> Path:
    """A Hugging Face layout folder with random weights for a named config (or a config.json path), the
    vocabulary sized to the tokenizer's, so that both minipss and the reference load the same weights."""
    raw = dict(CONFIGS[config]) if config in CONFIGS else json.loads(Path(config).read_text())
    tok_cfg = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    raw.update(vocab_size=from_hf(tok_cfg).vocab_size, bos_token_id=tok_cfg.get("bos_token_id"),
               eos_token_id=tok_cfg.get("eos_token_id"), pad_token_id=tok_cfg.get("pad_token_id"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_model(from_hf(raw))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(torch.ones(p.shape) if name.endswith("norm.weight") else torch.randn(p.shape) * 0.02)
    save_file({k: v.to(dtype) for k, v in checkpoint_state(model).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(raw))
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", folder / "tokenizer.json")
    return folder


def end_to_end(a) -> list[dict]:
    """Both whole jobs as processes, alternating, per mode; prints the ratio table."""
    bench = a.bench or str(benchmark_path("minispecwiki"))
    ratios = ",".join(map(str, a.ratios))
    common = ["--model", a.model, "--bench", bench, "--ratios", ratios, "--concepts", str(a.concepts or 6),
              "--skip-layers", str(a.skip_layers), "--dtype", a.dtype, "--device", a.device]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                    os.environ.get("PYTHONPATH")])))
    rows = []
    for mode in a.modes:
        times = {"minipss": [], "reference": []}
        cpu = {"minipss": [], "reference": []}  # user + system seconds: steadier than wall time on a busy machine
        phases = {"minipss": [], "reference": []}
        same = True
        for rnd in range(a.repeats):
            found = {}
            for side in (("minipss", "reference") if rnd % 2 == 0 else ("reference", "minipss")):
                folder = Path(tempfile.mkdtemp(prefix=f"minipss-e2e-{side}-"))
                out = folder / "result.json"
                if side == "minipss":
                    cmd = [sys.executable, "-m", "minipss", "pss", *common, "--mode", mode, "--out", str(out), "--quiet"]
                else:
                    cmd = [sys.executable, "-m", "minipss.perf.hf_reference", *common, "--mode", mode, "--out", str(out)]
                t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[side].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                if done.returncode:
                    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
                times[side].append(wall)
                if side == "minipss":
                    found[side] = {}
                    for file in sorted(Path(str(out) + ".work").glob("cells*.jsonl")):
                        for line in file.read_text().splitlines():
                            row = json.loads(line)
                            found[side][row["key"]] = row["correct"]
                    phases[side].append(json.loads(out.read_text())["timing_s"])
                else:
                    saved = json.loads(out.read_text())
                    found[side] = saved["cells"]
                    phases[side].append(saved["timing"])
                print(f"[{mode} round {rnd + 1}/{a.repeats}] {side}: {wall:.1f} s wall, {cpu[side][-1]:.1f} s CPU",
                      file=sys.stderr, flush=True)
            same = same and found["minipss"] == found["reference"]
        ratios_ = [r / m for m, r in zip(times["minipss"], times["reference"])]
        cpu_ratios = [r / m for m, r in zip(cpu["minipss"], cpu["reference"])]
        rows.append({"mode": mode, "minipss_s": times["minipss"], "reference_s": times["reference"],
                     "speedup_per_round": ratios_, "speedup_median": statistics.median(ratios_),
                     "minipss_cpu_s": cpu["minipss"], "reference_cpu_s": cpu["reference"],
                     "cpu_speedup_per_round": cpu_ratios, "cpu_speedup_median": statistics.median(cpu_ratios),
                     "same_answers": same, "phases": phases})
    print(f"\nwhole processes, {a.dtype}, {a.concepts or 6} concepts, ratios {ratios}, {a.repeats} alternating rounds")
    print("| mode | minipss pss s | reference s | speed-up per round | median | CPU s minipss / reference | "
          "CPU speed-up median | same correctness |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        fmt = lambda xs, f="{:.1f}": ", ".join(f.format(x) for x in xs)
        print(f"| {r['mode']} | {fmt(r['minipss_s'])} | {fmt(r['reference_s'])} | "
              f"{fmt(r['speedup_per_round'], '{:.2f}x')} | {r['speedup_median']:.2f}x | "
              f"{fmt(r['minipss_cpu_s'])} / {fmt(r['reference_cpu_s'])} | {r['cpu_speedup_median']:.2f}x | "
              f"{r['same_answers']} |")
    print("\nphases (s, median over rounds): coefficients (includes loading) / baseline / masked")
    for r in rows:
        for side in ("minipss", "reference"):
            med = {k: statistics.median(p[k] for p in r["phases"][side]) for k in ("coefficients", "baseline", "masked")}
            print(f"  {r['mode']:8} {side:9} {med['coefficients']:.1f} / {med['baseline']:.1f} / {med['masked']:.1f}")
    if a.json:
        files.write_whole(a.json, json.dumps(rows, indent=1))
    return rows


def check(a) -> None:
    """Every option and input, before any work; --json is a file path that is not an input."""
    checks.model_folder(a.model)
    if a.config and a.config not in CONFIGS:
        files.input_file(a.config, f"--config (a config.json, or one of {', '.join(CONFIGS)})")
    if not a.config and a.skip_layers >= read_config(a.model).num_layers:
        raise ValueError(f"--skip-layers {a.skip_layers} leaves nothing to mask in {a.model}")
    bench = files.input_file(a.bench, "benchmark") if a.bench else benchmark_path("minispecwiki")
    available = len(load_benchmark(bench if a.end_to_end else benchmark_path("minispecwiki")))
    if a.concepts is not None:
        checks.integer("--concepts", a.concepts, 6 if a.end_to_end else 1, available)
    checks.ratios("--ratios", a.ratios)
    for option, value, low in (("--skip-layers", a.skip_layers, 0), ("--batch-size", a.batch_size, 1),
                               ("--repeats", a.repeats, 1)):
        checks.integer(option, value, low)
    checks.choices("--modes", a.modes, ("generate", "logits", "cloze"))
    checks.check_device(a.device)
    if a.json:
        files.output_file(a.json, [bench] + checks.model_inputs(a.model), "--json")


def resolve(a) -> None:
    """`--dtype auto` resolved for the model's (or `--config`'s) MLP shape on `--device`; prints the machine
    and the choice, so that every figure says where it comes from."""
    raw = (CONFIGS.get(a.config) or json.loads(Path(a.config).read_text())) if a.config else None
    hidden, intermediate = (raw["hidden_size"], raw["intermediate_size"]) if raw else (
        (c := read_config(a.model)).hidden_size, c.intermediate_size)
    a.dtype, why = resolve_dtype(a.dtype, a.device, (hidden, intermediate))
    print(f"{'machine':34} {machine()}")
    print(f"{'dtype':34} {a.dtype} ({why})")


def main(a) -> dict:
    check(a)
    resolve(a)
    if a.end_to_end:
        return end_to_end(a)

    dtype = getattr(torch, a.dtype)
    if a.config:
        a.model = str(random_checkpoint(a.config, a.model, Path(tempfile.mkdtemp(prefix="minipss-perf-")), dtype))
    model = load_model(a.model, dtype=dtype, device=a.device)
    tok = load_tokenizer(a.model)
    c = model.config
    jobs = workload(a.concepts or 2, a.ratios, c.num_layers, c.intermediate_size, a.skip_layers)
    prompts = sum(len(qs) * len(m) for qs, m in jobs)
    run_minipss(model, tok, jobs[:1], a.mode, a.skip_layers, a.batch_size)  # warm-up
    mine, t_mine = timed(lambda: run_minipss(model, tok, jobs, a.mode, a.skip_layers, a.batch_size), a.device)
    with FlopCounterMode(display=False) as counter:
        run_minipss(model, tok, jobs[:1], a.mode, a.skip_layers, a.batch_size)
    flops = counter.get_total_flops() * len(jobs)
    rate = matmul_rate(dtype, a.device)
    report = {"machine": machine(), "device": a.device, "dtype": a.dtype, "mode": a.mode, "prompts": prompts,
              "minipss_prompts_per_s": prompts / t_mine, "minipss_s": t_mine,
              "minipss_tflops": flops / t_mine / 1e12, "matmul_tflops": rate,
              "projected_specwiki_min": SPECWIKI_PROMPTS / (prompts / t_mine) / 60}
    if not a.no_reference:
        ref = load_reference(a.model, dtype, a.device)
        ref_ans, t_ref = timed(lambda: run_reference(ref, tok, jobs, a.mode, a.batch_size), a.device)
        pairs = [(x, y) for row_a, row_b in zip(mine, ref_ans) for x, y in zip(row_a, row_b)]
        report.update(reference_prompts_per_s=prompts / t_ref, reference_s=t_ref, speedup=t_ref / t_mine,
                      answers_agree=sum(x == y for x, y in pairs) / len(pairs),
                      reference_projected_specwiki_min=SPECWIKI_PROMPTS / (prompts / t_ref) / 60)
    report["peak_memory_gb"] = peak_memory_gb(a.device)
    for k, v in report.items():
        print(f"{k:34} {v:.4g}" if isinstance(v, float) else f"{k:34} {v}")
    return report


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="HF layout folder (with --config: where the tokenizer is)")
    p.add_argument("--config", default=None,
                   help=f"random weights of a real config ({', '.join(CONFIGS)}, or a config.json path)")
    p.add_argument("--mode", default="cloze", choices=["generate", "logits", "cloze"])
    p.add_argument("--concepts", type=int, default=None, help="default 2 (6 with --end-to-end)")
    p.add_argument("--ratios", type=numbers, default=[0.01, 0.1, 0.3, 0.5])
    p.add_argument("--skip-layers", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    dtype_option(p, ("float32", "bfloat16"))
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--end-to-end", action="store_true",
                   help="time the whole `minipss pss` job against the whole job the usual way, as processes")
    p.add_argument("--modes", type=lambda t: t.split(","), default=["logits", "cloze", "generate"],
                   help="--end-to-end: the scoring modes to run (default logits,cloze,generate)")
    p.add_argument("--repeats", type=int, default=2, help="--end-to-end: alternating rounds per mode")
    p.add_argument("--bench", default=None, help="--end-to-end: benchmark JSONL (default: the bundled one)")
    p.add_argument("--json", default=None, help="--end-to-end: also write the table's numbers here")
