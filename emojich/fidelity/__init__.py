"""Measures of what the pipeline draws that do not ask the generator.

- `colour`: colour error of the image tokenizer's reconstructions (CIELAB ΔE of block means).
- `retrieval`: does a generated image look like a real emoji of its prompt? The prompt's caption
  is ranked among all catalogue captions by the nearest real emoji under a fixed image feature.

May import `emojich.foundation` only.
"""
