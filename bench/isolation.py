#!/usr/bin/env python3
"""The per-job cost of isolation, for bench/run.sh (BENCH_ONLY=isolation; standard library only).

  isolation.py check   fail unless the isolated instance runs jobs as a job user and the other
                       as the worker's own user (else the comparison is worthless)
  isolation.py ab      one caller alternating sync calls of the same trivial script between two
                       running instances: one whose jobs run as users of their own (JOB_UID_RANGE,
                       the default as root) and one with JOB_UID_RANGE=none; write a result JSON
  isolation.py report  print the markdown table from the result JSONs

Why interleaved: on a noisy machine two runs minutes apart differ by far more than the effect
measured here, so A-then-B comparisons say nothing. Alternating call by call gives both sides
the same noise; the order within each pair alternates too (none first, then isolated first), so
that neither side always runs right after the other's job.
"""

import argparse
import json
import random
import statistics
import sys
import time

from bench import WORKSPACE, Api, SCRIPTS, TimedClient, log, stats, total_busy_ticks

SIDES = ("none", "isolated")
WHOAMI = ("u/admin/bench_whoami", "id -u\n")
TARGET_MS = 0.5  # issue 12: isolated − none, latency p50, bash
# Percent of the whole machine above which a run had other load: on the 2-core benchmark
# machine the one caller, the two instances and the jobs take about 70 % by themselves.
BUSY_WARN = 80


def cmd_check(args):
    path, content = WHOAMI
    for side in SIDES:
        api = Api(*side_base(args, side))
        status, body = api.request("POST", f"/api/w/{WORKSPACE}/scripts/create",
                                   {"path": path, "language": "bash", "content": content})
        if status != 201:
            sys.exit(f"bench: {side}: creating {path} answered {status}: {body[:300]!r}")
        status, body = api.request("POST", f"/api/w/{WORKSPACE}/jobs/run_wait_result/p/{path}", {})
        if status != 200:
            sys.exit(f"bench: {side}: {path} answered {status}: {body[:300]!r}")
        uid = int(json.loads(body))
        isolated = uid >= args.first_uid
        if isolated != (side == "isolated"):
            sys.exit(f"bench: the {side} instance ran its job as uid {uid}; expected "
                     f"{'a job user' if side == 'isolated' else 'the worker user'}")
        log(f"isolation: {side} instance runs jobs as uid {uid}")


def side_base(args, side):
    return getattr(args, f"{side}_url"), getattr(args, f"{side}_token")


def read_jobs(api, ids):
    """duration_ms of each job, read back after the timed calls."""
    found = {}
    for job_id in ids:
        status, body = api.request("GET", f"/api/w/{WORKSPACE}/jobs_u/get/{job_id}")
        if status == 200:
            found[job_id] = json.loads(body).get("duration_ms")
    return found


def p50_diff_interval(lat, pairs, rounds=2000):
    """95 % bootstrap interval of p50(isolated) − p50(none), resampling whole pairs (the two
    calls of a pair shared the same moment of the machine)."""
    rng = random.Random(1)  # reproducible
    diffs = []
    for _ in range(rounds):
        pick = [rng.randrange(pairs) for _ in range(pairs)]
        diffs.append(statistics.median(lat["isolated"][i] for i in pick)
                     - statistics.median(lat["none"][i] for i in pick))
    diffs.sort()
    return round(diffs[int(0.025 * rounds)], 3), round(diffs[int(0.975 * rounds) - 1], 3)


def cmd_ab(args):
    path, _ = SCRIPTS[args.language]
    url = f"/api/w/{WORKSPACE}/jobs/run_wait_result/p/{path}"
    bases = {side: side_base(args, side) for side in SIDES}
    clients = {side: TimedClient(*bases[side]) for side in SIDES}
    for client in clients.values():
        client.call("GET", "/healthz")  # open the keep-alive connection before timing

    def pair(i):
        """One call to each side; none first in even pairs, isolated first in odd ones."""
        out = {}
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            _sent, latency, status, job_id, body = clients[side].call("POST", url, b"{}")
            if status != 200 or not job_id:
                sys.exit(f"bench: {side} {args.language}: answered {status}: {body[:200]!r}")
            out[side] = (1000 * latency, job_id)
        return out

    for i in range(args.warmup):
        pair(i)
    log(f"isolation {args.language}: {args.calls} calls to each instance, alternating")
    busy0 = total_busy_ticks()
    t0 = time.monotonic()
    calls = [pair(i) for i in range(args.calls)]
    wall = time.monotonic() - t0
    busy1 = total_busy_ticks()

    lat = {side: [c[side][0] for c in calls] for side in SIDES}
    result = {"name": f"isolation_{args.language}", "language": args.language,
              "pairs": len(calls), "wall_s": round(wall, 1),
              # Of the whole machine (both cores), while the calls ran.
              "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)}
    for side in SIDES:
        ids = [c[side][1] for c in calls]
        durations = read_jobs(Api(*bases[side]), ids)
        dur = [durations[i] for i in ids if durations.get(i) is not None]
        over = [c[side][0] - durations[c[side][1]] for c in calls
                if durations.get(c[side][1]) is not None]
        result[side] = {"latency_ms": stats(lat[side]), "duration_ms": stats(dur),
                        "overhead_ms": stats(over), "unread": len(ids) - len(dur)}
    paired = [c["isolated"][0] - c["none"][0] for c in calls]
    result["p50_diff_ms"] = round(result["isolated"]["latency_ms"]["p50"]
                                  - result["none"]["latency_ms"]["p50"], 3)
    result["p50_diff_ci95_ms"] = p50_diff_interval(lat, len(calls))
    result["paired_diff_median_ms"] = round(statistics.median(paired), 3)
    result["duration_mean_diff_ms"] = round(result["isolated"]["duration_ms"]["mean"]
                                            - result["none"]["duration_ms"]["mean"], 3)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if result["machine_busy_pct"] > BUSY_WARN:
        log(f"warning: isolation {args.language}: the machine was {result['machine_busy_pct']}% "
            f"busy (on 2 cores this benchmark alone: about 70 %); other load inflates the difference")
    log(f"isolation {args.language}: latency p50 none {result['none']['latency_ms']['p50']:.2f}, "
        f"isolated {result['isolated']['latency_ms']['p50']:.2f} ms: "
        f"{result['p50_diff_ms']:+.2f} ms (95 % {result['p50_diff_ci95_ms'][0]:+.2f} to "
        f"{result['p50_diff_ci95_ms'][1]:+.2f}); machine {result['machine_busy_pct']}% busy")


def cmd_report(args):
    out = ["", "Isolation cost: one caller alternating sync calls "
           "(`POST /api/w/demo/jobs/run_wait_result/p/…`) between an instance whose jobs run "
           "as users of their own and one with `JOB_UID_RANGE=none` (ms; target: bash p50 "
           f"+{TARGET_MS} ms at most):", "",
           "| script | pairs | latency p50 / p90 / p99, none | latency p50 / p90 / p99, isolated "
           "| **p50 isolated − none** (95 % interval) | median paired difference "
           "| `duration_ms` mean none / isolated | overhead p50 none / isolated | target met? "
           "| machine busy |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def three(s):
        return " / ".join(f"{s[k]:.2f}" for k in ("p50", "p90", "p99"))

    for path in args.results:
        with open(path) as f:
            r = json.load(f)
        n, i = r["none"], r["isolated"]
        low, high = r["p50_diff_ci95_ms"]
        verdict = "—"
        if r["language"] == "bash":
            verdict = "yes" if r["p50_diff_ms"] <= TARGET_MS else \
                f"no: +{r['p50_diff_ms'] - TARGET_MS:.2f} over"
        out.append(
            f"| `{r['language']}` | {r['pairs']} | {three(n['latency_ms'])} "
            f"| {three(i['latency_ms'])} | **{r['p50_diff_ms']:+.2f}** ({low:+.2f} to {high:+.2f}) "
            f"| {r['paired_diff_median_ms']:+.2f} "
            f"| {n['duration_ms']['mean']:.2f} / {i['duration_ms']['mean']:.2f} "
            f"| {n['overhead_ms']['p50']:.2f} / {i['overhead_ms']['p50']:.2f} | {verdict} "
            f"| {r['machine_busy_pct']:.0f} % |")
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    both = argparse.ArgumentParser(add_help=False)  # where the two instances are
    for side in SIDES:
        both.add_argument(f"--{side}-url", required=True)
        both.add_argument(f"--{side}-token", required=True)
    p = sub.add_parser("check", parents=[both])
    p.add_argument("--first-uid", type=int, default=61000, help="the first uid of JOB_UID_RANGE")
    p = sub.add_parser("ab", parents=[both])
    p.add_argument("--language", choices=sorted(SCRIPTS), required=True)
    p.add_argument("--calls", type=int, default=500, help="timed calls to each instance")
    p.add_argument("--warmup", type=int, default=30, help="untimed pairs first")
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    args = parser.parse_args()
    {"check": cmd_check, "ab": cmd_ab, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
