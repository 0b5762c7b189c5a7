"""The paper's method on a loaded model: the benchmark (§3.4), prompts, coefficients and locating (§3.2,
Eq. 5), masks (Eq. 4), the three scoring modes and the many-mask evaluator (§4.1), PSS (Eq. 6), and
training only chosen value vectors (§5). Imports only `minipss.model`."""
