"""migration-runner: apply Alembic migrations safely at deploy time."""

__version__ = "0.1.0"
