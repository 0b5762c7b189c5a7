"""The method: benchmark, prompts, locating and masking, scoring, the run, the report."""
