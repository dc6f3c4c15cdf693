#!/usr/bin/env python3
"""Run the whole benchmark: every stack, every scenario, one command.

    .venv/bin/python bench/run.py --quick      # smoke run, under two minutes
    .venv/bin/python bench/run.py              # full run (tens of minutes)

For each stack it starts a fresh server on a free 127.0.0.1 port pinned to one core
(`taskset -c 0`), runs bench/loadgen.py pinned to the other (`taskset -c 1`), stops the
server, and goes on. Stacks:

  chat       this project as production serves it (`manage.py serve`: uvicorn), a
             fresh migrated SQLite database, in-memory channel layer, DEBUG off,
             rate limit off
  chat-daphne the same served by daphne (`manage.py serve --server daphne`)
  chat-redis the same with REDIS_URL set to a private redis-server (on the server's
             core), counting Redis commands per room message (full runs only,
             unless named in --stacks)
  tutorial   the Channels tutorial consumer (bench/compare/tutorial), daphne,
             in-memory layer, nothing stored
  socketio   the Flask-SocketIO demo, gevent (bench/compare/flask_socketio_demo,
             its own venv, created on first use)
  reference  a ~100-line picows server speaking the benchmark subset of the chat
             protocol, no storage: it shows the generator's own ceiling and latency
             floor on this machine (bench/compare/reference/server.py)

Writes bench/results/<stamp>.json (everything), <stamp>.md (the table) and
<stamp>.png (p99 latency against delivery rate), and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MAIN_PY = ROOT / ".venv" / "bin" / "python"
COMPARE = BENCH / "compare"
SIO_DIR = COMPARE / "flask_socketio_demo"
SIO_PY = SIO_DIR / ".venv" / "bin" / "python"
LOADGEN = BENCH / "loadgen.py"

# What the issue asks of this server, for the table's last row.
TARGETS = {
    "echo_rt_s": ">= 12,000",
    "echo_lat": "p99 <= 15",
    "f100": ">= 150,000",
    "f100_lat": "p50 <= 3",
    "f1000": ">= 128,000",
    "idle_kb": "<= 25",
    "idle_refused": "0",
}

PLANS: dict[str, dict[str, Any]] = {
    "quick": {
        "echo": {"conns": 50, "duration": 3, "warmup": 0.5},
        "fanout": [
            {
                "subscribers": 100,
                "senders": 4,
                "rates": [10, 50, 100, 300, 1000, 2000],
                "step": 1.5,
                "drain": 1.5,
            },
        ],
        "idle": {"conns": 1000, "hold": 2},
    },
    "full": {
        "echo": {"conns": 50, "duration": 10, "warmup": 1},
        "fanout": [
            {
                "subscribers": 100,
                "senders": 4,
                "rates": [10, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000],
                "step": 10,
                "drain": 3,
            },
            {
                "subscribers": 1000,
                "senders": 4,
                "rates": [1, 5, 10, 25, 50, 100, 128, 150, 200, 300],
                "step": 10,
                "drain": 3,
            },
        ],
        "idle": {"conns": 10000, "hold": 10},
    },
}


# As root, the pinned processes also run at a higher priority than anything else on the
# machine, so a shared machine's other work disturbs the measurement less.
NICE = ["nice", "-n", "-10"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


def pinned(cmd: list[str], core: str | None) -> list[str]:
    """The command pinned to `core` (taskset and nice exec: the pid stays the command's)."""
    return cmd if core is None else [*NICE, "taskset", "-c", core, *cmd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DEBUG", "REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["SECRET_KEY"] = secrets.token_urlsafe(40)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Stack:
    """How to start one server."""

    name = ""
    protocol = ""
    title = ""

    def prepare(self, workdir: Path, log: Any) -> str | None:
        """One-time setup; returns a reason to skip the stack, or None."""
        return None

    def loadgen_args(self) -> list[str]:
        """Extra generator options for the server last started."""
        return []

    def cleanup(self) -> None:
        """Stop whatever command() started besides the server."""

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        raise NotImplementedError


class ChatStack(Stack):
    name, protocol, title = "chat", "chat", "this project (manage.py serve: uvicorn, SQLite storage on)"
    server = "uvicorn"

    def prepare(self, workdir: Path, log: Any) -> str | None:
        env = clean_env() | {"DATABASE_URL": f"sqlite:///{workdir / 'template.sqlite3'}"}
        # The in-memory layer is refused by a system check when DEBUG is off (it cannot
        # serve two processes); one process is exactly what this benchmark measures.
        done = subprocess.run(
            [str(MAIN_PY), "manage.py", "migrate", "--noinput", "--skip-checks"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        return None if done.returncode == 0 else "migrate failed (see log)"

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        db = workdir / f"chat-{port}.sqlite3"
        shutil.copy(workdir / "template.sqlite3", db)
        env = clean_env() | {
            "DATABASE_URL": f"sqlite:///{db}",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CHAT_RATE_LIMIT": "0",
            "CHAT_SERVER_EVENTS_INTERVAL": "0",
        }
        # As production serves it; --skip-checks because chat.E001 refuses one process
        # on the in-memory layer with DEBUG off (see prepare()).
        cmd = [str(MAIN_PY), "manage.py", "serve", "--skip-checks", "--server", self.server]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        return cmd, ROOT, env


class ChatDaphneStack(ChatStack):
    """This project served by daphne instead of uvicorn: the numbers behind the choice."""

    name, title = "chat-daphne", "this project on daphne (manage.py serve --server daphne)"
    server = "daphne"


class ChatRedisStack(ChatStack):
    """This project with REDIS_URL set: a private redis-server per server start."""

    name, protocol, title = "chat-redis", "chat", "this project with REDIS_URL (channels-redis), one worker"
    redis: subprocess.Popen | None = None
    redis_port = 0

    def prepare(self, workdir: Path, log: Any) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server is not installed (apt-get install redis-server)"
        return super().prepare(workdir, log)

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        self.redis_port = free_port()
        cmd = [
            "redis-server",
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        cmd = pinned(cmd, core)  # Redis shares the server's core: no free CPU for it
        self.redis = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        cmd, cwd, env = super().command(port, workdir, core)
        env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        return cmd, cwd, env

    def loadgen_args(self) -> list[str]:
        return ["--redis", f"127.0.0.1:{self.redis_port}"]

    def cleanup(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            os.killpg(self.redis.pid, signal.SIGTERM)
            self.redis.wait(10)
        self.redis = None


class TutorialStack(Stack):
    name, protocol, title = "tutorial", "tutorial", "Channels tutorial consumer (daphne, in-memory layer)"

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        cwd = COMPARE / "tutorial"
        env = clean_env() | {"DJANGO_SETTINGS_MODULE": "tutorialsite.settings", "PYTHONPATH": str(cwd)}
        cmd = [
            str(MAIN_PY),
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "tutorialsite.asgi:application",
        ]
        return cmd, cwd, env


class SocketIOStack(Stack):
    name, protocol, title = "socketio", "socketio", "Flask-SocketIO demo (gevent)"

    def prepare(self, workdir: Path, log: Any) -> str | None:
        if SIO_PY.exists():
            return None
        print("  creating bench/compare/flask_socketio_demo/.venv (one time) ...", flush=True)
        steps = [
            ["python3", "-m", "venv", str(SIO_DIR / ".venv")],
            [str(SIO_PY), "-m", "pip", "install", "--quiet", "-r", str(SIO_DIR / "requirements.txt")],
        ]
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, timeout=600).returncode != 0:
                return f"could not set up its venv: {' '.join(step)}"
        return None

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        cmd = [str(SIO_PY), "app.py", "--host", "127.0.0.1", "--port", str(port)]
        return cmd, SIO_DIR, clean_env()


class ReferenceStack(Stack):
    name, protocol, title = "reference", "chat", "generator ceiling: minimal picows server, no storage"

    def command(self, port: int, workdir: Path, core: str | None) -> tuple[list[str], Path, dict[str, str]]:
        cmd = [str(MAIN_PY), str(COMPARE / "reference" / "server.py"), "--port", str(port)]
        return cmd, ROOT, clean_env()


STACKS: dict[str, Stack] = {
    s.name: s
    for s in (
        ChatStack(),
        ChatDaphneStack(),
        ChatRedisStack(),
        TutorialStack(),
        SocketIOStack(),
        ReferenceStack(),
    )
}


class Server:
    def __init__(self, stack: Stack, workdir: Path, logdir: Path, core: str | None, tag: str) -> None:
        self.port = free_port()
        cmd, cwd, env = stack.command(self.port, workdir, core)
        cmd = pinned(cmd, core)  # taskset execs: the pid is the server's
        self.stack = stack
        self.logpath = logdir / f"{stack.name}-{tag}.log"
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ok = wait_port(self.port, self.proc)
        time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.stack.cleanup()
        self.log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_loadgen(
    server: Server, stack: Stack, scenario_args: list[str], core: str | None, time_limit: float, tmp: Path
) -> dict[str, Any]:
    out = tmp / f"lg-{server.port}-{time.monotonic_ns()}.json"
    cmd = [
        str(MAIN_PY),
        str(LOADGEN),
        "--url",
        f"ws://127.0.0.1:{server.port}",
        "--protocol",
        stack.protocol,
        "--server-pid",
        str(server.pid),
        "--label",
        stack.name,
        "--out",
        str(out),
        "--time-limit",
        str(time_limit),
        *stack.loadgen_args(),
        *scenario_args,
    ]
    cmd = pinned(cmd, core)
    busy0, srv0, wall0 = machine_busy_seconds(), proc_cpu_seconds(server.pid), time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit + 60)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        stdout, stderr, code = str(error.stdout or ""), str(error.stderr or ""), "timeout"
    wall = time.monotonic() - wall0
    busy, srv1 = machine_busy_seconds() - busy0, proc_cpu_seconds(server.pid)
    print(stdout.rstrip(), flush=True)
    if code != 0:
        print(stderr[-3000:], file=sys.stderr, flush=True)
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"result": {"aborted": f"loadgen exit {code}", "stderr": stderr[-3000:]}}
    gen = result.get("generator", {})
    server_cpu = (srv1 - srv0) if srv0 is not None and srv1 is not None else 0.0
    gen_cpu = gen.get("user_s", 0) + gen.get("system_s", 0)
    # Anything else that ran on the machine meanwhile (other people's jobs) skews a run.
    result["machine"] = {
        "wall_s": round(wall, 2),
        "server_cpu_s": round(server_cpu, 2),
        "generator_cpu_s": round(gen_cpu, 2),
        "other_cpu_pct_of_one_core": round(100 * max(0.0, busy - server_cpu - gen_cpu) / wall, 1),
    }
    if not server.alive():
        result["server_died"] = server.log_tail()
    return result


def scenario_runs(plan: dict[str, Any], only: set[str]) -> list[tuple[str, list[str], float]]:
    """(key, loadgen arguments, time limit) for each scenario of the plan."""
    runs = []
    e = plan["echo"]
    if "echo" in only:
        runs.append(
            (
                "echo",
                [
                    "echo",
                    "--conns",
                    str(e["conns"]),
                    "--duration",
                    str(e["duration"]),
                    "--warmup",
                    str(e["warmup"]),
                ],
                60 + e["duration"],
            )
        )
    if "fanout" in only:
        for f in plan["fanout"]:
            steps = len(f["rates"])
            limit = 240 + steps * (f["step"] + f["drain"] + 2)
            runs.append(
                (
                    f"fanout_{f['subscribers']}",
                    [
                        "fanout",
                        "--subscribers",
                        str(f["subscribers"]),
                        "--senders",
                        str(f["senders"]),
                        "--rates",
                        ",".join(str(r) for r in f["rates"]),
                        "--step-seconds",
                        str(f["step"]),
                        "--drain-seconds",
                        str(f["drain"]),
                        "--settle-limit",
                        "120",
                    ],
                    limit,
                )
            )
    if "idle" in only:
        i = plan["idle"]
        runs.append(("idle", ["idle", "--conns", str(i["conns"]), "--hold", str(i["hold"])], 300))
    return runs


# --- report ------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def summarize(stack: str, results: dict[str, Any]) -> dict[str, str]:
    row = {"stack": f"{stack} (generator ceiling)" if stack == "reference" else stack}
    echo = results.get("echo", {}).get("result", {})
    row["echo_rt_s"] = fmt(echo.get("round_trips_per_s"))
    lat = echo.get("latency") or {}
    row["echo_lat"] = f"{fmt(lat.get('p50_ms'), 1)} / {fmt(lat.get('p99_ms'), 1)}" if lat else "-"
    for size, key in ((100, "f100"), (1000, "f1000")):
        f = results.get(f"fanout_{size}", {}).get("result")
        if not f:
            row[key] = row[f"{key}_lat"] = "n/a"
            continue
        if f.get("aborted"):
            row[key] = f"aborted ({f['aborted']})"
        else:
            row[key] = fmt(f.get("sustainable_deliveries_per_s"))
        first = f.get("first_step_latency") or {}
        row[f"{key}_lat"] = (
            f"{fmt(first.get('p50_ms'), 1)} / {fmt(first.get('p99_ms'), 1)} @ {fmt(f.get('first_step_rate'))}/s"
            if first
            else "-"
        )
    idle = results.get("idle", {}).get("result", {})
    row["idle_kb"] = fmt(idle.get("server_kb_per_conn"), 1)
    row["idle_refused"] = (
        f"{idle.get('refused_or_failed')} of {fmt(idle.get('conns'))}" if "refused_or_failed" in idle else "-"
    )
    cpus, lags, others = [], [], []
    for r in results.values():
        res = r.get("result", {})
        for m in [res.get("measure")] + [s.get("measure") for s in res.get("steps", [])]:
            if m:
                cpus.append(m.get("gen_cpu_pct") or 0)
                lags.append(m.get("gen_loop_lag_p99_ms") or 0)
        others.append(r.get("machine", {}).get("other_cpu_pct_of_one_core", 0))
    row["gen"] = f"{fmt(max(cpus, default=None))}% / {fmt(max(lags, default=None), 1)} ms"
    row["other"] = f"{fmt(max(others, default=None))}%"
    return row


COLUMNS = [
    ("stack", "stack"),
    ("echo_rt_s", "echo 50 conns: round trips/s"),
    ("echo_lat", "echo p50 / p99 ms"),
    ("f100", "room of 100: sustainable deliveries/s"),
    ("f100_lat", "room of 100: p50 / p99 ms at lowest rate"),
    ("f1000", "room of 1,000: sustainable deliveries/s"),
    ("idle_kb", "idle: server KB per connection"),
    ("idle_refused", "idle: refused"),
    ("gen", "generator: max CPU / max loop-lag p99"),
    ("other", "other load on the machine (max, % of a core)"),
]


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row.get(key, "") for key, _ in COLUMNS) + " |")
    target = {"stack": "*target (issue)*", **TARGETS}
    lines.append("| " + " | ".join(target.get(key, "") for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def notes(all_results: dict[str, dict[str, Any]]) -> list[str]:
    """Lines under the table: the Redis figures the issue asks for."""
    out = []
    redis = all_results.get("chat-redis", {})
    memory = all_results.get("chat", {})
    for key in sorted(k for k in redis if k.startswith("fanout_")):
        r = redis[key].get("result", {})
        m = memory.get(key, {}).get("result", {})
        size = key.split("_")[1]
        if m.get("sustainable_deliveries_per_s"):
            ratio = 100 * (r.get("sustainable_deliveries_per_s") or 0) / m["sustainable_deliveries_per_s"]
            out.append(
                f"- Room of {size}, chat-redis vs chat (in-memory layer): {fmt(r.get('sustainable_deliveries_per_s'))}"
                f" vs {fmt(m['sustainable_deliveries_per_s'])} sustainable deliveries/s = {ratio:.0f}% (target >= 80%)."
            )
        steps = [st for st in r.get("steps", []) if st.get("redis_commands_per_message") is not None]
        if steps:
            st = steps[0]
            out.append(
                f"- Room of {size}, chat-redis at {fmt(st['rate_msgs_per_s'])} msg/s: "
                f"{st['redis_commands_per_message']} Redis commands per room message ({st['redis_commands']})."
            )
    return out


def plot(all_results: dict[str, dict[str, Any]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements.txt): no plot"
    keys = sorted(
        {k for r in all_results.values() for k in r if k.startswith("fanout_")},
        key=lambda k: int(k.split("_")[1]),
    )
    if not keys:
        return "no fan-out results to plot"
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for stack, results in all_results.items():
            steps = results.get(key, {}).get("result", {}).get("steps", [])
            points = [
                (s["delivered_per_s"], s["latency"]["p99_ms"], s["passed"])
                for s in steps
                if s["latency"]["p99_ms"] is not None
            ]
            if not points:
                continue
            xs, ys, _passed = zip(*points, strict=True)
            label = f"{stack} (generator ceiling)" if stack == "reference" else stack
            (line,) = ax.plot(xs, ys, "-", label=label, alpha=0.8)
            ax.scatter(
                [x for x, _, p in points if p], [y for _, y, p in points if p], color=line.get_color(), s=28
            )
            ax.scatter(
                [x for x, _, p in points if not p],
                [y for _, y, p in points if not p],
                color=line.get_color(),
                marker="x",
                s=50,
            )
        ax.axhline(250, color="grey", linestyle="--", linewidth=1)
        ax.text(0.01, 260, "250 ms: pass limit", color="grey", fontsize=8, transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("deliveries/s (measured)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"Room of {key.split('_')[1]}: p99 latency vs delivery rate\n(dot: pass, x: fail)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 2 minutes)")
    parser.add_argument(
        "--stacks",
        default="",
        help="comma-separated, from: "
        + ", ".join(STACKS)
        + " (default: all; --quick leaves out chat-redis to stay short)",
    )
    parser.add_argument("--scenarios", default="echo,fanout,idle", help="comma-separated: echo, fanout, idle")
    parser.add_argument("--server-core", default="0", help="core(s) for the server (taskset -c)")
    parser.add_argument("--generator-core", default="1", help="core(s) for the load generator")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--out-dir", default=str(BENCH / "results"))
    parser.add_argument("--name", default="", help="file name stem (default: the date and time)")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="record a py-spy flame graph of the chat server during each fan-out run",
    )
    args = parser.parse_args()

    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_core = args.server_core if pin else None
    gen_core = args.generator_core if pin else None
    names = args.stacks or ",".join(n for n in STACKS if not (args.quick and n == "chat-redis"))
    stacks = [STACKS[s] for s in names.split(",") if s]
    only = set(args.scenarios.split(","))

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = args.name or dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + ("-quick" if args.quick else "")
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    started = time.monotonic()
    print(
        f"# {mode} benchmark; server on core {server_core}, generator on core {gen_core}; logs in {logdir}",
        flush=True,
    )

    report: dict[str, Any] = {
        "mode": mode,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": plan,
        "pinning": {"server": server_core, "generator": gen_core, "nice": " ".join(NICE) or None},
        "py_spy": args.py_spy,  # profiling slows the chat server: such a run's numbers are not comparable
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in open("/proc/cpuinfo")
                    if line.startswith("model name")
                ),
                platform.processor(),
            ),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "fd_limit": hard,
        },
        "stacks": {},
    }
    all_results: dict[str, dict[str, Any]] = {}
    try:
        for stack in stacks:
            print(f"\n## {stack.name}: {stack.title}", flush=True)
            with open(logdir / f"{stack.name}-prepare.log", "w") as log:
                skip = stack.prepare(tmp, log)
            if skip:
                print(f"  skipped: {skip}", flush=True)
                report["stacks"][stack.name] = {"skipped": skip}
                continue
            results: dict[str, Any] = {}
            for key, scenario_args, limit in scenario_runs(plan, only):
                server = Server(stack, tmp, logdir, server_core, key)
                try:
                    if not server.ok:
                        results[key] = {
                            "result": {"aborted": "server did not start"},
                            "server_log": server.log_tail(),
                        }
                        print(f"  {key}: server did not start\n{server.log_tail()}", flush=True)
                        continue
                    spy = None
                    if args.py_spy and stack.name == "chat" and key.startswith("fanout"):
                        spy = start_py_spy(server.pid, out_dir / f"{stamp}-{stack.name}-{key}.svg", gen_core)
                    results[key] = run_loadgen(server, stack, scenario_args, gen_core, limit, tmp)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                finally:
                    server.stop()
            all_results[stack.name] = results
            report["stacks"][stack.name] = {
                "title": stack.title,
                "protocol": stack.protocol,
                "results": results,
            }
    finally:
        report["duration_s"] = round(time.monotonic() - started, 1)
        report["machine"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        rows = [summarize(name, results) for name, results in all_results.items()]
        table = markdown(rows)
        extra = notes(all_results)
        if extra:
            table += "\n\n" + "\n".join(extra)
        report["table_markdown"] = table
        json_path, md_path, png_path = (out_dir / f"{stamp}.{ext}" for ext in ("json", "md", "png"))
        json_path.write_text(json.dumps(report, indent=1))
        problem = plot(all_results, png_path)
        md_path.write_text(
            f"Benchmark ({mode}), {report['started']}, {report['machine']['cpus']} cores "
            f"({report['machine']['cpu_model']}); server pinned to core {server_core}, generator to core "
            f"{gen_core}; {report['duration_s']} s.\n\n{table}\n\n"
            + (
                f"![p99 latency against delivery rate]({png_path.name})\n"
                if not problem
                else f"({problem})\n"
            )
        )
        print("\n" + table)
        print(f"\nwrote {json_path}, {md_path}" + (f", {png_path}" if not problem else f" ({problem})"))
        print(f"total {report['duration_s']} s")
        trouble = any(
            "server_died" in r or "server_log" in r for res in all_results.values() for r in res.values()
        )
        if trouble:
            print(f"server logs kept in {logdir}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def start_py_spy(pid: int, svg: Path, core: str | None) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        print("  py-spy not installed (pip install py-spy): no profile", flush=True)
        return None
    cmd = [spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--output", str(svg)]
    if core is not None:
        cmd = ["taskset", "-c", core, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
