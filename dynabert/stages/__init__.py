"""The pipeline's stages, one module each; ``common`` holds what every stage shares and
``supernet_training`` what the width and depth stages share.

A stage wires ``data``, ``model``, ``train`` and ``deploy`` together for one step of a run (its files,
checkpoints and completion marker). May import any package but the pipeline and the launcher.
"""
