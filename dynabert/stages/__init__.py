"""The pipeline's stages, one module each; ``common`` holds what every stage shares."""
