"""GLUE: fine-tuning BERT on the nine tasks, sweeping lrs x seeds, scoring and submitting.

    from bert_jax.glue import features, sweep, tasks
    task = tasks.get_task("RTE")
    summary = sweep.sweep(config, ["RTE"], "bert-base-cased", "glue_data", "runs/glue")

One module per job, in the order a run goes through them:
  tasks       the task registry (labels, metrics, files) and the TSV / `datasets` readers
  features    tokenising examples, a run's data, length-bucketed batches
  packed      the same batches packed, several examples a row (--config.packing)
  finetune    one fine-tuning run (task, lr, seed) into its own directory
  metrics     the official metrics and the GLUE score
  classifier  a fine-tuned model: predictions, load / export / classify a saved run
  sweep       tasks x lrs x seeds, resumable (finished runs are kept)
  reports     the summary, results.md / .csv / .png
  submission  the test-server TSVs and their zip
`bert-jax glue` and `bert-jax predict` (commands/glue.py) call these; configs/glue.py holds
the recipe.
"""
