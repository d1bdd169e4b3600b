"""GPU throughput: images/s, share of peak, trials packed per GPU, checkpoints written."""
