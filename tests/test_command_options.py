"""Each option of `minipss pss`, `sweep` and `train` through the command line, asserting what it changes:
against a value computed here by hand, or against an independent run that differs only by that option."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipss
from builders import strip_timing
from minipss.cli import main
from tiny import make_bench, make_tiny_model

SWEEP = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]  # Figure 3's ratios, written out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("options")
    return {"model": make_tiny_model(d / "m", d_ff=64), "bench": make_bench(d / "b.jsonl", n_concepts=7, n_mcq=2),
            "two_kinds": make_bench(d / "kinds.jsonl", n_concepts=12, n_mcq=2, categories=("person", "place"))}


def pss(files, out, *extra, command="pss", bench=None):
    """`minipss COMMAND` on the tiny model (fp32, one layer kept) and its result."""
    main([command, "--model", str(files["model"]), "--bench", str(bench or files["bench"]), "--out", str(out),
          "--skip-layers", "1", "--dtype", "float32", "--quiet", *map(str, extra)])
    return json.loads(out.read_text())


def refused(capsys, argv, *words):
    with pytest.raises(SystemExit) as e:
        main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(w in err for w in words), err


def cells(result, key="by_ratio"):
    return [c[key] for c in result["concepts"]]


# ---- pss / sweep ------------------------------------------------------------------------------------

def test_sweep_is_pss_with_the_random_control_over_figure_3s_ratios(files, tmp_path):
    swept = pss(files, tmp_path / "sweep.json", "--mode", "cloze", command="sweep")
    assert swept["settings"]["ratios"] == SWEEP and swept["settings"]["control"] is True
    assert all(sorted(map(float, c["control_by_ratio"])) == SWEEP for c in swept["concepts"])
    by_hand = pss(files, tmp_path / "pss.json", "--mode", "cloze", "--control", "--ratios", ",".join(map(str, SWEEP)))
    assert strip_timing(swept) == {**strip_timing(by_hand), "settings": swept["settings"]}
    assert swept["settings"] == by_hand["settings"]


def test_sweep_takes_pss_options_and_one_mask_at_a_time_gives_the_engines_answers(files, tmp_path):
    swept = pss(files, tmp_path / "sweep.json", "--mode", "cloze", "--ratios", "0.1,0.5", "--matched-control",
                "--split-half", "--no-engine", "--device", "cpu", command="sweep")
    engine = pss(files, tmp_path / "pss.json", "--mode", "cloze", "--ratios", "0.1,0.5", "--matched-control",
                 "--split-half", "--control")
    assert swept["settings"]["engine"] is False and engine["settings"]["engine"] is True
    assert swept["settings"]["split_half"] and swept["settings"]["matched_control"]
    same = ("concepts", "significance")  # p(correct) to fp32 summation order (builders.strip_timing)
    assert all(strip_timing(swept)[k] == strip_timing(engine)[k] for k in same)
    assert all(set(c["matched_by_ratio"]) == {"0.1", "0.5"} for c in swept["concepts"])


def test_pseudo_control_runs_from_the_command_line_in_pss_and_sweep(files, tmp_path):
    big = make_bench(tmp_path / "b.jsonl", n_concepts=12, n_mcq=2)  # a pseudo-concept needs 2 + 1 + 5 concepts
    on = pss(files, tmp_path / "on.json", "--mode", "cloze", "--ratios", "0.1", "--pseudo-control", "--split-half",
             bench=big)
    off = pss(files, tmp_path / "off.json", "--mode", "cloze", "--ratios", "0.1", "--split-half", bench=big)
    assert on["settings"]["pseudo_control"] and "pseudo" in on and "pseudo" not in off
    # the control adds cells; the located ones are the same (p(correct) to fp32 summation order)
    assert cells(strip_timing(on)) == cells(strip_timing(off))
    assert all(len(c["pseudo_questions"]) == 2 for c in on["concepts"])
    assert set(on["significance"]["0.1"]["pseudo"]) >= {"excess_drop", "prob_excess_drop", "prob_general_after"}
    swept = pss(files, tmp_path / "sweep.json", "--mode", "logits", "--ratios", "0.1", "--pseudo-control",
                command="sweep", bench=big)
    assert "pseudo" in swept["significance"]["0.1"] and "random" in swept["significance"]["0.1"]
    refused_small = make_bench(tmp_path / "small.jsonl", n_concepts=7, n_mcq=2)
    with pytest.raises(SystemExit) as e:
        pss(files, tmp_path / "small.json", "--pseudo-control", bench=refused_small)
    assert e.value.code == 2 and not (tmp_path / "small.json").exists()


def test_zscore_locator_runs_and_neither_locator_resumes_the_other(files, tmp_path, capsys):
    zscore = pss(files, tmp_path / "z.json", "--mode", "cloze", "--ratios", "0.1,0.3", "--locator", "zscore")
    diff = pss(files, tmp_path / "d.json", "--mode", "cloze", "--ratios", "0.1,0.3")
    assert zscore["settings"]["locator"] == "zscore" and diff["settings"]["locator"] == "diff"
    assert [c["concept_before"] for c in zscore["concepts"]] == [c["concept_before"] for c in diff["concepts"]]
    assert cells(zscore) != cells(diff)  # other vectors located, other masked answers
    for out, other in ((tmp_path / "z.json", "diff"), (tmp_path / "d.json", "zscore")):
        refused(capsys, ["pss", "--model", files["model"], "--bench", files["bench"], "--out", out, "--mode", "cloze",
                         "--ratios", "0.1,0.3", "--skip-layers", "1", "--dtype", "float32", "--quiet",
                         "--locator", other], "locator")


def test_same_category_draws_unrelated_concepts_of_the_concepts_kind_and_resumes_only_itself(files, tmp_path, capsys):
    kinds = {json.loads(l)["concept"]: json.loads(l)["category"] for l in files["two_kinds"].read_text().splitlines()}
    same = pss(files, tmp_path / "s.json", "--mode", "cloze", "--ratios", "0.1", "--unrelated", "same-category",
               bench=files["two_kinds"])
    any_ = pss(files, tmp_path / "a.json", "--mode", "cloze", "--ratios", "0.1", bench=files["two_kinds"])
    assert same["settings"]["unrelated"] == "same-category"
    for c in same["concepts"]:
        assert len(c["unrelated"]) == 5 and {kinds[u] for u in c["unrelated"]} == {kinds[c["concept"]]}
    assert any(kinds[u] != kinds[c["concept"]] for c in any_["concepts"] for u in c["unrelated"])
    for out, other in ((tmp_path / "s.json", "any"), (tmp_path / "a.json", "same-category")):
        refused(capsys, ["pss", "--model", files["model"], "--bench", files["two_kinds"], "--out", out,
                         "--mode", "cloze", "--ratios", "0.1", "--skip-layers", "1", "--dtype", "float32", "--quiet",
                         "--unrelated", other], "unrelated")


def option_logprobs(model, tok, question, option):
    """log p of each token of `option` after the cloze context, from one plain forward pass."""
    context = f"Question: {question}\nAnswer:"
    n, ids = len(tok.encode(context)), tok.encode(f"{context} {option}")
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return [logp[t - 1, ids[t]].item() for t in range(n, len(ids))]


def test_cloze_mean_scores_an_option_by_its_mean_token_log_prob(files, tmp_path):
    """Options of very different lengths: the sum favours the short ones, the mean does not; the run's
    accuracy before masking is the one computed here from each option's token log-probs."""
    rows = []
    for c in range(7):
        mcq = [{"question": f"Which is thing {q} of item {c}?", "answer": "ABCD"[(c + q) % 4],
                "options": {L: ("x" * (1 + 9 * ((i + c + q) % 4))) + f"{c}{q}" for i, L in enumerate("ABCD")}}
               for q in range(3)]
        rows.append(json.dumps({"concept": f"Item {c}", "tier": "high", "category": "t", "mcq": mcq}))
    bench = tmp_path / "lengths.jsonl"
    bench.write_text("\n".join(rows) + "\n")
    model, tok = minipss.load_model(files["model"]), minipss.load_tokenizer(files["model"])
    by_hand = {}
    for rule, pool in (("mean", lambda x: sum(x) / len(x)), ("sum", sum)):
        accuracy = []
        for line in rows:
            mcq = json.loads(line)["mcq"]
            picks = [max(q["options"], key=lambda L: pool(option_logprobs(model, tok, q["question"], q["options"][L])))
                     for q in mcq]
            accuracy.append(sum(p == q["answer"] for p, q in zip(picks, mcq)) / len(mcq))
        by_hand[rule] = accuracy
    assert by_hand["mean"] != by_hand["sum"]  # the option decides something here
    mean = pss(files, tmp_path / "mean.json", "--mode", "cloze", "--ratios", "0.1", "--cloze-mean", bench=bench)
    plain = pss(files, tmp_path / "sum.json", "--mode", "cloze", "--ratios", "0.1", bench=bench)
    assert mean["settings"]["cloze_mean"] is True
    assert [c["concept_before"] for c in mean["concepts"]] == pytest.approx(by_hand["mean"])
    assert [c["concept_before"] for c in plain["concepts"]] == pytest.approx(by_hand["sum"])


def test_no_early_stop_decodes_every_row_to_its_end_with_the_same_answers(files, tmp_path, monkeypatch):
    """Without early stop the decoding loop gets no stop rule and every row runs to EOS or 30 tokens; by
    default a row leaves as soon as its letter is decided, so rows the model decides early decode fewer
    tokens; the letters are the same."""
    from minipss.method import many_masks
    from minipss.method.prompts import letter_decided

    calls, rows = [], []
    real = many_masks.decode

    def watched(*args, **kwargs):
        out, rest = real(*args, **kwargs)
        stop = args[9] if len(args) > 9 else kwargs.get("stop_when")
        calls.append(stop is None)
        rows.extend(out)
        return out, rest

    monkeypatch.setattr(many_masks, "decode", watched)
    # the tiny model with the head rows of " ", ".", A-D scaled up and EOS's zeroed: it writes letters and
    # breaks between them
    folder = tmp_path / "letters"
    shutil.copytree(files["model"], folder)
    tok = minipss.load_tokenizer(folder)
    weights = load_file(folder / "model.safetensors")
    head = weights["lm_head.weight"]
    head[tok.encode(" ")] *= 9
    head[tok.encode("ABCD.")] *= 6
    head[tok.eos_ids] = 0  # rows run on rather than end at once
    save_file(weights, folder / "model.safetensors")
    files = {**files, "model": folder}
    full = pss(files, tmp_path / "full.json", "--mode", "generate", "--ratios", "0.3", "--no-early-stop")
    full_calls, full_rows, calls[:], rows[:] = list(calls), list(rows), [], []
    early = pss(files, tmp_path / "early.json", "--mode", "generate", "--ratios", "0.3")
    assert full_calls and all(full_calls) and calls and not any(calls)
    # the first prefix of each full row after which its letter can no longer change
    decided = [next((j for j in range(1, len(r) + 1) if letter_decided(tok.decode(r[:j]))), len(r)) for r in full_rows]
    assert sum(d < len(r) for d, r in zip(decided, full_rows)) >= 3  # rows the rule cuts short: it decides here
    assert sorted(map(len, rows)) == sorted(decided)  # each row stopped exactly where its letter was decided
    assert full["settings"]["early_stop"] is False and early["settings"]["early_stop"] is True
    assert cells(full) == cells(early) and full["acc_before"] == early["acc_before"]


def test_token_rule_last_locates_from_the_last_tokens_coefficients(files, tmp_path):
    """The saved per-question coefficients under `--token-rule last` are |m| at the last token of the
    question-with-its-answer text, computed here with one plain forward pass per question."""
    pss(files, tmp_path / "last.json", "--mode", "cloze", "--ratios", "0.1", "--token-rule", "last")
    pss(files, tmp_path / "all.json", "--mode", "cloze", "--ratios", "0.1", "--token-rule", "all")
    pss(files, tmp_path / "content.json", "--mode", "cloze", "--ratios", "0.1")
    saved = {rule: load_file(tmp_path / f"{rule}.json.work" / "coefficients.safetensors")["coefficients"]
             for rule in ("last", "all", "content")}
    model, tok = minipss.load_model(files["model"]), minipss.load_tokenizer(files["model"])
    concepts = [json.loads(line)["mcq"] for line in files["bench"].read_text().splitlines()]
    assert saved["last"].shape[0] == len(concepts)  # per concept: the mean over its questions
    for i, mcq in enumerate(concepts):
        per_question = {"last": [], "all": [], "content": []}
        for q in mcq:
            ids = torch.tensor([tok.encode(f"Question: {q['question']} Answer: {q['options'][q['answer']]}")])
            with torch.no_grad():
                m = model(ids, return_coefficients=True).coefficients
            per_question["last"].append(torch.stack([layer[0, -1].abs() for layer in m]))
            per_question["all"].append(torch.stack([layer[0].abs().mean(0) for layer in m]))  # BOS included
            per_question["content"].append(torch.stack([layer[0, 1:].abs().mean(0) for layer in m]))  # BOS left out
        for rule, values in per_question.items():
            torch.testing.assert_close(saved[rule][i], torch.stack(values).mean(0), rtol=1e-5, atol=1e-6,
                                       msg=f"{rule}, concept {i}")


def test_mean_ablation_changes_masked_answers_only(files, tmp_path):
    mean = pss(files, tmp_path / "mean.json", "--mode", "logits", "--ratios", "0.0,0.5", "--ablation", "mean")
    zero = pss(files, tmp_path / "zero.json", "--mode", "logits", "--ratios", "0.0,0.5")
    assert mean["settings"]["ablation"] == "mean"
    assert [c["by_ratio"]["0.0"] for c in mean["concepts"]] == [c["by_ratio"]["0.0"] for c in zero["concepts"]]
    assert [c["by_ratio"]["0.5"] for c in mean["concepts"]] != [c["by_ratio"]["0.5"] for c in zero["concepts"]]


def test_dtype_bfloat16_runs_the_model_in_bf16(files, tmp_path):
    """The saved coefficients differ from fp32's, by no more than bf16's rounding allows: 8 bits of
    mantissa (unit roundoff 2^-8) compounding over a few operations per layer."""
    main(["pss", "--model", str(files["model"]), "--bench", str(files["bench"]), "--out", str(tmp_path / "b.json"),
          "--mode", "cloze", "--ratios", "0.1", "--skip-layers", "1", "--dtype", "bfloat16", "--quiet"])
    pss(files, tmp_path / "f.json", "--mode", "cloze", "--ratios", "0.1")
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["dtype"] == "bfloat16"
    low, full = (load_file(tmp_path / f"{n}.json.work" / "coefficients.safetensors")["coefficients"] for n in "bf")
    layers = full.shape[1]
    assert not torch.equal(low, full)
    assert ((low - full).abs().max() <= 2 ** -8 * 8 * layers * full.abs().max()).item()


# ---- train -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training(tmp_path_factory, files):
    """Documents of equal token counts (every batch averages over as many tokens), a model, a benchmark."""
    d = tmp_path_factory.mktemp("train")
    data = d / "data.txt"
    data.write_text("\n\n".join(f"Concept {i} is known for fact number {i * 7 % 100:02d}." for i in range(12)))
    return {"model": files["model"], "bench": files["bench"], "data": data, "root": d}


def train(t, out, *extra):
    main(["train", "--model", str(t["model"]), "--data", str(t["data"]), "--out", str(out), "--steps", "1",
          "--lr", "1e-2", "--warmup", "0", "--seq-len", "64", "--weight-decay", "0", "--quiet", *map(str, extra)])
    return load_file(out / "model.safetensors")


def test_accum_2_of_half_batches_is_one_step_of_the_full_batch(training, tmp_path):
    before = load_file(training["model"] / "model.safetensors")
    accumulated = train(training, tmp_path / "acc", "--variant", "fv", "--batch-size", "2", "--accum", "2")
    whole = train(training, tmp_path / "whole", "--variant", "fv", "--batch-size", "4")
    half = train(training, tmp_path / "half", "--variant", "fv", "--batch-size", "2")
    for name in before:
        if name.endswith("down_proj.weight"):
            step = whole[name] - before[name]
            # Adam's first step is lr * g / (|g| + eps): where |g| is near eps, summing in another order moves it
            # by a share of lr, so the bound is lr / 1000; a wrong batch moves most weights by about lr
            torch.testing.assert_close(accumulated[name] - before[name], step, rtol=0, atol=1e-5)
            assert not torch.allclose(half[name] - before[name], step, atol=1e-5)  # half a batch alone differs


def test_weight_decay_shrinks_the_trained_columns(training, tmp_path):
    before = load_file(training["model"] / "model.safetensors")
    plain = train(training, tmp_path / "p", "--variant", "fv", "--batch-size", "2")
    decayed = train(training, tmp_path / "d", "--variant", "fv", "--batch-size", "2", "--weight-decay", "0.5")
    name = next(n for n in before if n.endswith("down_proj.weight"))
    # AdamW: the decay is lr * wd * w on top of the same Adam step
    torch.testing.assert_close(decayed[name], plain[name] - 1e-2 * 0.5 * before[name], rtol=0, atol=1e-6)


def test_train_dtype_bfloat16_runs_the_forward_in_bf16(training, tmp_path):
    before = load_file(training["model"] / "model.safetensors")
    fp32 = train(training, tmp_path / "f", "--variant", "fv", "--batch-size", "2", "--dtype", "float32")
    bf16 = train(training, tmp_path / "b", "--variant", "fv", "--batch-size", "2", "--dtype", "bfloat16")
    assert json.loads((tmp_path / "b" / "train_settings.json").read_text())["dtype"] == "bfloat16"
    name = next(n for n in before if n.endswith("down_proj.weight"))
    assert not torch.equal(bf16[name], fp32[name])
    # one Adam step moves each weight by about lr either way: both runs agree on most directions
    agree = (torch.sign(bf16[name] - before[name]) == torch.sign(fp32[name] - before[name])).float().mean()
    assert agree > 0.9


def columns(out):
    return {int(k): v for k, v in json.loads((out / "value_vectors.json").read_text())["layers"].items()}


def test_pv_rank_abs_ignores_the_unrelated_draw_and_diff_does_not(training, tmp_path):
    """`--pv-rank abs` ranks by the concepts' own |m| alone, so the seed that draws the unrelated concepts
    cannot change its columns; `diff` (|m - m*|) depends on that draw."""
    pv = ["--variant", "pv", "--bench", training["bench"], "--concepts", "Concept 0;Concept 1", "--r-pv", "0.25",
          "--batch-size", "2"]
    got = {(rank, seed): columns(next_out) for rank in ("abs", "diff") for seed in (0, 1)
           for next_out in [tmp_path / f"{rank}{seed}"] if train(training, next_out, *pv, "--pv-rank", rank,
                                                                 "--seed", seed) is not None}
    assert got["abs", 0] == got["abs", 1]
    assert got["diff", 0] != got["diff", 1]
    assert got["abs", 0] != got["diff", 0]
    assert all(len(cols) == 16 for cols in got["abs", 0].values())  # ceil(64 * 0.25) per layer


def test_pv_first_layer_leaves_the_layers_below_it_out(training, tmp_path):
    pv = ["--variant", "pv", "--bench", training["bench"], "--concepts", "Concept 0;Concept 1", "--r-pv", "0.25",
          "--batch-size", "2"]
    every = columns(tmp_path / "all") if train(training, tmp_path / "all", *pv) is not None else None
    later = columns(tmp_path / "later") if train(training, tmp_path / "later", *pv, "--pv-first-layer", "2") \
        is not None else None
    assert later == {l: (cols if l >= 2 else []) for l, cols in every.items()}
    assert all(every[l] for l in (0, 1))
