"""Test support shared by every tier: real-service helpers (`services`) and pytest fixtures (`fixtures`).

Nothing here imports the project: integration tests may, e2e tests must not.
"""
