"""Data: the task registry, readers, tokenizer, corpus cache, batching, metrics and the run's ``TaskData``.

The path runs one way: ``tasks`` (what a task is) -> ``readers``/``sources`` (examples from files) ->
``tokenizer``/``features`` (ids) -> ``cache`` (stored once, memory-mapped) -> ``task_data`` (the run's
splits) -> ``batching`` (global batches, sharded). May import only the top-level modules (config, errors,
io_utils, machine); nothing from ``model``, ``train``, ``stages`` or ``deploy``.
"""
