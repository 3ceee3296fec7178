"""Scores a pre-trained model on held-out pre-training data: `bert-jax evaluate`.

    from bert_jax.train.evaluate import evaluate
    evaluate("bert-base-cased", "data/eval128")  # {"masked_lm_accuracy": ..., ...}

The model is anything `weights.load_pretrained` reads (a hub name, an HF or TF
directory, a bert-jax workdir); its head is the one the checkpoint was saved with. The
data is a `create-data` directory; its pair task picks the objective from the registry
(heads.OBJECTIVES): NSP data gives next_sentence_*, SOP data sentence_order_*, and a
model without the pair head (or data without pairs) gives the MLM metrics alone. Every
example is visited once, with the masks stored in the data; the metrics are the
pre-training eval step's (train/step.py), sums over all examples divided once at the end.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from tqdm import tqdm

from bert_jax import heads, sharding, weights
from bert_jax.data import PretrainingLoader
from bert_jax.data.create import vocab_facts
from bert_jax.errors import UserError
from bert_jax.train import programs as programs_lib
from bert_jax.train import step as step_lib


def evaluate(model: str, data_dir: str, *, batch_size: int = 32,
             max_batches: int | None = None, mesh_shape: tuple[int, ...] = (-1, 1, 1),
             progress: bool = True) -> dict[str, Any]:
    """The MLM (and NSP or SOP) metrics of `model` on the data in `data_dir`."""
    loaded = weights.load_pretrained(model, head="auto")
    loader = PretrainingLoader(data_dir, batch_size // jax.process_count(), shuffle=False,
                               repeat=False, drop_remainder=False,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    check_data_vocab(loaded, loader, model, data_dir)
    name = heads.objective_for_data(loaded.head, loader.pair_objective)
    spec = heads.objective(name)
    mesh = sharding.make_mesh(mesh_shape)
    sharding.check_batch(batch_size, mesh)
    # The program factory pre-training uses; nothing trains, so no optimizer state (the
    # train step it also makes is never called, hence never compiled).
    programs = programs_lib.build(loaded.config, spec.head, spec.make, optax.identity(), None,
                                  mesh)
    param_shardings = programs.state_shardings.params
    # A pre-training model scored on data without pairs: the MLM head's params only.
    params = jax.device_put({k: loaded.params[k] for k in param_shardings}, param_shardings)
    eval_step = programs.eval_step
    count = len(loader) if max_batches is None else min(len(loader), int(max_batches))
    batches = (loader.batch(0, i) for i in range(count))
    bar = tqdm(batches, total=count, desc="evaluate", unit="batch", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    metrics = step_lib.run_eval(eval_step, params, bar, mesh)
    examples = min(loader.num_examples, count * batch_size)
    return {"model": str(model), "data": str(data_dir), "head": loaded.head,
            "objective": name, "checkpoint_step": loaded.report.step,  # None: not a workdir
            "examples": examples, "batches": count, **metrics}


def check_data_vocab(loaded: weights.Pretrained, loader: PretrainingLoader, model: str,
                     data_dir: str) -> None:
    """Token ids mean nothing under another vocab: refuse data made with a different one."""
    meta = loader.metadata
    if int(meta["vocab_size"]) > loaded.config.vocab_size:
        raise UserError(f"{data_dir} was made with a {meta['vocab_size']}-token vocab; "
                        f"{model} has {loaded.config.vocab_size} word embeddings")
    if loaded.tokenizer is not None:
        if vocab_facts(loaded.tokenizer)["vocab_sha256"] != meta["vocab_sha256"]:
            raise UserError(f"{data_dir} was made with another vocab than {model}'s "
                            "(vocab_sha256 differs); make the data with the model's vocab")
