"""Fine-tuning chosen value vectors (§5): the trainer, the experiment, hallucination metrics."""
