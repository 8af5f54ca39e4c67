"""The GPT model, its trainers, souping and generation."""
