"""`args-bench`: one command, a subcommand per benchmark (argparse subparsers, `args-bench COMMAND --help` for each).
Every benchmark module gives add_arguments(parser) and run(args); `python -m args_benchmarks.MODULE` runs the same."""

from __future__ import annotations

import argparse
import sys

from . import (batching, exporters, families, latency, quantized, results_pages, reward_shift, serve, serve_mix, soak, step_parts,
               steploop_overhead, text_path)
from .common import UsageError

# subcommand: (module, its add_arguments, what it measures)
COMMANDS = {
    "latency": (latency, "add_arguments", "ms/token, first-token time and memory: the reference ARGS vs args-rt vs plain greedy vs "
                "the two-model floor, swept over k, prompt and new tokens"),
    "bundles": (quantized, "add_bundles_arguments", "one pair's bundles side by side (fp32, fused, int8, int4): speed, agreement, reward "
                "(the README's 'Choosing a bundle' table)"),
    "quantized": (quantized, "add_arguments", "fp32 against weight-only int8/int4 bundles: speed, agreement, reward"),
    "reward-shift": (reward_shift, "add_arguments", "how far quantized bundles move the mean reward, on 800 held-out prompts"),
    "batching": (batching, "add_arguments", "continuous batching vs fixed batches vs one at a time on a Poisson stream of requests"),
    "serve": (serve, "add_arguments", "args-serve under concurrent openai clients: throughput, latency, /metrics"),
    "serve-mix": (serve_mix, "add_arguments", "does args-serve batch? mixed-length requests from N clients at once vs one at a time"),
    "step-parts": (step_parts, "add_arguments", "where a decode step's time goes: each graph's runs and the host time around them"),
    "steploop": (steploop_overhead, "add_arguments", "host overhead per step of the Python loop vs the C++ step loop"),
    "soak": (soak, "add_arguments", "many generations in one process: RSS growth and ms/token drift"),
    "families": (families, "add_arguments", "what a model family costs: ms/token of every family's stack against Llama's on equal "
                 "shapes, and its lines"),
    "text-path": (text_path, "add_arguments", "what an RM that reads text costs: the text path vs the id path, its cache over long "
                  "replies, an encoder RM by reply length"),
    "exporters": (exporters, "add_arguments", "torch.onnx's two export paths (dynamo, TorchScript) side by side: time, graphs, tokens"),
    "pages": (results_pages, "add_arguments", "the docs' results pages (docs/results/) made from the committed JSON; --check, --replot"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, adder, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        getattr(module, adder)(sub)
        sub.set_defaults(run=module.run, parser=sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the subcommand's own options (args-bench has none before it): what a child process re-runs
    try:
        return args.run(args)
    except UsageError as e:
        args.parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
