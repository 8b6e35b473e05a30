"""Runs inside Parsl workers: the per-process registry of live contexts and the
model loaders. Imports nothing from faas.endpoint or faas.client."""
