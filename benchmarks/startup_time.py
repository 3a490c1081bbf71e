"""Time from `python -m sdtune_ui train ...` process start to the run's first event and first step (issue 12).

    python benchmarks/startup_time.py --repeats 3 -- --model tiny-sd1 --data sdtune_ui/examples/toy_robot --steps 3

Each repeat trains into a fresh run folder and reads its events.jsonl: `first_event` is the run's first event
("starting"), `running` the status written right before the first step, `first_step` the first step event (it
follows the warm-up), `end` the process exit. Prints one JSON line per repeat and one with the medians and the
load average (the machine may be shared: compare medians taken under a similar load).
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


def time_one(train_args: list[str], folder: Path) -> dict[str, float]:
    run_dir = folder / "run"
    start = time.time()
    subprocess.run([sys.executable, "-m", "sdtune_ui", "train", "--quiet", "--output", str(run_dir), *train_args],
                   check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    running = next(e["t"] for e in events if e["kind"] == "status" and e.get("status") == "running")
    first_step = next(e["t"] for e in events if e["kind"] == "step")
    return {"first_event": round(events[0]["t"] - start, 2), "running": round(running - start, 2),
            "first_step": round(first_step - start, 2), "end": round(end - start, 2)}


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
    medians = {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
    print(json.dumps({"median": medians, "repeats": len(rows), "loadavg": [round(x, 2) for x in os.getloadavg()],
                      "command": " ".join(["python -m sdtune_ui train", *train_args])}))


if __name__ == "__main__":
    main()
