"""Training: the train state, the one train-step builder, objectives, and the loops."""
