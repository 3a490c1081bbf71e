"""Time from `python -m sdtune_ui train ...` process start to the run's first event and first step (issue 12).

    python benchmarks/startup_time.py --repeats 3 -- --model tiny-sd1 --data sdtune_ui/examples/toy_robot --steps 3

Each repeat trains into a fresh run folder and watches its events.jsonl: `first_event` is the run's first event
("starting"), `running` the status written right before the first step, `first_step` the first step event (it
follows the warm-up), `end` the process exit. Wall seconds from process start, and (on Linux) the process's CPU
seconds by then (`cpu_*`, read from /proc every 20 ms): on a shared machine the CPU seconds move much less with
the load than the wall time. Prints one JSON line per repeat and one with the medians and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKS = ("first_event", "running", "first_step")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all its threads), or None where /proc cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reached(events_path: Path) -> dict[str, float]:
    """The event times (epoch seconds) of the marks the run has written so far."""
    try:
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.endswith("}")]
    except OSError:
        return {}
    found = {}
    if events:
        found["first_event"] = events[0]["t"]
    for event in events:
        if event["kind"] == "status" and event.get("status") == "running":
            found.setdefault("running", event["t"])
        if event["kind"] == "step":
            found.setdefault("first_step", event["t"])
    return found


def time_one(train_args: list[str], folder: Path) -> dict[str, float | None]:
    run_dir = folder / "run"
    start = time.time()
    process = subprocess.Popen([sys.executable, "-m", "sdtune_ui", "train", "--quiet", "--output", str(run_dir),
                                *train_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu: dict[str, float | None] = {}
    while process.poll() is None:
        seconds = cpu_seconds(process.pid)
        for mark in reached(run_dir / "events.jsonl"):
            cpu.setdefault(mark, seconds)
        time.sleep(0.02)
    end = time.time()
    if process.returncode != 0:
        raise SystemExit(f"the run failed (exit {process.returncode}); run the command by hand to see why")
    times = reached(run_dir / "events.jsonl")
    row: dict[str, float | None] = {mark: round(times[mark] - start, 2) for mark in MARKS}
    row["end"] = round(end - start, 2)
    row.update({f"cpu_{mark}": None if cpu.get(mark) is None else round(cpu[mark], 2) for mark in MARKS})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the train command's flags")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(time_one(train_args, Path(folder)))
        print(json.dumps(rows[-1]), flush=True)
    medians = {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]
               if all(r[key] is not None for r in rows)}
    print(json.dumps({"median": medians, "repeats": len(rows), "loadavg": [round(x, 2) for x in os.getloadavg()],
                      "command": " ".join(["python -m sdtune_ui train", *train_args])}))


if __name__ == "__main__":
    main()
