"""The walkthrough (minipss/walkthrough.py) runs cell by cell as an editor runs it and as a script, with no
converted model (a tiny model made on the spot) or on the model `MINIPSS_MODEL` names; it uses only the model
and the paper's steps, and its masks and scores are those of `minipss pss`."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import minipss
from cli_process import ROOT, cli_env
from minipss.method.benchmark import load_benchmark, unrelated_sets
from minipss.method.controls import ConceptStats, cell_masks
from minipss.method.pss import collect_coefficients
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from tiny import make_bench

WALKTHROUGH = ROOT / "minipss" / "walkthrough.py"
REAL_MODEL = ROOT / "weights" / "gemma-3-270m"
CONCEPT = 3  # not the first: a concept's index must reach the pipeline's row as `minipss pss` gives it
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
GIVEN = os.environ.get("MINIPSS_MODEL")  # a model to run on instead of the tiny one
GIVEN = GIVEN if GIVEN in (None, "tiny") else str(Path(GIVEN).resolve())
ALLOWED = {"minipss", "minipss.method.pss", "minipss.method.benchmark", "minipss.method.prompts"}


def cells(text: str) -> list[tuple[bool, str]]:
    """The percent-format cells of `text`: (is markdown, source), split at each `# %%` line."""
    parts = re.split(r"^(?=# %%)", text, flags=re.M)
    return [(part.startswith("# %% [markdown]"), part) for part in parts if part.startswith("# %%")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny model (or the given one) on a small benchmark, so the pipeline can run it whole."""
    d = tmp_path_factory.mktemp("walk")
    return {"MINIPSS_MODEL": GIVEN or "tiny", "MINIPSS_BENCH": str(make_bench(d / "bench.jsonl", n_concepts=8, n_mcq=3)),
            "MINIPSS_OUT": str(d / "out"), "MINIPSS_CONCEPT": str(CONCEPT)}


@pytest.fixture(scope="module")
def ran(env):
    """Every code cell executed in order in one namespace, as a notebook runs them; the namespace and the
    number of code cells executed."""
    namespace, executed = {"__name__": "__main__"}, 0
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for n, (markdown, source) in enumerate(cells(WALKTHROUGH.read_text(encoding="utf-8"))):
            if markdown:
                assert all(not line.strip() or line.startswith("#") for line in source.splitlines()), n
                continue
            exec(compile(source, f"walkthrough cell {n}", "exec"), namespace)
            executed += 1
    return namespace, executed


def test_imports_only_the_model_and_the_papers_steps():
    found = set()
    for node in ast.walk(ast.parse(WALKTHROUGH.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found |= {node.module} if node.module != "minipss.method" else {f"minipss.method.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    mine = {name for name in found if name.split(".")[0] == "minipss"}
    assert "minipss.method.pss" in mine and "minipss.model" in mine
    assert {name for name in mine if name not in ALLOWED and not name.startswith("minipss.model")} == set()


def test_every_cell_runs_in_order_in_one_namespace(ran, env):
    namespace, executed = ran
    source = cells(WALKTHROUGH.read_text(encoding="utf-8"))
    assert executed == sum(not markdown for markdown, _ in source) >= 10
    assert sum(markdown for markdown, _ in source) >= 10
    assert namespace["concept"].name == f"Concept {CONCEPT}"
    assert (os.path.exists(os.path.join(env["MINIPSS_OUT"], "walkthrough.png"))) == HAS_MATPLOTLIB


def test_masks_equal_the_library_masks_from_the_whole_benchmark(ran, env):
    """The walkthrough reads coefficients for six concepts only; its masks are those `minipss pss` locates
    from every concept's coefficients."""
    ns, _ = ran
    model, tok = minipss.load_model(ns["MODEL_DIR"]), minipss.load_tokenizer(ns["MODEL_DIR"])
    concepts = load_benchmark(env["MINIPSS_BENCH"])
    others = unrelated_sets(concepts, 5, 0)[CONCEPT]
    stats = ConceptStats.whole(collect_coefficients(model, tok, concepts), [len(c.mcq) for c in concepts])
    expected, _ = cell_masks(CONCEPT, [("located", r) for r in ns["RATIOS"]], stats, others, 5, 0)
    got = torch.stack([ns["masks"][r] for r in ns["RATIOS"]])
    assert torch.equal(got, expected)
    assert (got[:, 5:] == 0).any() and (got[:, :5] == 1).all()


def test_scores_equal_the_pipeline(ran, env, tmp_path):
    ns, _ = ran
    settings = Settings(mode="cloze", ratios=list(ns["RATIOS"]), skip_layers=ns["SKIP"], seed=ns["SEED"],
                        dtype=ns["dtype"])
    row = run_pss(ns["MODEL_DIR"], env["MINIPSS_BENCH"], tmp_path / "r.json", settings,
                  quiet=True)["concepts"][CONCEPT]
    assert row["concept"] == ns["concept"].name
    assert row["unrelated"] == [ns["concepts"][j].name for j in ns["others"]]
    assert (row["concept_before"], row["general_before"]) == (ns["concept_before"], ns["general_before"])
    fields = ("concept_after", "general_after", "g_minus_c", "pss", "excess_drop")
    for r in ns["RATIOS"]:
        assert {f: row["by_ratio"][str(r)][f] for f in fields} == {f: ns["scores"][r][f] for f in fields}
    assert row["pss"] == pytest.approx(ns["concept_pss"])
    # masking changed some answer, so the equalities above compared masked scoring, not only the baseline
    assert any(ns["after"][r] != (ns["concept_before"], ns["general_before"]) for r in ns["RATIOS"])


def test_runs_as_a_script_in_a_fresh_clone(tmp_path):
    """From a folder with no converted model, on the bundled benchmark, as the README runs it; on the model
    `MINIPSS_MODEL` names when it is set."""
    start = time.perf_counter()
    env = {**cli_env(), **({"MINIPSS_MODEL": GIVEN} if GIVEN else {})}
    done = subprocess.run([sys.executable, "-m", "minipss.walkthrough"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{time.perf_counter() - start:.0f}s\n{done.stdout}")
    assert ("It has no knowledge" in done.stdout) == (GIVEN in (None, "tiny"))
    assert "PSS of The Lord of the Rings" in done.stdout and "done in" in done.stdout
    assert (tmp_path / "runs" / "walkthrough" / "walkthrough.png").is_file() == HAS_MATPLOTLIB


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(not (REAL_MODEL / "config.json").is_file(),
                    reason="no weights/gemma-3-270m (python -m minipss.weights gemma-3-270m)")
def test_runs_on_the_real_gemma3_270m_once_converted(tmp_path):
    env = {**cli_env(), "MINIPSS_OUT": str(tmp_path)}
    for name in ("MINIPSS_MODEL", "MINIPSS_BENCH", "MINIPSS_CONCEPT", "MINIPSS_DTYPE"):
        env.pop(name, None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "minipss.walkthrough"], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{time.perf_counter() - start:.0f}s\n{done.stdout}")
    assert "It has no knowledge" not in done.stdout and "gemma-3-270m: gemma3" in done.stdout
    assert "concept: The Lord of the Rings" in done.stdout and "PSS of The Lord of the Rings" in done.stdout
    assert (tmp_path / "walkthrough.png").is_file() == HAS_MATPLOTLIB
