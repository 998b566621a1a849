"""Metering roll-ups and pricing arrive with the execution engine; the app is registered so migrations and
imports have a stable home."""
