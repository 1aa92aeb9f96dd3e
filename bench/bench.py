#!/usr/bin/env python3
"""Helpers of bench/run.sh (standard library only).

  bench.py setup    create the benchmark scripts in a running instance
  bench.py cpu      sample the CPU split between millrace, its job processes, nats-server,
                    PostgreSQL and the load generator over a window; write JSON
  bench.py oha      turn oha's --json output (plus a cpu sample) into a result JSON
  bench.py e2e      submit N async jobs of one script, wait for all, compute jobs/s
  bench.py sync     time N sync webhook calls (run_wait_result) from C callers; the overhead
                    is each call's latency minus its job's duration_ms (the worker's own clock)
  bench.py sniff    (used by sync --nats-url) timestamp Millrace's NATS messages about jobs
  bench.py report   print the markdown summary from the result JSONs

Every subcommand that talks to Millrace reads MILLRACE_URL and MILLRACE_TOKEN.
"""

import argparse
import http.client
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime

WORKSPACE = "demo"

SCRIPTS = {
    "bash": ("u/admin/bench_bash", "echo ok\n"),
    "python3": ("u/admin/bench_py", "def main():\n    return 1\n"),
    "bun": ("u/admin/bench_bun", "export function main() {\n  return 1;\n}\n"),
    "deno": ("u/admin/bench_deno", "export function main() {\n  return 1;\n}\n"),
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- HTTP -----------------------------------------------------------------------------------


class Api:
    """One keep-alive connection to Millrace; use one per thread."""

    def __init__(self, base, token):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = None

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")


def api_from_env():
    return Api(os.environ["MILLRACE_URL"], os.environ["MILLRACE_TOKEN"])


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


# --- setup ----------------------------------------------------------------------------------


def cmd_setup(_args):
    api = api_from_env()
    for language, (path, content) in SCRIPTS.items():
        status, body = api.request(
            "POST",
            f"/api/w/{WORKSPACE}/scripts/create",
            {"path": path, "language": language, "content": content},
        )
        if status != 201:
            sys.exit(f"bench: creating {path} answered {status}: {body[:300]!r}")
        log(f"created {path} ({language}) {body.decode().strip()}")


def cmd_setup_signed(args):
    """A script of a tag no worker serves, and a GitHub-signed webhook trigger on it."""
    api = api_from_env()
    for path, body in [
        ("scripts/create", {"path": "u/admin/bench_idle", "language": "bash",
                            "content": "echo ok\n", "tag": "bench_idle"}),
        ("webhook_triggers/create", {"path": "u/admin/bench_hook",
                                     "script_path": "u/admin/bench_idle",
                                     "scheme": "github", "secret": args.secret}),
    ]:
        status, answer = api.request("POST", f"/api/w/{WORKSPACE}/{path}", body)
        if status != 201:
            sys.exit(f"bench: {path} answered {status}: {answer[:300]!r}")
    log("created u/admin/bench_idle (tag bench_idle) and the trigger u/admin/bench_hook")


# --- CPU split ------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_stat(pid):
    """(comm, ppid, own cpu ticks, reaped children's cpu ticks) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17.
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return comm, ppid, own, children


def total_busy_ticks():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return sum(cpu[:8]) - idle, sum(cpu[:8])


def snapshot(dev_pid, postmaster_pid, bench_root, app_pid=None):
    """Per-process CPU counters, each process assigned to a group. Processes under
    `bench_root` (bench/run.sh) other than the instance itself are the load generator, except
    `app_pid` (the yardstick handler), which counts as the application ("millrace")."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat:
                procs[int(entry)] = stat

    def descends_from(pid, root):
        seen = 0
        while pid > 1 and seen < 64:
            if pid == root:
                return True
            if pid not in procs:
                return False
            pid = procs[pid][1]
            seen += 1
        return False

    assigned = {}
    for pid, (comm, _ppid, own, children) in procs.items():
        if app_pid and pid == app_pid:
            assigned[pid] = ("millrace", own, None, 0)
        elif pid == dev_pid:
            # Job processes that already exited were reaped by millrace: their time is here.
            assigned[pid] = ("millrace", own, "jobs", children)
        elif postmaster_pid and pid == postmaster_pid:
            assigned[pid] = ("postgres", own, "postgres", children)
        elif postmaster_pid and descends_from(pid, postmaster_pid):
            assigned[pid] = ("postgres", own, None, 0)
        elif comm == "nats-server" and descends_from(pid, dev_pid):
            assigned[pid] = ("nats-server", own, None, 0)
        elif descends_from(pid, dev_pid):
            # Job processes still running, and the python3 fork server, which reaps the jobs it
            # forks: their time is in its children's counters.
            assigned[pid] = ("jobs", own, "jobs", children)
        elif bench_root and descends_from(pid, bench_root):
            assigned[pid] = ("loadgen", own, None, 0)
        else:
            # Anything else on the machine: counted as the rest of the busy time, since a
            # reaped child's whole life is charged to its parent at once.
            assigned[pid] = ("others", own, None, 0)
    busy, total = total_busy_ticks()
    return {"procs": assigned, "busy": busy, "total": total, "at": time.monotonic()}


GROUPS = ("millrace", "jobs", "postgres", "nats-server", "loadgen")


def cpu_split(a, b):
    """Percent of one core (like top) used by each group between snapshots a and b."""
    ticks = dict.fromkeys(GROUPS + ("others",), 0)
    for pid, (group, own, child_group, children) in b["procs"].items():
        before = a["procs"].get(pid)
        if before and before[0] != group:
            before = None  # the pid was reused
        ticks[group] += own - (before[1] if before else 0)
        if child_group:
            ticks[child_group] += children - (before[3] if before else 0)
    wall = b["at"] - a["at"]
    ncpu = os.cpu_count() or 1
    split = {name: round(100 * ticks[name] / CLK_TCK / wall, 1) for name in GROUPS}
    busy = (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"])
    split["machine_busy_pct"] = round(100 * busy, 1)
    # Other processes on the machine, and kernel work charged to none (e.g. softirq).
    split["rest"] = round(max(0.0, ncpu * 100 * busy - sum(split[g] for g in GROUPS)), 1)
    split["cores"] = ncpu
    split["window_s"] = round(wall, 1)
    return split


def sample_cpu(dev_pid, postmaster_pid, seconds, app_pid=None):
    root = os.getppid()
    a = snapshot(dev_pid, postmaster_pid, root, app_pid)
    time.sleep(seconds)
    return cpu_split(a, snapshot(dev_pid, postmaster_pid, root, app_pid))


def postmaster_pid_of(pg_data):
    try:
        with open(os.path.join(pg_data, "postmaster.pid")) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def cmd_cpu(args):
    time.sleep(args.delay)
    split = sample_cpu(args.dev_pid, postmaster_pid_of(args.pg_data), args.seconds,
                       args.app_pid or None)
    with open(args.out, "w") as f:
        json.dump(split, f)


def cmd_quiet(args):
    """Waits (up to --wait s) for the machine to be idle; warns and names the busiest
    processes if it is not, since other load on the same cores lowers every figure."""
    deadline = time.monotonic() + args.wait
    while True:
        a = snapshot(None, None, None)
        time.sleep(2)
        b = snapshot(None, None, None)
        split = cpu_split(a, b)
        used = split["machine_busy_pct"]
        if used <= args.max_busy:
            return
        if time.monotonic() >= deadline:
            break
    per_proc = []
    for pid, (_g, own, _cg, children) in b["procs"].items():
        before = a["procs"].get(pid)
        delta = own + children - ((before[1] + before[3]) if before else 0)
        if delta > 0:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            per_proc.append((delta, comm, pid))
    per_proc.sort(reverse=True)
    top = ", ".join(f"{c} (pid {p}, {100 * d / CLK_TCK / 2:.0f}%)" for d, c, p in per_proc[:3])
    log(
        f"warning: the machine is {used:.0f}% busy before the measurement ({top}); "
        "other load on the same cores lowers the figures"
    )


# --- ingestion (oha) ------------------------------------------------------------------------


def accepted_rate(codes, summary):
    """2xx answers per second of the run (oha's `total` is the run's length in seconds)."""
    accepted = sum(n for code, n in codes.items() if 200 <= int(code) < 300)
    elapsed = summary.get("total") or 0
    return accepted / elapsed if elapsed > 0 else 0.0


def cmd_oha(args):
    with open(args.oha_json) as f:
        raw = json.load(f)
    summary = raw["summary"]
    pct = raw.get("latencyPercentiles", {})
    codes = raw.get("statusCodeDistribution", {})
    errors = raw.get("errorDistribution", {})
    total = sum(codes.values())
    ok = codes.get(args.ok_status, 0)
    result = {
        "name": args.name,
        "connections": args.connections,
        "duration_s": args.duration,
        "requests": total,
        "created_201": ok,
        "ok_status": args.ok_status,
        "other_status": {k: v for k, v in codes.items() if k != args.ok_status},
        "errors": errors,
        # Accepted (2xx) requests only: fast refusals (503 when a stream is full) must not
        # count as throughput. `rps_all` is oha's own figure, every answer included.
        "rps": accepted_rate(codes, summary),
        "rps_all": summary["requestsPerSec"],
        # oha reports seconds.
        "p50_ms": pct["p50"] * 1000,
        "p90_ms": pct["p90"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "max_ms": summary["slowest"] * 1000,
        "cpu": None,
        "drained": args.drained,
    }
    if args.cpu and os.path.exists(args.cpu):
        with open(args.cpu) as f:
            result["cpu"] = json.load(f)
        warn_if_disturbed(args.name, result["cpu"])
        # CPU time per answered request, by group (µs): percent of a core / rate.
        if result["rps"] > 0:
            result["cpu_us_per_request"] = {
                g: round(result["cpu"][g] / 100 * 1e6 / result["rps"], 1) for g in GROUPS}
    refused = total - ok
    if refused:
        log(f"warning: {args.name}: {refused} of {total} answers were not {args.ok_status} "
            f"({result['other_status']}); the rate counts only the {ok} that were")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(
        f"{args.name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, {ok}/{total} answered {args.ok_status}"
    )


# --- end to end -----------------------------------------------------------------------------


def submit_all(path, n, concurrency):
    """Submits n async jobs with `concurrency` keep-alive connections; returns the ids."""
    todo = queue.Queue()
    for i in range(n):
        todo.put(i)
    ids, failures = [], []
    lock = threading.Lock()

    def worker():
        api = api_from_env()
        while True:
            try:
                todo.get_nowait()
            except queue.Empty:
                return
            status, body = api.request("POST", f"/api/w/{WORKSPACE}/jobs/run/p/{path}", {})
            with lock:
                if status == 201:
                    ids.append(body.decode().strip())
                else:
                    failures.append((status, body[:200]))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"bench: {len(failures)} submissions failed, first: {failures[0]}")
    return ids


def list_jobs(api, path):
    jobs, page = [], 1
    while True:
        status, body = api.request(
            "GET",
            f"/api/w/{WORKSPACE}/jobs/list?per_page=1000&page={page}"
            f"&script_path_exact={urllib.parse.quote(path)}",
        )
        if status != 200:
            sys.exit(f"bench: jobs/list answered {status}: {body[:300]!r}")
        batch = json.loads(body)
        jobs.extend(batch)
        if len(batch) < 1000:
            return jobs
        page += 1


def wait_completed(api, path, ids, timeout, watch_size):
    """Waits until every job in ids is completed; returns their records."""
    wanted = set(ids)
    # The stream is FIFO: the last ids submitted are among the last to complete. Watch them
    # cheaply first, then confirm with the full list.
    watch = ids[-watch_size:]
    deadline = time.time() + timeout
    while time.time() < deadline:
        pending = []
        for job_id in watch:
            status, body = api.request("GET", f"/api/w/{WORKSPACE}/jobs_u/get/{job_id}")
            if status != 200 or json.loads(body).get("type") != "CompletedJob":
                pending.append(job_id)
        watch = pending
        if not watch:
            jobs = [j for j in list_jobs(api, path) if j["id"] in wanted]
            done = [j for j in jobs if j["type"] == "CompletedJob"]
            if len(done) == len(wanted):
                return done
            watch = [j["id"] for j in jobs if j["type"] != "CompletedJob"][:50]
            if len(jobs) < len(wanted):
                sys.exit(f"bench: only {len(jobs)} of {len(wanted)} submitted jobs are listed")
        time.sleep(0.2)
    sys.exit(f"bench: jobs of {path} still unfinished after {timeout} s")


class CpuRecorder(threading.Thread):
    """Snapshots the CPU counters every half second until stopped."""

    def __init__(self, dev_pid, postmaster_pid):
        super().__init__(daemon=True)
        self.dev_pid, self.postmaster_pid = dev_pid, postmaster_pid
        self.snaps = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            snap = snapshot(self.dev_pid, self.postmaster_pid, os.getppid())
            snap["wall"] = time.time()
            self.snaps.append(snap)
            self.stop.wait(0.5)

    def split(self, start, end):
        """The CPU split between the first and last snapshots inside [start, end]."""
        inside = [s for s in self.snaps if start <= s["wall"] <= end]
        if len(inside) < 2:
            return None
        return cpu_split(inside[0], inside[-1])


def cmd_e2e(args):
    path, _ = SCRIPTS[args.language]
    api = api_from_env()
    if args.warmup:
        log(f"e2e {args.language}: warm-up with {args.warmup} jobs")
        wait_completed(api, path, submit_all(path, args.warmup, args.concurrency), args.timeout, 8)
    recorder = None
    if args.dev_pid:
        recorder = CpuRecorder(args.dev_pid, postmaster_pid_of(args.pg_data) if args.pg_data else None)
        recorder.start()
    log(f"e2e {args.language}: submitting {args.jobs} jobs with {args.concurrency} connections")
    t0 = time.time()
    ids = submit_all(path, args.jobs, args.concurrency)
    t_submitted = time.time()
    log(
        f"e2e {args.language}: {len(ids)} submitted in {t_submitted - t0:.1f} s "
        f"({len(ids) / (t_submitted - t0):.0f} req/s); waiting for them to complete"
    )
    done = wait_completed(api, path, ids, args.timeout, args.concurrency)
    t_seen = time.time()
    failed = [j for j in done if not j["success"]]
    created = [parse_ts(j["created_at"]) for j in done]
    started = [parse_ts(j["started_at"]) for j in done if j["started_at"]]
    completed = sorted(parse_ts(j["completed_at"]) for j in done)
    durations = [j["duration_ms"] for j in done if j["duration_ms"] is not None]
    span = completed[-1] - min(created)
    # Time from created to started, per job (queueing in the stream).
    waits = [parse_ts(j["started_at"]) - parse_ts(j["created_at"]) for j in done if j["started_at"]]
    # From the worker's `running` UPDATE to its `completed` UPDATE: the script's process plus
    # the worker's own steps around it (started event, job directory, spawn, logs).
    in_worker = [
        1000 * (parse_ts(j["completed_at"]) - parse_ts(j["started_at"]))
        for j in done
        if j["started_at"]
    ]
    cpu = None
    if recorder:
        recorder.stop.set()
        recorder.join()
        # The busy middle of the run: from 10% to 90% of the completions.
        n = len(completed)
        cpu = recorder.split(completed[n // 10], completed[n * 9 // 10 - 1])
        warn_if_disturbed(f"e2e {args.language}", cpu)
    result = {
        "name": f"e2e_{args.language}",
        "language": args.language,
        "jobs": len(done),
        "failed": len(failed),
        "concurrency": args.concurrency,
        "submit_s": round(t_submitted - t0, 2),
        "submit_rps": round(len(ids) / (t_submitted - t0), 1),
        "span_s": round(span, 2),
        "jobs_per_s": round(len(done) / span, 1),
        # Steady state: the middle 80% of completions, free of the ramp up and the tail.
        "jobs_per_s_steady": steady_rate(completed),
        "client_wall_s": round(t_seen - t0, 2),
        "duration_ms_p50": statistics.median(durations) if durations else None,
        "duration_ms_p99": percentile(durations, 99) if durations else None,
        "queue_wait_p50_s": round(statistics.median(waits), 2) if waits else None,
        "started_to_completed_ms_p50": round(statistics.median(in_worker), 1) if in_worker else None,
        "slots": args.slots,
        # Each slot takes one job per cycle: slots / rate is the time a job holds a slot.
        "slot_cycle_ms": round(1000 * args.slots / (len(done) / span), 1) if args.slots else None,
        "cpu": cpu,
    }
    if failed:
        log(f"e2e {args.language}: {len(failed)} jobs failed, first: {failed[0].get('result')}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(
        f"e2e {args.language}: {result['jobs_per_s']} jobs/s over {span:.1f} s "
        f"(steady {result['jobs_per_s_steady']}), duration_ms p50 {result['duration_ms_p50']}, "
        f"{len(failed)} failed"
    )


def steady_rate(completed):
    ordered = sorted(completed)
    n = len(ordered)
    lo, hi = int(n * 0.1), int(n * 0.9) - 1
    if hi <= lo or ordered[hi] <= ordered[lo]:
        return None
    return round((hi - lo) / (ordered[hi] - ordered[lo]), 1)


# --- sync webhooks --------------------------------------------------------------------------

JOB_ID_HEADER = "x-millrace-job-id"  # src/api/run_sync.rs
SYNC_TARGET = {"p50": 3.0, "p99": 15.0}  # overhead, ms


class TimedClient(Api):
    """One keep-alive connection that times each request; no retries (a failure is a result)."""

    def call(self, method, path, body=None):
        """(wall clock when sent, latency in s, status or None, job id header, body)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = time.time()
        t0 = time.perf_counter()
        try:
            # Headers and a bytes body leave in one send() (http.client joins them).
            self.conn.request(method, path, body=body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError) as e:
            self.conn.close()
            self.conn = None
            return sent, time.perf_counter() - t0, None, None, repr(e).encode()
        return sent, time.perf_counter() - t0, resp.status, resp.getheader(JOB_ID_HEADER), data


def timed_calls(method, path, body, n, concurrency, seconds=None):
    """n calls (or as many as `seconds` allow) over `concurrency` keep-alive connections, each
    caller sending its next call as soon as the previous one is answered. Every connection is
    opened (and used once, on /healthz) before the first timed call. Returns one dict per call."""
    base, token = os.environ["MILLRACE_URL"], os.environ["MILLRACE_TOKEN"]
    left = [n]
    lock = threading.Lock()
    ready = threading.Barrier(concurrency)
    deadline = [None]
    samples = []

    def caller():
        client = TimedClient(base, token)
        client.call("GET", "/healthz")
        if ready.wait() == 0 and seconds:
            deadline[0] = time.monotonic() + seconds
        ready.wait()
        mine = []
        while True:
            with lock:
                if seconds is None:
                    if left[0] == 0:
                        break
                    left[0] -= 1
                elif time.monotonic() >= deadline[0]:
                    break
            sent, latency, status, job_id, data = client.call(method, path, body)
            mine.append({"sent": sent, "latency_s": latency, "status": status, "id": job_id,
                         "body": data[:200].decode(errors="replace")})
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def fetch_jobs(ids, concurrency=2):
    """The job records (GET /jobs_u/get/{id}) of the given ids, read after the measurement."""
    todo = queue.Queue()
    for job_id in ids:
        todo.put(job_id)
    found, lock = {}, threading.Lock()

    def reader():
        api = api_from_env()
        while True:
            try:
                job_id = todo.get_nowait()
            except queue.Empty:
                return
            status, body = api.request("GET", f"/api/w/{WORKSPACE}/jobs_u/get/{job_id}")
            if status == 200:
                with lock:
                    found[job_id] = json.loads(body)

    threads = [threading.Thread(target=reader) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found


def stats(values):
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


# The NATS sniffer: a plain core-NATS subscriber (stdlib socket) that timestamps, on arrival,
# every message Millrace sends about jobs, so the sync path can be split into its steps.
SNIFF_SUBJECTS = (
    "millrace.jobs.>",  # the API publishing a job to JetStream
    "millrace.job.>",  # the worker's live replies: started, log, stream, done
    "millrace.events.>",  # events (queued, started, completed...)
    "_INBOX.>",  # PubAcks of JetStream publishes, and pull deliveries to workers
    "$JS.ACK.>",  # workers acking deliveries
    "$JS.API.CONSUMER.MSG.NEXT.>",  # workers' pull requests
)
UUID_RE = re.compile(rb'"id":"([0-9a-f-]{36})"')


def cmd_sniff(args):
    url = urllib.parse.urlsplit(args.nats_url)
    sock = socket.create_connection((url.hostname, url.port or 4222))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = {"verbose": False, "pedantic": False, "headers": True, "name": "bench-sniffer"}
    out = [f"CONNECT {json.dumps(connect)}\r\n"]
    out += [f"SUB {s} {i + 1}\r\n" for i, s in enumerate(SNIFF_SUBJECTS)]
    out.append("PING\r\n")
    sock.sendall("".join(out).encode())
    records = []

    class Stop(Exception):
        pass

    def on_term(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        sniff_loop(sock, records)
    except Stop:
        pass
    with open(args.out, "w") as f:
        json.dump(records, f)


def sniff_loop(sock, records):
    buf = bytearray()
    ready = False
    parent = os.getppid()
    sock.settimeout(1.0)
    while True:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            if os.getppid() != parent:
                return  # bench.py sync is gone (interrupted): do not linger
            continue
        at = time.time()
        if not data:
            break
        buf += data
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                break
            line = bytes(buf[:end])
            if line.startswith((b"MSG ", b"HMSG ")):
                parts = line.split()
                headered = parts[0] == b"HMSG"
                total = int(parts[-1])
                if len(buf) < end + 2 + total + 2:
                    break  # the payload is not all here yet
                body = bytes(buf[end + 2 : end + 2 + total])
                del buf[: end + 2 + total + 2]
                subject = parts[1].decode()
                nfixed = 5 if headered else 4  # verb subject sid [reply] [hdr_len] total
                reply = parts[3].decode() if len(parts) == nfixed + 1 else None
                msg_id, payload = None, body
                if headered:
                    hdr_len = int(parts[-2])
                    headers, payload = body[:hdr_len], body[hdr_len:]
                    for h in headers.split(b"\r\n"):
                        if h.lower().startswith(b"nats-msg-id:"):
                            msg_id = h.split(b":", 1)[1].strip().decode()
                if msg_id is None and reply and reply.startswith("$JS.ACK."):
                    found = UUID_RE.search(payload)
                    msg_id = found.group(1).decode() if found else None
                records.append((at, subject, reply, msg_id, payload[:80].decode(errors="replace")))
                continue
            del buf[: end + 2]
            if line == b"PING":
                sock.sendall(b"PONG\r\n")
            elif line == b"PONG" and not ready:
                ready = True
                print("ready", flush=True)
            elif line.startswith(b"-ERR"):
                log(f"sniffer: {line.decode(errors='replace')}")


class Sniffer:
    """Runs `bench.py sniff` as a separate process (so that it shares no GIL with the callers)."""

    def __init__(self, nats_url, out):
        self.out = out
        command = [sys.executable, os.path.abspath(__file__), "sniff"]
        self.proc = subprocess.Popen(
            command + ["--nats-url", nats_url, "--out", out],
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit("bench: the NATS sniffer did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=30) != 0:
            sys.exit("bench: the NATS sniffer failed")
        with open(self.out) as f:
            records = json.load(f)
        os.unlink(self.out)  # large; what it gave is kept in the result and the samples
        return records


def sniffed_times(records):
    """Per job id, when each step was seen on NATS."""
    pub, deliver, started, done, events = {}, {}, {}, {}, {}
    replies = {}  # first message seen on each reply subject: PubAcks, ack confirmations
    acks = {}  # the worker's ack of a delivery, by its $JS.ACK subject
    for at, subject, reply, msg_id, payload in records:
        if reply and reply.startswith("$JS.ACK.MILLRACE_JOBS.") and msg_id:
            # A delivery to a worker's pull (it keeps the job's subject).
            deliver.setdefault(msg_id, (at, reply))
        elif subject.startswith("millrace.jobs.") and msg_id:
            pub.setdefault(msg_id, (at, reply))
        elif subject.startswith("millrace.job."):
            _, _, job_id, kind = subject.split(".", 3)
            {"started": started, "done": done}.get(kind, {}).setdefault(job_id, at)
        elif subject.startswith("millrace.events.") and msg_id and ":" in msg_id:
            job_id, kind = msg_id.split(":", 1)
            events.setdefault((job_id, kind), (at, reply))
        elif subject.startswith("$JS.ACK."):
            acks.setdefault(subject, at)
        elif subject.startswith("_INBOX.") and payload.startswith('{"stream"'):
            replies.setdefault(subject, at)
    times = {}
    for job_id, (t_pub, pub_reply) in pub.items():
        t = {"pub": t_pub, "pub_ack": replies.get(pub_reply)}
        if job_id in deliver:
            t["deliver"], ack_subject = deliver[job_id]
            t["ack"] = acks.get(ack_subject)
        t["started"] = started.get(job_id)
        t["done"] = done.get(job_id)
        if (job_id, "started") in events:
            t["ev_started"], ev_reply = events[(job_id, "started")]
            t["ev_started_ack"] = replies.get(ev_reply)
        times[job_id] = t
    return times


# Steps of one sync call, in order; each is (name, from, to). `exec_end` is completed_at's
# share: the worker's own clock around the script (duration_ms) is taken out of it.
DB_STEPS = [
    ("api_in", "sent", "created_at"),
    ("created_to_started", "created_at", "started_at"),
    ("worker_around_script", "started_at", "completed_at"),
    ("completed_to_answer", "completed_at", "received"),
]
SNIFF_STEPS = [
    ("api_in", "sent", "created_at"),
    ("api_publish", "created_at", "pub"),
    ("jetstream_to_worker", "pub", "deliver"),
    ("start_update", "deliver", "started"),
    ("started_event_puback", "started", "ev_started_ack"),
    ("around_script", "ev_started_ack", "completed_at"),
    ("complete_update_and_done", "completed_at", "done"),
    ("done_to_answer", "done", "received"),
]
STEP_NOTES = {
    "api_in": "HTTP request, auth, script lookup, NATS subscribe, arguments (API)",
    "created_to_started": "JetStream publish (the batched INSERT alongside), worker pickup, "
    "`running` UPDATE",
    "worker_around_script": "`running` UPDATE, `started` reply and event, `completed` UPDATE "
    "sent (minus duration_ms)",
    "completed_to_answer": "`completed` UPDATE, `done` reply, the API answers, the client reads",
    "api_publish": "the API publishes the job (its INSERT runs alongside; large arguments or a "
    "preset id: after it)",
    "jetstream_to_worker": "JetStream stores the job and delivers it on a worker's pull "
    "(including any wait for a free slot)",
    "start_update": "worker: job task, pool checkout, `running` UPDATE (an upsert from the "
    "envelope, which may wait for the API's INSERT), `started` reply",
    "started_event_puback": "worker publishes the `started` event and waits for its PubAck",
    "around_script": "worker steps around the script: start, then outcome, pool checkout, "
    "`completed` UPDATE sent (duration_ms taken out; its rounding to whole ms moves ±0.5 here)",
    "complete_update_and_done": "`completed` UPDATE, `done` reply",
    "done_to_answer": "API hears `done` and answers; the client reads (and the sniffer's own lag)",
}


def cmd_sync(args):
    path, _ = SCRIPTS[args.language]
    url = f"/api/w/{WORKSPACE}/jobs/run_wait_result/p/{path}"
    name = f"sync_{args.language}_c{args.concurrency}" + ("_sniffed" if args.nats_url else "")
    if args.warmup:
        warm = timed_calls("POST", url, b"{}", args.warmup, 1)
        bad = [s for s in warm if s["status"] != 200]
        if bad:
            sys.exit(f"bench: {name}: warm-up call answered {bad[0]['status']}: {bad[0]['body']}")
    floor = None
    if args.floor:
        calls = timed_calls("GET", "/healthz", None, args.floor, 1)
        floor = stats([1000 * s["latency_s"] for s in calls])
    sniffer = Sniffer(args.nats_url, f"{args.out}.nats.json") if args.nats_url else None
    recorder = None
    if args.dev_pid:
        postmaster = postmaster_pid_of(args.pg_data) if args.pg_data else None
        recorder = CpuRecorder(args.dev_pid, postmaster)
        recorder.start()
    how_long = f"{args.seconds} s" if args.seconds else f"{args.calls} calls"
    log(f"{name}: {how_long} of {url} from {args.concurrency} caller(s)")
    t0 = time.time()
    samples = timed_calls("POST", url, b"{}", args.calls, args.concurrency, args.seconds)
    t1 = time.time()
    cpu = None
    if recorder:
        recorder.stop.set()
        recorder.join()
        cpu = recorder.split(t0, t1)
        warn_if_disturbed(name, cpu)
    records = sniffer.stop() if sniffer else None
    failed = [s for s in samples if s["status"] != 200 or not s["id"]]
    if failed:
        log(f"{name}: {len(failed)} calls failed, first: {failed[0]['status']} {failed[0]['body']}")
    jobs = fetch_jobs([s["id"] for s in samples if s["id"]])
    sniffed = sniffed_times(records) if records else {}
    latency, overhead, durations = [], [], []
    steps = {}
    rows = []
    for s in samples:
        job = jobs.get(s["id"]) if s["id"] else None
        if s["status"] != 200 or not job or job.get("duration_ms") is None:
            continue
        lat = 1000 * s["latency_s"]
        latency.append(lat)
        durations.append(job["duration_ms"])
        over = lat - job["duration_ms"]
        overhead.append(over)
        t = {
            "sent": s["sent"],
            "received": s["sent"] + s["latency_s"],
            "created_at": parse_ts(job["created_at"]),
            "started_at": parse_ts(job["started_at"]),
            "completed_at": parse_ts(job["completed_at"]),
        }
        t.update(sniffed.get(s["id"], {}))
        row = {"overhead": over}
        for step, a, b in SNIFF_STEPS if sniffed else DB_STEPS:
            if t.get(a) is None or t.get(b) is None:
                continue
            ms = 1000 * (t[b] - t[a])
            if step in ("worker_around_script", "around_script"):
                ms -= job["duration_ms"]
            steps.setdefault(step, []).append(ms)
            row[step] = ms
        rows.append(row)
    # Where the slowest calls lose their time: the mean of each step over the 5 % of calls
    # with the largest overhead.
    rows.sort(key=lambda r: r["overhead"])
    tail = rows[int(len(rows) * 0.95) :]
    order = [s for s, _, _ in (SNIFF_STEPS if sniffed else DB_STEPS)]
    tail_means = {
        step: round(statistics.fmean(r[step] for r in tail if step in r), 3)
        for step in order
        if any(step in r for r in tail)
    }
    span = max(s["sent"] + s["latency_s"] for s in samples) - min(s["sent"] for s in samples)
    result = {
        "name": name,
        "language": args.language,
        "concurrency": args.concurrency,
        "slots": args.slots,
        "sniffed": bool(sniffed),
        "calls": len(samples),
        "ok": len(latency),
        "failed": len(failed),
        # Answered 200 but the job record could not be read back (or had no duration_ms).
        "unread": len(samples) - len(failed) - len(latency),
        "calls_per_s": round(len(samples) / span, 1) if span > 0 else None,
        "latency_ms": stats(latency),
        "duration_ms": stats(durations),
        "overhead_ms": stats(overhead),
        "steps_ms": {step: stats(steps[step]) for step in order if step in steps},
        "tail_steps_ms": tail_means,
        "floor_healthz_ms": floor,
        "cpu": cpu,
    }
    if sniffed:
        # Off the caller's path, for reference: the API's PubAck wait, the worker's ack.
        extra = {"job_puback": ("pub", "pub_ack"), "worker_ack_after_done": ("done", "ack")}
        for key, (a, b) in extra.items():
            vals = [1000 * (t[b] - t[a]) for t in sniffed.values() if t.get(a) and t.get(b)]
            result["steps_ms"][key] = stats(vals)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.samples_out:
        with open(args.samples_out, "w") as f:
            json.dump({"samples": samples, "steps": rows}, f)
    o = result["overhead_ms"] or {}
    lat = result["latency_ms"] or {}
    log(
        f"{name}: latency p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms; "
        f"overhead p50 {o.get('p50', 0):.1f} ms, p99 {o.get('p99', 0):.1f} ms; "
        f"{result['calls_per_s']} calls/s; {len(failed)} failed"
    )


# --- report ---------------------------------------------------------------------------------


def fmt_cpu(cpu):
    if not cpu:
        return "n/a"
    parts = [
        f"millrace {cpu['millrace']:.0f}%",
        f"jobs {cpu['jobs']:.0f}%",
        f"postgres {cpu['postgres']:.0f}%",
        f"nats {cpu['nats-server']:.0f}%",
        f"load gen {cpu['loadgen']:.0f}%",
        f"rest {cpu['rest']:.0f}%",
    ]
    text = ", ".join(parts) + f" (of {cpu['cores'] * 100}%)"
    if cpu["rest"] > DISTURBED:
        text += " ⚠ other load on the machine"
    return text


# Percent of one core outside the benchmark above which a measurement is flagged.
DISTURBED = 15


def warn_if_disturbed(name, cpu):
    if cpu and cpu["rest"] > DISTURBED:
        log(
            f"warning: {name}: {cpu['rest']:.0f}% of a core went to other processes "
            "(or the kernel) during the measurement; its figures are lower than the machine can do"
        )


def cmd_report(args):
    results = {}
    for path in args.results:
        with open(path) as f:
            r = json.load(f)
        results[r["name"]] = r
    out = []
    out.append(f"Millrace benchmark ({args.when}, commit {args.commit}, {args.machine})")
    out.append(f"WORKER_SLOTS={args.slots}; load generator oha {args.oha_version}; "
               f"command: `{args.command}`")
    if any(not name.startswith("sync_") for name in results):
        out.append("")
        out.append("| measurement | result | target | CPU split during the run (% of one core) |")
        out.append("| --- | --- | --- | --- |")
    # The yardstick's rate: the mean of its runs (two, around which the API path ran twice).
    bares = [results[n]["rps"] for n in ("ingest_bare", "ingest_bare_2") if n in results]
    bare_rps = sum(bares) / len(bares) if bares else 0
    for name, label in [
        ("ingest", "async ingestion `POST /jobs/run/p/u/admin/bench_bash`, worker running the jobs"),
        ("ingest_idle", "async ingestion, jobs routed to a tag no worker serves (API path only)"),
        ("ingest_bare", "yardstick: a bare axum handler publishing to JetStream, awaiting the "
                        "PubAck (`bench/bare_handler.rs`)"),
        ("ingest_bare_2", "yardstick, second run"),
        ("ingest_idle_2", "API path only, second run"),
    ]:
        r = results.get(name)
        if not r:
            continue
        errs = sum(r["other_status"].values()) + sum(r["errors"].values())
        value = (
            f"**{r['rps']:,.0f} req/s**, p50 {r['p50_ms']:.1f} ms, p99 **{r['p99_ms']:.1f} ms** "
            f"(max {r['max_ms']:.0f} ms; {r['connections']} connections, {r['duration_s']} s, "
            f"{r['created_201']:,} × 201, {errs} other)"
        )
        if bare_rps > 0 and not name.startswith("ingest_bare"):
            value += f"; **{100 * r['rps'] / bare_rps:.0f} % of the yardstick**"
        target = {
            "ingest": "≥ 5,000 req/s, p99 ≤ 50 ms",
            "ingest_idle": "≥ 50 % of the yardstick, p99 ≤ 20 ms",
        }.get(name.removesuffix("_2"), "—")
        out.append(f"| {label} | {value} | {target} | {fmt_cpu(r['cpu'])} |")
    for lang in ("bash", "python3"):
        r = results.get(f"e2e_{lang}")
        if not r:
            continue
        value = (
            f"**{r['jobs_per_s']} jobs/s** ({r['jobs']} jobs in {r['span_s']} s, "
            f"steady {r['jobs_per_s_steady']} jobs/s; {r['failed']} failed); "
            f"worker duration_ms p50 {r['duration_ms_p50']}, p99 {r['duration_ms_p99']}; "
            f"started→completed p50 {r['started_to_completed_ms_p50']} ms, "
            f"slot cycle {r['slot_cycle_ms']} ms"
        )
        target = "≥ 200 jobs/s" if lang == "bash" else "—"
        out.append(f"| end to end, trivial `{lang}` | {value} | {target} | {fmt_cpu(r['cpu'])} |")
    idles = [results[n]["rps"] for n in ("ingest_idle", "ingest_idle_2") if n in results]
    if len(idles) == 2 and len(bares) == 2 and bare_rps > 0:
        out.append("")
        out.append(
            f"API path only, both runs: **{100 * sum(idles) / sum(bares):.0f} % of the "
            f"yardstick** (the sums of the runs, in the order API path, yardstick, yardstick, "
            f"API path, each on a fresh instance)."
        )
    ing = results.get("ingest")
    if ing and ing.get("drained") is not None:
        out.append("")
        out.append(
            f"During the {ing['duration_s']} s ingestion run the in-process worker completed "
            f"{ing['drained']:,} of the {ing['created_201']:,} queued jobs; the rest were still "
            f"queued when the instance was stopped."
        )
    out.extend(cpu_per_request_report(results))
    out.extend(signed_report(results))
    out.extend(sync_report(results))
    print("\n".join(out))


def cpu_per_request_report(results):
    """CPU time per answered request of each ingestion run, by process (µs)."""
    names = ["ingest", "ingest_idle", "ingest_bare", "ingest_bare_2", "ingest_idle_2"]
    for token, signed in signed_pairs(results):
        names += [token, signed]
    runs = [(name, results[name]) for name in names
            if results.get(name, {}).get("cpu_us_per_request")]
    if not runs:
        return []
    out = ["", "CPU per answered request (µs; target: millrace ≤ 70 on the API path only):", "",
           "| run | " + " | ".join(GROUPS) + " |", "| --- |" + " --- |" * len(GROUPS)]
    for name, r in runs:
        cells = " | ".join(f"{r['cpu_us_per_request'][g]:.0f}" for g in GROUPS)
        out.append(f"| {name} | {cells} |")
    return out


def signed_pairs(results):
    """The names of the signed measurement's 64-connection runs among `results`, by pair (pair
    1 unsuffixed, then `_2`, `_3`…), token run first."""
    pairs = []
    for n in range(1, 100):
        suffix = "" if n == 1 else f"_{n}"
        if f"token_4k{suffix}" not in results and f"signed_4k{suffix}" not in results:
            break
        pairs.append((f"token_4k{suffix}", f"signed_4k{suffix}"))
    return pairs


def signed_report(results):
    """Signed deliveries (a webhook trigger) against the token route, same 4 KiB body."""
    token, keyed, signed = (results.get(f"{k}_c1") for k in ("token", "keyed", "signed"))
    pairs = [(results.get(t), results.get(s)) for t, s in signed_pairs(results)]
    if not (token and signed) and not any(t and s for t, s in pairs):
        return []

    def cell(r):
        bad = sum(r["other_status"].values()) + sum(r["errors"].values())
        text = f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms"
        if bad:
            text += f", {bad} not answered {r['ok_status']}"
        return text

    out = ["", "Signed deliveries `POST /api/w/demo/hooks/u/admin/bench_hook` (GitHub's scheme, a "
               "delivery id each, 4 KiB body) against the token route `POST /jobs/run/p/…` with "
               "the same body, both to a tag no worker serves (targets: the signature adds "
               "≤ 0.1 ms p50; the signed rate within 10 % of the token route's)."]
    if token and signed:
        out += ["", "One connection: the token route, the token route with an `Idempotency-Key` "
                    "each (the keyed path a delivery id takes), the signed route:", "",
                "| token route | token route, keyed | signed route | signed − keyed p50 "
                "(the signature) | signed − token p50 (signature and delivery key) |",
                "| --- | --- | --- | --- | --- |"]
        sig = f"**{signed['p50_ms'] - keyed['p50_ms']:+.2f} ms**" if keyed else "—"
        out.append(f"| {cell(token)} | {cell(keyed) if keyed else '—'} | {cell(signed)} | {sig} "
                   f"| {signed['p50_ms'] - token['p50_ms']:+.2f} ms |")
    pairs = [(t, s) for t, s in pairs if t and s]
    if pairs:
        order = ("in the order token, signed, signed, token, token…" if len(pairs) > 1
                 else "token, then signed")
        out += ["", f"Each route on a fresh instance, {order}:", "",
                "| connections | token route | signed route | signed / token rate |",
                "| --- | --- | --- | --- |"]
        for token, signed in pairs:
            out.append(f"| {token['connections']} | {cell(token)} | {cell(signed)} "
                       f"| {100 * signed['rps'] / max(token['rps'], 1e-9):.0f} % |")
        if len(pairs) > 1:
            both = sum(s["rps"] for _, s in pairs) / max(sum(t["rps"] for t, _ in pairs), 1e-9)
            out.append(f"| all {len(pairs)} | | | **{100 * both:.0f} %** |")
    return out


def sync_report(results):
    """The sync webhook tables: latency and overhead per run, then the steps of the sniffed
    runs. Empty when no sync run is among the results."""
    sync = [r for name, r in sorted(results.items()) if name.startswith("sync_")]
    if not sync:
        return []

    def order(r):
        return (["bash", "python3", "bun", "deno"].index(r["language"]), r["concurrency"])

    plain = sorted((r for r in sync if not r["sniffed"]), key=order)
    sniffed = sorted((r for r in sync if r["sniffed"]), key=order)
    out = [
        "",
        "Sync webhook `POST /api/w/demo/jobs/run_wait_result/p/…` (ms; overhead = the call's "
        "latency − the job's `duration_ms`; target: overhead p50 ≤ 3, p99 ≤ 15):",
        "",
        "| script | callers | calls (calls/s) | latency p50 / p99 | duration_ms p50 / p99 "
        "| **overhead p50 / p99** | target met? | CPU split during the run (% of one core) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in plain or sniffed:
        lat, dur, over = r["latency_ms"], r["duration_ms"], r["overhead_ms"]
        if not over:
            out.append(f"| `{r['language']}` | {r['concurrency']} | none usable "
                       f"({r['failed']} of {r['calls']} failed) | | | | no | |")
            continue
        missed = [k for k in ("p50", "p99") if over[k] > SYNC_TARGET[k]]
        verdict = "no: " + " and ".join(
            f"{k} {over[k]:.1f} > {SYNC_TARGET[k]:g}" for k in missed) if missed else "yes"
        failed = f", {r['failed']} failed" if r["failed"] else ""
        if r.get("unread"):
            failed += f", {r['unread']} not read back"
        out.append(
            f"| `{r['language']}` | {r['concurrency']} | {r['ok']:,} ({r['calls_per_s']}/s{failed}) "
            f"| {lat['p50']:.1f} / {lat['p99']:.1f} | {dur['p50']:g} / {dur['p99']:g} "
            f"| **{over['p50']:.1f} / {over['p99']:.1f}** | {verdict} | {fmt_cpu(r['cpu'])} |"
        )
    floor = next((r["floor_healthz_ms"] for r in plain if r.get("floor_healthz_ms")), None)
    if floor:
        out += ["", f"HTTP floor (the same client, `GET /healthz`, 1 caller): "
                    f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms."]
    if not sniffed:
        return out

    def cell(r, step):
        st = r["steps_ms"].get(step)
        return f"{st['mean']:.2f} / {st['p99']:.1f}" if st else "—"

    out += [
        "",
        "Where the overhead goes (a second pass with a NATS sniffer timestamping each step; "
        "mean / p99 per step, ms; the means add up to the mean overhead):",
        "",
        "| step | what happens | "
        + " | ".join(f"`{r['language']}` ×{r['concurrency']}" for r in sniffed) + " |",
        "| --- | --- | " + " | ".join("---" for _ in sniffed) + " |",
    ]
    for step, _, _ in SNIFF_STEPS:
        cells = " | ".join(cell(r, step) for r in sniffed)
        out.append(f"| {step} | {STEP_NOTES[step]} | {cells} |")
    cells = " | ".join(
        f"**{r['overhead_ms']['mean']:.2f} / {r['overhead_ms']['p99']:.1f}**" for r in sniffed)
    out.append(f"| overhead | (sum) | {cells} |")
    off_path = {
        "job_puback": "JetStream's PubAck of the job to the API (alongside the delivery)",
        "worker_ack_after_done": "worker: `done` → its double ack confirmed (slot still held)",
    }
    for step, note in off_path.items():
        cells = " | ".join(cell(r, step) for r in sniffed)
        out.append(f"| *{step}* | *{note}* | {cells} |")
    return out


# --- main -----------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    sub.add_parser("setup")

    p = sub.add_parser("cpu")
    p.add_argument("--dev-pid", type=int, required=True)
    p.add_argument("--app-pid", type=int, default=0,
                   help="a process of the bench's own counted as the application")
    p.add_argument("--pg-data", required=True)
    p.add_argument("--delay", type=float, default=1.0)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("quiet")
    p.add_argument("--wait", type=float, default=0)
    p.add_argument("--max-busy", type=float, default=10, help="percent of the whole machine")

    p = sub.add_parser("oha")
    p.add_argument("--name", required=True)
    p.add_argument("--oha-json", required=True)
    p.add_argument("--cpu")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--duration", type=int, required=True)
    p.add_argument("--drained", type=int, help="jobs the worker completed during the run")
    p.add_argument("--ok-status", default="201", help="the status of an accepted request")
    p.add_argument("--out", required=True)

    p = sub.add_parser("setup-signed")
    p.add_argument("--secret", required=True)

    p = sub.add_parser("e2e")
    p.add_argument("--language", choices=sorted(SCRIPTS), required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--dev-pid", type=int)
    p.add_argument("--pg-data")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--slots", type=int, help="WORKER_SLOTS of the instance")
    p.add_argument("--out", required=True)

    p = sub.add_parser("sync")
    p.add_argument("--language", choices=sorted(SCRIPTS), required=True)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--calls", type=int)
    how.add_argument("--seconds", type=float, help="call for this long instead of --calls")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20, help="sequential calls before measuring")
    p.add_argument("--floor", type=int, default=0, help="also time this many GET /healthz")
    p.add_argument("--nats-url", help="split each call into its steps with a NATS sniffer")
    p.add_argument("--dev-pid", type=int)
    p.add_argument("--pg-data")
    p.add_argument("--slots", type=int, help="WORKER_SLOTS of the instance")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-out", help="also keep every call's timings here")

    p = sub.add_parser("sniff")
    p.add_argument("--nats-url", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("report")
    p.add_argument("--slots", required=True)
    p.add_argument("--oha-version", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--when", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("results", nargs="+")

    args = parser.parse_args()
    commands = {
        "setup": cmd_setup,
        "setup-signed": cmd_setup_signed,
        "cpu": cmd_cpu,
        "quiet": cmd_quiet,
        "oha": cmd_oha,
        "e2e": cmd_e2e,
        "sync": cmd_sync,
        "sniff": cmd_sniff,
        "report": cmd_report,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
