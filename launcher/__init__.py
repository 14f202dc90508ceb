"""Command line, configuration and process launch for the DynaBERT compressor."""
import dynabert  # noqa: F401  (loads zlib before paddle; see dynabert/__init__.py)
