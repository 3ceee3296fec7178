"""The `bert-jax` subcommands, one module per group; see `bert_jax.cli`."""
