"""The two-stage pipeline: tokenizer → web pretraining → fine-tuned ingredients → soups → evaluation → report."""
