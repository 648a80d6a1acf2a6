"""Prefect orchestration of the sdpose stages; no ML logic lives here."""
