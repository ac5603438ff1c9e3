"""Models: the ruDALL-E-compatible transformer, the image tokenizer and the upscaler."""
