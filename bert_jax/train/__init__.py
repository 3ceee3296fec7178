"""Training: the train state, the one train-step builder and program factory, objectives,
and the pre-training loop (GLUE fine-tuning is bert_jax.glue)."""
