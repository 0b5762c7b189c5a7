"""Option types the commands share: integers in range, checked as the command line is parsed."""

import argparse


def at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def numbers(text: str) -> list[float]:
    """An argparse type: comma-separated numbers, at least one."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def dtype_option(p: argparse.ArgumentParser, choices=("float32", "bfloat16", "float16"), what: str = "") -> None:
    """`--dtype`, `auto` by default: bf16 where a bf16 product is measured faster, else fp32 (METHOD.md §10)."""
    p.add_argument("--dtype", default="auto", choices=["auto", *choices],
                   help=f"{what}auto (default): bf16 where a bf16 product of the model's shape is measured "
                        "faster than fp32 (a CUDA device that supports it; a CPU with bf16 units), else fp32")
