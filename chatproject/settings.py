"""Settings for the chat server, read from the environment with safe defaults.

Every setting is documented, with its default and the reason for it, in
docs/deployment.md.
"""

import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import ConnectionError as RedisConnectionError

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no setting; anything unrecognised is a configuration error."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a yes/no value; use true or false.")


def env_number(name: str, default: float, *, minimum: float = 0, integer: bool = True) -> float:
    """Read a non-negative number setting; a malformed value is a configuration error."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ImproperlyConfigured(f"{name}={raw!r} is not {kind}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Core -------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)

_DEV_SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DEBUG=true for local development."
        )
    warnings.warn(
        "SECRET_KEY is not set; using the development key. Never do this in production.",
        stacklevel=1,
    )
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    # chat's `runserver` (daphne's, closing oversized frames with 1009) must win over
    # daphne's, which must win over staticfiles': commands of earlier apps take precedence.
    "chat",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chat.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Persistent connections: a chat server queries on every stored message.
        conn_max_age=int(env_number("DATABASE_CONN_MAX_AGE", 60)),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets readers (history) run while a message is written; NORMAL
            # sync is durable across process crashes, which is what WAL needs.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            # Take the write lock at BEGIN, so concurrent writers wait instead of
            # failing with "database is locked" halfway through a transaction.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # libpq's defaults wait for ever on a database that vanished without a reset (a
    # partition, a dead host): give up on a connect after 5 s, find a silent connection
    # with keepalives within about 25 s, and drop one whose writes go unacknowledged for
    # 15 s. The request then answers `unavailable` instead of hanging. (A database that
    # is frozen but whose host still acknowledges TCP is not caught: docs/reliability.md.)
    for option, value in {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(option, value)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ----------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
# Which channels-redis layer carries events between processes (docs/deployment.md):
# "pubsub" (default) publishes one Redis message per process and event; "core" keeps
# per-channel lists. At 300 messages/s to a room of 100, pubsub held p99 at 14 ms and
# 61% CPU where core fell behind (p99 1 s at 93% CPU).
CHAT_REDIS_LAYER = os.environ.get("CHAT_REDIS_LAYER", "pubsub").strip().lower()
if CHAT_REDIS_LAYER not in {"pubsub", "core"}:
    raise ImproperlyConfigured(f"CHAT_REDIS_LAYER={CHAT_REDIS_LAYER!r}: use pubsub or core.")
# How each process talks to Redis (redis-py connection options). After Redis restarts,
# every pooled connection is stale: one retry on a connection error reconnects instead of
# losing that publish. Timeouts turn a Redis that hangs into errors the hub recovers from
# (10 s is above the core layer's 5 s blocking read) instead of a process that waits forever.
REDIS_HOST = {
    "address": REDIS_URL,
    "retry_on_error": [RedisConnectionError],
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "socket_keepalive": True,
}
if REDIS_URL and CHAT_REDIS_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_HOST],
                # A separate prefix lets several deployments (or test runs) share one Redis.
                "prefix": os.environ.get("CHAT_CHANNEL_PREFIX", "chat") + ":",
            },
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_HOST],
                "prefix": os.environ.get("CHAT_CHANNEL_PREFIX", "chat"),
                # Each process has one channel that carries every event for its
                # sockets, so it needs room for bursts, not for one socket's backlog.
                "capacity": 10_000,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10_000, "expiry": 60},
        }
    }

# --- Sessions, auth, security -----------------------------------------------

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "chat:index"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG and env_bool("SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Django's defaults, written out because tests and docs/reliability.md rely on them.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# HTTPS: browsers honour HSTS only from a response over HTTPS, and SecurityMiddleware
# sends it only then, so a year's HSTS is harmless on a plain-HTTP development server.
SECURE_HSTS_SECONDS = int(env_number("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a promise for the whole domain, hard to take back: the owner's decision.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Off by default: a TLS proxy in front usually redirects itself, and this server may be
# reached over plain HTTP on a private network. Behind a proxy, use `serve --proxy-headers`.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
# security.W021 asks for SECURE_HSTS_PRELOAD, left to the owner (docs/deployment.md).
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Internationalisation and static files ----------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies are made by collectstatic; without it, files are served as found.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the source folders too, so `make run` needs no collectstatic
# (and WhiteNoise's warning about the missing STATIC_ROOT is noise until it runs).
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message=f"No directory at: {STATIC_ROOT}")

# --- Chat -------------------------------------------------------------------

CHAT_ALLOW_GUESTS = env_bool("CHAT_ALLOW_GUESTS", True)
# Long enough for a paragraph or a pasted snippet, short enough to keep rooms readable.
CHAT_MAX_MESSAGE_CHARS = int(env_number("CHAT_MAX_MESSAGE_CHARS", 4000, minimum=1))
# Generous for the largest valid message (4,000 emoji are 16 KB of UTF-8 plus JSON).
CHAT_MAX_FRAME_BYTES = int(env_number("CHAT_MAX_FRAME_BYTES", 64 * 1024, minimum=1024))
CHAT_RATE_LIMIT = env_number("CHAT_RATE_LIMIT", 20, integer=False)
CHAT_SERVER_EVENTS_INTERVAL = env_number("CHAT_SERVER_EVENTS_INTERVAL", 10, integer=False)
# Abuse limits (docs/protocol.md, "Limits"); 0 turns the first two off.
# A person follows a handful of rooms; a hundred is generous, and bounds what one socket subscribes.
CHAT_MAX_ROOMS_PER_CONNECTION = int(env_number("CHAT_MAX_ROOMS_PER_CONNECTION", 100))
# Tabs and devices of one person, with room to spare; counted per process.
CHAT_MAX_CONNECTIONS_PER_USER = int(env_number("CHAT_MAX_CONNECTIONS_PER_USER", 20))
# Bytes queued for a socket whose reader stopped reading (the kernel's buffers are full)
# before the server closes it with 4408: about 30 s of a busy room at 100 messages/s.
CHAT_MAX_SEND_BUFFER_BYTES = int(env_number("CHAT_MAX_SEND_BUFFER_BYTES", 1024 * 1024, minimum=16 * 1024))
# Seconds a client has to send its whole handshake request before the server hangs up.
CHAT_HANDSHAKE_TIMEOUT = env_number("CHAT_HANDSHAKE_TIMEOUT", 10, minimum=1, integer=False)
# Test only: /ws/echo/ echoes every frame verbatim, for the Autobahn conformance run.
CHAT_ECHO_ROUTE = env_bool("CHAT_ECHO_ROUTE", False)
# Presence that heals: every process records a heartbeat this often, and one silent for
# CHAT_WORKER_TIMEOUT is dead (killed, or cut off from the database): a live process then
# removes its members. Four beats fit in the timeout, so one slow beat is no death.
CHAT_HEARTBEAT_SECONDS = env_number("CHAT_HEARTBEAT_SECONDS", 15, minimum=0.1, integer=False)
CHAT_WORKER_TIMEOUT = env_number("CHAT_WORKER_TIMEOUT", 60, minimum=1, integer=False)
if CHAT_WORKER_TIMEOUT < 2 * CHAT_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"CHAT_WORKER_TIMEOUT={CHAT_WORKER_TIMEOUT:g} must be at least twice CHAT_HEARTBEAT_SECONDS="
        f"{CHAT_HEARTBEAT_SECONDS:g}, or a live process whose beat is a little late is declared dead."
    )

# `manage.py runserver` reads these, and `manage.py serve` passes the same limit to
# daphne; both close an oversized frame with 1009 (see chat/server.py). A bare
# `daphne` command line drops such a connection instead (the client sees 1006).
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = CHAT_MAX_FRAME_BYTES
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = CHAT_MAX_FRAME_BYTES

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "chat": {
            "handlers": ["console"],
            "level": os.environ.get("CHAT_LOG_LEVEL", "INFO"),
            "propagate": False,  # daphne configures the root logger too: once is enough
        },
    },
}
