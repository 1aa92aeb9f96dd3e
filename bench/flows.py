#!/usr/bin/env python3
"""Flow benchmarks of bench/run.sh (measurement 5; standard library only).

  flows.py setup       create the benchmark flows in a running instance
  flows.py transition  run sequential N-step bash flows one at a time; per-transition overhead =
                       step k+1 started_at - step k completed_at (both the database's clock)
  flows.py sync        sync calls of a 3-step bash flow from one caller; overhead = latency minus
                       the sum of its steps' duration_ms; also where the time goes, cut at the
                       jobs' timestamps
  flows.py loop        one parallel loop of N trivial bash iterations: iterations/s from the
                       flow's started_at to its completed_at

Reads MILLRACE_URL and MILLRACE_TOKEN, like bench.py.
"""

import argparse
import json
import sys
import time

from bench import WORKSPACE, api_from_env, log, parse_ts, stats, timed_calls, fetch_jobs

STEP = {"type": "rawscript", "language": "bash", "content": "echo ok\n", "input_transforms": {}}


def chain(n):
    return {"modules": [{"id": f"s{i}", "value": STEP} for i in range(n)]}


def loop(n):
    return {"modules": [{"id": "loop", "value": {
        "type": "forloopflow", "parallel": True,
        "iterator": {"type": "javascript", "expr": f"[...Array({n}).keys()]"},
        "modules": [{"id": "it", "value": STEP}]}}]}


def flows(args):
    return {
        "u/admin/bench_chain": chain(args.steps),
        "u/admin/bench_flow3": chain(3),
        "u/admin/bench_loop": loop(args.iterations),
    }


def cmd_setup(args):
    api = api_from_env()
    for path, value in flows(args).items():
        status, body = api.request("POST", f"/api/w/{WORKSPACE}/flows/create",
                                   {"path": path, "value": value})
        if status != 201:
            sys.exit(f"bench: creating flow {path} answered {status}: {body[:300]!r}")
        log(f"created flow {path}")


def run_and_wait(api, path, timeout=300):
    status, body = api.request("POST", f"/api/w/{WORKSPACE}/jobs/run/f/{path}", {})
    if status != 201:
        sys.exit(f"bench: running {path} answered {status}: {body[:300]!r}")
    job_id = body.decode().strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api.request("GET", f"/api/w/{WORKSPACE}/jobs_u/get/{job_id}")
        job = json.loads(body) if status == 200 else {}
        if job.get("type") == "CompletedJob":
            if not job.get("success"):
                sys.exit(f"bench: flow {job_id} failed: {job.get('result')}")
            return job
        time.sleep(0.02)
    sys.exit(f"bench: flow {job_id} did not complete within {timeout} s")


def step_jobs(job):
    """The step jobs of a sequential flow, in module order."""
    ids = [m["job"] for m in job["flow_status"]["modules"]]
    found = fetch_jobs(ids)
    return [found[i] for i in ids]


def cmd_transition(args):
    api = api_from_env()
    for _ in range(args.warmup):
        run_and_wait(api, "u/admin/bench_chain")
    gaps = []
    started = time.monotonic()
    for _ in range(args.flows):
        steps = step_jobs(run_and_wait(api, "u/admin/bench_chain"))
        for a, b in zip(steps, steps[1:]):
            gaps.append((parse_ts(b["started_at"]) - parse_ts(a["completed_at"])) * 1000)
    result = {"name": "flow_transition", "flows": args.flows, "steps": args.steps,
              "seconds": round(time.monotonic() - started, 1), "overhead_ms": stats(gaps)}
    log(f"transition overhead: {result['overhead_ms']}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def cmd_sync(args):
    api = api_from_env()
    path = f"/api/w/{WORKSPACE}/jobs/run_wait_result/f/u/admin/bench_flow3"
    timed_calls("POST", path, {}, args.warmup, 1)
    samples = timed_calls("POST", path, {}, None, 1, seconds=args.seconds)
    bad = [s for s in samples if s["status"] != 200]
    if bad:
        sys.exit(f"bench: {len(bad)} sync flow calls failed, e.g. {bad[0]}")
    flows_found = fetch_jobs([s["id"] for s in samples])
    latency, overhead = [], []
    segments = {name: [] for name in SEGMENTS}
    for s in samples:
        job = flows_found[s["id"]]
        steps = step_jobs(job)
        own = sum(step["duration_ms"] or 0 for step in steps)
        latency.append(s["latency_s"] * 1000)
        overhead.append(s["latency_s"] * 1000 - own)
        for name, ms in zip(SEGMENTS, segments_of(s, job, steps)):
            segments[name].append(ms)
    result = {"name": "flow_sync3", "calls": len(samples), "latency_ms": stats(latency),
              "overhead_ms": stats(overhead),
              "segments_p50_ms": {name: stats(v)["p50"] for name, v in segments.items()}}
    log(f"sync 3-step flow: latency {result['latency_ms']}, overhead {result['overhead_ms']}")
    log(f"sync 3-step flow, where the time goes (p50): {result['segments_p50_ms']}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


# A sync call of a 3-step flow cut at the jobs' timestamps (the caller's clock and PostgreSQL's
# are this machine's). PostgreSQL's now() is a transaction's start: a transition's own time
# lands in the gap after it, and the last one's in "flow ends -> answered".
SEGMENTS = ["sent -> flow row", "flow row -> flow started", "flow started -> step 1 started",
            "step 1 -> step 2 (end to start)", "step 2 -> step 3 (end to start)",
            "flow ends -> answered", "steps started -> ended (sum)"]


def segments_of(sample, job, steps):
    at = lambda record, field: parse_ts(record[field]) * 1000
    answered = (sample["sent"] + sample["latency_s"]) * 1000
    return [at(job, "created_at") - sample["sent"] * 1000,
            at(job, "started_at") - at(job, "created_at"),
            at(steps[0], "started_at") - at(job, "started_at"),
            at(steps[1], "started_at") - at(steps[0], "completed_at"),
            at(steps[2], "started_at") - at(steps[1], "completed_at"),
            answered - at(job, "completed_at"),
            sum(at(step, "completed_at") - at(step, "started_at") for step in steps)]


def cmd_loop(args):
    api = api_from_env()
    job = run_and_wait(api, "u/admin/bench_loop", timeout=600)
    seconds = parse_ts(job["completed_at"]) - parse_ts(job["started_at"])
    result = {"name": "flow_loop", "iterations": args.iterations, "seconds": round(seconds, 2),
              "iterations_per_s": round(args.iterations / seconds, 1),
              "result_items": len(job["result"])}
    log(f"parallel loop: {result['iterations_per_s']} iterations/s")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def cmd_report(args):
    by_name = {}
    for path in args.results:
        with open(path) as f:
            r = json.load(f)
        by_name[r["name"]] = r
    out = ["", "| flow measurement | result |", "|---|---|"]
    t = by_name.get("flow_transition")
    if t:
        o = t["overhead_ms"]
        out.append(f"| transition overhead ({t['flows']} flows × {t['steps']} bash steps, one at a time) "
                   f"| p50 {o['p50']} ms, p90 {o['p90']} ms, p99 {o['p99']} ms (n={o['n']}) |")
    s = by_name.get("flow_sync3")
    if s:
        out.append(f"| sync 3-step bash flow, 1 caller ({s['calls']} calls) | latency p50 "
                   f"{s['latency_ms']['p50']} ms, overhead over the steps' duration_ms p50 "
                   f"{s['overhead_ms']['p50']} ms, p99 {s['overhead_ms']['p99']} ms |")
        cut = ", ".join(f"{name} {ms} ms" for name, ms in s.get("segments_p50_ms", {}).items())
        if cut:
            out.append(f"| sync 3-step bash flow, p50 of each part | {cut} |")
    lp = by_name.get("flow_loop")
    if lp:
        out.append(f"| parallel loop of {lp['iterations']} trivial bash steps | {lp['iterations_per_s']} "
                   f"iterations/s ({lp['seconds']} s) |")
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("setup", "loop"):
        p = sub.add_parser(name)
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--iterations", type=int, default=1000)
        if name == "loop":
            p.add_argument("--out", required=True)
    p = sub.add_parser("transition")
    p.add_argument("--flows", type=int, default=30)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", required=True)
    p = sub.add_parser("sync")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    args = parser.parse_args()
    {"setup": cmd_setup, "transition": cmd_transition, "sync": cmd_sync, "loop": cmd_loop,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
