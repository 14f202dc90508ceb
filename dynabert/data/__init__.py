"""Data: the task registry, readers, tokenizer, corpus cache, batching, metrics and the run's ``TaskData``.

The path runs one way: ``tasks`` (what a task is) -> ``readers``/``sources`` (examples from files) ->
``tokenizer``/``features`` (ids) -> ``cache`` (stored once, memory-mapped) -> ``task_data`` (the run's
splits) -> ``batching`` (global batches, sharded). May import only the top-level modules (config, errors,
io_utils, machine); nothing from ``model``, ``train``, ``stages`` or ``deploy``.

A task is a ``TaskSpec``, looked up once per run by ``tasks.task_spec(cfg)`` and passed on: one of the 8 GLUE
tasks, or ``custom``, the user's own CSV, TSV or JSON-lines files described by ``data.custom`` (columns, label
set or regression, metric). The spec names its reader (``readers.read_examples``), so custom files take the
same path as GLUE's: the corpus cache, the validation carve, every stage; ``TaskData.spec`` carries it on.
"""
