"""The system checks that refuse a deployment which would misbehave."""

from __future__ import annotations

from django.db import connection

from chat.checks import check_database


def test_database_check_passes_on_the_test_database():
    assert check_database(None, databases=["default"]) == []


def test_database_check_refuses_a_database_without_insert_returning(monkeypatch):
    monkeypatch.setattr(connection.features, "can_return_columns_from_insert", False)
    [error] = check_database(None, databases=["default"])
    assert error.id == "chat.E002" and "SQLite 3.35" in error.hint


def test_database_check_skips_when_no_database_is_checked():
    assert check_database(None, databases=None) == []
