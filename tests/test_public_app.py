"""An honest public app (share link, Space, `--public`): settings no GPU can honour are refused with the field's
message before anything is queued, stricter than on the owner's own machine; pickles never load, whatever an
API caller sends."""

from __future__ import annotations

import os

import pytest
from apphelpers import running_app

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app import public_rules
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.config import TrainConfig, limit_errors
from sdtune_ui.errors import ConfigError
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.ui.context import AppContext

gradio_client = pytest.importorskip("gradio_client")

# What the hostile probe queued on a public app.
ABSURD = dict(resolution=65536, train_batch_size=100_000, rank=1_000_000, with_prior_preservation=True,
              class_prompt="a photo of a robot", num_class_images=10_000)
# Fine on the owner's big GPU, too much for a shared public one.
BIG = dict(resolution=2048, train_batch_size=64, rank=256, with_prior_preservation=True,
           class_prompt="a photo of a robot", num_class_images=1000, max_train_steps=50_000)


@pytest.fixture
def ctx(tmp_path):
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    context = AppContext(data_dir=tmp_path / "data", jobs=jobs)
    app_ops.load_example(context.datasets_dir)
    yield context
    jobs.close()


def test_absurd_settings_are_refused_with_each_fields_message_local_or_public(ctx):
    for public in (False, True):
        with pytest.raises(ConfigError) as err:
            app_ops.start_training(ctx, {"model": "tiny-sd1", "data": "toy_robot", **ABSURD}, public=public)
        errors = err.value.field_errors
        assert "between 0 and 4,096 (got 65,536)" in errors["resolution"]
        assert "(got 100,000)" in errors["train_batch_size"] and "(got 1,000,000)" in errors["rank"]
        # 10,000 class images take hours: the owner may ask for that, a visitor of a public app may not.
        assert ("at most 500 (got 10,000)" in errors["num_class_images"]) if public else \
            "num_class_images" not in errors
    assert not list(ctx.runs_dir.glob("*"))  # refused before a run folder exists


def test_a_public_app_is_stricter_than_the_owners_machine(ctx):
    with pytest.raises(ConfigError) as err:
        app_ops.start_training(ctx, {"model": "tiny-sd1", "data": "toy_robot", **BIG}, public=True)
    errors = err.value.field_errors
    assert set(errors) == {"resolution", "train_batch_size", "rank", "num_class_images", "max_train_steps"}
    assert all("This public app takes at most" in message for message in errors.values())
    assert "at most 1,024 (got 2,048)" in errors["resolution"]
    assert not list(ctx.runs_dir.glob("*"))
    job = app_ops.start_training(ctx, {"model": "tiny-sd1", "data": "toy_robot", **BIG}, public=False)
    assert job.run_dir.is_dir()  # the same settings queue on the owner's own app


def test_the_forms_live_check_names_the_field_and_its_limit(ctx):
    from sdtune_ui.app.form_rules import validation_report

    values = {"model": "tiny-sd1", "data": str(ctx.datasets_dir / "toy_robot"), "resolution": 2048.0,
              "train_batch_size": 100_000.0}
    errors, config = validation_report(values)  # the owner's machine: only what no GPU honours
    assert config is None and set(errors) == {"train_batch_size"}
    errors, _ = validation_report(values, check=lambda c: public_rules.check_public_config(c, ctx.data_dir))
    assert "between 1 and 1,024" in errors["train_batch_size"]
    errors, _ = validation_report({**values, "train_batch_size": 1.0},
                                  check=lambda c: public_rules.check_public_config(c, ctx.data_dir))
    assert set(errors) == {"resolution"} and "public app takes at most 1,024" in errors["resolution"]


def test_every_number_has_limits_and_non_numbers_are_refused():
    numeric = [name for name, value in TrainConfig().to_dict().items()
               if isinstance(value, (int, float, list)) and not isinstance(value, bool)]
    from sdtune_ui.config import field_info

    unbounded = [f.name for f in field_info() if f.name in numeric and f.metadata["maximum"] is None]
    assert not unbounded
    errors = limit_errors(TrainConfig(data="d", learning_rate=float("nan"), seed=2**40))
    assert errors["learning_rate"].startswith("Give a number") and "seed" in errors
    assert "validation_prompts" in limit_errors(TrainConfig(data="d", validation_prompts=["a"] * 9), public=True)


def test_generation_limits_public_and_local():
    GenerationOptions(steps=100, num_images=8, width=2048).validate()  # fine locally
    with pytest.raises(ConfigError) as err:
        GenerationOptions(steps=100, num_images=8, width=2048).validate(public=True)
    assert set(err.value.field_errors) == {"steps", "num_images", "width"}
    with pytest.raises(ConfigError) as err:
        GenerationOptions(steps=100_000, num_images=100_000).validate()
    assert "between 1 and 150" in err.value.field_errors["steps"]
    assert "between 1 and 16" in err.value.field_errors["num_images"]


@pytest.fixture(scope="module")
def public_app(tmp_path_factory):
    os.environ.setdefault("SDTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    with running_app(tmp_path_factory.mktemp("data"), "--public") as (ctx, url):
        app_ops.load_example(ctx.datasets_dir)
        yield ctx, gradio_client.Client(url, verbose=False)


GENERATE = dict(source="", base_model="tiny-sd1", lora_scale=1.0, uploads=[], paths="", allow_pickle=False,
                prompt="a robot", negative_prompt="", scheduler="dpm++", steps=2, guidance=5.0, width=32,
                height=32, seed=0, num_images=1, fuse_lora=False)


def test_the_public_api_refuses_out_of_range_settings_with_the_fields_message(public_app):
    ctx, client = public_app
    with pytest.raises(Exception) as err:
        client.predict(config={"model": "tiny-sd1", "data": "toy_robot", **ABSURD}, api_name="/start_run")
    text = str(err.value)
    for field in ("resolution", "train_batch_size", "rank", "num_class_images"):
        assert field in text
    assert "at most 1,024 (got 65,536)" in text or "between 0 and 4,096 (got 65,536)" in text
    with pytest.raises(Exception) as err:
        client.predict(**{**GENERATE, "num_images": 100_000, "steps": 100_000}, api_name="/generate")
    assert "num_images" in str(err.value) and "steps" in str(err.value) and "(got 100,000)" in str(err.value)
    with pytest.raises(Exception, match="This public app takes at most 4"):
        client.predict(**{**GENERATE, "num_images": 8}, api_name="/generate")
    assert not list(ctx.runs_dir.glob("*")) and not ctx.jobs.active()


def test_the_public_api_never_loads_pickles(public_app):
    ctx, client = public_app
    with pytest.raises(Exception, match="pickle files"):
        client.predict(**{**GENERATE, "allow_pickle": True}, api_name="/generate")
    with pytest.raises(Exception, match="pickle files"):
        client.predict(**{**GENERATE, "allow_pickle": True}, api_name="/compare")
    with pytest.raises(Exception, match="allow_pickle"):
        client.predict(config={"model": "tiny-sd1", "data": "toy_robot", "allow_pickle": True},
                       api_name="/start_run")
    assert not ctx.jobs.active()


def test_replies_show_paths_relative_to_the_data_folder(public_app):
    import httpx

    from sdtune_ui.runs import RunDir

    ctx, client = public_app
    data = ctx.data_dir
    # A run whose messages name files the way the core writes them: absolute paths of the server.
    run = RunDir(ctx.runs_dir / "lora-20990101-000000-abcd").create()
    TrainConfig(data=str(ctx.datasets_dir / "toy_robot")).save(run.config_path)
    events = run.events()
    events.emit("checkpoint", step=1, path="checkpoints/step-1")
    events.emit("log", level="warning", message=f"Skipped {ctx.datasets_dir / 'toy_robot' / 'bad.png'}: unreadable")
    events.emit("status", status="failed", message=f"Could not read {run.path / 'checkpoints' / 'step-1'}: damaged")
    replies: list[object] = [client.predict(api_name="/load_example")]
    replies.append(client.predict(name="toy_robot", method="lora", resolution=512, trigger_word="sks", instance="",
                                  bucketing=False, api_name="/doctor"))
    status = client.predict(run_id=run.path.name, api_name="/run_status")
    assert f"Could not read runs/{run.path.name}/checkpoints/step-1" in status["message"]
    assert "Skipped datasets/toy_robot/bad.png" in status["log"]
    replies += [status, client.predict(api_name="/runs"), client.predict(current=None, api_name="/list_runs")]
    for bad in (dict(run_id="nope", api_name="/run_status"),
                dict(config={"data": "/etc", "model": "/root/model.safetensors"}, api_name="/start_run"),
                dict(name="no-such-dataset", api_name="/export_zip"),
                dict(source=run.path.name, format_name="kohya", api_name="/export")):
        with pytest.raises(Exception) as err:
            client.predict(**bad)
        replies.append(err.value)
    replies.append(httpx.get(f"{client.src}config", timeout=10).text)  # the page itself
    for reply in replies:
        assert str(data) not in str(reply) and str(data.resolve()) not in str(reply), str(reply)[:1000]


@pytest.mark.slow
def test_a_trained_runs_replies_show_no_data_path(public_app):
    import time

    ctx, client = public_app
    started = client.predict(config={"model": "tiny-sd1", "data": "toy_robot", "max_train_steps": 2,
                                     "checkpointing_steps": 1, "validation_steps": 0}, api_name="/start_run")
    deadline, status = time.monotonic() + 300, {}
    while time.monotonic() < deadline:
        status = client.predict(run_id=started["run_id"], api_name="/run_status")
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
    assert status["status"] == "completed", status
    assert status["outputs"] and "checkpoint saved at step 1: checkpoints/step-1" in status["log"]
    replies = [started, status, client.predict(source=started["run_id"], format_name="kohya", api_name="/export"),
               client.predict(**{**GENERATE, "source": started["run_id"]}, api_name="/generate")]
    for reply in replies:
        assert str(ctx.data_dir) not in str(reply), str(reply)[:1000]


def test_a_public_app_imports_hub_datasets_only_where_its_owner_allows(public_app):
    from sdtune_ui.ui.app import AppOptions

    assert AppOptions().hub_import and not AppOptions(public=True).hub_import
    assert AppOptions(public=True, allow_hub_import=True).hub_import
    ctx, client = public_app
    with pytest.raises(Exception, match="does not import Hub datasets"):
        client.predict(name="from-hub", repo_id="lambdalabs/pokemon-blip-captions", split="train", most=10,
                       api_name="/import_hub_dataset")
    assert not (ctx.datasets_dir / "from-hub").exists()


def test_the_docs_list_the_limits_the_code_applies():
    import re
    from pathlib import Path

    from sdtune_ui.config import field_info
    from sdtune_ui.generate.options import option_fields

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PUBLIC_APP.md").read_text()
    train, generation = doc.split("Generation (")[0], doc.split("Generation (")[1]

    def number(text: str) -> float | None:
        return None if text == "same" else float(text.replace(",", ""))

    for table, fields in ((train, field_info()), (generation, option_fields())):
        rows = {m[0]: m[1:] for m in re.findall(r"^\| `(\w+)`(?: \(lines\))? \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$",
                                                  table, re.MULTILINE)}
        bounded = {f.name: f.metadata for f in fields if f.metadata.get("minimum") is not None
                   and f.metadata.get("maximum") is not None}
        assert set(rows) == set(bounded)
        for name, (low, high, public) in rows.items():
            meta = bounded[name]
            assert (number(low.strip()), number(high.strip()), number(public.strip())) == (
                meta["minimum"], meta["maximum"], meta["public_maximum"]), name
