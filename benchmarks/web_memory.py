"""Memory of one gunicorn worker serving hitl: does the web process load torch?

    python benchmarks/web_memory.py [--before OTHER_CHECKOUT] [--requests 40] [--no-write]

For each tree (this checkout, and ``--before`` if given, e.g. a checkout of an older commit): a
fresh SQLite database under a temporary HITL_DATA_DIR, migrations, a superuser with an API token,
then gunicorn with one sync worker started from that tree. It sends a few requests (a web page,
the admin, API lists, the OpenAPI schema) and reads the worker's resident memory (VmRSS, and its
peak VmHWM) from /proc, and whether libtorch is mapped into it. Prints a ratio when both ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, free_port, machine, wait_port, write_section

PATHS = ["/login/", "/admin/", "/api/v1/projects/", "/api/v1/schema/", "/"]
USER_SCRIPT = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench-password")
print(Token.objects.create(user=user).key)
"""


@dataclass(frozen=True)
class Measurement:
    tree: Path
    rss_mib: float
    peak_mib: float
    torch_mapped: bool
    statuses: dict[int, int]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def kib(value: str) -> float:
    return int(value.split()[0]) / 1024


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise SystemExit("gunicorn started no worker")


def measure(tree: Path, requests: int) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="hitl-web-memory-") as data_dir:
        env = {**os.environ, "HITL_DATA_DIR": data_dir, "DATABASE_URL": f"sqlite:///{data_dir}/hitl.sqlite3",
               "HITL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(tree)}
        manage = [sys.executable, str(tree / "manage.py")]
        subprocess.run([*manage, "migrate", "--verbosity", "0"], env=env, cwd=tree, check=True)
        token = subprocess.run([*manage, "shell", "-c", USER_SCRIPT], env=env, cwd=tree, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "hitl.wsgi", "--workers", "1", "--bind", f"127.0.0.1:{port}",
             "--chdir", str(tree)], env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, server)
            statuses: dict[int, int] = {}
            for n in range(requests):
                request = urllib.request.Request(f"http://127.0.0.1:{port}{PATHS[n % len(PATHS)]}",
                                                 headers={"Authorization": f"Token {token}"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                statuses[status] = statuses.get(status, 0) + 1
            pid = worker_pid(server.pid)
            status = proc_status(pid)
            mapped = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
            return Measurement(tree, kib(status["VmRSS"]), kib(status["VmHWM"]), mapped, statuses)
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout of hitl to compare with (run first)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    trees = ([args.before.resolve()] if args.before else []) + [ROOT]
    results = [measure(tree, args.requests) for tree in trees]
    rows = []
    for label, r in zip(["before", "after"] if args.before else ["this checkout"], results):
        commit = subprocess.run(["git", "-C", str(r.tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "?"
        print(f"{label} ({r.tree}, {commit}): worker RSS {r.rss_mib:.0f} MiB, peak {r.peak_mib:.0f} MiB, "
              f"libtorch mapped: {r.torch_mapped}, responses {r.statuses}")
        rows.append(f"| {label} (`{commit}`) | {r.rss_mib:.0f} MiB | {r.peak_mib:.0f} MiB | "
                    f"{'yes' if r.torch_mapped else 'no'} |")
    ratio = ""
    if args.before:
        ratio = f"After / before: **{results[1].rss_mib / results[0].rss_mib:.2f}x** the resident memory."
        print(ratio.replace("*", ""))
    if not args.no_write:
        write_section("web-memory", f"""
## Web process memory: one gunicorn worker

`python benchmarks/web_memory.py{' --before <older checkout>' if args.before else ''} --requests {args.requests}`,
measured {time.strftime('%Y-%m-%d')} on {machine()}.

Each tree is served by gunicorn with one sync worker on a fresh SQLite database; {args.requests}
requests (a web page, the admin, API lists with a token, the OpenAPI schema) go through it, then
the worker's resident memory is read from `/proc/<pid>/status` (VmRSS now, VmHWM its peak) and its
memory map is checked for libtorch. "before" is the tree whose `hitl/services` imported torch and
`workers.ml` at module level; "after" is the one where the web imports neither
(`tests/test_torch_free.py` guards it).

| tree | worker RSS | peak RSS | libtorch loaded |
| --- | ---: | ---: | --- |
{chr(10).join(rows)}

{ratio}
""")


if __name__ == "__main__":
    main()
