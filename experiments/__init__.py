"""Ablation studies on the pre-training recipe: variants, driver, recorded results.

Run from the repository root: `python -m experiments.run_ablation --help`; see
experiments/README.md for the study recorded here and the command that reproduces it.
"""
