"""Settings from the environment: safe defaults, loud mistakes, and the deployment check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatproject.settings import env_bool, env_list, env_number

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the project's Python with a clean chat environment plus `env`."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL"} and not name.startswith("CHAT_")
    }
    clean |= {
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_without_a_secret_key_refuses_to_start(tmp_path):
    result = run_python("-c", "import chatproject.settings", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set" in result.stderr
    assert "or set DEBUG=true for local development" in result.stderr


def test_development_without_a_secret_key_warns(tmp_path):
    result = run_python(
        "-c", "import chatproject.settings as s; print(s.SECRET_KEY)", tmp_path=tmp_path, DEBUG="true"
    )
    assert result.returncode == 0, result.stderr
    assert "SECRET_KEY is not set; using the development key" in result.stderr
    assert result.stdout.strip().startswith("django-insecure-")


def test_check_refuses_the_in_memory_layer_in_production(tmp_path):
    result = run_python("manage.py", "check", tmp_path=tmp_path, SECRET_KEY="k" * 50)
    assert result.returncode != 0
    assert "(chat.E001)" in result.stderr and "Set REDIS_URL" in result.stderr


def test_check_accepts_redis_without_connecting(tmp_path):
    """The check looks at the configured layer only: port 9 (discard) need not answer."""
    result = run_python(
        "manage.py", "check", tmp_path=tmp_path, SECRET_KEY="k" * 50, REDIS_URL="redis://127.0.0.1:9/0"
    )
    assert result.returncode == 0, result.stderr
    assert "chat.E001" not in result.stdout + result.stderr


def test_check_accepts_the_in_memory_layer_in_development(tmp_path):
    result = run_python("manage.py", "check", tmp_path=tmp_path, DEBUG="true", SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr


def test_bad_values_name_the_variable(tmp_path):
    result = run_python("-c", "import chatproject.settings", tmp_path=tmp_path, SECRET_KEY="k", DEBUG="maybe")
    assert result.returncode != 0 and "DEBUG='maybe' is not a yes/no value" in result.stderr


# --- the readers, in process ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), (" TRUE ", True), ("on", True), ("no", False), ("0", False)]
)
def test_yes_no_values(monkeypatch, raw, value):
    monkeypatch.setenv("CHAT_TEST_FLAG", raw)
    assert env_bool("CHAT_TEST_FLAG", not value) is value


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_unset_or_blank_means_the_default(monkeypatch, raw):
    if raw is None:
        monkeypatch.delenv("CHAT_TEST_VALUE", raising=False)
    else:
        monkeypatch.setenv("CHAT_TEST_VALUE", raw)
    assert env_bool("CHAT_TEST_VALUE", True) is True
    assert env_number("CHAT_TEST_VALUE", 7) == 7
    assert env_list("CHAT_TEST_VALUE", ["a"]) == ["a"]


def test_numbers_are_checked(monkeypatch):
    monkeypatch.setenv("CHAT_TEST_VALUE", "2.5")
    assert env_number("CHAT_TEST_VALUE", 1, integer=False) == 2.5
    with pytest.raises(ImproperlyConfigured, match="is not an integer"):
        env_number("CHAT_TEST_VALUE", 1)
    monkeypatch.setenv("CHAT_TEST_VALUE", "512")
    with pytest.raises(ImproperlyConfigured, match="must be at least 1024"):
        env_number("CHAT_TEST_VALUE", 65536, minimum=1024)


def test_host_lists_are_trimmed(monkeypatch):
    monkeypatch.setenv("CHAT_TEST_VALUE", " chat.example.com , ,localhost ")
    assert env_list("CHAT_TEST_VALUE", []) == ["chat.example.com", "localhost"]


def test_worker_timeout_must_cover_two_heartbeats(tmp_path):
    result = run_python(
        "-c",
        "import chatproject.settings",
        tmp_path=tmp_path,
        SECRET_KEY="k" * 50,
        CHAT_HEARTBEAT_SECONDS="10",
        CHAT_WORKER_TIMEOUT="15",
    )
    assert result.returncode != 0
    assert "CHAT_WORKER_TIMEOUT=15 must be at least twice CHAT_HEARTBEAT_SECONDS=10" in result.stderr


def test_presence_timeouts_default_to_15_and_60_seconds(tmp_path):
    result = run_python(
        "-c",
        "import chatproject.settings as s; print(s.CHAT_HEARTBEAT_SECONDS, s.CHAT_WORKER_TIMEOUT)",
        tmp_path=tmp_path,
        SECRET_KEY="k" * 50,
    )
    assert result.stdout.split() == ["15", "60"], result.stderr


def test_serve_refuses_several_workers_on_the_in_memory_layer(tmp_path):
    """Each worker would be a chat of its own."""
    result = run_python("manage.py", "serve", "--workers", "2", tmp_path=tmp_path, DEBUG="true")
    assert result.returncode != 0 and "Several workers need REDIS_URL" in result.stderr


def test_serve_workers_need_uvicorn(tmp_path):
    result = run_python(
        "manage.py",
        "serve",
        "--server",
        "daphne",
        "--workers",
        "2",
        tmp_path=tmp_path,
        SECRET_KEY="k" * 50,
        REDIS_URL="redis://127.0.0.1:9/0",
    )
    assert result.returncode != 0 and "--workers needs uvicorn" in result.stderr


def test_postgresql_connections_give_up_on_a_vanished_database(tmp_path):
    """libpq waits for ever by default; these turn a partition into an error within seconds."""
    result = run_python(
        "-c",
        "import json, chatproject.settings as s; print(json.dumps(s.DATABASES['default']['OPTIONS']))",
        tmp_path=tmp_path,
        DEBUG="true",
        DATABASE_URL="postgres://chat@127.0.0.1:5432/chat",
    )
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert options["connect_timeout"] == 5 and options["keepalives"] == 1
    assert options["keepalives_idle"] + options["keepalives_interval"] * options["keepalives_count"] <= 30
    assert options["tcp_user_timeout"] == 15_000
