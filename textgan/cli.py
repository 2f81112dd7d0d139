"""The ``textgan`` command.

    textgan train RECIPE [PRESET.yaml] [key=value ...]    # RECIPE: scratchgan, seqgan, mle
    textgan sample --model DIR -n 10 [--temperature 1.0] [--top-k K] [--top-p P] [--style STYLE]
    textgan transfer --from neg --to pos [--model DIR] [--input FILE | SENTENCE ...] [--decoding greedy|sample|beam|rerank]
    textgan evaluate --samples FILE [--references FILE] [--train FILE] [--metrics bleu,self-bleu,...] [--json OUT]
    textgan sweep --model [LABEL=]DIR [--model ...] --temperatures 0.7,1.0,1.2 -n 2000 --references FILE --output DIR
    textgan plot [LABEL=]RUN [...] [--metrics gen,disc,eval] [--smooth 0.6] [--x step|minutes] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from .data import argument_text, read_lines, write_text_atomic
from .recipes import RECIPES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as for every other bad input
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` (``textgan``), by name."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _refuse_unknown_words(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Exit with one line naming an unknown command, or the first ``--option`` in ``argv`` that its command does
    not know, with the closest one that it does. argparse looks for missing required options first: it would
    report a misspelt required option (``--form neg``) as the missing one (``--from``), and name an unknown
    option only after that, against ``textgan --help``."""
    import difflib

    commands = _commands(parser)
    if not argv or argv[0] == "train":  # train's options are its recipe's, checked by its config
        return
    if argv[0].startswith("-"):  # textgan's own options come before a command
        command, words = parser, argv[:1]
    elif argv[0] in commands:
        command, words = commands[argv[0]], argv[1:]
    else:
        close = difflib.get_close_matches(argv[0], list(commands), n=1)
        parser.error(f"unknown command {argv[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                     + f"; choose one of {', '.join(commands)}")
    known = [option for action in command._actions for option in action.option_strings if option.startswith("--")]
    for word in words:
        if word == "--":  # what follows is positional
            return
        name = word.split("=", 1)[0]
        if not name.startswith("--") or any(option.startswith(name) for option in known):
            continue  # argparse takes a unique prefix of an option, and says when a prefix is ambiguous
        close = difflib.get_close_matches(name, known, n=1)
        command.error(f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else ""))


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int, "a positive whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _number(text, int, "a whole number, zero or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {value}")
    return value


def _probability_mass(text: str) -> float:
    value = _number(text, float, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _number(text, float, "a number, zero or more")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, zero or more, got {value}")
    return value


class _VersionAction(argparse.Action):
    """--version: argparse's own action would wrap the line at the terminal's width."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


class _PathAction(argparse.Action):
    """An optional file or folder: left out it is "" (none), so a given empty one (an unset shell variable in
    ``--json "$OUT"``) is an error rather than quietly the same as none."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values:
            parser.error(f"argument {option_string}: the path is empty; name a file or folder, or leave the option out")
        setattr(namespace, self.dest, values)


def _version_line() -> str:
    """textgan's version and the versions of the libraries whose behaviour it depends on (for bug reports)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = []
    for name in ("torch", "transformers", "tokenizers"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    from .models import onednn

    return f"textgan {__version__} ({', '.join(found)}; Python {sys.version.split()[0]}; CPU matmul {onednn.describe()})"


EXAMPLES = """examples:
  textgan train scratchgan                           # a GAN on the embedded corpus, into runs/scratchgan
  textgan sample --model runs/scratchgan -n 10       # sentences from a run (its exported generator)
  textgan evaluate --samples runs/scratchgan         # the scores of a run's last samples
  textgan sweep --model runs/mle --model runs/scratchgan --output sweep   # quality-diversity curves
  textgan transfer --from neg --to pos "the food was cold ."               # with a style-transfer run
  textgan plot runs/scratchgan                       # its logged metrics over training, in runs/scratchgan/curves.png

'textgan COMMAND --help' lists a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textgan", description="Train and sample adversarial text generators.", epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print textgan's version and its libraries', and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="run a training recipe", add_help=False)
    train.add_argument("recipe", help=f"one of {', '.join(RECIPES)}")
    train.add_argument("args", nargs=argparse.REMAINDER, help="[PRESET.yaml] [key=value ...]; --help lists the keys")

    sample = commands.add_parser("sample", help="sample sentences from a trained generator")
    sample.add_argument("--model", required=True,
                        help="a run folder (or its 'generator' folder), or any causal LM folder or hub name")
    sample.add_argument("-n", "--num", type=_positive_int, default=10, help="how many sentences (default 10)")
    sample.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature (default 1.0)")
    sample.add_argument("--top-k", type=_nonnegative_int, default=0, help="keep the k most likely tokens (0: all)")
    sample.add_argument("--top-p", type=_probability_mass, default=1.0, help="nucleus sampling mass (1.0: all)")
    sample.add_argument("--max-length", type=_positive_int, default=None,
                        help="tokens a sentence may have before its end token, the prompt's included (default: the "
                        "model's limit); one the model has not ended by then is cut a token later")
    sample.add_argument("--batch-size", type=_positive_int, default=256, help="sentences sampled at once")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--output", default="", action=_PathAction,
                        help="write sentences to this file instead of standard output")
    sample.add_argument("--prompt", default="", help="text every sample continues, e.g. --prompt 'a man' (the "
                        "sentences printed start with it)")
    sample.add_argument("--style", default="", help="style to write in (style-transfer models, e.g. --style pos)")
    sample.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own code")
    _add_device_argument(sample)

    transfer = commands.add_parser("transfer", help="rewrite sentences from one style into another")
    transfer.add_argument("sentences", nargs="*", metavar="SENTENCE", help="sentences to rewrite (default: --input or standard input)")
    transfer.add_argument("--from", dest="source", required=True, help="style of the input (e.g. neg)")
    transfer.add_argument("--to", dest="target", required=True, help="style to rewrite into (e.g. pos)")
    transfer.add_argument("--model", default=None, help="style-transfer model folder or run folder (default: the first "
                          f"of {' and '.join(DEFAULT_TRANSFER_MODELS)} that exists, else the first of their run "
                          "folders that has a checkpoint)")
    transfer.add_argument("--input", default="", action=_PathAction,
                          help="file with one sentence per line (default: standard input)")
    transfer.add_argument("--output", default="", action=_PathAction,
                          help="write the rewrites to this file instead of standard output")
    transfer.add_argument("--decoding", choices=("greedy", "sample", "beam", "rerank"), default="greedy",
                          help="decoding (default greedy); rerank: the beam hypothesis the run's discriminator and "
                               "cycle reconstruction score best")
    transfer.add_argument("--beam", type=_positive_int, default=4, help="beam width with --decoding beam or rerank (default 4)")
    transfer.add_argument("--style-weight", type=_nonnegative_float, default=None,
                          help="rerank: weight of log D(target | rewrite) (default: the model's, from training)")
    transfer.add_argument("--content-weight", type=_nonnegative_float, default=None,
                          help="rerank: weight of the cycle reconstruction log p(source | rewrite) (default: the model's)")
    transfer.add_argument("--overlap-weight", type=_nonnegative_float, default=None,
                          help="rerank: weight of the minimal-edit term, the unigram/bigram F1 of rewrite and source "
                               "(default: the model's, 0 unless set)")
    transfer.add_argument("--copy-bias", type=_nonnegative_float, default=None,
                          help="rerank: bonus added to the source's words while the beam searches, for more minimal "
                               "edits among the candidates (default: the model's, 0 unless set)")
    transfer.add_argument("--lm-style-weight", type=_nonnegative_float, default=None,
                          help="rerank: weight of the model's own style-LM ratio, log p(rewrite | target-style LM) - "
                               "log p(rewrite | source-style LM) per token (default: the model's, 0 unless set)")
    transfer.add_argument("--allow-copy", action="store_true",
                          help="rerank: let a rewrite equal its input (by default a copy is chosen only when the beam "
                               "holds nothing else)")
    transfer.add_argument("--temperature", type=_positive_float, default=1.0, help="temperature with --decoding sample")
    transfer.add_argument("--top-p", type=_probability_mass, default=1.0, help="nucleus mass with --decoding sample")
    transfer.add_argument("--batch-size", type=_positive_int, default=128, help="sentences rewritten at once")
    transfer.add_argument("--seed", type=int, default=0, help="random seed (--decoding sample)")
    transfer.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own code")
    _add_device_argument(transfer)

    from .evaluation import ALL_METRICS

    metric_help = (f"comma-separated, from {','.join(ALL_METRICS)} (default: all that the given files allow, but fed and "
                   "reverse-lm; grammar for textgan runs on the embedded grammar)")
    evaluate = commands.add_parser("evaluate", help="score a file of samples: BLEU, Self-BLEU, diversity, FED, NLL")
    evaluate.add_argument("--samples", required=True, help="generated sentences, one per line (tokens separated by "
                          "spaces), or a run folder: the last evaluation's samples in its samples.txt")
    _add_scoring_arguments(evaluate, metric_help)
    evaluate.add_argument("--json", default="", action=_PathAction, help="also write the scores to this JSON file")

    sweep = commands.add_parser("sweep", help="sample at several temperatures and trace the quality-diversity curve")
    sweep.add_argument("--model", action="append", required=True, help="[LABEL=]generator folder; repeat to compare models")
    sweep.add_argument("--temperatures", default="0.7,0.8,0.9,1.0,1.1,1.2", help="comma-separated (default 0.7,...,1.2)")
    sweep.add_argument("-n", "--num", type=_positive_int, default=2000, help="samples per temperature (default 2000)")
    sweep.add_argument("--valid", default="", action=_PathAction,
                       help="held-out sentences for nll-test at each temperature (default: --references, "
                       "or for runs on the embedded grammar the first run's held-out sentences)")
    _add_scoring_arguments(sweep, metric_help)
    sweep.add_argument("--output", required=True, help="folder for sweep.json, sweep.png and the samples")
    sweep.add_argument("--x", default="", help="metric on the plot's x axis (default bleu-5; nll-oracle with --oracle; "
                       "grammatical for runs on the embedded grammar)")
    sweep.add_argument("--y", default="", help="metric on the plot's y axis (default self-bleu-4; nll-test with --oracle "
                       "or for runs on the embedded grammar)")
    sweep.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    sweep.add_argument("--resume", action="store_true", help="keep the rows an interrupted sweep in --output already "
                       "made from the same models and inputs, and make the rest")
    _add_device_argument(sweep)

    plot = commands.add_parser("plot", help="draw the metrics runs logged over their training steps")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="[LABEL=]run folder (its out_dir) or its metrics.jsonl; "
                      "several runs share the panels, a colour each")
    plot.add_argument("--metrics", default="", help="comma-separated metric names or groups, e.g. disc,eval,"
                      "gen/entropy (default: every metric logged more than once)")
    plot.add_argument("--smooth", type=_smoothing, default=0.6, help="weight of the moving average drawn over the "
                      "training metrics, from 0 (none) to below 1 (default 0.6, TensorBoard's)")
    plot.add_argument("--x", choices=("step", "minutes"), default="step", help="the x axis: training steps, or "
                      "minutes of training, to compare recipes whose steps cost differently (default step)")
    plot.add_argument("--output", default="", action=_PathAction, help="image file, .png, .pdf or .svg (default: "
                      "curves.png in the run folder; needed for several runs)")
    return parser


def _smoothing(text: str) -> float:
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: a GPU when there is one)")


def _device(name: str):
    """The torch device that --device names; a one-line error for a bad name or a missing GPU."""
    from .config import ConfigError
    from .models.generator import ModelError
    from .training import resolve_device

    try:
        return resolve_device(name, option="--device ")
    except ConfigError as e:
        raise ModelError(str(e)) from None


def _add_scoring_arguments(parser, metric_help: str) -> None:
    parser.add_argument("--references", default="", action=_PathAction,
                        help="reference sentences (e.g. COCO test.txt): BLEU, FED, reverse-LM")
    parser.add_argument("--train", default="", action=_PathAction, help="training sentences: the copied-verbatim rate")
    parser.add_argument("--metrics", default="", help=metric_help)
    parser.add_argument("--orders", default="2,3,4,5", help="BLEU / Self-BLEU orders (default 2,3,4,5)")
    parser.add_argument("--lm", default="", action=_PathAction,
                        help="generator folder of an MLE model trained on real text: lm-nll of the samples")
    parser.add_argument("--oracle", default="", action=_PathAction,
                        help="SeqGAN oracle .npz: nll-oracle of the samples (lines of token ids)")
    parser.add_argument("--fed-encoder", default="", action=_PathAction,
                        help="sentence-transformers model for FED (default: the packaged MiniLM)")
    parser.add_argument("--reverse-lm-steps", type=_positive_int, default=1000, help="MLE steps of the reverse-LM model")


# where the style_transfer recipe writes its model by default, and with the README's Yelp preset
DEFAULT_TRANSFER_MODELS = ("runs/style_transfer/model", "runs/yelp_transfer/model")


def transfer_styles(model_dir: str) -> list[str]:
    """The styles a style-transfer model folder names, read from its transfer.json alone (no weights loaded)."""
    import json
    from pathlib import Path

    from .models.generator import ModelError
    from .transfer import CONFIG_FILE

    try:
        return [str(s) for s in json.loads(Path(model_dir, CONFIG_FILE).read_text(encoding="utf-8"))["styles"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{model_dir}: {CONFIG_FILE} is damaged; re-export the model") from None


def cmd_sample(args) -> int:
    from .models.generator import ModelError, load_generator, model_folder
    from .sampling import sample_texts
    from .transfer import CONFIG_FILE, Rewriter

    if args.output:
        _check_output(args.output)
    argument_text(args.prompt, "--prompt")
    device = _device(args.device)
    args.model = model_folder(args.model)  # a run folder: the model it exported
    if args.style:
        rewriter = Rewriter.load(args.model, device=device, trust_remote_code=args.trust_remote_code)
        lines = rewriter.sample(args.style, args.num, prompt=args.prompt, temperature=args.temperature,
                                top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                                progress=args.num > args.batch_size)
    else:
        if os.path.isfile(os.path.join(args.model, CONFIG_FILE)):
            raise ModelError(f"{args.model} is a style-transfer model; choose a style with --style "
                             f"({', '.join(transfer_styles(args.model))})")
        model, tokenizer = load_generator(args.model, trust_remote_code=args.trust_remote_code)
        lines = sample_texts(model.to(device), tokenizer, args.num, prompt=args.prompt, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, max_length=args.max_length, batch_size=args.batch_size,
                             seed=args.seed, progress=args.num > args.batch_size)  # a bar where it takes batches
    text = "\n".join(lines) + "\n"
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _input_lines(args) -> list[str]:
    """Lines to rewrite, from SENTENCE arguments, --input or standard input; blank lines are kept."""
    from .data import DataError, decode_utf8, read_text

    if args.sentences:
        if args.input:
            raise DataError("give sentences as arguments or --input FILE, not both")
        return [argument_text(sentence, f"SENTENCE {i}") for i, sentence in enumerate(args.sentences, 1)]
    name = args.input or "standard input"
    if args.input:
        text = read_text(args.input)
    else:
        if sys.stdin.isatty():
            print("reading sentences from standard input (end with Ctrl-D)", file=sys.stderr)
        text = decode_utf8(sys.stdin.buffer.read(), name)
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{name}: no sentences (empty or blank); give one sentence per line")
    return lines


def cmd_transfer(args) -> int:
    from .models.generator import ModelError
    from .transfer import Rewriter

    if args.output:
        _check_output(args.output, {"--input": args.input})
    if args.model is None:  # the first default that exists, or the first run there that has checkpoints
        from pathlib import Path

        from .models.generator import run_checkpoints

        args.model = next((path for path in DEFAULT_TRANSFER_MODELS if os.path.isdir(path)), None) or next(
            (os.path.dirname(path) for path in DEFAULT_TRANSFER_MODELS if run_checkpoints(Path(path).parent)), None)
        if args.model is None:
            raise ModelError(f"no model at {' or '.join(DEFAULT_TRANSFER_MODELS)}; train one with 'python -m "
                             "textgan.recipes.style_transfer recipes/yelp_transfer.yaml' or pass --model DIR")
    rewriter = Rewriter.load(args.model, device=_device(args.device), trust_remote_code=args.trust_remote_code)
    for style in (args.source, args.target):
        rewriter.layout.style_id(style)  # unknown style: fail before reading the input
    if args.source == args.target:
        raise ModelError(f"--from and --to are both {args.source!r}; choose two different styles")
    rewriter.set_rerank(style_weight=args.style_weight, content_weight=args.content_weight,
                        overlap_weight=args.overlap_weight, copy_bias=args.copy_bias,
                        lm_style_weight=args.lm_style_weight, allow_copy=args.allow_copy or None)
    lines = _input_lines(args)
    too_long = rewriter.count_too_long(lines)
    if too_long:
        print(f"warning: {too_long} line(s) are longer than the model's {rewriter.layout.max_length} tokens and were "
              "cut to that length", file=sys.stderr)
    outputs = rewriter.rewrite(lines, args.source, args.target, decoding=args.decoding, beam=args.beam,
                               temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                               seed=args.seed, progress=len(lines) > args.batch_size)
    text = "".join(line + "\n" for line in outputs)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _check_output(path: str, inputs: dict[str, str] | None = None) -> None:
    """An output file can be written, and is none of ``inputs`` (flag -> path): writing it must not destroy them."""
    from .evaluation import EvaluationError

    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise EvaluationError(f"cannot write {path}: it is a directory; give a file name")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise EvaluationError(f"cannot write {path}: its folder does not exist or is not writable")
    for flag, source in (inputs or {}).items():
        if source and os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise EvaluationError(f"{path} is the {flag} file; writing there would replace what is read from it, so "
                                  "give another file name")


def _scoring_inputs(args, grammar: bool = False) -> dict:
    """Read the files and models that --references, --train, --lm, --oracle name; choose the metrics
    (``grammar``: the samples come from runs on the embedded grammar, which scores them exactly)."""
    from . import evaluation
    from .bleu import check_orders

    try:
        orders = tuple(check_orders([int(o) for o in args.orders.split(",")]))
    except ValueError:
        raise evaluation.EvaluationError(f"--orders must be positive integers separated by commas, got {args.orders!r}") from None
    references = read_lines(args.references) if args.references else None
    train = read_lines(args.train) if args.train else None
    lm = oracle = None
    if args.lm:
        from .models.generator import load_generator

        lm = load_generator(args.lm)
    if args.oracle:
        from .oracle import Oracle

        oracle = Oracle.load(args.oracle)
    metrics = (evaluation.parse_metrics(args.metrics) if args.metrics else
               evaluation.default_metrics(references=bool(references), train=bool(train), lm=bool(lm), oracle=bool(oracle),
                                          grammar=grammar))
    encoder = None
    if "fed" in metrics:
        from .fed import load_encoder

        encoder = load_encoder(args.fed_encoder)
    return {"metrics": metrics, "references": references, "train": train, "orders": orders, "lm": lm,
            "oracle": oracle, "encoder": encoder, "reverse_lm_steps": args.reverse_lm_steps}


def cmd_evaluate(args) -> int:
    from .data import json_text
    from .evaluation import EvaluationError, format_table, last_evaluation, score

    if all(os.path.isfile(os.path.join(args.samples, name)) for name in ("samples.txt", "config.yaml")):
        args.samples = os.path.join(args.samples, "samples.txt")  # a run folder: its samples file
    if args.json:
        _check_output(args.json, {"--samples": args.samples, "--references": args.references, "--train": args.train})
    samples, steps = last_evaluation(read_lines(args.samples))
    if steps:
        if not samples:
            raise EvaluationError(f"{args.samples}: no samples after its last '# step {steps[-1]}' line; give a file "
                                  "of samples, one per line")
        of = f", the last of {len(steps)} evaluations" if len(steps) > 1 else ""
        print(f"note: {args.samples} is a run's samples file; scoring the {len(samples)} samples of step "
              f"{steps[-1]}{of}", file=sys.stderr)
    from .training import trained_on_grammar

    inputs = _scoring_inputs(args, grammar=trained_on_grammar(args.samples))
    if "self-bleu" in inputs["metrics"] and len(samples) < 2:  # each sample against the others: none here
        if args.metrics:
            raise EvaluationError(f"{args.samples} holds one sample, and self-bleu scores each against the others; "
                                  "give at least two, or leave self-bleu out of --metrics")
        print(f"note: {args.samples} holds one sample: no self-bleu, which scores each against the others",
              file=sys.stderr)
    if "nll-oracle" in inputs["metrics"] and inputs["oracle"] is not None:  # without --oracle, score() says so
        from .oracle import from_text

        if not len(from_text(samples, vocab_size=inputs["oracle"].vocab_size)[0]):
            raise EvaluationError(f"{args.samples}: no line is an oracle sequence ({inputs['oracle'].length} token ids "
                                  f"below {inputs['oracle'].vocab_size}, separated by spaces), so nll-oracle has "
                                  "nothing to score; give samples of the oracle's form")
    scores = score(samples, **inputs)
    print(format_table([{"metric": k, "value": v} for k, v in scores.items()]))
    if args.json:
        step = {"samples_step": steps[-1]} if steps else {}
        write_text_atomic(args.json, json_text({"samples_file": args.samples, **step,
                                                "references_file": args.references or None,
                                                "metrics": inputs["metrics"], "scores": scores}))
    return 0


def _labelled(spec: str) -> tuple[str, str]:
    """``LABEL=PATH`` (sweep's --model, plot's runs) as (label, path); a plain PATH as ("", path)."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    return label, path


def cmd_sweep(args) -> int:
    import hashlib
    from pathlib import Path

    from .evaluation import EvaluationError, format_table, metric_of, plot_sweep, sweep
    from .models.generator import load_generator, model_digest
    from .training import grammar_run_valid, trained_on_grammar

    try:
        temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        temperatures = []
    if not temperatures or any(not 0 < t < float("inf") for t in temperatures):
        raise EvaluationError(f"--temperatures must be finite positive numbers separated by commas, got {args.temperatures!r}")
    device = _device(args.device)
    models, vocabularies = {}, {}
    for spec in args.model:
        label, path = _labelled(spec)
        label = label or os.path.basename(os.path.normpath(path)) or path
        if label == "generator":  # a run's exported folder: name it after the run
            label = os.path.basename(os.path.dirname(os.path.normpath(path))) or label
        if label in models:  # the second would overwrite the first's samples and row
            raise EvaluationError(f"two --model entries are labelled {label!r}; name them, e.g. --model mle={path}")
        vocabularies[label] = load_generator(path)[1].get_vocab()  # fail now, not after sampling the first model
        models[label] = path
    if not args.output.strip():  # not this folder, which would take sweep.json, sweep.png and samples/
        raise EvaluationError("--output is empty; name the folder for the sweep, e.g. --output sweeps/NAME")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise EvaluationError(f"--output {args.output} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.access(args.output if os.path.isdir(args.output) else parent, os.W_OK):
        raise EvaluationError(f"cannot write to {args.output}: its folder does not exist or is not writable")
    # runs on the embedded grammar: their samples are scored exactly, and nll-test is measured on the first run's
    # held-out sentences (independent draws from the grammar, held out from every such run alike)
    grammar = all(trained_on_grammar(path) for path in models.values())
    inputs = _scoring_inputs(args, grammar=grammar)
    if "self-bleu" in inputs["metrics"] and args.num < 2:  # each sample against the others: none here
        raise EvaluationError("-n 1 draws one sample per temperature, and self-bleu scores each against the others; "
                              "give -n 2 or more, or --metrics without self-bleu")
    if "nll-oracle" in inputs["metrics"] and inputs["oracle"] is not None:  # else every row scores inf, for nothing
        ids = inputs["oracle"].vocab_size
        for label, vocabulary in vocabularies.items():
            if not any(token.isdigit() and int(token) < ids for token in vocabulary):
                raise EvaluationError(f"model {label!r} cannot write oracle sequences (no token of its vocabulary is an "
                                      f"oracle id, 0-{ids - 1}); --oracle scores models trained on the oracle's data")
    valid = read_lines(args.valid) if args.valid else inputs["references"]
    if valid is None and grammar:
        first = next(iter(models.values()))
        valid = grammar_run_valid(first)
        print(f"note: nll-test on the {len(valid)} held-out grammar sentences of {first}'s run", file=sys.stderr)
    oracle = inputs["oracle"] is not None
    plain_grammar = grammar and not oracle and not inputs["references"]  # exact quality against held-out NLL
    x = args.x or ("nll-oracle" if oracle else "grammatical" if plain_grammar else "bleu-5")
    y = args.y or ("nll-test" if oracle or plain_grammar else "self-bleu-4")
    available = set(inputs["metrics"]) | ({"nll-test"} if valid else set())
    for axis in (x, y):
        if metric_of(axis) not in available:
            raise EvaluationError(f"cannot plot {axis!r}: the sweep computes {', '.join(sorted(available))}; "
                                  "pass the files it needs (--references, --oracle, ...) or choose --x/--y")
    # the files behind the loaded oracle, LM and encoder (plain options and sentences sweep() digests itself)
    read = {"lm": args.lm and model_digest(args.lm), "fed_encoder": args.fed_encoder and model_digest(args.fed_encoder),
            "oracle": args.oracle and hashlib.sha256(Path(args.oracle).read_bytes()).hexdigest()}
    rows = sweep(models, temperatures, args.num, args.output, valid=valid, seed=args.seed, device=device,
                 resume=args.resume, inputs=read, **inputs)
    png = plot_sweep(rows, x, y, os.path.join(args.output, "sweep.png"))
    print(format_table(rows))
    print(f"\nwrote {os.path.join(args.output, 'sweep.json')} and {png}")
    return 0


def cmd_plot(args) -> int:
    from .curves import CurvesError, log_of, minutes_at, plot_curves, read_log, select

    if len(args.runs) > 1 and not args.output:
        raise CurvesError("name the image with --output when plotting several runs, e.g. --output curves.png")
    logs = {}
    for spec in args.runs:
        label, path = _labelled(spec)
        log = log_of(path)
        label = label or log.parent.resolve().name
        if label in logs:
            raise CurvesError(f"two runs are labelled {label!r}; name them, e.g. {label}-2={path}")
        logs[label] = log
    output = args.output or str(next(iter(logs.values())).parent / "curves.png")
    _check_output(output, {f"{label} log": str(log) for label, log in logs.items()})  # the format: plot_curves
    runs = {}
    for label, log in logs.items():
        runs[label], skipped = read_log(log)
        if skipped:
            print(f"note: {log}: passed over {skipped} line(s) that are not whole records (a run killed while it "
                  "wrote one)", file=sys.stderr)
    names = list(dict.fromkeys(name for series in runs.values() for name in series))
    metrics = select(names, args.metrics)
    single = [] if args.metrics else [name for name in metrics if all(len(s.get(name, ((), ()))[1]) <= 1
                                                                       for s in runs.values())]
    if len(single) < len(metrics):  # by default no panel for a lone value (a final test score): no curve to draw
        metrics = [name for name in metrics if name not in single]
    else:
        single = []
    title = next(iter(logs)) if len(logs) == 1 else ""
    clocks = {label: minutes_at(log) for label, log in logs.items()} if args.x == "minutes" else None
    path = plot_curves(runs, output, metrics, smooth=args.smooth, title=title, clocks=clocks)
    last = max(series[name][0][-1] for series in runs.values() for name in metrics if name in series)
    print(f"wrote {path}: {len(metrics)} metrics of {len(runs)} run{'s' if len(runs) > 1 else ''}, to step {last}"
          + (f" ({len(single)} logged once each left out, such as {single[0]}: --metrics draws them)" if single else ""))
    return 0


TRAIN_USAGE = f"""usage: textgan train RECIPE [PRESET.yaml] [key=value ...]

Run a training recipe; RECIPE is one of {', '.join(RECIPES)}.
'textgan train RECIPE --help' lists that recipe's config keys."""


def _train_error(message: str) -> int:
    """A bad ``textgan train`` line: said once under torchrun (every process parses the same line, and rank 0
    speaks for them, as a recipe's own config errors are: :func:`textgan.distributed.say_for_all`), on stderr.
    -> the exit status, 2."""
    from .distributed import say_for_all

    say_for_all(message)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``textgan ARGV``: the exit status. A reader of its output that goes away early (``| head``) ends it
    quietly (:func:`textgan.distributed.reader_gone`)."""
    from .distributed import reader_gone

    try:
        return _main(argv)
    except BrokenPipeError:
        return reader_gone()


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a first try: the commands, rather than argparse's "required: command"
        build_parser().print_help(sys.stderr)
        return 2
    if argv[:1] == ["train"] and (len(argv) == 1 or argv[1].startswith("-")):  # no recipe where argparse wants one
        if len(argv) == 1:  # argparse would ask for 'recipe, args' and point back at this same help
            return _train_error(f"name a recipe, one of {', '.join(RECIPES)} (see 'textgan train --help')")
        if argv[1] in ("-h", "--help"):
            print(TRAIN_USAGE)
            return 0
        return _train_error(f"name a recipe before {argv[1]!r}: textgan train RECIPE [PRESET.yaml] [key=value ...], "
                            f"RECIPE one of {', '.join(RECIPES)}")
    parser = build_parser()
    _refuse_unknown_words(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # an extra word: said against the command's own --help rather than textgan's
        _commands(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "train":
        if args.recipe not in RECIPES:
            named = next((word for word in args.args if word in RECIPES), None)
            if named and ("=" in args.recipe or args.recipe.endswith((".yaml", ".yml"))):  # the order mixed up
                return _train_error(f"name the recipe first: textgan train {named} [PRESET.yaml] [key=value ...]")
            return _train_error(f"unknown recipe {args.recipe!r}; choose one of {', '.join(RECIPES)}")
        from .recipes import load_recipe
        from .recipes._cli import run_recipe

        module, config_cls = load_recipe(args.recipe)
        return run_recipe(config_cls, module.main, f"textgan train {args.recipe}", args.args)
    from . import memory
    from .config import ConfigError
    from .curves import CurvesError
    from .data import DataError
    from .evaluation import EvaluationError
    from .fed import EncoderError
    from .models import onednn
    from .models.generator import ModelError
    from .oracle import OracleError
    from .sampling import PromptError
    from .transfer import StyleError

    command = {"sample": cmd_sample, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "transfer": cmd_transfer,
               "plot": cmd_plot}[args.command]
    try:
        onednn.setting()  # a bad TEXTGAN_CPU_MATMUL stops the command before it reads anything
        memory.keep_freed_memory()  # as a bad TEXTGAN_MALLOC does
        return command(args)
    except (ConfigError, CurvesError, ModelError, DataError, EvaluationError, EncoderError, OracleError, PromptError,
            StyleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk (or one that refuses writes): files are written whole or not at all
        from .checkpoint import DISK_ERRORS

        if e.errno not in DISK_ERRORS:
            raise
        again = " with --resume, which keeps the rows it made" if args.command == "sweep" else ""
        print(f"error: cannot write {e.filename or 'its output'}: {e.strerror}; free space (or fix the disk), then "
              f"run the command again{again}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: files are written whole or not at all, so say so and stop, no traceback
        again = "; run it again with --resume to keep the rows it made" if args.command == "sweep" else ""
        print(f"interrupted; textgan {args.command} stopped before it finished{again}", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The console script ``textgan``: :func:`main`, ending through :func:`textgan.distributed.exit_process`
    rather than the generated wrapper's ``sys.exit``, so that ``torchrun --no-python textgan train RECIPE`` skips
    the interpreter's teardown as ``torchrun -m textgan.recipes.RECIPE`` does."""
    from .distributed import exit_process

    exit_process(main())


if __name__ == "__main__":  # `torchrun ... -m textgan.cli train RECIPE` among others
    from .distributed import exit_process

    exit_process(main())
