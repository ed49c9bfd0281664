"""Prefect flows and deployments. They orchestrate DVC stages and the MLflow registry only."""

import logging

# the CLI logs at INFO; Prefect's client would add a line for every HTTP request it makes
logging.getLogger("httpx").setLevel(logging.WARNING)
