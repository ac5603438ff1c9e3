"""One module per stage of dvc.yaml; each runs alone as `python -m stages.NAME`."""
