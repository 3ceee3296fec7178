"""FLOP counts of BERT steps, for throughput and model-FLOPs utilisation (MFU).

Matmul FLOPs only (2 per multiply-add); softmax, LayerNorm and the like are a few
percent and left out, as is usual for MFU. One sequence of length S, forward:
  encoder    L * (2*S*(4*H*H + 2*H*I)   q, k, v, out projections and the FFN
                  + 4*S*S*H)             scores QK^T and context PV
  MLM head   2*P*(H*H + H*V)             transform + tied decoder, at P positions
             (P = S when all positions are projected)
  pooler+NSP 2*(H*H + 2*H)                 (the MLM-only model: its pooler, 2*H*H)
With P masked positions the last layer runs only at R = 1 + P rows ([CLS] and the
masked positions; the model computes nothing else there), so its term is
  2*S*2*H*H + 2*R*(2*H*H + 2*H*I) + 4*R*S*H    k, v at every row; the rest at R.
A training step costs 3x the forward (backward = 2x forward). For bert-base at
S=128, P=20 this is 65.9 GFLOP per sequence (69.8 with the full last layer, RECIPE.md's
~70 GFLOP).
"""

from __future__ import annotations

from bert_jax.config import BertConfig

# Dense peak FLOP/s per device (bf16 unless noted), by substring of jax's device_kind.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "TPU v3": 123e12,
}


def encoder_flops(cfg: BertConfig, seq_len: int, last_layer_rows: int | None = None) -> float:
    """Matmul FLOPs of one sequence through the encoder; `last_layer_rows` R: the last
    layer computes only R rows (they attend to all S)."""
    h, i, s = cfg.hidden_size, cfg.intermediate_size, seq_len

    def layer(rows: int) -> int:  # k, v at all S rows; q, out, FFN and attention at `rows`
        return 2 * s * 2 * h * h + 2 * rows * (2 * h * h + 2 * h * i) + 4 * rows * s * h

    last = layer(s if last_layer_rows is None else last_layer_rows)
    return float((cfg.num_hidden_layers - 1) * layer(s) + last)


def forward_flops(cfg: BertConfig, seq_len: int, predictions: int | None = None,
                  nsp: bool = True) -> float:
    """Matmul FLOPs of one sequence's pre-training forward pass: the MLM head at
    `predictions` masked positions (the last layer then runs at [CLS] and those only),
    or, with `predictions=None`, at every position."""
    h, v = cfg.hidden_size, cfg.vocab_size
    p = seq_len if predictions is None else predictions
    encoder = encoder_flops(cfg, seq_len, None if predictions is None else 1 + predictions)
    mlm = 2 * p * (h * h + h * v)
    pooler = 2 * (h * h + 2 * h) if nsp else 2 * h * h
    return float(encoder + mlm + pooler)


def train_flops(cfg: BertConfig, seq_len: int, predictions: int | None = None,
                nsp: bool = True) -> float:
    """Matmul FLOPs of one sequence's training step (forward + backward = 3x forward)."""
    return 3.0 * forward_flops(cfg, seq_len, predictions, nsp)


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override if given, else the table, else None."""
    if override_tflops:
        return override_tflops * 1e12
    for name, value in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return value
    return None
