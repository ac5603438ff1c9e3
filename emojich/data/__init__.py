"""Data handling: the scraped catalogue, image normalisation and splits."""
