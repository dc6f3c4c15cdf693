"""Settings of the Channels tutorial chat (docs: Tutorial parts 1-3), served by daphne.

Kept as the tutorial has it: AuthMiddlewareStack, AllowedHostsOriginValidator and the
in-memory channel layer with its defaults (capacity 100 per channel). Nothing is stored.
"""

import os

SECRET_KEY = os.environ.get("SECRET_KEY", "tutorial-comparison-app-not-for-production")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "tutorial_chat",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tutorialsite.urls"
ASGI_APPLICATION = "tutorialsite.asgi.application"
# The tutorial's sessions live in the database; a client without a cookie never
# touches it, so an in-memory SQLite database that is never migrated is enough.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
