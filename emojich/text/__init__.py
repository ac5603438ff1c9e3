"""The text side: the BPE tokenizer (ours, or the published YouTokenToMe `bpe.model`).

May import `emojich.foundation` only.
"""
