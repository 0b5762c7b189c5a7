"""`minipss train`: fine-tune only chosen MLP value vectors (§5, Table 2): FT-FV, FT-PV, FT-CV, FT-RV.

The choice is a 0/1 column mask per layer over `down_proj` / `fc_out` (`method/training.py`), applied
explicitly in the step: the gradient is multiplied by it after backward, and the optimizer updates only
those columns. Everything else in the model is frozen. Checkpoints are Hugging Face layout folders; a run
resumes from its last one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import files, interrupts, lock
from ..method.benchmark import load_benchmark
from ..method.training import (VARIANTS, ColumnAdamW, batch_order, column_masks, learning_rate, located_scores,
                               lm_loss, read_documents, value_matrices, value_vector_sets, windows)
from ..model.families import read_config
from ..model.fastest import resolve_dtype
from ..model.load import checkpoint_state, load_model
from ..model.tokenizer import load_tokenizer
from . import checks
from .checks import check_prompt_lengths, context_length
from .fingerprint import file_digest, model_digest, short
from .options import at_least, dtype_option


@dataclass
class TrainSettings:
    variant: str = "pv"
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 4
    accum: int = 1  # gradient accumulation: micro-batches per optimizer step
    seq_len: int = 128
    clip: float = 1.0  # max gradient norm over the trainable columns (0: off)
    warmup: int = 10  # linear warm-up steps, then cosine decay to 10% of lr
    r_pv: float = 0.5 / 8  # PV: top ceil(d_ff * r_pv) per layer (METHOD.md §7: k/8 of the 50% ratio)
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    device: str = "cpu"
    dtype: str = "float32"  # bfloat16: the forward under bf16 autocast, fp32 master weights (any device);
    # auto: bfloat16 where a bf16 product is measured faster (METHOD.md §10), resolved before any work

    def check(self) -> None:
        """Refuse out-of-range values, naming the option, before any work."""
        if self.variant not in VARIANTS:
            raise ValueError(f"--variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        for name, low in (("steps", 1), ("batch_size", 1), ("accum", 1), ("seq_len", 2), ("warmup", 0),
                          ("save_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= {low}")
        for name, ok, what in (("lr", lambda x: 0 < x < math.inf, "a positive number"),
                               ("weight_decay", lambda x: 0 <= x < math.inf, "0 or more"),
                               ("eps", lambda x: 0 < x < math.inf, "a positive number"),
                               ("clip", lambda x: 0 <= x < math.inf, "0 (off) or more"),
                               ("r_pv", lambda x: 0 < x <= 1, "in (0, 1]")):
            if not ok(float(getattr(self, name))):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be {what}")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed {self.seed}: must be in [0, 2**32)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas {self.betas!r}: two numbers in [0, 1)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        checks.check_device(self.device)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, source: Path, out: Path, sets: dict, variant: str, opt: ColumnAdamW | None = None,
                    step: int | None = None, run: str | None = None) -> None:
    """An HF layout folder (config.json, model.safetensors, tokenizer.json) + value_vectors.json, and
    the optimizer state for resuming. Written to a temporary folder, then moved into place: the resume
    state goes first and comes back last, so it never describes other weights than those beside it."""
    try:
        with interrupts.writing(out):
            _save_checkpoint(model, source, out, sets, variant, opt, step, run)
    finally:  # a failed or stopped save leaves no temporary folder
        shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)
    interrupts.pause_point()


def _save_checkpoint(model, source: Path, out: Path, sets: dict, variant: str, opt, step, run) -> None:
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(checkpoint_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, tmp / name)
    (tmp / "value_vectors.json").write_text(json.dumps(
        {"variant": variant, "layers": {str(l): cols for l, cols in sets.items()}}))
    if opt is not None:
        save_file(opt.state(), str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "t": opt.t, "run": run}))
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer_state.json").unlink(missing_ok=True)
    last = [f for f in ("optimizer.safetensors", "trainer_state.json") if (tmp / f).exists()]
    for f in sorted(tmp.iterdir(), key=lambda f: f.name in last):
        if f.name not in last:
            os.replace(f, out / f.name)
    for name in last:
        os.replace(tmp / name, out / name)
    tmp.rmdir()


RUN_FILE = "run.json"  # in --out: what the run is computed from (written before any checkpoint)


def run_fingerprint(model_dir, data, s: TrainSettings, sets: dict | None, origin: dict | None = None) -> dict:
    """What a training run depends on: the source model's and the data's contents, every setting, the
    trained columns (and, from the command line, how they were chosen)."""
    keep = {k: v for k, v in asdict(s).items() if k not in ("save_every", "device")}
    keep.update({f"model {k}": v for k, v in model_digest(model_dir).items()})
    keep["data"] = file_digest(data)
    if sets is not None:
        cols = json.dumps({str(l): sorted(c) for l, c in sorted(sets.items())}, sort_keys=True)
        keep["value_vectors"] = hashlib.sha256(cols.encode()).hexdigest()
    keep.update(origin or {})
    return keep


def check_seq_len(seq_len: int, config, source: Path) -> None:
    """--seq-len within the model's context."""
    limit = context_length(config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len}: the model reads at most {limit} positions "
                         f"(max_position_embeddings in {source / 'config.json'})")


def check_out(source: Path, data: Path, out: Path, fingerprint: dict, ignore=()) -> str:
    """Before any work: what `out` holds. "new" (nothing of ours: start), "resume" (an unfinished run of
    the same fingerprint), "done" (a finished one). Anything else is refused (`checks.own_folder`), and no
    input is ever written over."""
    files.output_folder(out, [source, data], "--out")
    if checks.own_folder(out, fingerprint, "--out", RUN_FILE, ignore) == "new":
        return "new"
    if (out / "train_settings.json").is_file():
        return "done"
    if (out / "trainer_state.json").is_file() and (out / "optimizer.safetensors").is_file():
        return "resume"
    return "new"  # stopped before its first checkpoint was complete: start again


def resolved(s: TrainSettings, config, quiet: bool = False) -> TrainSettings:
    """`s` with `--dtype auto` replaced by the dtype it resolves to for this model on this device (the
    run's fingerprint records that one), the choice printed unless `quiet`."""
    if s.dtype != "auto":
        return s
    dtype, why = resolve_dtype(s.dtype, s.device, (config.hidden_size, config.intermediate_size))
    if not quiet:
        print(f"dtype {dtype} ({why})", file=sys.stderr, flush=True)
    return replace(s, dtype=dtype)


def train(model_dir, data, out, settings: TrainSettings, sets: dict[int, list[int]], quiet=False,
          origin: dict | None = None):
    """Train and write `out`; resumes when `out` holds a checkpoint of an unfinished run with the same
    source, data, settings and columns (refused when any differs); returns at once when it holds the
    finished run."""
    s, source, out, data = settings, Path(model_dir), Path(out), Path(data)
    s.check()
    if not data.is_file():
        raise FileNotFoundError(f"{data}: training data not found")
    config = read_config(source)
    s = resolved(s, config, quiet)
    bad = [l for l, cols in sets.items() if not (isinstance(l, int) and 0 <= l < config.num_layers) or
           any(not isinstance(j, int) or not 0 <= j < config.intermediate_size for j in cols)]
    if bad:
        raise ValueError(f"value vector sets: layer {bad[0]!r} names a layer or column the model does not have")
    check_seq_len(s.seq_len, config, source)
    fingerprint = run_fingerprint(source, data, s, sets, origin)
    with lock.hold(out):  # one run per --out
        return _train(source, data, out, s, sets, quiet, fingerprint)


def saved_steps(out: Path, steps: int):
    """What a stop now leaves in `out` (`interrupts.saved`)."""
    def describe() -> str:
        try:
            step = json.loads((out / "trainer_state.json").read_text())["step"]
            return f"the checkpoint of step {step} of {steps}"
        except (OSError, ValueError, KeyError, TypeError):
            return "no checkpoint yet (one every --save-every steps; without it, only the finished run is saved)"
    return describe


def _train(source: Path, data: Path, out: Path, s: TrainSettings, sets, quiet: bool, fingerprint: dict):
    state = check_out(source, data, out, fingerprint)
    if state == "done":
        if not quiet:
            print(f"{out} already holds this finished run", file=sys.stderr)
        return load_model(out, dtype=torch.float32, device=s.device)
    run = short(fingerprint)
    if state == "resume":
        try:
            st = json.loads((out / "trainer_state.json").read_text())
            with safe_open(str(out / "optimizer.safetensors"), framework="pt") as f:
                f.keys()
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError):
            st = {}
        if st.get("run") != run or not isinstance(st.get("step"), int) or not isinstance(st.get("t"), int):
            raise ValueError(f"{out}: its resume state (trainer_state.json, optimizer.safetensors) is damaged "
                             f"or from another run; to start over, remove the folder {out}")
    resume = state == "resume"
    interrupts.saved(out, saved_steps(out, s.steps))
    with interrupts.writing(out):
        checks.claim(out, fingerprint, RUN_FILE)
    model = load_model(out if resume else source, dtype=torch.float32, device=s.device)
    tok = load_tokenizer(source)
    c = model.config
    params = value_matrices(model)
    for p in params:
        p.requires_grad_(True)
    masks = [m[None, :] for m in column_masks(sets, c.num_layers, c.intermediate_size, s.device)]
    opt = ColumnAdamW(params, masks, s.lr, s.betas, s.eps, s.weight_decay)
    start = 0
    if resume:
        opt.load(load_file(str(out / "optimizer.safetensors"), device=str(s.device)), st["t"])
        start = st["step"]
    docs = windows(tok, read_documents(data), s.seq_len)
    if not docs:
        raise ValueError(f"{data}: no document has two or more tokens to learn from")
    order = batch_order(len(docs), s.batch_size, s.steps * s.accum, s.seed)
    # fp32 master weights and optimizer state; with --dtype bfloat16 the forward runs under bf16 autocast
    autocast = torch.autocast(s.device.split(":")[0], dtype=torch.bfloat16, enabled=s.dtype == "bfloat16")
    model.train()
    t0 = time.time()
    for step in range(start, s.steps):
        for p in params:
            p.grad = None
        total = 0.0
        for micro in range(s.accum):
            with autocast:
                loss = lm_loss(model, [docs[i] for i in order[step * s.accum + micro]], s.device) / s.accum
            loss.backward()
            total += loss.item()
        for p, m in zip(params, masks):  # the column-wise gradient mask, before clipping sees the norm
            p.grad = torch.where(m, p.grad, torch.zeros_like(p.grad))
        if s.clip:
            torch.nn.utils.clip_grad_norm_(params, s.clip)
        lr = learning_rate(step, s.lr, s.warmup, s.steps)
        opt.step(lr)
        if not quiet:
            left = (time.time() - t0) / (step + 1 - start) * (s.steps - step - 1)
            print(f"[train {step + 1}/{s.steps}] loss {total:.4f} lr {lr:.2e} ~{left:.0f}s left",
                  file=sys.stderr, flush=True)
        if s.save_every and (step + 1) % s.save_every == 0 and step + 1 < s.steps:
            save_checkpoint(model, source, out, sets, s.variant, opt, step + 1, run)
    model.eval()
    if not all(torch.isfinite(p).all() for p in params):
        raise ValueError("training made value vectors NaN or infinite (try a lower --lr); nothing was saved")
    save_checkpoint(model, source, out, sets, s.variant)
    with interrupts.writing(out / "train_settings.json"):
        (out / "train_settings.json.tmp").write_text(json.dumps({**asdict(s), "run": run}))
        os.replace(out / "train_settings.json.tmp", out / "train_settings.json")  # last: the run is finished
    for f in ("trainer_state.json", "optimizer.safetensors"):
        (out / f).unlink(missing_ok=True)
    return model


def main(a) -> None:
    """`minipss train`."""
    s = TrainSettings(variant=a.variant, steps=a.steps, lr=a.lr, seed=a.seed, device=a.device, dtype=a.dtype,
                      batch_size=a.batch_size, accum=a.accum, seq_len=a.seq_len, warmup=a.warmup,
                      weight_decay=a.weight_decay, r_pv=a.r_pv, save_every=a.save_every)
    s.check()
    c = read_config(a.model)
    s = resolved(s, c, a.quiet)
    if not 0 <= a.pv_first_layer < c.num_layers:
        raise ValueError(f"--pv-first-layer {a.pv_first_layer}: the model has layers 0..{c.num_layers - 1}")
    names = [n.strip() for n in (a.concepts or "").split(";") if n.strip()]
    origin = {}
    if a.variant != "fv":
        if not a.bench or not names:
            raise ValueError(f"--variant {a.variant} needs --bench and --concepts to locate the vectors")
        if not Path(a.bench).is_file():
            raise FileNotFoundError(f"{a.bench}: benchmark file not found")
        concepts = load_benchmark(a.bench)
        unknown = sorted(set(names) - {c.name for c in concepts})
        if unknown:
            raise ValueError(f"{a.bench}: no concept named {', '.join(map(repr, unknown))}")
        origin = {"bench": file_digest(a.bench), "concepts": names, "pv_rank": a.pv_rank,
                  "pv_first_layer": a.pv_first_layer}
    if not Path(a.data).is_file():
        raise FileNotFoundError(f"{a.data}: training data not found")
    # refuse a mismatched --out before locating (the columns themselves are checked again in train)
    check_out(Path(a.model), Path(a.data), Path(a.out), run_fingerprint(a.model, a.data, s, None, origin),
              ignore=("value_vectors",))
    with lock.hold(a.out):  # refused at once when another run holds --out (train holds it again)
        _main(a, s, c, names, origin, concepts if a.variant != "fv" else None)


def _main(a, s: TrainSettings, c, names, origin, concepts) -> None:
    read_documents(a.data)
    scores = None
    if a.variant != "fv":
        model = load_model(a.model, device=a.device)
        tok = load_tokenizer(a.model)
        check_prompt_lengths(concepts, tok, c, a.model, None, Path(a.bench))
        scores = located_scores(model, tok, concepts, names, seed=a.seed, rank_by=a.pv_rank)
        del model
    sets = value_vector_sets(a.variant, c.num_layers, c.intermediate_size, scores, s.r_pv, s.seed,
                             a.pv_first_layer)
    train(a.model, a.data, a.out, s, sets, quiet=a.quiet, origin=origin)
    print(a.out)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="text file (documents split on blank lines) or JSONL {text}")
    p.add_argument("--out", required=True, help="output HF layout folder")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--bench", default=None)
    p.add_argument("--concepts", default=None, help='concept names separated by ";"')
    p.add_argument("--steps", type=at_least(1), default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    dtype_option(p, ("float32", "bfloat16"), what="forward in bf16 autocast or fp32; ")
    p.add_argument("--batch-size", type=at_least(1), default=4)
    p.add_argument("--accum", type=at_least(1), default=1)
    p.add_argument("--seq-len", type=at_least(2), default=128)
    p.add_argument("--warmup", type=at_least(0), default=10)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--r-pv", type=float, default=0.5 / 8, help="PV: share of each layer's vectors (6.25%%)")
    p.add_argument("--pv-rank", default="diff", choices=["diff", "abs"],
                   help="PV: rank by |m - m*| (Eq. 5, default) or by the concepts' |m| alone")
    p.add_argument("--pv-first-layer", type=at_least(0), default=0, help="PV: leave layers below this out")
    p.add_argument("--save-every", type=at_least(0), default=0)
    p.add_argument("--quiet", action="store_true")
