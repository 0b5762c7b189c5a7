"""How far a bf16 computation may lie from the fp32 one, from bf16's rounding rather than a share of the
spread: bf16 keeps 8 significant bits, so each rounding moves a value by at most 2^-8 of it (the unit
roundoff). A decoder block rounds its input, its two residual branches and their sums; the head rounds
once more. Each such rounding errs by at most 2^-8 of the largest value it touches, and no value the
logits are summed from exceeds the logits' own largest magnitude by more than the model's depth allows,
so the bound is 2^-8 x (4 per block + 2) x the largest |logit|."""

UNIT_ROUNDOFF_BF16 = 2.0 ** -8


def bf16_bound(exact, layers: int) -> float:
    """Largest |bf16 - fp32| accepted on fp32 values `exact` of a model with `layers` blocks."""
    return UNIT_ROUNDOFF_BF16 * (4 * layers + 2) * float(exact.abs().max())
