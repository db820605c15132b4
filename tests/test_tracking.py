"""``log.report_to`` (rlkit/tracking.py): each tracker's sink writes what the real library reads back
(TensorBoard's EventAccumulator, W&B's offline run folder, MLflow's client over its SQLite store)."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli, tiny_overrides

from rlkit.tracking import Guarded, TensorBoardSink, check_report_to, make_sinks

ROWS = [{"prompt": "1+1|?", "completion": "2\nyes", "score": 1.0},
        {"prompt": "2+2", "score": 0.0, "extra": {"a": 1}}]
CONFIG = {"algo": {"lr": 1e-6, "advantage": "grpo"}, "data": {"system_prompt": "x" * 7000}, "log": {"report_to": []}}


def log_cfg(*report_to: str, project: str = "rlkit", run_name: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(log=SimpleNamespace(report_to=list(report_to), project=project, run_name=run_name))


def feed(sink) -> None:
    """The same hand-written run for every tracker: two train steps, an eval with its table."""
    sink.log_config(CONFIG)
    sink.log(1, {"reward/mean": 0.5, "loss": 2.0, "samples": ["not a number"], "note": None})
    sink.log(2, {"reward/mean": 0.75, "loss": 1.5})
    sink.log(2, {"eval/accuracy": 0.25}, "eval")
    sink.log_table("eval", ROWS, 2)


def problems(cfg) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    check_report_to(cfg, lambda key, message: found.append((key, message)))
    return found


def test_check_report_to_refuses_bad_settings(monkeypatch):
    assert problems(log_cfg()) == [] and problems(log_cfg("tensorboard", "wandb", "mlflow", run_name="a")) == []
    assert [k for k, _ in problems(log_cfg("tensorbord"))] == ["log.report_to"]
    assert "twice" in problems(log_cfg("wandb", "wandb"))[0][1]
    assert "list" in problems(SimpleNamespace(log=SimpleNamespace(report_to="wandb", project="rlkit",
                                                                  run_name=None)))[0][1]
    # project and run name are read by W&B and MLflow only: set without them they would be ignored
    assert [k for k, _ in problems(log_cfg("tensorboard", project="mine", run_name="a"))] == ["log.project",
                                                                                           "log.run_name"]
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    assert problems(log_cfg("wandb")) == [("log.report_to", "wandb needs wandb, which is not installed: "
                                                            "pip install -e '.[tracking]'")]
    with pytest.raises(ValueError, match=r"^log.report_to: wandb needs wandb"):
        make_sinks(log_cfg("wandb"), "unused")


def tensorboard_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_tensorboard_sink_writes_scalars_config_and_tables(tmp_path):
    sink = TensorBoardSink(tmp_path)
    feed(sink)
    sink.close()
    events = tensorboard_events(tmp_path / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == ["eval/accuracy", "loss", "reward/mean"]
    assert scalars(events, "reward/mean") == [(1, 0.5), (2, 0.75)]
    assert scalars(events, "eval/accuracy") == [(2, 0.25)]
    assert json.loads(text(events, "config")) == CONFIG  # an indented (code) block of the JSON
    assert text(events, "eval").splitlines() == ["| prompt | completion | score | extra |", "|---|---|---|---|",
                                                 "| 1+1\\|? | 2<br>yes | 1.0 |  |", '| 2+2 |  | 0.0 | {"a": 1} |']


def test_tensorboard_resume_replaces_later_steps_and_fresh_run_moves_old_events(tmp_path):
    first = make_sinks(log_cfg("tensorboard"), tmp_path)[0]
    for step in (1, 2, 3):
        first.log(step, {"reward/mean": float(step)})
    first.close()
    resumed = make_sinks(log_cfg("tensorboard"), tmp_path, resume_step=2)[0]  # step 3 is trained again
    resumed.log(3, {"reward/mean": 30.0})
    resumed.log(4, {"reward/mean": 40.0})
    resumed.close()
    assert scalars(tensorboard_events(tmp_path / "tensorboard"), "reward/mean") == [(1, 1.0), (2, 2.0), (3, 30.0),
                                                                                   (4, 40.0)]
    make_sinks(log_cfg("tensorboard"), tmp_path)[0].close()  # a fresh run in the same folder
    [aside] = tmp_path.glob("tensorboard.*")
    assert len(scalars(tensorboard_events(aside), "reward/mean")) == 4
    assert tensorboard_events(tmp_path / "tensorboard").Tags()["scalars"] == []


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file, parsed with W&B's own protobufs: a 7-byte header, then
    LevelDB-log framing (32 KiB blocks; per chunk a CRC, a 2-byte length and a 1-byte type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, part, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def wandb_history(records) -> dict[int, dict]:
    return {r.history.step.num: {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"}


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B offline, its settings read afresh (W&B reads the environment once a process) and kept out of $HOME."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    wandb.teardown()
    yield
    wandb.teardown()


def test_wandb_offline_run_holds_metrics_config_and_table(offline_wandb, tmp_path, capsys):
    import wandb

    run_dir = tmp_path / "run"
    [sink] = make_sinks(log_cfg("wandb", project="proj", run_name="first"), run_dir)
    feed(sink)
    sink.close()
    wandb.teardown()  # W&B's service closes the run's file (finish() may return before)
    [folder] = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(next(folder.glob("run-*.wandb")))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("proj", "first")
    assert json.loads((run_dir / "tracking.json").read_text()) == {"wandb": run.run_id}
    history = wandb_history(records)
    assert [history[1]["reward/mean"], history[1]["loss"]] == [0.5, 2.0] and "samples" not in history[1]
    assert [history[2]["reward/mean"], history[2]["eval/accuracy"]] == [0.75, 0.25]
    assert (history[2]["eval/_type"], history[2]["eval/nrows"]) == ("table-file", 2)
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["algo"] == CONFIG["algo"]
    table = json.loads((folder / "files" / history[2]["eval/path"]).read_text())
    assert table == {"columns": ["prompt", "completion", "score", "extra"],
                     "data": [["1+1|?", "2\nyes", 1.0, None], ["2+2", None, 0.0, '{"a": 1}']]}

    # A resumed run goes on with the same W&B run; a tracker failing mid-run warns once and stops.
    [resumed] = make_sinks(log_cfg("wandb", project="proj", run_name="first"), run_dir, resume_step=2)
    assert resumed.sink.run.id == run.run_id
    resumed.log(3, {"reward/mean": 1.0})
    resumed.sink.run.finish()  # from here on W&B refuses to log
    capsys.readouterr()
    resumed.log(4, {"reward/mean": 1.0})
    resumed.log(5, {"reward/mean": 1.0})
    resumed.close()
    wandb.teardown()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlkit:")]
    assert len(warnings) == 1 and "wandb is off for the rest of this run" in warnings[0]
    later = max((run_dir / "wandb").glob(f"offline-run-*-{run.run_id}"), key=lambda p: p.name)
    assert later != folder and wandb_history(wandb_records(next(later.glob("run-*.wandb"))))[3]["reward/mean"] == 1.0


def test_a_tracker_that_cannot_start_is_a_setting_error(offline_wandb, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "bogus")  # W&B refuses the mode, as it refuses a run without a login
    with pytest.raises(ValueError, match=r"^log.report_to: wandb could not start \(ValidationError: .*bogus"):
        make_sinks(log_cfg("tensorboard", "wandb"), tmp_path)


class FullDisk:
    """A sink whose writes fail as on a full disk."""

    def __init__(self):
        self.calls = 0
        self.closed = False

    def log(self, step, metrics, kind="train"):
        self.calls += 1
        raise OSError(28, "No space left on device")

    def close(self):
        self.closed = True


def test_guarded_sink_warns_once_and_stops(capsys):
    disk = FullDisk()
    sink = Guarded("tensorboard", disk)
    sink.log(1, {"loss": 1.0})
    sink.log(2, {"loss": 1.0})
    sink.close()
    assert disk.calls == 1 and disk.closed
    assert capsys.readouterr().err == ("rlkit: tensorboard logging failed (OSError: [Errno 28] No space left on "
                                       "device); tensorboard is off for the rest of this run\n")


def test_mlflow_run_in_the_run_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    [sink] = make_sinks(log_cfg("mlflow", project="proj"), tmp_path / "run-7")
    feed(sink)
    sink.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run-7' / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("proj").experiment_id])
    assert (run.info.run_name, run.info.status) == ("run-7", "FINISHED")  # named after the run folder
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "reward/mean")]
    assert sorted(history) == [(1, 0.5), (2, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [(2, 0.25)]
    params = run.data.params
    assert (params["algo.lr"], params["algo.advantage"], params["log.report_to"]) == ("1e-06", "grpo", "[]")
    assert params["data.system_prompt"] == "x" * MAX_PARAM_VAL_LENGTH  # cut to what MLflow stores
    table = Path(client.download_artifacts(run.info.run_id, "eval_step2.json", str(tmp_path)))
    assert json.loads(table.read_text())["data"] == [["1+1|?", "2\nyes", 1.0, None], ["2+2", None, 0.0, '{"a": 1}']]

    # A resumed run goes on with the same MLflow run; its params stay (MLflow never changes one).
    [resumed] = make_sinks(log_cfg("mlflow", project="proj"), tmp_path / "run-7", resume_step=2)
    resumed.log_config({**CONFIG, "algo": {"lr": 2e-6, "advantage": "grpo"}, "train": {"resume": "auto"}})
    resumed.log(3, {"reward/mean": 1.0})
    resumed.close()
    assert resumed.sink is None and [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [
        run.info.run_id]
    again = client.get_run(run.info.run_id)
    assert (again.data.params["algo.lr"], again.data.params["train.resume"]) == ("1e-06", "auto")
    assert again.data.metrics["reward/mean"] == 1.0

    # With MLFLOW_TRACKING_URI set, runs go there and the run folder gets no store of its own.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    make_sinks(log_cfg("mlflow", project="proj"), tmp_path / "other")[0].close()
    assert not (tmp_path / "other" / "mlruns").exists()
    assert sorted(r.info.run_name for r in client.search_runs([run.info.experiment_id])) == ["other", "run-7"]


def test_config_load_refuses_an_unknown_tracker():
    from rlkit.config import ConfigError, load_config

    assert load_config(None, ["log.report_to=[tensorboard, wandb]"]).log.report_to == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="log.report_to.*unknown tracker 'tensorbord'"):
        load_config(None, ["log.report_to=[tensorbord]"])


def test_training_run_reports_to_tensorboard(tiny_model, tmp_path):
    result = run_cli(tiny_overrides(tiny_model, "hf", train__steps=2) + ["log.report_to=[tensorboard]"],
                     tmp_path / "run")
    assert result.returncode == 0, result.describe()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["reward/mean"] for r in rows if r["kind"] == "train"}
    evals = {r["step"]: r["eval/reward"] for r in rows if r["kind"] == "eval"}
    events = tensorboard_events(tmp_path / "run" / "tensorboard")
    assert scalars(events, "reward/mean") == [(step, pytest.approx(train[step], rel=1e-6)) for step in (1, 2)]
    assert scalars(events, "eval/reward") == [(step, pytest.approx(evals[step], rel=1e-6)) for step in (0, 2)]
    assert json.loads(text(events, "config"))["log"]["report_to"] == ["tensorboard"]
    first_eval = (tmp_path / "run" / "eval_step0.jsonl").read_text().splitlines()
    assert len(text(events, "eval").splitlines()) == 2 + len(first_eval)  # header, rule, one line a row
