"""The storage layer: every statement autofhe issues against a database, and how.

- :mod:`.engine`: this process's engines and Optuna storage (small pools, SQLite's write
  lock taken at BEGIN), the one retry policy, the driver-missing error, and the only SQL
  autofhe runs on Optuna's own tables (the heartbeat's look at running trials);
- :mod:`.tables`: autofhe's own tables (registered studies and their data, Pareto
  snapshots, front models as artifacts);
- :mod:`.locate`: storage URLs, finding a study, opening storage without creating anything;
- :mod:`.summary`: ``autofhe studies`` on SQLite read with the standard library alone.

Clients (the search, the heartbeat helper, the CLI) go through these modules, never through
SQLAlchemy or Optuna's storage internals. Modules import lazily: ``summary`` must not pull
in Optuna or SQLAlchemy.
"""
