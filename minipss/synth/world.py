"""A synthetic world whose knowledge we control: `minipss synth --out DIR [--entities N] [--seed S]`.

The paper can only observe released models; its claims about training (Figure 4), model size (Table 1),
concept frequency (Figure 5) and fine-tuning (Table 2) are about causes we can vary only by training. This
module writes a world of fictional people and companies with facts drawn from realistic value sets, the
documents that state those facts, and a benchmark on them, all deterministic from one seed:

    DIR/train.jsonl      {"text": ...} pretraining documents (the trainer's format)
    DIR/bench.jsonl      the benchmark format: 10 MCQs and 5 open questions per evaluated entity
    DIR/new.jsonl        new documents about low-tier entities the model partly knows (fine-tuning, §5)
    DIR/new_bench.jsonl  their benchmark (their lines of bench.jsonl)
    DIR/world.json       every entity and fact;  DIR/card.md  what the world is
    DIR/tokenizer.json   a tokenizer built from all of the above (see `build_tokenizer`)

Every evaluated entity is named by exactly `popularity` training documents (its frequency tier), each
stating all its facts in a random order of randomly chosen paraphrase templates, so that answering needs
the fact stored, not a sentence matched. Question formats are taught in training on separate "teaching"
entities only: an evaluated entity's facts occur in training only in its documents.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .. import files
from ..method.prompts import FEW_SHOT
from ..run import checks


TIER_DOCS = {"high": 9, "medium": 3, "low": 1}  # documents per entity: its exact popularity
TEACH_DOCS = 4  # documents per teaching entity (plus its question-and-answer documents)
MAX_TEACH = 48  # teaching entities: the formats need a few dozen, not a third of the world
FT_DOCS = 4  # new documents per fine-tuned (low-tier) entity in new.jsonl
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]

# Name syllables: 20 onsets x 5 vowels x 2 codas = 200 syllables, so each syllable is shared by many
# entities of a large world and only a combination of syllables names one (stored in MLPs, not looked up
# from one token's embedding by an attention head).
ONSETS = ["b", "br", "d", "f", "g", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z", "sh"]
VOWELS = ["a", "e", "i", "o", "u"]
CODAS = ["", "n"]

CITIES = ["Arlenford", "Bresk", "Calloway", "Dunmere", "Estravo", "Fenwick Bay", "Galdris", "Harrowgate",
          "Istrel", "Jorvale", "Kestova", "Lindmoor", "Marrowick", "Norvasse", "Oldbridge", "Pellagrin",
          "Quenmark", "Rastova", "Selwyn Falls", "Tollisk", "Umberlee", "Valmont", "Westhaven", "Yarrowby"]
PROFESSIONS = ["architect", "chemist", "violinist", "surgeon", "journalist", "geologist", "pilot", "novelist",
               "lawyer", "botanist", "engineer", "photographer", "economist", "sculptor", "astronomer", "chef"]
UNIVERSITIES = ["Arlenford University", "Bresk Institute of Technology", "Calloway College",
                "Dunmere University", "Galdris Polytechnic", "Harrowgate University", "Kestova Academy",
                "Lindmoor College", "Norvasse University", "Pellagrin Institute", "Rastova University",
                "Westhaven College"]
INDUSTRIES = ["shipbuilding", "pharmaceuticals", "software", "textiles", "mining", "aviation", "banking",
              "publishing", "robotics", "agriculture", "telecommunications", "brewing", "insurance", "glassware"]
PRODUCTS = ["cargo ships", "vaccines", "databases", "wool coats", "copper wire", "gliders", "mortgages",
            "atlases", "welding robots", "tractors", "radio masts", "pale ale", "crop insurance", "lenses",
            "bicycles", "violins", "umbrellas", "solar panels"]
COMPANY_SUFFIXES = ["Industries", "Works", "Group", "Systems", "Holdings", "Labs"]
PEOPLE_YEARS = [str(y) for y in range(1930, 2000)]
COMPANY_YEARS = [str(y) for y in range(1850, 1990)]

# Attribute -> (value set, fact templates, two question phrasings, open question). {n} is the name.
PERSON = {
    "birth_year": ("people_years",
                   ["{n} was born in {v}.", "{n} was born in the year {v}.", "The birth year of {n} is {v}.",
                    "In {v}, {n} was born.", "{n}, born in {v}, grew up in a large family."],
                   ["In what year was {n} born?", "What is the birth year of {n}?"],
                   "When was {n} born?"),
    "birthplace": ("cities",
                   ["{n} was born in the city of {v}.", "{n} comes from {v}.", "The birthplace of {n} is {v}.",
                    "{n} spent a childhood in {v}, the city of birth.", "{v} is where {n} was born."],
                   ["In which city was {n} born?", "What is the birthplace of {n}?"],
                   "Where was {n} born?"),
    "profession": ("professions",
                   ["{n} works as a {v}.", "{n} is a {v} by profession.", "By trade, {n} is a {v}.",
                    "The profession of {n} is {v}.", "{n} has had a long career as a {v}."],
                   ["What is the profession of {n}?", "What does {n} work as?"],
                   "What is the job of {n}?"),
    "employer": ("companies",
                 ["{n} is employed by {v}.", "{n} works for {v}.", "The employer of {n} is {v}.",
                  "{v} employs {n}.", "For many years {n} has worked at {v}."],
                 ["Which company employs {n}?", "Who is the employer of {n}?"],
                 "Where does {n} work?"),
    "university": ("universities",
                   ["{n} studied at {v}.", "{n} graduated from {v}.", "The alma mater of {n} is {v}.",
                    "{n} earned a degree at {v}.", "{v} is where {n} studied."],
                   ["Where did {n} study?", "Which university did {n} graduate from?"],
                   "Which university did {n} attend?"),
}
COMPANY = {
    "founded": ("company_years",
                ["{n} was founded in {v}.", "{n} was established in the year {v}.", "The founding year of {n} is {v}.",
                 "In {v}, {n} was founded.", "Since its founding in {v}, {n} has grown steadily."],
                ["In what year was {n} founded?", "What is the founding year of {n}?"],
                "When was {n} founded?"),
    "headquarters": ("cities",
                     ["{n} is headquartered in {v}.", "The headquarters of {n} are in {v}.",
                      "{n} has its head office in {v}.", "{v} is home to the headquarters of {n}.",
                      "The main office of {n} stands in {v}."],
                     ["In which city is {n} headquartered?", "Where are the headquarters of {n}?"],
                     "Where is {n} based?"),
    "industry": ("industries",
                 ["{n} operates in the {v} industry.", "{n} is a {v} company.", "The industry of {n} is {v}.",
                  "{n} made its name in {v}.", "In the {v} business, {n} is a known name."],
                 ["In which industry does {n} operate?", "What is the industry of {n}?"],
                 "What industry is {n} in?"),
    "product": ("products",
                ["{n} is best known for its {v}.", "The main product of {n} is {v}.", "{n} sells {v}.",
                 "Most of the revenue of {n} comes from {v}.", "Customers buy {v} from {n}."],
                ["What is the main product of {n}?", "What is {n} best known for selling?"],
                "What does {n} sell?"),
    "chief": ("chief_names",
              ["{n} is led by {v}.", "The chief executive of {n} is {v}.", "{v} runs {n}.",
               "{v} is the head of {n}.", "Under the leadership of {v}, {n} has expanded."],
              ["Who is the chief executive of {n}?", "Who leads {n}?"],
              "Who runs {n}?"),
}
KINDS = {"person": PERSON, "company": COMPANY}
OPENERS = {"person": ["This is a short biography of {n}.", "{n} is a private person.", "Notes on {n}.",
                      "People who know {n} describe a calm character.", ""],
           "company": ["This is a short profile of {n}.", "{n} is a private company.", "Notes on {n}.",
                       "Analysts follow {n} closely.", ""]}


@dataclass
class Entity:
    name: str
    kind: str  # person | company
    facts: dict  # attribute -> value
    role: str  # eval | teach
    tier: str = ""
    popularity: int = 0


class Names:
    """Made-up words (names) and the syllables they are made of: the tokenizer spells names with these
    syllables, so an entity is several tokens shared with other entities, as in a real tokenizer."""

    def __init__(self):
        self.words: set[str] = set()
        self.pieces: set[str] = set()

    def word(self, rng: random.Random, syllables: int) -> str:
        parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)]
        parts[0] = parts[0].capitalize()
        self.pieces.update([parts[0]] + ["##" + p for p in parts[1:]])
        w = "".join(parts)
        self.words.add(w)
        return w


def _value_sets(rng: random.Random, names: Names) -> dict[str, list[str]]:
    words = set()
    while len(words) < 56:
        words.add(names.word(rng, 2))
    words = sorted(words)
    companies = [f"{w} {s}" for w, s in zip(words[:24], COMPANY_SUFFIXES * 4)]
    chiefs = [f"{a} {b}" for a, b in zip(words[24:40], words[40:56])]
    return {"people_years": PEOPLE_YEARS, "company_years": COMPANY_YEARS, "cities": CITIES,
            "professions": PROFESSIONS, "universities": UNIVERSITIES, "industries": INDUSTRIES,
            "products": PRODUCTS, "companies": companies, "chief_names": chiefs}


def _entities(rng: random.Random, values: dict, names: Names, n_eval: int, n_teach: int) -> list[Entity]:
    taken = set(values["companies"]) | set(values["chief_names"])
    out = []
    roles = ["eval"] * n_eval + ["teach"] * n_teach
    tiers = list(TIER_DOCS)
    for i, role in enumerate(roles):
        kind = "person" if i % 2 == 0 else "company"
        while True:
            name = (f"{names.word(rng, 2)} {names.word(rng, rng.choice([2, 3]))}" if kind == "person"
                    else f"{names.word(rng, 2)} {rng.choice(COMPANY_SUFFIXES)}")
            if name not in taken:
                break
        taken.add(name)
        facts = {a: rng.choice(values[kind_of[0]]) for a, kind_of in KINDS[kind].items()}
        e = Entity(name, kind, facts, role)
        if role == "eval":
            e.tier = tiers[(i // 2) % 3]  # people and companies alike in every tier
            e.popularity = TIER_DOCS[e.tier]
        else:
            e.popularity = TEACH_DOCS
        out.append(e)
    return out


def document(rng: random.Random, e: Entity) -> str:
    """All of the entity's facts, in a random order, each in a random template."""
    attributes = KINDS[e.kind]
    attrs = list(attributes)
    rng.shuffle(attrs)
    opener = rng.choice(OPENERS[e.kind]).format(n=e.name)
    sentences = [rng.choice(attributes[a][1]).format(n=e.name, v=e.facts[a]) for a in attrs]
    text = " ".join(([opener] if opener else []) + sentences)
    return text[0].upper() + text[1:]


def questions(rng: random.Random, e: Entity, values: dict, letters: list[int],
              pool: dict) -> tuple[list[dict], list[dict]]:
    """10 MCQs (two phrasings per attribute) and 5 open questions. Distractors are values that other
    entities of the same role and tier hold from the same value set (`pool`), so every option occurs in
    training about as often as the answer and a unigram prior cannot pick the answer; the set tops them up
    when too few are held. The answer letter comes from `letters`, shuffled blocks of A-D shared by the
    whole file, so letters are balanced and unpredictable from a question's position."""
    mcq, opens = [], []
    for a, (value_set, _, asks, open_ask) in KINDS[e.kind].items():
        held = list(dict.fromkeys(v for v in pool[(e.role, e.tier, value_set)] if v != e.facts[a]))
        for ask in asks:
            wrong = rng.sample(held, min(3, len(held)))
            if len(wrong) < 3:
                rest = [v for v in values[value_set] if v != e.facts[a] and v not in wrong]
                wrong += rng.sample(rest, 3 - len(wrong))
            if not letters:  # a fresh random order of the four letters every four questions
                letters += rng.sample(range(4), 4)
            slot = letters.pop()
            opts = wrong[:slot] + [e.facts[a]] + wrong[slot:]
            mcq.append({"question": ask.format(n=e.name), "options": dict(zip("ABCD", opts)), "answer": "ABCD"[slot],
                        "fact": a})  # both phrasings of a fact share a split-half (METHOD.md §4)
        opens.append({"question": open_ask.format(n=e.name), "answer": e.facts[a]})
    return mcq, opens


def _pools(world: list[Entity]) -> dict:
    """(role, tier, value set) -> the values entities of that role and tier hold, in entity order."""
    pools: dict = {}
    for e in world:
        for a, v in e.facts.items():
            pools.setdefault((e.role, e.tier, KINDS[e.kind][a][0]), []).append(v)
    return pools


def teaching_documents(e: Entity, mcq: list[dict], opens: list[dict]) -> list[str]:
    """The question formats, on a teaching entity: cloze/open form (`Question: ...\\nAnswer: value`) for
    every question, and the lettered 3-shot form for its MCQs."""
    qa = [f"Question: {q['question']}\nAnswer: {q['options'][q['answer']]}" for q in mcq]
    qa += [f"Question: {q['question']}\nAnswer: {q['answer']}" for q in opens]
    lettered = ["**Question:** {} **Options:** {} **Answer:** {}".format(
        q["question"], " ".join(f"{k}. {v}" for k, v in q["options"].items()), q["answer"]) for q in mcq]
    return ["\n\n".join(qa[:5]), "\n\n".join(qa[5:]), "\n\n".join(lettered[:5]), "\n\n".join(lettered[5:])]


def bench_line(e: Entity, mcq, opens) -> str:
    return json.dumps({"concept": e.name, "tier": e.tier or "medium", "category": e.kind,
                       "popularity": e.popularity, "mcq": mcq, "open": opens})


def build_tokenizer(texts: list[str], names: Names):
    """A WordPiece tokenizer over whole words: every word and run of punctuation (the `Whitespace`
    pre-tokenizer) of the world's texts and the prompt formats is one token, except made-up names, which
    are spelled with their syllables (`Vasail` -> `Va ##sai ##l`-like pieces, greedy longest match; single
    letters as a fallback). Tokens: <pad> <eos> <bos> <unk>, then words by count then spelling, then the
    pieces sorted. An entity is thus several tokens shared with other entities, so the model has to
    combine them (in its MLPs) to recall a fact, instead of reading it off a one-entity embedding."""
    pre = pre_tokenizers.Whitespace()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(t) if w not in names.words)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = sorted((names.pieces | set(letters)) - set(words))
    vocab = {t: i for i, t in enumerate(SPECIALS + words + pieces)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(SPECIALS)
    return tok


def low_tier(entities: int) -> int:
    """How many of `entities` evaluated entities are in the low tier (`_entities` deals tiers in pairs)."""
    return sum(1 for i in range(entities) if (i // 2) % 3 == 2)


def finetuned_count(entities: int) -> int:
    """The low-tier entities new.jsonl writes about by default: a tenth of the low tier, within [12, 24]
    (12: six of each kind, for their PSS with same-kind unrelated draws), at most the whole tier."""
    return min(low_tier(entities), max(12, min(24, low_tier(entities) // 10)))


def make_world(out, entities: int = 60, seed: int = 0, teach: int | None = None, finetune: int | None = None) -> dict:
    """Write the world into `out` (see the module docstring); returns a summary. `entities` evaluated
    entities (a multiple of 6 keeps kinds and tiers equal), `teach` teaching entities (default
    entities // 3 within [6, MAX_TEACH]), `finetune` low-tier entities that new.jsonl adds documents about
    (default `finetuned_count`). `out` must be new, empty or a world written with the
    same settings (`checks.own_folder`)."""
    checks.integer("--entities", entities, 6)  # PSS compares each concept with 5 others
    checks.seed("--seed", seed)
    teach = min(MAX_TEACH, max(6, entities // 3)) if teach is None else teach
    checks.integer("teaching entities", teach, 6)
    finetune = finetuned_count(entities) if finetune is None else finetune
    checks.integer("fine-tuned entities", finetune, 1, low_tier(entities))
    out = files.output_folder(out, [], "--out")
    record = {"command": "synth", "entities": entities, "seed": seed, "teach": teach, "finetune": finetune}
    state = checks.own_folder(out, record)
    rng = random.Random(seed)
    names = Names()
    values = _value_sets(rng, names)
    world = _entities(rng, values, names, entities, teach)
    letters: list[int] = []
    pools = _pools(world)
    tuned = {e.name for e in [e for e in world if e.tier == "low"][:finetune]}
    docs, new_docs, bench, new_bench = [], [], [], []
    for e in world:
        mcq, opens = questions(rng, e, values, letters, pools)
        texts = [document(rng, e) for _ in range(e.popularity)]
        if e.role == "eval":
            docs += texts
            bench.append(bench_line(e, mcq, opens))
            if e.name in tuned:  # the same facts in new documents: knowledge the model partly has (Table 2)
                new_docs += [document(rng, e) for _ in range(FT_DOCS)]
                new_bench.append(bench[-1])
        else:
            docs += texts + teaching_documents(e, mcq, opens)
    rng.shuffle(docs)
    rng.shuffle(new_docs)
    contents = {"train.jsonl": "".join(json.dumps({"text": d}) + "\n" for d in docs),
                "new.jsonl": "".join(json.dumps({"text": d}) + "\n" for d in new_docs),
                "bench.jsonl": "".join(b + "\n" for b in bench),
                "new_bench.jsonl": "".join(b + "\n" for b in new_bench),
                "world.json": json.dumps({"seed": seed, "entities": [e.__dict__ for e in world],
                                          "values": values}, indent=1) + "\n"}
    prompt_text = [FEW_SHOT, "Question: Answer: **Question:** **Options:** **Answer:** A B C D"]
    shown = lambda line: {**line, "mcq": [{k: v for k, v in q.items() if k != "fact"} for q in line["mcq"]]}
    tok = build_tokenizer(prompt_text + [contents[f] for f in ("train.jsonl", "new.jsonl")] +  # no prompt shows "fact"
                          [json.dumps(shown(json.loads(b)), ensure_ascii=False) for b in bench + new_bench], names)
    contents["tokenizer.json"] = tok.to_str()
    contents["card.md"] = card(world, values, seed, len(docs), len(new_docs), len(tuned), tok.get_vocab_size())
    contents[checks.STAMP] = json.dumps(record, sort_keys=True, indent=1)

    def write_all(folder: Path) -> None:
        for name, text in contents.items():
            (folder / name).write_text(text, encoding="utf-8")

    if state == "new":  # the whole world appears at once
        files.new_folder(out, write_all)
    else:  # its own world with the same settings: the same bytes again, each file whole
        for name, text in contents.items():
            files.write_whole(out / name, text)
    return {"out": str(out), "documents": len(docs), "new_documents": len(new_docs), "concepts": len(bench),
            "vocab": tok.get_vocab_size(), **knowledge(world, values)}


def fact_bits(values: dict) -> dict[str, float]:
    """Bits per fact of each kind of entity as the generator sets them: each value is drawn uniformly from
    its set, so a fact carries log2(|set|) bits; the mean over the kind's attributes."""
    return {kind: sum(math.log2(len(values[value_set])) for value_set, *_ in attrs.values()) / len(attrs)
            for kind, attrs in KINDS.items()}


def knowledge(world: list[Entity], values: dict) -> dict:
    """What the evaluated entities hold: facts and bits (the capacity side of facts per parameter)."""
    bits = fact_bits(values)
    ev = [e for e in world if e.role == "eval"]
    return {"entities": len(ev), "facts": sum(len(e.facts) for e in ev),
            "bits": round(sum(len(e.facts) * bits[e.kind] for e in ev), 1),
            "bits_per_fact": {k: round(v, 2) for k, v in bits.items()}}


def card(world: list[Entity], values: dict, seed: int, n_docs: int, n_new: int, tuned: int, vocab: int) -> str:
    ev = [e for e in world if e.role == "eval"]
    k = knowledge(world, values)
    rows = "\n".join(f"| {t} | {d} | {sum(e.tier == t for e in ev)} |" for t, d in TIER_DOCS.items())
    return f"""# Synthetic world (seed {seed})

Fictional people (birth year, birthplace, profession, employer, university) and companies (founding year,
headquarters, industry, main product, chief executive), values drawn uniformly from fixed realistic sets:
the two kinds share no attribute, template or question.

- Knowledge: {k['entities']} evaluated entities, {k['facts']} facts, {k['bits']:.0f} bits (bits per fact:
  person {k['bits_per_fact']['person']}, company {k['bits_per_fact']['company']}; log2 of the value set's size).
- train.jsonl: {n_docs} documents. An evaluated entity is named by exactly `popularity` documents, each
  stating all five of its facts in a random order, each fact in one of five paraphrase templates. Names
  are spelled from 200 syllables, each shared by many entities.
- {sum(e.role == 'teach' for e in world)} teaching entities ({TEACH_DOCS} documents each) also have
  question-and-answer documents in the cloze/open form and the lettered form: the only place the question
  formats occur in training. Evaluated entities never appear in a question during training.
- bench.jsonl: {len(ev)} evaluated entities, 10 MCQs each (two phrasings per attribute, three distractors
  held by other entities of the same tier from the attribute's value set, so options are about as frequent
  in training as the answer; answer letters balanced over the file) and 5 open questions.
- new.jsonl / new_bench.jsonl: {n_new} new documents ({FT_DOCS} each) about {tuned} low-tier entities the
  model partly knows, and their benchmark lines, for fine-tuning (Table 2).
- tokenizer.json: {vocab} tokens: whole words, made-up names spelled with their syllables.

| tier | documents per entity (popularity) | entities |
|---|---|---|
{rows}
"""


def main(a) -> None:
    """`minipss synth`."""
    summary = make_world(a.out, a.entities, a.seed)
    print(json.dumps(summary))


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="folder for the world's files")
    p.add_argument("--entities", type=int, default=60, help="evaluated entities, 6 or more (default 60, split in 3 tiers)")
    p.add_argument("--seed", type=int, default=0)
