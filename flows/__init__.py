"""Prefect flows and deployments. They orchestrate DVC stages and the MLflow registry only."""
