"""Stage 0, ``prepare``: the data a run needs, tokenized once.

A split that comes from GLUE_DIR (or ``data.train_files``) is tokenized once into the on-disk corpus cache
(``dynabert/data/cache.py``) and opened memory-mapped: a rank holds only its current batch's rows, and
opening a warm cache reads no file content (sizes, modification times, the manifest's own checksum), so it
costs the same whatever the corpus size. Every rank calls this; a file lock lets one process per
cache directory build while the others wait (no collective), so a node-local cache is built once per
node and a cache on a filesystem all nodes share is built once per job. Data from PaddleNLP's download or
the built-in synthetic set is small and stays in memory. Runs that do not train (export only) never read
the training corpus. ``dynabert-prepare`` runs this stage alone, before a job.
"""
from typing import Optional

from dynabert.config import Config
from dynabert.data.task_data import TaskData, load_task_data
from dynabert.train.run_log import RunLog


def needs_training_data(cfg: Config) -> bool:
    """Training stages read the training rows; select reads the selection split carved from them (and int8
    calibration rows), through the cache."""
    stages = cfg.run.stages
    return (("finetune" in stages and not cfg.model.teacher) or "compress" in stages or "compress_depth" in stages
            or ("refine" in stages and cfg.refine.steps > 0) or "select" in stages)


def prepare_data(cfg: Config, tokenizer, log: RunLog, *, needs_train: Optional[bool] = None,
                 verify: bool = False) -> TaskData:
    return load_task_data(cfg, tokenizer, needs_train=needs_training_data(cfg) if needs_train is None else needs_train,
                          log=log.info, verify=verify)
