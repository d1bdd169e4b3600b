"""One trial: the Ray trainable, its set-up sequence, checkpoints and what it reports."""
