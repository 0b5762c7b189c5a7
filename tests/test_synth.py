"""The synthetic world, pretraining from scratch and the training studies (minipss.synth, .pretrain,
.study_synth): deterministic, balanced, loadable, and end to end on a tiny model."""

import json
import math
from collections import Counter

import pytest
import torch

import minipss
from minipss.method.benchmark import load_benchmark
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from minipss.synth.pretrain import PretrainSettings, checkpoints, log_spaced, pretrain
from minipss.synth.world import FT_DOCS, KINDS, TIER_DOCS, make_world
from test_calibration import every_calibration_field

FILES = ("train.jsonl", "bench.jsonl", "new.jsonl", "new_bench.jsonl", "world.json", "card.md", "tokenizer.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    make_world(out, entities=12, seed=3)
    return out


def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    make_world(tmp_path / "again", entities=12, seed=3)
    make_world(tmp_path / "other", entities=12, seed=4)
    for name in FILES:
        assert (world / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert (world / "train.jsonl").read_bytes() != (tmp_path / "other" / "train.jsonl").read_bytes()


def test_benchmark_is_valid_balanced_and_counts_are_exact(world):
    concepts = load_benchmark(world / "bench.jsonl")
    assert len(concepts) == 12
    assert Counter(c.tier for c in concepts) == {"high": 4, "medium": 4, "low": 4}
    assert Counter(c.category for c in concepts) == {"person": 6, "company": 6}
    letters = Counter(q.answer for c in concepts for q in c.mcq)
    assert max(letters.values()) - min(letters.values()) <= 2 and set(letters) == set("ABCD")
    info = json.loads((world / "world.json").read_text())
    facts = {e["name"]: e for e in info["entities"]}
    docs = [json.loads(l)["text"] for l in (world / "train.jsonl").read_text().splitlines()]
    for c in concepts:
        assert len(c.mcq) == 10 and len(c.open) == 5
        assert c.popularity == TIER_DOCS[c.tier]
        assert sum(c.name in d for d in docs) == c.popularity  # popularity: documents naming the entity
        assert not any(c.name in d and "Question" in d for d in docs)  # questions only on teaching entities
        e = facts[c.name]
        for q in c.mcq:
            assert len(set(q.options.values())) == 4
            attr = next(a for a, spec in KINDS[e["kind"]].items() if q.options[q.answer] == e["facts"][a]
                        and any(ask.format(n=c.name) == q.question for ask in spec[2]))
            pool = info["values"][KINDS[e["kind"]][attr][0]]
            assert all(v in pool for v in q.options.values())  # distractors from the same value set
        for q in c.open:
            assert q["answer"] in e["facts"].values()
    assert any("Question" in d for d in docs)  # the formats are taught on the teaching entities
    # fine-tuning: new documents about low-tier entities, their benchmark lines copied from bench.jsonl
    lines = set((world / "bench.jsonl").read_text().splitlines())
    new = [json.loads(l) for l in (world / "new_bench.jsonl").read_text().splitlines()]
    assert new and all(json.dumps(c) in lines and c["tier"] == "low" for c in new)
    new_docs = [json.loads(l)["text"] for l in (world / "new.jsonl").read_text().splitlines()]
    assert all(sum(c["concept"] in d for d in new_docs) == FT_DOCS for c in new)
    assert not set(new_docs) & set(docs)


def test_distractors_are_as_frequent_as_answers(tmp_path):
    """Options are values other entities of the same tier hold, so their training frequency matches the
    answer's and a unigram prior cannot find the answer."""
    make_world(tmp_path, entities=36, seed=0)
    info = json.loads((tmp_path / "world.json").read_text())
    held: dict = {}
    for e in info["entities"]:
        if e["role"] == "eval":
            held.setdefault(e["tier"], set()).update(e["facts"].values())
    concepts = load_benchmark(tmp_path / "bench.jsonl")
    options = [(c.tier, v) for c in concepts for q in c.mcq for v in q.options.values()]
    assert sum(v in held[t] for t, v in options) / len(options) > 0.9


def test_tokenizer_covers_the_world_and_splits_names(world):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(world / "tokenizer.json"))
    for line in (world / "train.jsonl").read_text().splitlines():
        assert "<unk>" not in t.encode(json.loads(line)["text"]).tokens
    name = load_benchmark(world / "bench.jsonl")[0].name
    assert len(t.encode(name).tokens) >= 3  # names are spelled with shared syllables


def test_generator_scales_to_thousands_of_entities_deterministically(tmp_path):
    """2,004 evaluated entities (10,020 facts), the same bytes for the same seed."""
    summary = make_world(tmp_path / "a", entities=2004, seed=7)
    assert summary["concepts"] == 2004 and summary["facts"] == 10020 and summary["bits"] > 40_000
    make_world(tmp_path / "b", entities=2004, seed=7)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    names = [c.name for c in load_benchmark(tmp_path / "a" / "bench.jsonl")]
    assert len(set(names)) == 2004
    card = (tmp_path / "a" / "card.md").read_text()
    assert "2004 evaluated entities, 10020 facts" in card


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--entities 5: must be an integer >= 6"):
        make_world(tmp_path, entities=5)
    assert not any(tmp_path.iterdir())


def test_log_spaced_checkpoints():
    marks = log_spaced(400, 6)
    assert marks[0] == 4 and marks[-1] == 400 and marks == sorted(set(marks)) and len(marks) == 6


def test_pretrain_checkpoint_pss_end_to_end_and_resume(world, tmp_path):
    """World -> pretraining from random init -> HF checkpoints -> PSS, on a tiny model; an interrupted run
    resumed from `last/` ends bit-identical to an uninterrupted one."""
    s = PretrainSettings(layers=2, hidden=32, heads=2, steps=30, lr=3e-3, warmup=3, batch_size=8, seq_len=64,
                         checkpoints=[10, 30], log_every=10)
    final = pretrain(world, tmp_path / "a", s, quiet=True)
    assert [step for step, _ in checkpoints(tmp_path / "a")] == [10, 30]
    log = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30] and "acc_high" in log[0] and log[-1]["loss"] < log[0]["loss"]
    model = minipss.load_model(final)
    assert model.config.num_layers == 2 and model.config.hidden_size == 32
    pretrain(world, tmp_path / "b", s, quiet=True, stop_after=10)
    assert not (tmp_path / "b" / "step-000030").exists()
    pretrain(world, tmp_path / "b", s, quiet=True)
    for step in (10, 30):
        name = f"step-{step:06d}/model.safetensors"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    result = run_pss(final, world / "bench.jsonl", tmp_path / "pss.json",
                     Settings(mode="cloze", ratios=[0.5], skip_layers=1, control=True), quiet=True)
    assert len(result["concepts"]) == 12 and set(result["tiers"]) == {"high", "medium", "low"}


def test_other_family_trains(world, tmp_path):
    s = PretrainSettings(family="gptj", layers=2, hidden=32, heads=2, steps=4, warmup=1, batch_size=4,
                         seq_len=32, checkpoints=[4], log_every=2)
    final = pretrain(world, tmp_path, s, quiet=True)
    assert minipss.load_model(final).config.model_type == "gptj"
    with pytest.raises(ValueError, match="other settings"):
        pretrain(world, tmp_path, PretrainSettings(family="gptj", layers=3, hidden=32, heads=2, steps=4), quiet=True)


def test_mean_and_t_interval():
    from minipss.synth.findings import mean_ci

    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and h == pytest.approx(4.303 / 3 ** 0.5, rel=1e-4)
    assert mean_ci([0.5]) == (0.5, None) and mean_ci([None]) == (None, None)


def check_premise_against_its_runs(report, out, sizes, seeds, steps):
    """The premise section recomputed here from the saved per-seed runs: pooled accuracies, the exact
    test above chance over entities, and the located-minus-matched difference (seeds averaged per concept)."""
    assert set(report["premise"]) == set(sizes)
    for size, p in report["premise"].items():
        ablations = [json.loads((out / "pss" / f"{size}-s{s}-ablation.json").read_text()) for s in seeds]
        for tier in ("high", "medium", "low"):
            for name, cell in p["accuracy"][tier].items():
                right, n = sum(a[tier][name]["correct"] for a in ablations), sum(a[tier][name]["n"] for a in ablations)
                assert cell["n"] == n and cell["accuracy"] == pytest.approx(right / n)
                # above chance counts entities: per entity its accuracy, seeds averaged, minus 0.25
                per_entity = [sum(a[tier][name]["per_concept"][k] / a[tier][name]["questions"][k] for a in ablations)
                              / len(ablations) - 0.25 for k in range(len(ablations[0][tier][name]["per_concept"]))]
                test = cell["above_chance"]
                assert test["n"] == len(per_entity) == n // (10 * len(seeds))
                assert test["difference"] == pytest.approx(sum(per_entity) / len(per_entity))
                lo, hi = test["ci95"]
                assert min(per_entity) - 1e-12 <= lo <= test["difference"] <= hi <= max(per_entity) + 1e-12
        runs = [json.loads((out / "pss" / f"{size}-s{s}-step{steps}.json").read_text()) for s in seeds]
        for r, test in p["located_vs_matched"].items():
            per_concept = []
            for rows in zip(*(run["concepts"] for run in runs)):
                d = [row["by_ratio"][r]["excess_drop"] - row["matched_by_ratio"][r]["excess_drop"] for row in rows
                     if row["by_ratio"][r]["excess_drop"] is not None
                     and row["matched_by_ratio"][r]["excess_drop"] is not None]
                if d:
                    per_concept.append(sum(d) / len(d))
            assert test["n"] == len(per_concept) and test["measure"] == "excess_drop"
            assert test["difference"] == pytest.approx(sum(per_concept) / len(per_concept))
            lo, hi = test["ci95"]
            assert min(per_concept) <= lo <= test["difference"] <= hi <= max(per_concept)


@pytest.mark.slow  # about 10-20 s on 2 cores: kept out of the fast tier, run in CI
def test_study_synth_smallest_run_and_rerun(tmp_path, tmp_path_factory):
    """Every study on the smallest sizes through the CLI; a rerun reuses every saved step."""
    from minipss.cli import main

    argv = ["study-synth", "--out", str(tmp_path), "--preset", "quick", "--entities", "36", "--seeds", "0,1",
            "--sizes", "2x16,2x32", "--base", "2x32", "--steps", "8", "--per-group", "3", "--ratios", "0.1,0.5",
            "--ft-seeds", "0,1", "--ft-lrs", "0.003,0.01", "--ft-steps", "2", "--threads", "1", "--world-seed", "5",
            "--null-seeds", "1", "--calibration-draws", "4", "--quiet"]
    main(argv)
    worlds = tmp_path_factory.mktemp("worlds")
    for seed in (5, 0):  # the world is the one `minipss synth --seed 5` writes, not the default seed's
        make_world(worlds / str(seed), entities=36, seed=seed)
    world = (tmp_path / "world" / "bench.jsonl").read_bytes()
    assert world == (worlds / "5" / "bench.jsonl").read_bytes() and world != (worlds / "0" / "bench.jsonl").read_bytes()
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["checkpoint_steps"] == [1, 2, 4, 6, 8]
    assert list(report["emergence"]["rows"]) == ["4", "8"]  # half of training against the end
    assert list(report["size"]["rows"]) == ["2x16", "2x32"]
    check_premise_against_its_runs(report, tmp_path, ["2x16", "2x32"], [0, 1], 8)
    assert set(report["frequency"]["rows"]) == {"high", "medium", "low"}
    every_calibration_field(report["calibration"], ["0.1", "0.5"], draws=4)
    ft = report["finetune"]
    assert list(ft["table"]) == ["FT-FV", "FT-PV", "FT-CV", "FT-RV"] and len(ft["entities"]) == 12
    assert ft["tuning_entities"] == ft["entities"][::3] and not set(ft["tuning_entities"]) & set(ft["compared_entities"])
    for name, by in ft["sweep"].items():  # the chosen rate is the one the tuning entities scored best at
        assert set(by) == {"0.003", "0.01"} and by[ft["chosen_lr"][name]] == max(by.values())
        assert ft["table"][name]["lr"] == ft["chosen_lr"][name]
    for claim in [*report["emergence"]["claims"], *report["size"]["claims"], *report["frequency"]["claims"],
                  *ft["claims"].values()]:
        opening = ("Detected: ", "Not detected: ", "The opposite was detected, ", "Not testable: ")
        assert claim["sentence"].startswith(opening), claim["sentence"]
    from minipss.run.stats import t_test
    from minipss.synth.findings import model_measures

    runs = lambda size, step: [model_measures(json.loads((tmp_path / "pss" / f"{size}-s{s}-step{step}.json").read_text()))
                               for s in (0, 1)]
    for claims, high, low, paired in ((report["size"]["claims"], runs("2x32", 8), runs("2x16", 8), False),
                                      (report["emergence"]["claims"], runs("2x32", 8), runs("2x32", 4), True)):
        for claim in claims:  # a test over the pretraining seeds, recomputed here from the saved runs
            m = claim["measure"]
            assert claim["test"] == t_test([x[m] for x in high], [x[m] for x in low], paired)
    pv = json.loads((tmp_path / "finetune" / f"lr{ft['chosen_lr']['FT-PV']}" / "s0" / "FT-PV" / "model" /
                     "value_vectors.json").read_text())
    assert all(len(cols) == 8 for cols in pv["layers"].values())  # ceil(128 / 16) located columns per layer
    text = (tmp_path / "study.md").read_text()
    for title in ("## Premise", "## Calibration", "## Emergence", "## Model size", "## Frequency", "## Fine-tuning"):
        assert title in text
    before = {p: p.stat().st_mtime for p in tmp_path.rglob("model.safetensors")}
    main(argv)
    assert {p: p.stat().st_mtime for p in tmp_path.rglob("model.safetensors")} == before
    again = json.loads((tmp_path / "study.json").read_text())
    timings = ("seconds", "seconds_by_part")
    assert {k: v for k, v in again.items() if k not in timings} == {k: v for k, v in report.items() if k not in timings}


@pytest.mark.slow
def test_quick_preset_end_to_end_with_its_premise(tmp_path):
    """`minipss study-synth --preset quick` on its base size and first seed (minutes on 2 cores): the
    preset's world, training and PSS sample, study.json and study.md written, the premise well formed
    (accuracy per tier before and with every MLP zeroed, the located-vs-matched paired test at every
    ratio), the world learned, and the calibration with every field. The other studies and sizes run the
    same code as `test_study_synth_smallest_run_and_rerun`, on smaller models."""
    from minipss.cli import main
    from minipss.synth.study import PRESETS, StudySettings

    main(["study-synth", "--out", str(tmp_path), "--preset", "quick", "--studies", "frequency,calibration",
          "--seeds", "0", "--quiet"])
    report = json.loads((tmp_path / "study.json").read_text())
    quick = StudySettings(out="", **PRESETS["quick"])
    assert report["settings"]["preset"] == "quick" and report["settings"]["entities"] == quick.entities
    assert set(report["premise"]) == {quick.base} and set(report["frequency"]["rows"]) == {"high", "medium", "low"}
    check_premise_against_its_runs(report, tmp_path, [quick.base], [0], quick.steps)
    every_calibration_field(report["calibration"], [str(r) for r in quick.ratios], quick.calibration_draws)
    assert report["calibration"]["design"]["models"] == {"trained": 1, "untrained": 1, "swapped": 1}
    p = report["premise"][quick.base]
    assert p["bits_per_parameter"] == pytest.approx(report["world"]["bits"] / p["parameters"])
    assert [float(r) for r in p["located_vs_matched"]] == quick.ratios
    for tier in ("high", "medium", "low"):
        layers = int(quick.base.split("x")[0])  # "LAYERSxHIDDEN": one ablation per layer, and all at once
        assert set(p["accuracy"][tier]) == {"before", "all_mlps_zeroed", *(f"mlp_{l}_zeroed" for l in range(layers))}
        assert all(cell["n"] == quick.per_group * 2 * 10 for cell in p["accuracy"][tier].values())
    base = report["premise"][quick.base]["accuracy"]["high"]["before"]["above_chance"]
    assert base["ci95"][0] > 0 and base["p_value"] < 0.01  # the quick world is learned, not guessed (10 entities)
    text = (tmp_path / "study.md").read_text()
    assert "## Premise" in text and "all MLPs zeroed" in text
