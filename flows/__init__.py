"""Prefect flows around the DVC pipeline: schedules, retries on transient faults, run history, artifacts.

The flows run stages only through DVC (`dvc repro`, `dvc exp run --queue`), never by importing stage code,
so `dvc repro` alone stays a complete way to run the pipeline. Deployments are declared in `prefect.yaml`.
"""
