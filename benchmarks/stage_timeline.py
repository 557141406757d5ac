#!/usr/bin/env python3
"""Where a job's fixed cost goes, from ember's debug logs.

Run the driver (or `ember bench`, `ember sql`) with
`--log-level ember_driver=debug,ember_exec=debug` and each executor with
`--log-level ember_exec=debug,ember_executor=debug`, then:

    benchmarks/stage_timeline.py DRIVER_LOG [EXECUTOR_LOG ...] [--jobs 14,15,16]

It prints one JSON object per job (and their mean), in milliseconds:

- wall: job submitted to job finished, on the driver;
- stage_start: the driver's scheduler loop resolving and encoding stage plans;
- launch: from a stage's start to its first task starting, summed over stages
  (task launch messages, or waiting for a slot);
- setup: tasks decoding their plans and settings (sum over tasks);
- run: tasks running (sum over tasks, setup included);
- report: from a task's end to the driver hearing of it (sum over tasks);
- result: from the final stage's end to the job's end (the result read).

Only logs of one engine may be given: job ids of two engines would collide.
"""

import json
import re
import sys
from collections import defaultdict
from datetime import datetime

TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
FIELDS = re.compile(r"(\w+)=([^\s]+)")
TASK = re.compile(r"task (\d+)\.(\d+)\.(\d+) ")
SPAN = re.compile(r"task\{job=(\d+) stage=(\d+) task=(\d+)")


def ms(line):
    m = TS.match(line)
    if not m:
        return None
    t = datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
    return t.timestamp() * 1000.0


def parse(driver, executors):
    jobs = defaultdict(lambda: {"stages": {}, "tasks": {}})
    for line in open(driver, errors="replace"):
        t = ms(line)
        if t is None:
            continue
        f = dict(FIELDS.findall(line))
        if "job submitted" in line:
            jobs[int(f["job"])]["submitted"] = t
        elif "job finished" in line:
            jobs[int(f["job"])]["finished"] = t
        elif "stage started" in line:
            s = jobs[int(f["job"])]["stages"].setdefault(int(f["stage"]), {})
            s.setdefault("started", t)
            s["work"] = s.get("work", 0) + (
                int(f.get("resolve_us", 0)) + int(f.get("encode_us", 0))
            ) / 1000.0
        elif "stage finished" in line:
            jobs[int(f["job"])]["stages"].setdefault(int(f["stage"]), {})["finished"] = t
        elif "task succeeded" in line:
            m = TASK.search(line)
            if m:
                j, s, p = map(int, m.groups())
                task = jobs[j]["tasks"].setdefault((s, p), {})
                task["reported"] = t
                task["elapsed"] = float(f.get("elapsed_ms", 0))
    for log in executors:
        for line in open(log, errors="replace"):
            t = ms(line)
            m = SPAN.search(line)
            if t is None or not m or "task plan ready" not in line:
                continue
            j, s, p = map(int, m.groups())
            setup = int(dict(FIELDS.findall(line)).get("setup_us", 0)) / 1000.0
            task = jobs[j]["tasks"].setdefault((s, p), {})
            task["start"] = t - setup
            task["setup"] = setup
    return jobs


def breakdown(job):
    stages, tasks = job["stages"], job["tasks"]
    out = {
        "wall": job["finished"] - job["submitted"],
        "stage_start": sum(s.get("work", 0) for s in stages.values()),
        "launch": 0.0,
        "setup": sum(t.get("setup", 0) for t in tasks.values()),
        "run": sum(t.get("elapsed", 0) for t in tasks.values()),
        "report": 0.0,
        "stages": len(stages),
        "tasks": len(tasks),
    }
    for sid, s in stages.items():
        starts = [t["start"] for (ts, _), t in tasks.items() if ts == sid and "start" in t]
        if starts and "started" in s:
            out["launch"] += max(0.0, min(starts) - s["started"])
    for t in tasks.values():
        if "start" in t and "reported" in t:
            out["report"] += max(0.0, t["reported"] - t["start"] - t["elapsed"])
    last = max(stages)
    if "finished" in stages[last]:
        out["result"] = job["finished"] - stages[last]["finished"]
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def main():
    args = sys.argv[1:]
    wanted = None
    if "--jobs" in args:
        i = args.index("--jobs")
        wanted = {int(j) for j in args[i + 1].split(",")}
        del args[i : i + 2]
    if not args:
        sys.exit(__doc__)
    jobs = parse(args[0], args[1:])
    rows = []
    for j in sorted(jobs):
        job = jobs[j]
        if (wanted and j not in wanted) or "finished" not in job or "submitted" not in job:
            continue
        row = breakdown(job)
        row["job"] = j
        rows.append(row)
        print(json.dumps(row))
    if rows:
        keys = [k for k in rows[0] if k != "job"]
        mean = {k: round(sum(r.get(k, 0) for r in rows) / len(rows), 2) for k in keys}
        print(json.dumps({"mean_of": len(rows), **mean}))


if __name__ == "__main__":
    main()
