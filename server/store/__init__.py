"""Stored data: SQLite by default, PostgreSQL when DATABASE_URL names it (see db.py)."""

from server.store.db import Database, database_url, open_database
from server.store.models import Account, Base, Role, Site, SiteLevel

__all__ = [
    "Account",
    "Base",
    "Database",
    "Role",
    "Site",
    "SiteLevel",
    "database_url",
    "open_database",
]
