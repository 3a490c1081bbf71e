"""The GPU queue as every page shows it: what each job is, whose, how far it got, when it should end.

No gradio here: the queue panel (ui/queue_panel.py) renders these rows and the tests read them directly.
A training job's progress comes from its run folder (the same snapshot the live view reads); other jobs
report their own (`Job.report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtune_ui.app import live
from sdtune_ui.app.text import escape_markdown


@dataclass(frozen=True)
class QueueRow:
    job_id: int
    position: int       # 0: running; N: N jobs ahead of it
    what: str
    whose: str
    mine: bool
    progress: str       # "step 12 of 60", "image 3 of 12", "" before any
    eta: str            # "0:42", "-" when unknown

    @property
    def state(self) -> str:
        return "running" if self.position == 0 else f"waiting ({self.position} ahead)"

    def choice(self) -> tuple[str, str]:
        """(label, value) for the panel's job picker."""
        return f"#{self.job_id} {self.what} ({self.whose})", str(self.job_id)


def whose(job: Any, viewer: str = "", viewer_user: str = "") -> tuple[str, bool]:
    """("you" | the user's name | "another page" | "API or terminal", is it the viewer's own job)."""
    mine = bool(job.owner) and job.owner == viewer or bool(job.user) and job.user == viewer_user
    if job.user:
        return (f"{job.user} (you)" if mine else job.user), mine
    if mine:
        return "you", True
    return ("another page" if job.owner else "API or terminal"), False


def describe(job: Any) -> tuple[str, str, str]:
    """(what, progress, eta) of one job."""
    if job.run_dir is not None:
        snap = live.read_snapshot(job.run_dir)
        name = snap.run_id
        what = f"training {name} ({snap.method or 'run'})"
        progress = f"step {snap.step} of {snap.total}" if snap.total and snap.status == "running" else snap.status
        eta = live.format_duration(snap.eta_s) if snap.status == "running" else "-"
        return what, progress, eta
    progress = f"{job.unit} {job.done_count} of {job.total_count}" if job.total_count else ""
    return job.label, progress, live.format_duration(job.eta_s())


def queue_rows(jobs: Any, viewer: str = "", viewer_user: str = "", *, private: bool = False) -> list[QueueRow]:
    """The running job first, then the waiting ones in order, as `viewer` (a page's session) sees them.

    `private` (a workspace per user): other users' jobs say only whose they are and how far they got, not what
    they are (their run names are theirs)."""
    rows = []
    for job in jobs.active():
        position = jobs.position(job)
        if position is None:  # finished while we looked
            continue
        what, progress, eta = describe(job)
        who, mine = whose(job, viewer, viewer_user)
        if private and not mine:
            what = "training" if job.run_dir is not None else "a job"
        rows.append(QueueRow(job.id, position, what, who, mine, progress, eta))
    return rows


def queue_markdown(rows: list[QueueRow]) -> str:
    """A small table; every text that may come from a user is escaped (run names, labels)."""
    if not rows:
        return "**GPU queue:** nothing running or waiting."
    lines = [f"**GPU queue:** {len(rows)} job(s)", "", "| # | job | whose | state | progress | time left |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"#{row.job_id}", row.what, row.whose, row.state, row.progress or "-", row.eta]
        lines.append("| " + " | ".join(escape_markdown(cell) for cell in cells) + " |")
    return "\n".join(lines)


def can_cancel(job: Any, *, viewer: str, viewer_user: str, public: bool) -> bool:
    """Locally anyone at the machine may stop any job; on a public app only the job's own page or user."""
    if not public:
        return True
    return whose(job, viewer, viewer_user)[1]
