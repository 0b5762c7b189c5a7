"""Pretraining from scratch on a synthetic world (`minipss pretrain`): every parameter trainable.

    minipss pretrain --world DIR --out RUN [--family llama] [--layers 4] [--hidden 128] [--steps 1500]

A random model of the chosen family and size is written in Hugging Face layout (config.json, random
safetensors, the world's tokenizer.json) and trained on `DIR/train.jsonl` with AdamW and the language-model pieces of
`method/training.py` (`windows`, `batch_order`, `lm_loss`, the warm-up + cosine `learning_rate`).
Checkpoints `RUN/step-000100/` (HF layout, loadable by `minipss.load_model`) are saved at log-spaced steps;
`RUN/last/` holds the model and optimizer state, so an interrupted run resumes and ends bit-identical to an
uninterrupted one. `RUN/log.jsonl` has the loss every `--log-every` steps and, at every checkpoint, the
benchmark accuracy (cloze mode) overall and per tier.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import files, interrupts, lock
from ..method.benchmark import load_benchmark
from ..method.pss import mcq_answers
from ..method.training import batch_order, learning_rate, lm_loss, read_documents, windows
from ..model.families import FAMILIES, build_model, from_hf
from ..model.load import checkpoint_state, load_model
from ..model.tokenizer import load_tokenizer
from ..run import checks
from ..run.fingerprint import file_digest


SETTINGS_FILE = "pretrain_settings.json"  # in --out, written first: the settings and the world's digests
FAMILY_TYPES = tuple(sorted(FAMILIES))  # every model_type minipss loads can be made at random


@dataclass
class PretrainSettings:
    family: str = "llama"  # a model_type minipss loads
    layers: int = 4
    hidden: int = 128
    ff: int = 0  # d_ff; 0: 4 * hidden
    heads: int = 4
    steps: int = 1500
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    batch_size: int = 16
    seq_len: int = 128
    seed: int = 0
    checkpoints: list[int] = field(default_factory=list)  # empty: log-spaced (`log_spaced`)
    log_every: int = 25
    device: str = "cpu"


    def check(self) -> None:
        """Refuse out-of-range values, naming the option, before any work."""
        checks.choice("--family", self.family, FAMILY_TYPES)
        for option, value, low in (("--layers", self.layers, 1), ("--hidden", self.hidden, 1),
                                   ("--ff", self.ff, 0), ("--heads", self.heads, 1), ("--steps", self.steps, 1),
                                   ("--warmup", self.warmup, 0), ("--batch-size", self.batch_size, 1),
                                   ("--seq-len", self.seq_len, 2), ("--log-every", self.log_every, 1)):
            checks.integer(option, value, low)
        checks.multiple("--hidden", self.hidden, "--heads", self.heads)
        checks.positive("--lr", self.lr)
        checks.positive("--weight-decay", self.weight_decay, zero=True)
        checks.seed("--seed", self.seed)
        for step in self.checkpoints:
            checks.integer("--checkpoints", step, 1, self.steps)
        checks.check_device(self.device)


def log_spaced(steps: int, n: int = 8) -> list[int]:
    """About n checkpoint steps spread evenly in log space from ~1% of training to the end."""
    first = max(1, steps // 100)
    points = {round(math.exp(math.log(first) + (math.log(steps) - math.log(first)) * i / (n - 1)))
              for i in range(n)} if steps > first else {steps}
    return sorted(points | {steps})


def model_config(s: PretrainSettings, vocab: int) -> dict:
    """A config.json for a `s.layers` x `s.hidden` model of family `s.family` (the HF key dialect);
    `s` is checked (`PretrainSettings.check`)."""
    ff = s.ff or 4 * s.hidden
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "vocab_size": vocab}
    head_dim = s.hidden // s.heads
    # the sizes under both spellings of config.json (LLaMA's and GPT's): each family reads its own
    return {"model_type": s.family, "hidden_size": s.hidden, "intermediate_size": ff,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.heads,
            "head_dim": head_dim, "query_pre_attn_scalar": head_dim, "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 1024,
            "n_embd": s.hidden, "n_head": s.heads, "n_layer": s.layers, "n_inner": ff, "n_positions": 1024,
            "rotary_dim": head_dim, **ids}


def vocab_size(tokenizer: Path) -> int:
    """How many tokens a world's tokenizer.json holds."""
    try:
        return len(json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{tokenizer}: not a tokenizer.json written by `minipss synth` ({e!r})") from None


def random_model(folder: Path, s: PretrainSettings, raw: dict, tokenizer: Path) -> Path:
    """Write a randomly initialised model of config `raw` (`model_config`): matrices and embeddings
    N(0, 0.02), biases 0, norms as the family's modules make them (1, or 0 for offset norms). Seeded by
    `s.seed`."""
    torch.manual_seed(s.seed)
    model = build_model(from_hf(raw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif name.endswith(".bias"):
                p.zero_()

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(raw, indent=1))
        (tmp / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
        shutil.copy(tokenizer, tmp / "tokenizer.json")
        save_file(checkpoint_state(model), str(tmp / "model.safetensors"))

    shutil.rmtree(folder, ignore_errors=True)  # a model of this run's own cut off before it was whole
    return files.new_folder(folder, write)


def _save(model, source: Path, out: Path, extra: dict[str, torch.Tensor] | None = None,
          state: dict | None = None) -> None:
    """An HF layout folder written whole (temporary folder, then renamed into place)."""
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, tmp / name)
        if extra is not None:
            save_file(extra, str(tmp / "optimizer.safetensors"))
            (tmp / "trainer_state.json").write_text(json.dumps(state))
    except BaseException:  # a failed or stopped save leaves no temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _optimizer_state(opt: torch.optim.AdamW, params: list) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                out[f"{i}.{key}"] = st[key].detach().clone().reshape(st[key].shape).contiguous()
    return out


def _load_optimizer_state(opt: torch.optim.AdamW, params: list, saved: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(params):
        if f"{i}.exp_avg" in saved:
            opt.state[p] = {k: saved[f"{i}.{k}"].to(p.device) for k in ("exp_avg", "exp_avg_sq", "step")}


@torch.inference_mode()
def bench_accuracy(model, tok, bench: Path) -> dict:
    """Cloze-mode MCQ accuracy overall and per tier (the learning curve)."""
    concepts = load_benchmark(bench)
    qs = [q for c in concepts for q in c.mcq]
    answers = mcq_answers(model, tok, qs, "cloze", batch_size=64)
    ok = [a == q.answer for a, q in zip(answers, qs)]
    out, pos = {"acc": sum(ok) / len(ok)}, 0
    per: dict[str, list[bool]] = {}
    for c in concepts:
        per.setdefault(c.tier, []).extend(ok[pos:pos + len(c.mcq)])
        pos += len(c.mcq)
    out.update({f"acc_{t}": sum(v) / len(v) for t, v in per.items()})
    return out


def pretrain(world, out, s: PretrainSettings, quiet: bool = False, stop_after: int | None = None) -> Path:
    """Train a fresh model on `world/train.jsonl`; checkpoints under `out`; returns the last one.
    `stop_after`: return after that step as an interrupted run would (a checkpoint step, to resume from)."""
    world, out = Path(world), Path(out)
    # every bad input is refused before anything is written: settings, the world's files (read whole), --out
    s.check()
    world_files = {name: files.input_file(world / name, "world file (make the world with `minipss synth`)")
                   for name in ("train.jsonl", "tokenizer.json", "bench.jsonl")}
    raw = model_config(s, vocab_size(world_files["tokenizer.json"]))
    tok = load_tokenizer(world, from_hf(raw))  # as the model made from it will read it
    docs = windows(tok, read_documents(world_files["train.jsonl"]), s.seq_len)
    if not docs:
        raise ValueError(f"{world_files['train.jsonl']}: no document has two or more tokens to learn from")
    load_benchmark(world_files["bench.jsonl"])
    files.output_folder(out, [world], "--out")
    record = {**asdict(s), "world": {name: file_digest(f) for name, f in world_files.items()}}
    with lock.hold(out):  # one run per --out
        return _pretrain(world, out, s, quiet, stop_after, record, raw, tok, docs, world_files)


def _pretrain(world: Path, out: Path, s: PretrainSettings, quiet: bool, stop_after, record: dict, raw: dict, tok,
              docs, world_files: dict) -> Path:
    mine = checks.own_folder(out, record, stamp=SETTINGS_FILE)
    init, last = out / "init", out / "last"
    interrupts.saved(out, lambda: saved_checkpoints(out, s.steps))
    with interrupts.writing(out):
        checks.claim(out, record, SETTINGS_FILE)
        if mine == "new" or not (init / "model.safetensors").is_file():
            random_model(init, s, raw, world_files["tokenizer.json"])
    resume = (last / "trainer_state.json").is_file()
    model = load_model(last if resume else init, device=s.device)
    model.requires_grad_(True)
    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.dim() >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95))
    start = 0
    log = out / "log.jsonl"
    if resume:
        state = json.loads((last / "trainer_state.json").read_text())
        _load_optimizer_state(opt, params, load_file(str(last / "optimizer.safetensors"), device=str(s.device)))
        start = state["step"]
        kept = [l for l in log_lines(log) if json.loads(l)["step"] <= start]
        with interrupts.writing(log):
            files.write_whole(log, "".join(l + "\n" for l in kept))
    elif log.exists():
        log.unlink()
    order = batch_order(len(docs), s.batch_size, s.steps, s.seed)
    saves = set(s.checkpoints or log_spaced(s.steps))
    t0 = time.time()
    for step in range(start, s.steps):
        model.train()
        loss = lm_loss(model, [docs[i] for i in order[step]], s.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = learning_rate(step, s.lr, s.warmup, s.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        done = step + 1
        row = None
        if done % s.log_every == 0 or done in saves:
            row = {"step": done, "loss": round(loss.item(), 5), "lr": lr, "seconds": round(time.time() - t0, 2)}
        if done in saves:
            model.eval()
            row.update({k: round(v, 5) for k, v in bench_accuracy(model, tok, world / "bench.jsonl").items()})
            with interrupts.writing(out):
                _save(model, init, out / f"step-{done:06d}")
        if row is not None:
            with interrupts.writing(log), open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            if not quiet:
                left = (time.time() - t0) / (done - start) * (s.steps - done)
                print(f"[pretrain {done}/{s.steps}] " + " ".join(f"{k} {v}" for k, v in row.items() if k != "step")
                      + f" left ~{left:.0f} s", file=sys.stderr, flush=True)
        if done in saves:  # after the log row: a resume keeps the rows up to its step and writes the rest
            with interrupts.writing(out):
                _save(model, init, last, _optimizer_state(opt, params), {"step": done})
            interrupts.pause_point()
        if stop_after is not None and done >= stop_after:
            return last
    final = out / f"step-{s.steps:06d}"
    if not final.exists():
        model.eval()
        with interrupts.writing(out):
            _save(model, init, final)
    return final


def log_lines(log: Path) -> list[str]:
    """The whole rows of a run's log.jsonl; a last row cut short by a stop (written after the checkpoint a
    resume starts from, so never one it keeps) is left out."""
    if not log.exists():
        return []
    lines = [l for l in log.read_text(encoding="utf-8", errors="replace").split("\n") if l.strip()]
    for n, line in enumerate(lines):
        try:
            json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if n < len(lines) - 1:
                raise ValueError(f"{log}:{n + 1}: a damaged row before the end of the log; remove the folder "
                                 f"{log.parent} to start over") from None
            return lines[:-1]
    return lines


def saved_checkpoints(out: Path, steps: int) -> str:
    """What a stop now leaves in `out` (`interrupts.saved`)."""
    try:
        step = json.loads((out / "last" / "trainer_state.json").read_text())["step"]
        return f"the checkpoints up to step {step} of {steps} (last/ resumes from it)"
    except (OSError, ValueError, KeyError, TypeError):
        return "no checkpoint yet (only the settings and the initial model)"


def checkpoints(run) -> list[tuple[int, Path]]:
    """The saved (step, folder) pairs of a pretraining run, in step order."""
    return sorted((int(p.name.split("-")[1]), p) for p in Path(run).glob("step-*") if p.is_dir())


def settings_from(a) -> PretrainSettings:
    try:
        marks = [int(x) for x in a.checkpoints.split(",") if x.strip()] if a.checkpoints else []
    except ValueError:
        raise ValueError(f"--checkpoints {a.checkpoints!r}: expected comma-separated steps") from None
    return PretrainSettings(family=a.family, layers=a.layers, hidden=a.hidden, ff=a.ff, heads=a.heads,
                            steps=a.steps, lr=a.lr, warmup=a.warmup, batch_size=a.batch_size,
                            seq_len=a.seq_len, seed=a.seed, checkpoints=marks, log_every=a.log_every,
                            device=a.device)


def main(a) -> None:
    print(pretrain(a.world, a.out, settings_from(a), a.quiet))


def add_arguments(p) -> None:
    p.add_argument("--world", required=True, help="folder written by `minipss synth`")
    p.add_argument("--out", required=True, help="run folder: step-NNNNNN/ checkpoints, last/, log.jsonl")
    p.add_argument("--family", default="llama", choices=FAMILY_TYPES)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ff", type=int, default=0, help="d_ff (default 4 x hidden)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", default=None, help="comma-separated steps (default: 8 log-spaced)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
