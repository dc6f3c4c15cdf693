"""Run the Autobahn WebSocket test cases (kosoku) against the production server stack.

    python -m tests.conformance.autobahn [--server uvicorn|daphne] [--max-frame-bytes N] [--cases 9.*]

starts `manage.py serve` on a free port with the test-only echo route (CHAT_ECHO_ROUTE=true,
never on in production), runs every case through it, writes Autobahn's HTML and JSON
reports, prints a summary and exits non-zero if a case failed for a reason not explained
below. `make autobahn` runs it; docs/reliability.md records the result.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fnmatch
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ.setdefault("SECRET_KEY", "conformance-test-secret-key-not-for-production-0123456789")

from tests.integration import servers

ECHO_PATH = "/ws/echo/"
KOSOKU = str(Path(sys.executable).with_name("kosoku"))  # installed by requirements-dev.txt
RUN_TIMEOUT = 600  # seconds; the whole suite takes about 10 under uvicorn, 35 under daphne

# Cases that fail by design, each with the reason; anything else failing is a finding.
COMPRESSION = "permessage-deflate is off on purpose (CPU and a zlib context per socket; see serve.py)"
FRAME_LIMIT = "larger than CHAT_MAX_FRAME_BYTES: the server closes with 1009, as the protocol says"
FRAGMENTED_CLOSE = (
    "a close frame in the middle of a fragmented message: the websockets library (uvicorn's "
    "protocol) fails the connection with 1002 'incomplete fragmented message' instead of 1000"
)

DAPHNE_EMPTY = "daphne silently drops an empty frame that the application sends (not the production server)"
# The cases whose echo is one or more empty messages.
EMPTY_MESSAGE_CASES = {"1.1.1", "1.2.1", "6.1.1", "6.1.2", "9.7.1", "9.8.1"}


@dataclass(frozen=True)
class Outcome:
    case_id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    explanation: str | None  # why a case that did not pass is fine; None for a real failure

    @property
    def passed(self) -> bool:
        return self.behavior in {"OK", "NON-STRICT", "INFORMATIONAL"} and self.behavior_close in {
            "OK",
            "INFORMATIONAL",
        }


def explain(server: str, case_id: str, behavior: str, close_code: int | None) -> str | None:
    if fnmatch.fnmatch(case_id, "12.*") or fnmatch.fnmatch(case_id, "13.*"):
        return COMPRESSION if behavior == "UNIMPLEMENTED" else None
    if fnmatch.fnmatch(case_id, "9.*") and close_code == 1009:
        return FRAME_LIMIT
    if case_id == "7.1.5" and close_code == 1002:
        return FRAGMENTED_CLOSE
    if server == "daphne" and case_id in EMPTY_MESSAGE_CASES:
        return DAPHNE_EMPTY
    return None


def serve_command(port: int, server: str) -> list[str]:
    """`manage.py serve`, as production starts it; chat.E001 (no Redis) is skipped: echo needs none."""
    manage = str(servers.ROOT / "manage.py")
    address = ["--host", "127.0.0.1", "--port", str(port)]
    return [servers.PYTHON, manage, "serve", "--server", server, *address, "--skip-checks"]


async def run(
    *, server: str, max_frame_bytes: int | None, cases: list[str] | None, workdir: Path, parallelism: int = 2
) -> list[Outcome]:
    """Start the server with the echo route, run the cases, stop the server."""
    env = servers.server_env(workdir / "db.sqlite3", CHAT_ECHO_ROUTE="true", CHAT_RATE_LIMIT="0")
    if max_frame_bytes is not None:
        env["CHAT_MAX_FRAME_BYTES"] = str(max_frame_bytes)
    port = servers.free_port()
    log = workdir / f"{server}-{port}.log"
    process = servers.spawn(serve_command(port, server), env=env, log=log)
    chat = servers.Server(port=port, process=process, log=log)
    reports = workdir / "reports"
    try:
        await asyncio.to_thread(servers.wait_until_healthy, chat)
        # kosoku in a process of its own: it imports Autobahn's py2-era case files through
        # shims, which a process that already imported the real autobahn (daphne's) cannot.
        command = [KOSOKU, f"ws://127.0.0.1:{port}{ECHO_PATH}", "-p", str(parallelism), "-o", str(reports)]
        for case in cases or []:
            command += ["-i", case]
        kosoku = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.wait_for(kosoku.wait(), timeout=RUN_TIMEOUT)
    finally:
        servers.stop(process)
    # kosoku exits 1 when any case did not pass; the report has every verdict either way.
    (results,) = json.loads((reports / "index.json").read_text()).values()
    return sorted(
        (
            Outcome(
                case_id=case_id,
                behavior=result["behavior"],
                behavior_close=result["behaviorClose"],
                remote_close_code=result.get("remoteCloseCode"),
                explanation=explain(server, case_id, result["behavior"], result.get("remoteCloseCode")),
            )
            for case_id, result in results.items()
        ),
        key=lambda outcome: [int(part) for part in outcome.case_id.split(".")],
    )


def summary(outcomes: list[Outcome]) -> str:
    verdicts = collections.Counter(outcome.behavior for outcome in outcomes)
    lines = [f"{len(outcomes)} cases: " + ", ".join(f"{n} {v}" for v, n in verdicts.most_common())]
    explained = collections.Counter(o.explanation for o in outcomes if not o.passed and o.explanation)
    for reason, count in explained.most_common():
        lines.append(f"  {count} explained: {reason}")
    for outcome in outcomes:
        if not outcome.passed and outcome.explanation is None:
            lines.append(
                f"  UNEXPLAINED {outcome.case_id}: {outcome.behavior}/{outcome.behavior_close} "
                f"close {outcome.remote_close_code}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("uvicorn", "daphne"), default="uvicorn")
    parser.add_argument("--max-frame-bytes", type=int, default=None, help="CHAT_MAX_FRAME_BYTES for the run")
    parser.add_argument("--cases", action="append", help="case id or glob (repeatable); default all")
    parser.add_argument("--outdir", type=Path, default=None, help="where reports go (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.outdir or Path(tempfile.mkdtemp(prefix="autobahn-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outcomes = asyncio.run(
        run(server=args.server, max_frame_bytes=args.max_frame_bytes, cases=args.cases, workdir=workdir)
    )
    print(summary(outcomes))
    print(f"reports: {workdir / 'reports' / 'index.html'}")
    return 1 if any(not o.passed and o.explanation is None for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
