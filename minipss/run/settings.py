"""Every choice a PSS result depends on (`Settings`), its checks, and the fingerprint a resumed run must
match."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..method.benchmark import UNRELATED_DRAWS
from ..method.controls import LOCATORS
from ..method.pss import MODES, TOKEN_RULES
from .checks import check_device, ratios
from .fingerprint import file_digest, model_digest
from .options import at_least, dtype_option, numbers


PAPER_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
SWEEP_RATIOS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Settings:
    """Every choice the result depends on; all are written into the result file."""
    mode: str = "generate"  # generate | logits | cloze (METHOD.md §5)
    ratios: list[float] = field(default_factory=lambda: list(PAPER_RATIOS))
    skip_layers: int = 5  # layers 0..skip-1 are never masked (§4.1)
    seed: int = 0  # draws the unrelated concepts and the random-control vectors
    concepts: int | None = None  # keep the first N concepts of the file
    n_unrelated: int = 5  # concepts whose questions form t* (§3.2)
    unrelated: str = "any"  # any | same-category: where t* is drawn from (METHOD.md §2)
    control: bool = False  # also mask random vectors, same count per layer (the reviewers' control)
    matched_control: bool = False  # also mask random vectors of the located ones' magnitudes (METHOD.md §4)
    pseudo_control: bool = False  # also mask the vectors located for a pseudo-concept (METHOD.md §4)
    split_half: bool = False  # locate on one half of the questions, score on the other (METHOD.md §4)
    locator: str = "diff"  # diff (Eq. 5) | zscore (METHOD.md §4)
    ablation: str = "zero"  # zero | mean: masked m_j set to 0 (§4.1) or to their mean on unrelated questions
    token_rule: str = "content"  # which tokens the coefficient mean covers (METHOD.md §3)
    cloze_mean: bool = False  # cloze: mean instead of sum of option-token log-probs
    early_stop: bool = True  # generate: stop a row once its letter is decided (same answers)
    engine: bool = True  # score all of a concept's masks (and the baseline) together, sharing work (same answers)
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "auto"  # as every command: bf16 where it is measured faster (METHOD.md §10), resolved before any work
    dtype_choice: str = ""  # why this dtype (written by run_pss)

    def __post_init__(self):
        self.ratios = [float(r) for r in self.ratios]  # result keys are str(float): "0.1", "0.0"

    def fingerprint(self, model, bench: Path) -> dict:
        """What a resumed run must share with the saved work: the contents of the model folder and of the
        benchmark, and every setting that changes an answer (ratios and the controls may grow; batch size,
        device, engine and early stop give the same answers). Split-half and the locator count only when
        not their defaults, so work saved before they existed still resumes."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("ratios", "control", "matched_control", "pseudo_control", "batch_size", "device", "engine", "early_stop",
                             "dtype_choice")}
        if not self.split_half:
            del keep["split_half"]
        if self.locator == "diff":
            del keep["locator"]
        if self.unrelated == "any":
            del keep["unrelated"]
        keep.update({f"model {k}": v for k, v in model_digest(model).items()})
        keep["bench"] = file_digest(bench)
        return keep

    def check(self) -> None:
        """Refuse out-of-range values, naming the option, before any work."""
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        ratios("--ratios", self.ratios)
        if self.skip_layers < 0:
            raise ValueError(f"--skip-layers {self.skip_layers}: must be 0 or more")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed {self.seed}: must be in [0, 2**32)")
        if self.concepts is not None and self.concepts < self.n_unrelated + 1:
            raise ValueError(f"--concepts {self.concepts}: must be at least {self.n_unrelated + 1} "
                             f"(each concept is compared with {self.n_unrelated} others); leave it out for all")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be 1 or more")
        if self.ablation not in ("zero", "mean"):
            raise ValueError(f"--ablation {self.ablation!r}: choose zero or mean")
        if self.unrelated not in UNRELATED_DRAWS:
            raise ValueError(f"--unrelated {self.unrelated!r}: choose one of {', '.join(UNRELATED_DRAWS)}")
        if self.locator not in LOCATORS:
            raise ValueError(f"--locator {self.locator!r}: choose one of {', '.join(LOCATORS)}")
        if self.token_rule not in TOKEN_RULES:
            raise ValueError(f"--token-rule {self.token_rule!r}: choose one of {', '.join(TOKEN_RULES)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32, bfloat16 or float16")
        check_device(self.device)


def pss_arguments(p: argparse.ArgumentParser, ratios: str) -> None:
    """The options of `minipss pss` (and `sweep`, `quickstart`, the reference job of `minipss perf`)."""
    p.add_argument("--model", required=True, help="Hugging Face layout folder")
    p.add_argument("--bench", required=True, help="benchmark JSONL (see minipss.benchmark_path)")
    p.add_argument("--out", required=True, help="result JSON (a CSV and a .work folder go beside it)")
    p.add_argument("--mode", default="generate", choices=["generate", "logits", "cloze"])
    p.add_argument("--ratios", type=numbers, default=numbers(ratios), help=f"mask ratios (default {ratios})")
    p.add_argument("--skip-layers", type=at_least(0), default=5, help="layers never masked (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concepts", type=at_least(6), default=None, help="keep the first N concepts (at least 6)")
    p.add_argument("--unrelated", default="any", choices=list(UNRELATED_DRAWS),
                   help="draw each concept's unrelated concepts from all others (default) or its own category")
    p.add_argument("--device", default="cpu")
    dtype_option(p)
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--token-rule", default="content", choices=["content", "all", "last"],
                   help="tokens the coefficient mean covers (default: all but special tokens)")
    p.add_argument("--cloze-mean", action="store_true", help="cloze: mean log-prob per token, not the sum")
    p.add_argument("--no-early-stop", action="store_true", help="generate: always decode all 30 tokens")
    p.add_argument("--ablation", default="zero", choices=["zero", "mean"],
                   help="masked coefficients set to 0 (default) or to their mean on the unrelated questions")
    p.add_argument("--no-engine", action="store_true",
                   help="score one mask at a time instead of sharing work across masks")
    p.add_argument("--matched-control", action="store_true",
                   help="also mask random vectors matched to the located ones' magnitudes (same count per layer)")
    p.add_argument("--pseudo-control", action="store_true",
                   help="also mask the vectors located for a pseudo-concept: as many questions, one from each of "
                        "other concepts outside the concept and its unrelated set")
    p.add_argument("--split-half", action="store_true",
                   help="locate on one half of each concept's questions, score on the other, both ways")
    p.add_argument("--locator", default="diff", choices=["diff", "zscore"],
                   help="diff: |m - m*| (Eq. 5, default); zscore: over the pooled standard deviation")
    p.add_argument("--quiet", action="store_true")


def settings_from(a: argparse.Namespace, control: bool) -> Settings:
    """The `Settings` that parsed `pss_arguments` describe."""
    return Settings(mode=a.mode, ratios=a.ratios, skip_layers=a.skip_layers, seed=a.seed, concepts=a.concepts,
                    control=control, ablation=a.ablation, token_rule=a.token_rule, cloze_mean=a.cloze_mean,
                    early_stop=not a.no_early_stop, engine=not a.no_engine, batch_size=a.batch_size, device=a.device,
                    dtype=a.dtype, matched_control=a.matched_control, pseudo_control=a.pseudo_control, split_half=a.split_half, locator=a.locator,
                    unrelated=a.unrelated)
