"""Logins of the web interface and the outbox's audit trail (issue 13, the approval desk).

``web_accounts``: one row per person who may approve, reject or edit outgoing messages
on the desk of ``mma-broker serve``: user name (unique), an Argon2id password hash
(argon2-cffi's encoded form, parameters and salt included), a ``disabled`` flag,
``session_epoch`` (a session cookie carries the epoch it was made under; logging out,
disabling or a new password moves it on, so every earlier cookie stops working at
once), created / last-login times.

``web_api_tokens``: bearer tokens for scripts (``mma-broker web tokens create``): only
the sha256 of a token is kept, with its account, a name, the expiry, the last use and
the revocation time.

``outbox_audit``: who approved, rejected, edited or retried an outbox entry and when,
with the state and the payload's sha256 before and after; written in the transaction of
the decision (:meth:`broker.sinks.outbox.Outbox._transition`). Deleted with its entry.

Privileges: nothing on ``web_accounts`` / ``web_api_tokens`` is granted to PUBLIC, and
if the read-only role of the pages (``mma_broker_web_ro``, ``mma-broker web
readonly-role``) exists already — its default privileges would give it SELECT on new
tables — its privileges on them are revoked here.

A branch from 0009 (the outbox). Definitions mirror
:func:`broker.web.auth.auth_tables` and :func:`broker.sinks.outbox.outbox_audit_table`.

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

ACTIONS = ("approve", "reject", "edit", "retry")


def upgrade() -> None:
    op.create_table(
        "web_accounts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False, comment="Argon2id, argon2-cffi encoded form"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0",
                  comment="moved on by logout, disable and a new password: older session cookies stop working"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_login_at", sa.TIMESTAMP(timezone=True), nullable=True),
    )
    op.create_table(
        "web_api_tokens",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("account_id", sa.BigInteger, sa.ForeignKey("web_accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default="", comment="what the token is for"),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True, comment="sha256 hex of the token"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.TIMESTAMP(timezone=True), nullable=True),
    )
    op.create_index("ix_web_api_tokens_account_id", "web_api_tokens", ["account_id"])
    op.create_table(
        "outbox_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("outbox_id", sa.BigInteger, sa.ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.Text, nullable=False, comment="approve | reject | edit | retry"),
        sa.Column("actor", sa.Text, nullable=False, comment="who: a desk login, a token's user, or --by of the CLI"),
        sa.Column("at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("state_before", sa.Text, nullable=False),
        sa.Column("state_after", sa.Text, nullable=False),
        sa.Column("sha256_before", sa.Text, nullable=False, comment="payload_sha256 before the decision"),
        sa.Column("sha256_after", sa.Text, nullable=False, comment="payload_sha256 after it (differs for an edit)"),
        sa.Column("detail", sa.Text, nullable=True, comment="reason of a rejection, what an edit changed"),
        sa.CheckConstraint("action IN ('" + "', '".join(ACTIONS) + "')", name="ck_outbox_audit_action"),
    )
    op.create_index("ix_outbox_audit_outbox_id", "outbox_audit", ["outbox_id", "id"])
    op.create_index("ix_outbox_audit_at", "outbox_audit", ["at"])
    op.execute("REVOKE ALL ON web_accounts, web_api_tokens FROM PUBLIC")
    op.execute("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mma_broker_web_ro') THEN "
               "REVOKE ALL ON web_accounts, web_api_tokens FROM mma_broker_web_ro; END IF; END $$")


def downgrade() -> None:
    op.drop_table("outbox_audit")
    op.drop_table("web_api_tokens")
    op.drop_table("web_accounts")
