"""Throw-away instances of real services (PostgreSQL, sshd, Slurm) for tests.

Each module has a context manager that starts its service in a given temp
folder and stops everything it started on exit. Missing binaries raise
``_util.ServiceNotInstalled`` (a RuntimeError): run ``bash .ci/services.sh install``.
"""
