"""Convert a Hugging Face BERT or RoBERTa directory (config.json, model.safetensors or pytorch_model.bin,
vocab.txt or vocab.json + merges.txt) into a PaddleNLP ``save_pretrained`` directory, without torch and
without writing into the source.

    python -m tools.convert_checkpoint HF_DIR OUT_DIR [--num_classes 2]

Useful when many runs share one converted copy; the pipeline itself also reads Hugging Face directories.
"""
import argparse
import sys

import dynabert  # noqa: F401  (zlib before paddle)
from dynabert.errors import UserError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools.convert_checkpoint", description=__doc__.splitlines()[0])
    p.add_argument("source", help="Hugging Face BERT or RoBERTa directory, or 'minilm' for the embedded default")
    p.add_argument("out_dir", help="where to write the PaddleNLP directory (replaced atomically)")
    p.add_argument("--num_classes", type=int, default=2, help="classifier outputs (newly initialised)")
    args = p.parse_args(argv)
    try:
        from dynabert.model import pretrained

        source = pretrained.default_model_dir() if args.source == "minilm" else args.source
        model = pretrained.load_model(source, args.num_classes)
        pretrained.save_model(model, pretrained.load_tokenizer(source), args.out_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
