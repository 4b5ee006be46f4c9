"""Creating logins outside the API: the CLI's ``create-user`` and the demo's admin."""

from __future__ import annotations

import psycopg

from web import auth, customer_views

DEMO_ADMIN = "admin"


def create_user(database_url: str, name: str, role: auth.Role,
                customer: str | None = None) -> str:
    """Create a user and return the generated password (raises AuthError if taken). A
    ``customer`` login is linked to that billing customer (UnknownCustomer if none)."""
    with psycopg.connect(database_url) as conn:
        user_id, password = auth.create_user(conn, name, role, created_by="cli")
        if customer is not None:
            customer_views.link_login(conn, user_id, customer)
    return password


def create_token(database_url: str, name: str, label: str = "") -> str:
    """A new API token for an existing user (raises AuthError if there is no such user)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id FROM web_users WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise auth.AuthError(f"no user named {name!r}")
        _, token = auth.create_token(conn, int(row[0]), label)
    return token


def ensure_demo_user(database_url: str, name: str = DEMO_ADMIN) -> tuple[str, str]:
    """An admin login for the demo: (username, password).

    The password is new on every call (only its hash is stored, so an old one cannot be
    shown again); each demo run passes its own ``name``, so two demos on one database do
    not reset each other's login."""
    password = auth.new_password()
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO web_users (name, role, password_hash, created_by)"
            " VALUES (%s, 'admin', %s, 'demo')"
            " ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,"
            " role = 'admin', disabled = false",
            (name, auth.hash_password(password)),
        )
    return name, password
