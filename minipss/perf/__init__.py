"""Speed: the benchmark of the masked evaluation and the transformers reference."""
