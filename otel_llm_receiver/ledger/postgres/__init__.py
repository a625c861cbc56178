"""The shared PostgreSQL ledger (``storage.backend: postgresql``): active-active replicas, issue 21.

* ``connect``: one psycopg 3 connection with timeouts and an ``application_name``; one-line errors, password
  redacted;
* ``schema``: the SQLite schema's twin plus ``leases`` and ``replicas``, migrated under an advisory lock;
* ``leases``: who polls which provider instance (leases with epochs on the database clock), ``fence()`` for the
  apply transaction, the fair-share assignment and the ``@leader`` lease.

Nothing here is imported unless a config selects PostgreSQL: psycopg is the ``postgresql`` extra.
"""
