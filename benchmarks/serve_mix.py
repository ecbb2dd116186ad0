"""`args-bench serve-mix`: does args-serve batch what a team sends it? N chat requests of mixed lengths through one
server, from N `openai` clients at once against the same requests one at a time (the same server, one client), in one
run, alternating rounds; every answer's tokens compared with its one-at-a-time tokens.

    args-bench serve-mix                      # the demo bundle (exported on first use), 8 requests
    args-bench serve-mix --bundle DIR --rounds 3

The figure it judges: all at once finishes >= 1.5x sooner than one at a time (issue 28). Writes serve_mix.json under
benchmarks/results/<machine>/ (--out) and prints the ratio and how the server said it batches (/health)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import machine, module_main, results_folder
from .report import Target

TOPICS = ["the sea", "a rainy morning in a small harbour town where the boats rock", "my first job", "the city at night",
          "learning to cook a difficult dish for friends who are coming over tonight", "an old friend", "winter", "a long train ride"]
LENGTHS = [24, 64, 40, 96, 32, 80, 48, 56]  # new tokens per request, EOS ignored: mixed, as a team's requests are


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench serve-mix`'s options."""
    p.add_argument("--bundle", type=Path, help="bundle to serve (default: the demo bundle, exported on first use)")
    p.add_argument("--requests", type=int, default=8, help="requests, and clients at once (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each timing both orders of the two ways (default 2)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per graph")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def requests(n: int) -> list[tuple[list[dict], int]]:
    """n chat turns with their max_tokens, cycling TOPICS and LENGTHS."""
    return [([{"role": "user", "content": f"Write about {TOPICS[i % len(TOPICS)]}."}], LENGTHS[i % len(LENGTHS)]) for i in range(n)]


def answer(client, body: dict, chat: list[dict], max_tokens: int) -> list[int]:
    r = client.chat.completions.create(model="bench", messages=chat, max_tokens=max_tokens, extra_body={"args": body})
    return r.choices[0].model_extra["args"]["token_ids"]


def timed(client, body: dict, jobs: list, at_once: bool) -> tuple[float, list[list[int]]]:
    """Seconds until every request is answered, and the answers' token ids (in request order)."""
    start = time.perf_counter()
    if at_once:
        with ThreadPoolExecutor(len(jobs)) as pool:
            ids = list(pool.map(lambda job: answer(client, body, *job), jobs))
    else:
        ids = [answer(client, body, *job) for job in jobs]
    return time.perf_counter() - start, ids


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.serve_mix`: the same as `args-bench serve-mix`."""
    return module_main(sys.modules[__name__], "args-bench serve-mix", argv)


def run(args: argparse.Namespace) -> int:
    import httpx
    import openai

    from .serve import free_port, start_server, wait_ready

    bundle = args.bundle
    if bundle is None:
        from args_export.demo.prepare import cache_dir, prepare_bundle

        bundle = prepare_bundle(cache_dir())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(Path(bundle), argparse.Namespace(k=args.k, w=args.w, max_batch=args.requests, threads=args.threads), port)
    try:
        wait_ready(url, server)
        health = httpx.get(f"{url}/health", timeout=10).json()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
        body = {"k": args.k, "w": args.w, "ignore_eos": True, "return_rewards": True}
        jobs = requests(args.requests)
        answer(client, body, jobs[0][0], 4)  # warm-up
        times: dict[str, list[float]] = {"one at a time": [], "all at once": []}
        alone, same = None, True
        for round_ in range(args.rounds):
            order = [False, True] if round_ % 2 == 0 else [True, False]
            for at_once in order:
                seconds, ids = timed(client, body, jobs, at_once)
                times["all at once" if at_once else "one at a time"].append(seconds)
                alone = alone or (None if at_once else ids)
                if alone is not None:
                    same = same and ids == alone
                print(f"round {round_ + 1}: {'all at once' if at_once else 'one at a time'}: {seconds:.2f} s", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["one at a time"] / medians["all at once"]
    target = Target(f"{args.requests} mixed requests at once vs one at a time, through args-serve", ">= 1.5x sooner", f"{ratio:.2f}x", ratio >= 1.5)
    info = machine()
    doc = {"machine": info, "bundle": str(bundle), "batching": health.get("batching"), "requests": args.requests,
           "max_tokens_each": [n for _, n in jobs], "k": args.k, "w": args.w, "rounds": args.rounds, "seconds": times,
           "median_s": medians, "ratio": round(ratio, 3), "identical_tokens": same, "targets": [target.__dict__],
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_mix.json").write_text(json.dumps(doc, indent=2))
    print(f"{Path(bundle).name}: server batching: {health.get('batching')}")
    print(f"one at a time {medians['one at a time']:.2f} s, all at once {medians['all at once']:.2f} s: {ratio:.2f}x; same tokens: {same}")
    print(target.line())
    print(f"written {out / 'serve_mix.json'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
