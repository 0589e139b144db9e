"""Prefect flows of readl: ``retrain`` (scheduled, work pool ``cpu``) and ``train-on-gpu`` (work pool ``gpu``); see
prefect.yaml."""
