"""bert-jax: a functional Flax BERT for pre-training, fine-tuning and inference.

Importing the package has no side effects; the submodules are imported where used.
"""

__version__ = "0.1.0"
