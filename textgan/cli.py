"""The ``textgan`` command.

    textgan train RECIPE [PRESET.yaml] [key=value ...]    # RECIPE: scratchgan, seqgan, mle
    textgan sample --model DIR -n 10 [--temperature 1.0] [--top-k K] [--top-p P]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .recipes import RECIPES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as for every other bad input
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textgan", description="Train and sample adversarial text generators.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="run a training recipe", add_help=False)
    train.add_argument("recipe", help=f"one of {', '.join(RECIPES)}")
    train.add_argument("args", nargs=argparse.REMAINDER, help="[PRESET.yaml] [key=value ...]; --help lists the keys")

    sample = commands.add_parser("sample", help="sample sentences from a trained generator")
    sample.add_argument("--model", required=True, help="generator folder (a run's 'generator' folder or any causal LM)")
    sample.add_argument("-n", "--num", type=_positive_int, default=10, help="how many sentences (default 10)")
    sample.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature (default 1.0)")
    sample.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    sample.add_argument("--top-p", type=_positive_float, default=1.0, help="nucleus sampling mass (1.0: all)")
    sample.add_argument("--max-length", type=_positive_int, default=None, help="most tokens per sentence (default: the model's limit)")
    sample.add_argument("--batch-size", type=_positive_int, default=256, help="sentences sampled at once")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--output", default="", help="write sentences to this file instead of standard output")
    sample.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own code")
    return parser


def cmd_sample(args) -> int:
    import torch

    from .models.generator import load_generator
    from .sampling import decode, sample_batches
    from .tokenization import special_ids

    if args.output:
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            print(f"error: cannot write {args.output}: its folder does not exist or is not writable", file=sys.stderr)
            return 2
    torch.manual_seed(args.seed)
    model, tokenizer = load_generator(args.model, trust_remote_code=args.trust_remote_code)
    model.eval()
    bos, eos, pad = special_ids(tokenizer)
    limit = getattr(model.config, "max_position_embeddings", 64) - 2
    max_length = min(args.max_length or limit, limit)
    lines: list[str] = []
    for rollout in sample_batches(model, args.num, args.batch_size, max_length, bos_id=bos, eos_id=eos, pad_id=pad,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p):
        lines.extend(decode(tokenizer, rollout))
    text = "\n".join(lines) + "\n"
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.recipe not in RECIPES:
            print(f"error: unknown recipe {args.recipe!r}; choose one of {', '.join(RECIPES)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"textgan.recipes.{args.recipe}")
        from .recipes._cli import run_recipe

        config_cls = next(v for k, v in vars(module).items() if k.endswith("Config") and k != "RunConfig" and isinstance(v, type) and v.__module__ == module.__name__)
        return run_recipe(config_cls, module.main, f"textgan train {args.recipe}", args.args)
    from .models.generator import ModelError

    try:
        return cmd_sample(args)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
