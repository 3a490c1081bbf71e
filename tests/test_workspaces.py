"""A workspace per user (--auth-file): user B cannot see, cancel, delete or download user A's runs and datasets;
an admin sees them all; replies never carry the server's absolute data paths."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from apphelpers import running_app, wait_for

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.app.workspace import Workspaces, user_folder
from sdtune_ui.errors import ConfigError, DatasetError, SdtuneError
from sdtune_ui.ui.context import AppContext

gradio_client = pytest.importorskip("gradio_client")

FAST = dict(model="tiny-sd1", method="lora", max_train_steps=2, checkpointing_steps=0, validation_steps=0,
            log_every=1)


@pytest.fixture
def ctx(tmp_path):
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    context = AppContext(data_dir=tmp_path / "data", jobs=jobs,
                         workspaces=Workspaces(tmp_path / "data", per_user=True, admins=frozenset({"root"})))
    yield context
    jobs.close()


def test_users_see_only_their_own_runs_and_datasets_and_an_admin_sees_all(ctx):
    from sdtune_ui.ui.generate_tab import Guard

    ann, bob, admin = ctx.workspace("ann"), ctx.workspace("bob"), ctx.workspace("root")
    assert ann.dataset_names() == ["toy_robot"] == bob.dataset_names()  # each starts with the example, own copy
    assert ann.dataset_folder("toy_robot") != bob.dataset_folder("toy_robot")
    job = app_ops.start_training(ctx, {**FAST, "data": "toy_robot"}, public=False, user="ann", workspace=ann)
    run_id = job.run_dir.name
    assert job.run_dir.parent == ann.runs_dir and job.wait(30)

    assert run_id not in live.runs_table(bob.run_roots())["run"].tolist()
    for action in (lambda: app_ops.run_dir(bob.runs_dir_of(run_id), run_id),
                   lambda: app_ops.cancel_run(ctx.jobs, bob.runs_dir_of(run_id), run_id),
                   lambda: app_ops.delete_run(ctx.jobs, bob.runs_dir_of(run_id), run_id),
                   lambda: app_ops.resume_run(ctx.jobs, bob.runs_dir_of(run_id), run_id),
                   lambda: Guard(ctx, allow_local=False).run(run_id, bob),
                   lambda: Guard(ctx, allow_local=False).run(str(job.run_dir), bob)):
        with pytest.raises(SdtuneError):
            action()
    assert job.run_dir.is_dir()
    # Nor can B train on A's dataset by naming its folder, or reach it as a dataset name.
    with pytest.raises(ConfigError) as err:
        app_ops.start_training(ctx, {**FAST, "data": str(ann.datasets_dir / "toy_robot")}, public=False,
                               user="bob", workspace=bob)
    assert "data" in err.value.field_errors
    with pytest.raises(DatasetError):
        bob.dataset_folder(f"{user_folder('ann')}/toy_robot")

    assert run_id in live.runs_table(admin.run_roots())["run"].tolist()
    assert admin.dataset_folder("ann/toy_robot") == ann.datasets_dir / "toy_robot"
    assert {"ann/toy_robot", "bob/toy_robot"} <= set(admin.dataset_names())
    Guard(ctx, allow_local=False).run(run_id, admin)
    app_ops.delete_run(ctx.jobs, admin.runs_dir_of(run_id), run_id)  # an admin may
    assert not job.run_dir.exists()
    assert ann.shown(f"failed in {job.run_dir}/train.log") == f"failed in runs/{run_id}/train.log"


def test_one_shared_workspace_without_per_user_rules(tmp_path):
    shared = Workspaces(tmp_path)
    assert shared.of("ann").root == shared.of("bob").root == tmp_path and shared.of("ann").admin
    with pytest.raises(SdtuneError, match="log in"):
        Workspaces(tmp_path, per_user=True).of("")
    assert user_folder("ann") == "ann" and user_folder("../x") != user_folder(".-x")


def replies_without_data_paths(reply: object, data_dir) -> None:
    text = str(reply)
    assert str(data_dir) not in text and str(data_dir.resolve()) not in text, text[:2000]


@pytest.fixture(scope="module")
def two_users(tmp_path_factory):
    os.environ.setdefault("SDTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    users = tmp_path_factory.mktemp("auth") / "users.txt"
    users.write_text("ann:ann-secret\nbob:bob-secret\nroot:root-secret\n")
    with running_app(tmp_path_factory.mktemp("data"), "--auth-file", str(users), "--admin", "root") as (ctx, url):
        clients = {name: gradio_client.Client(url, auth=(name, f"{name}-secret"), verbose=False)
                   for name in ("ann", "bob", "root")}
        yield ctx, url, clients


def login_cookies(url: str, user: str) -> dict:
    response = httpx.post(f"{url}login", data={"username": user, "password": f"{user}-secret"}, timeout=10)
    assert response.status_code == 200
    return dict(response.cookies)


def test_through_the_app_bob_cannot_see_cancel_delete_or_download_anns_things(two_users):
    ctx, url, clients = two_users
    ann, bob, root = clients["ann"], clients["bob"], clients["root"]
    started = ann.predict(config={**FAST, "data": "toy_robot"}, api_name="/start_run")
    run_id = started["run_id"]
    run_dir = ctx.data_dir / "users" / "ann" / "runs" / run_id
    assert run_dir.is_dir()
    status = wait_for(lambda: (s := ann.predict(run_id=run_id, api_name="/run_status"))["status"] in
                      ("completed", "failed") and s, 300, what="ann's run to end")
    assert status["status"] == "completed", status
    replies_without_data_paths(status, ctx.data_dir)

    assert run_id not in [row["run"] for row in bob.predict(api_name="/runs")]
    assert run_id in [row["run"] for row in root.predict(api_name="/runs")]  # the admin sees it
    refusals = [dict(run_id=run_id, api_name="/run_status"), dict(run_id=run_id, api_name="/cancel_run_by_id"),
                dict(run_id=run_id, api_name="/delete_run"), dict(run_id=run_id, api_name="/resume_run"),
                dict(source=run_id, format_name="diffusers", api_name="/export"),
                dict(source=str(run_dir), format_name="diffusers", api_name="/export")]
    for call in refusals:
        with pytest.raises(Exception, match="no run|Pick a run|not a run") as err:
            bob.predict(**call)
        replies_without_data_paths(err.value, ctx.data_dir)
    assert run_dir.is_dir()

    # Datasets: bob's own example copy; ann's new dataset is not his to read, zip or add to.
    (ctx.data_dir / "users" / "ann" / "datasets" / "anns-robots").mkdir()
    with pytest.raises(Exception, match="no dataset"):
        bob.predict(name="anns-robots", api_name="/export_zip")
    assert not (ctx.data_dir / "users" / "bob" / "datasets" / "anns-robots").exists()
    listed, report, *_ = bob.predict(api_name="/load_example")
    assert "anns-robots" not in str(listed) and "toy_robot" in report
    replies_without_data_paths((listed, report), ctx.data_dir)

    # Ann's own downloads work, through Gradio's copies; nobody fetches the data folder by path.
    files, message = ann.predict(source=run_id, format_name="diffusers", api_name="/export")
    assert files and "exports/" in message
    replies_without_data_paths(message, ctx.data_dir)
    for user in ("bob", "ann"):
        response = httpx.get(f"{url}gradio_api/file={run_dir / 'config.json'}", cookies=login_cookies(url, user),
                             timeout=10)
        assert response.status_code == 403 and "lora" not in response.text

    # The queue says whose a job is, never what another user's job is.
    from sdtune_ui.app.queue import queue_rows

    held = ctx.jobs.submit("Generating", lambda: time.sleep(1.5), user="ann")
    try:
        rows = queue_rows(ctx.jobs, viewer_user="bob", private=True)
        assert rows and all(row.whose == "ann" and row.what == "a job" for row in rows)
    finally:
        held.wait(10)
