"""Pre-training data: raw text -> sharded MLM(+NSP) instances -> a resumable batch loader.

    from bert_jax import data
    from bert_jax.tokenizer import Tokenizer

    vocab = data.train_vocab([str(data.demo_corpus_path())], "vocab", vocab_size=4000)
    tok = Tokenizer.from_vocab(vocab)
    data.create_pretraining_data([str(data.demo_corpus_path())], "demo128", tok)
    loader = data.PretrainingLoader("demo128", batch_size=32, seed=0)

Modules: `documents` (reading and splitting text, work units), `instances` (the
create_pretraining_data rules), `masking` (the masked-LM rules, static and dynamic),
`shards` (the on-disk format), `create` (the parallel, resumable writer), `loader`,
`vocab` (WordPiece training), `demo` (the generated demo corpus).
"""

from bert_jax.data.create import create_pretraining_data
from bert_jax.data.demo import demo_corpus_path
from bert_jax.data.loader import PretrainingLoader
from bert_jax.data.vocab import train_vocab

__all__ = ["PretrainingLoader", "create_pretraining_data", "demo_corpus_path", "train_vocab"]
