"""Data: the emoji catalogue (offline from installed packages, or crawled from the web), CLDR's
Russian names, image normalisation and the caption splits (the scrape and prepare stages).

May import `emojich.foundation` and `emojich.text`.
"""
