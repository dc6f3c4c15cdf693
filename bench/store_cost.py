#!/usr/bin/env python3
"""What storing a room message costs the server: microseconds per message by batch size.

    .venv/bin/python bench/store_cost.py [--batches 1,8,64] [--rounds 200] [--database-url URL]

Runs the server's own batch store (chat.services._store_posts, in one transaction as
the server runs it) against a fresh migrated SQLite file, or the database you name, and
prints the median time per message for each batch size. No server, no sockets: this is
the storage part of a room message's cost, which fan-out benchmarks mix with the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,8,64", help="batch sizes (default 1,8,64)")
    parser.add_argument("--rounds", type=int, default=200, help="batches stored per size (default 200)")
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite:///{Path(tmp) / 'store_cost.sqlite3'}"
        os.environ.update(
            DJANGO_SETTINGS_MODULE="chatproject.settings",
            SECRET_KEY=os.environ.get("SECRET_KEY", "store-cost-benchmark-not-a-secret-0123456789abcdef"),
            DATABASE_URL=database_url,
        )
        migrate = [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "--skip-checks"]
        subprocess.run(migrate, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.db import transaction

        from chat.auth import Actor
        from chat.models import Room
        from chat.services import _Post, _store_posts

        room, _ = Room.objects.get_or_create(
            name="store-cost", defaults={"creator_key": "k", "creator_name": "n"}
        )
        actor = Actor(key="session:bench", name="guest-bench0")
        store = transaction.atomic(_store_posts)
        print(f"database {database_url.split('://')[0]}, {args.rounds} batches per size")
        for size in (int(n) for n in args.batches.split(",")):
            times = []
            for count in range(args.rounds):
                posts = [
                    _Post(room=room, actor=actor, body="x" * 64, count=count, connection="bench")
                    for _ in range(size)
                ]
                started = time.perf_counter()
                store(posts)
                times.append(time.perf_counter() - started)
            print(f"batch {size:4}: {statistics.median(times) / size * 1e6:7.1f} us per message (median)")


if __name__ == "__main__":
    main()
