"""Checks that run before training, so bad input fails in seconds with one line, not hours later."""
import os
import shutil

from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data.batching import local_batch_size
from dynabert.errors import UserError
from dynabert.model.pretrained import max_positions
from dynabert.train.checkpoint import checkpoint_bytes_estimate


def check_batch_sizes(cfg: Config, data, world_size: int) -> None:
    """Fail before any training if a stage's global batch cannot be split or filled."""
    stages = {"finetune": cfg.finetune, "compress": cfg.compress.optim}
    for name, optim in stages.items():
        if name in cfg.run.stages and not (name == "finetune" and cfg.model.teacher):
            key = f"{'compress.optim' if name == 'compress' else name}.batch_size"
            rows = data.train if name == "finetune" else data.distill
            local_batch_size(len(rows), optim.batch_size, world_size, key)


def check_writable(out_dir: str) -> None:
    """run.out_dir must be a directory we can create files in (checked by writing one)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"run.out_dir: cannot write to {out_dir} ({e.strerror or e})") from None


def check_free_space(cfg: Config, model, comms: Collectives) -> None:
    """Refuse to start training when one checkpoint (plus its temporary copy) would not fit."""
    if not comms.is_main or not (cfg.run.checkpoint_every_steps or cfg.run.checkpoint_every_minutes):
        return
    need = checkpoint_bytes_estimate(sum(int(p.numel()) for p in model.parameters()))
    free = shutil.disk_usage(cfg.run.out_dir).free
    if free < need:
        raise UserError(f"run.out_dir: {cfg.run.out_dir} has {free / 2**20:.0f} MiB free, one checkpoint needs "
                        f"about {need / 2**20:.0f} MiB; free space or set run.checkpoint_every_steps=0 and "
                        "run.checkpoint_every_minutes=0")


def check_vocabulary(tokenizer, model, source: str) -> None:
    """Token ids beyond the embedding table would fail deep inside the first forward."""
    vocab, rows = len(tokenizer), model.config.vocab_size
    if vocab > rows:
        name = getattr(tokenizer, "resource_files_names", {}).get("vocab_file", "the vocabulary")
        raise UserError(f"{source}: {name} has {vocab} tokens but the model's embedding has {rows} rows; "
                        "the vocabulary does not belong to this model")


def check_max_seq_len(max_seq_len: int, source: str, *, key: str = "data.max_seq_len", limit=None) -> None:
    """A sequence longer than the model's position table fails at the first long batch, maybe hours in:
    refuse it before anything trains. ``limit`` when known (a served model's card), else read from
    ``source``'s config."""
    where = source
    if limit is None:
        limit, where = max_positions(source)
    if limit is not None and max_seq_len > limit:
        raise UserError(f"{key}: {max_seq_len} exceeds the model's max_position_embeddings ({limit}, {where}); "
                        f"set it to at most {limit}")
