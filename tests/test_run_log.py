"""The run log after a resume: every step recorded once in metrics.jsonl, and TensorBoard told to purge
what the interrupted attempt wrote past the checkpoint."""
import glob
import json
import os
import struct

from dynabert.train.run_log import RunLog, stage_of


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _attempt(log, kind, steps):
    for step in steps:
        log.record(kind, step, {"loss": float(step)})


def _events(path):
    """The Event protos of one TFRecord event file (length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events, data = [], open(path, "rb").read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = Event()
        event.ParseFromString(data[offset + 12:offset + 12 + length])
        events.append(event)
        offset += 12 + length + 4
    return events


def test_a_resumed_stage_records_each_step_once(tmp_path):
    out = str(tmp_path)
    log = RunLog(out, enabled=True)
    log.start_stage("finetune", 0)
    _attempt(log, "finetune", [1, 2, 3, 4])
    log.start_stage("compress", 0)
    _attempt(log, "compress", [1, 2, 3, 4, 5])
    _attempt(log, "compress_eval/w0.5", [3])
    _attempt(log, "compress_eval/w0.5", [5])
    log.close()  # killed after step 5; the last checkpoint is step 3

    log = RunLog(out, enabled=True)
    log.start_stage("compress", 3)
    _attempt(log, "compress", [4, 5, 6])
    _attempt(log, "compress_eval/w0.5", [5])
    log.close()
    rows = [(r["kind"], r["step"]) for r in _rows(out)]
    assert rows == [("finetune", s) for s in (1, 2, 3, 4)] + [("compress", s) for s in (1, 2, 3)] + [
        ("compress_eval/w0.5", 3), ("compress", 4), ("compress", 5), ("compress", 6), ("compress_eval/w0.5", 5)]

    # TensorBoard: a run per stage; the resumed writer marks step 4 on as purged (SessionLog START).
    files = sorted(glob.glob(os.path.join(out, "tensorboard", "compress", "events.out.tfevents*")))
    assert len(files) == 2  # the restart did not truncate the first attempt's file
    starts = sorted(e.step for f in files for e in _events(f) if e.HasField("session_log"))
    assert starts == [0, 4]  # the fresh start purges nothing before it; the resume from step 4 on
    assert glob.glob(os.path.join(out, "tensorboard", "finetune", "events.out.tfevents*"))


def test_a_stage_started_again_from_scratch_drops_all_its_rows_and_a_torn_line(tmp_path):
    out = str(tmp_path)
    log = RunLog(out, enabled=True)
    _attempt(log, "finetune", [1, 2])
    _attempt(log, "compress", [1, 2])
    log.close()
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"time": 1, "kind": "compr')  # the kill cut the last line short
    log = RunLog(out, enabled=True)
    log.start_stage("compress", 0)
    log.close()
    assert [(r["kind"], r["step"]) for r in _rows(out)] == [("finetune", 1), ("finetune", 2)]


def test_stage_of_a_record_kind():
    assert [stage_of(k) for k in ("compress", "compress_eval/w0.5", "compress_depth_eval/w1_d0.5", "finetune_eval")
            ] == ["compress", "compress", "compress_depth", "finetune"]
