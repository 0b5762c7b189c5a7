"""The layers of the package: each imports only the ones below it (README, "A tour of the code").

    files, model <- method, weights <- run <- applications (study, finetune, synth, perf, walkthrough) <- cli

`files` (reading and writing safely) and `model` import nothing of minipss; `weights` needs only those two.
Below them all, generic modules that import nothing else from minipss: `interrupts` (a clean stop on
SIGINT or SIGTERM, failed writes named) and `lock` (one live run per output); any floor may use them.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "minipss"
FLOORS = {"interrupts": -1, "lock": -1, "files": 0, "model": 0, "method": 1, "weights": 1, "run": 2,
          "study": 3, "finetune": 3, "synth": 3, "perf": 3, "walkthrough": 3, "cli": 4, "__main__": 5}


def imports(path: Path) -> set[str]:
    """The top-level parts of minipss (`model`, `run`, ...) that one file imports."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ["minipss", *here[:-1]][: len(here) - node.level + 1]
            names = base[1:] + (node.module.split(".") if node.module else [])
            found |= {names[0]} if names else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minipss."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("minipss.")}
    return found


def test_every_part_is_on_a_floor():
    parts = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(FLOORS), parts - set(FLOORS)


def test_each_part_imports_only_the_floors_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).with_suffix("").parts[0]
        if part == "__init__":  # the package's face: load_model, load_tokenizer, benchmark_path
            assert imports(path) <= {"model", "method"}
            continue
        for other in imports(path) - {part}:
            if FLOORS[other] >= FLOORS[part] or FLOORS[part] < 0:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, wrong


def test_the_check_sees_what_a_file_imports():
    """The parser finds what a file imports, relative or absolute, so the test above can fail."""
    file = PACKAGE / "method" / "pss.py"
    assert "model" in imports(file) and "run" not in imports(file)
    assert {"method", "model", "run"} <= imports(PACKAGE / "run" / "pipeline.py")
    assert imports(PACKAGE / "weights" / "gguf_convert.py") == {"files", "interrupts", "model", "weights"}
