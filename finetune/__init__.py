"""Evaluation: fine-tune and linear-probe runners for the downstream tasks, their metrics and the
pretraining proof."""
