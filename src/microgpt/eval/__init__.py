"""Evaluation above the model: loss on a split of prepared data, HellaSwag, and the data a checkpoint records.

The loop that computes a loss is one function, :func:`microgpt.common.loss_eval.evaluate`.
"""
