"""A synthetic world where the causes are set: documents, pretraining, the studies."""
