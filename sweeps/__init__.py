"""Orchestration: Hydra entry points, grid expansion, Ray fan-out, MLflow, Parquet results."""
