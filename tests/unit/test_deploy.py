"""The deployment files, checked without a Docker engine: compose.yaml and nginx's config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
WEB = ("web1", "web2")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_file_follows_the_compose_spec():
    """The same schema `docker compose config` applies, vendored by check-jsonschema (offline)."""
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_every_part_of_a_deployment(services):
    assert set(services) == {"postgres", "redis", "migrate", *WEB, "emitter", "nginx"}
    for name in (*WEB, "emitter", "migrate"):
        assert services[name]["build"] == "."
    for name in WEB:
        assert services[name]["command"][:3] == ["python", "manage.py", "serve"]
        assert "--proxy-headers" in services[name]["command"]
    assert services["emitter"]["command"] == ["python", "manage.py", "emit_server_events"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"


def test_every_server_has_a_health_check_and_jobs_have_none(services):
    """The image's HTTP check would fail in the emitter and the migration job, which serve nothing."""
    for name in ("postgres", "redis", *WEB, "nginx"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name in ("emitter", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_start_order_follows_health(services):
    """Workers start on a migrated database and a live Redis; nginx once both workers answer."""
    for name in (*WEB, "emitter"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }, name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in WEB}


def test_every_process_of_the_app_shares_one_configuration(services):
    """One SECRET_KEY, one database and one Redis, or the workers are not one chat."""
    environments = [services[name]["environment"] for name in ("migrate", *WEB, "emitter")]
    for environment in environments:
        assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")  # required, no default
        assert environment["DATABASE_URL"].startswith("postgres://")
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        assert environment["DATABASE_URL"] == environments[0]["DATABASE_URL"]
    assert "--save" in services["redis"]["command"]


def test_nginx_config_proxies_to_the_web_services(services):
    """The proxy's upstream lists exactly the compose file's web services, and upgrades sockets."""
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    conf = NGINX_CONF.read_text()
    assert re.findall(r"^\s*server (\w+):8000\b", conf, flags=re.MULTILINE) == list(WEB)
    websocket = conf[conf.index("location /ws/") :]
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket
    assert "proxy_set_header Connection $connection_upgrade;" in websocket
    assert "proxy_set_header Host $http_host;" in websocket


def test_nginx_accepts_the_config(tmp_path):
    """`nginx -t` on the config, with the web services' names pointed at this machine."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        skip_or_fail("nginx is not installed (apt-get install nginx-core)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(local_nginx_conf(port=8080, upstreams=[18001, 18002], cache=tmp_path / "cache"))
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def local_nginx_conf(*, port: int, upstreams: list[int], cache: Path) -> str:
    """deploy/nginx.conf for a test: listening on `port`, proxying to local ports, cache in tmp."""
    conf = NGINX_CONF.read_text()
    for name, upstream in zip(WEB, upstreams, strict=True):
        conf = conf.replace(f"server {name}:8000", f"server 127.0.0.1:{upstream}")
    conf = conf.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    conf = conf.replace("/var/cache/nginx/static", str(cache))
    return conf.replace("events {", "error_log stderr;\n\nevents {", 1)
