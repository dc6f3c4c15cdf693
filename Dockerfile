# syntax=docker/dockerfile:1
# The chat server: `manage.py serve` (uvicorn, WEB_CONCURRENCY worker processes) as a
# non-root user. compose.yaml runs it with Redis, PostgreSQL, the emitter and nginx.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY manage.py ./
COPY chatproject ./chatproject
COPY chat ./chat
COPY templates ./templates
COPY static ./static

# collectstatic needs settings, not secrets: a throwaway key for the build step only.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --no-create-home chat \
    && mkdir -p /app/data && chown chat /app/data

USER 10001
ENV DATABASE_URL=sqlite:////app/data/db.sqlite3 \
    WEB_CONCURRENCY=1
EXPOSE 8000

# /healthz answers only a Host that ALLOWED_HOSTS accepts (Django refuses others with 400),
# so the probe names the first allowed host rather than 127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; h = os.environ.get('ALLOWED_HOSTS', 'localhost').split(',')[0].lstrip('.*') or 'localhost'; sys.exit(u.urlopen(u.Request('http://127.0.0.1:8000/healthz', headers={'Host': h}), timeout=4).status != 200)"]

CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
