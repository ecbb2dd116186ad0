"""args-serve under concurrent clients: requests/s, tokens/s, time to first token and p50/p99 latency at 1, 4 and 16
concurrent clients against one server, compared in the same run with the same requests sent one at a time.

    python benchmarks/serve.py                 # the demo bundle (SmolLM2-135M + the sentiment RM), 32 requests × 32 tokens
    python benchmarks/serve.py --quick         # a smoke run: 8 requests × 8 tokens, 1 and 4 clients
    python benchmarks/serve.py --bundle DIR --clients 1,4,16 --requests 64 --max-tokens 64

The server runs in a process of its own (`args-serve`, uvicorn), the clients are the `openai` package's AsyncOpenAI in
this process, each client sending its next request when the previous one is answered (a closed loop). Every request
is a chat turn from the held-out prompts of export/data/sentiment_prompts.jsonl, ARGS-greedy at the same k and w,
EOS ignored so each answer has exactly --max-tokens tokens. Workloads, in one run:
  - "one at a time": the same requests through ArgsGenerator.generate in this process, no server (the baseline);
  - plain requests at each client count: the server batches waiting requests with equal settings (up to --max-batch);
  - streamed requests at each client count: time to first token as the client sees it; each stream decodes alone.
Every answer's tokens are compared with the one-at-a-time run's. Writes JSON and a PNG to
benchmarks/results/<machine>/ (--out), and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from args_benchmarks import report


@dataclass
class Workload:
    name: str
    clients: int  # 0: in-process, one at a time, no server
    stream: bool


@dataclass
class Measured:
    """One workload's figures."""

    name: str
    clients: int
    stream: bool
    requests: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    exact: int  # answers whose tokens equal the one-at-a-time run's
    mean_batch: float = 1.0  # requests per model run, from the server's args_batch_size histogram


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarise(w: Workload, seconds: float, latencies: list[float], ttfts: list[float], tokens: int, exact: int) -> Measured:
    n = len(latencies)
    return Measured(w.name, w.clients, w.stream, n, round(seconds, 3), round(n / seconds, 4), round(tokens / seconds, 3),
                    round(percentile(ttfts, 50) * 1e3, 1) if ttfts else None, round(percentile(ttfts, 99) * 1e3, 1) if ttfts else None,
                    round(percentile(latencies, 50) * 1e3, 1), round(percentile(latencies, 99) * 1e3, 1), exact)


def one_at_a_time(bundle: Path, chats: list, settings: dict, threads: int | None) -> tuple[list[list[int]], Measured]:
    """The baseline: each request alone through ArgsGenerator.generate, in this process."""
    from args_runtime import ArgsGenerator

    gen = ArgsGenerator.from_bundle(bundle, threads=threads)
    gen.generate(chats[0], **{**settings, "max_new_tokens": 2})  # warm-up
    ids, latencies, ttfts = [], [], []
    start = time.perf_counter()
    for chat in chats:
        t0 = time.perf_counter()
        res = gen.generate(chat, **settings)
        latencies.append(time.perf_counter() - t0)
        ttfts.append(res.timings["time_to_first_token_ms"] / 1e3)
        ids.append(res.token_ids)
    seconds = time.perf_counter() - start
    tokens = sum(len(t) for t in ids)
    return ids, summarise(Workload("one at a time (in-process)", 1, False), seconds, latencies, ttfts, tokens, len(ids))


async def run_clients(url: str, model: str, w: Workload, chats: list, args_body: dict, max_tokens: int,
                      expected: list[list[int]]) -> Measured:
    """`w.clients` closed-loop clients share the requests; each answer is timed and checked against `expected`."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
    todo = list(enumerate(chats))
    latencies, ttfts, tokens, exact = [], [], 0, 0

    async def one(chat) -> tuple[list[int], float, float | None]:
        t0 = time.perf_counter()
        body = {"args": {**args_body, "return_rewards": True}}
        if not w.stream:
            r = await client.chat.completions.create(model=model, messages=chat, max_tokens=max_tokens, extra_body=body)
            return r.choices[0].model_extra["args"]["token_ids"], time.perf_counter() - t0, None
        ids, first = [], None
        stream = await client.chat.completions.create(model=model, messages=chat, max_tokens=max_tokens, stream=True, extra_body=body)
        async for chunk in stream:
            trace = chunk.choices[0].model_extra.get("args") if chunk.choices else None
            if trace:
                first = first or time.perf_counter() - t0
                ids += trace["token_ids"]
        return ids, time.perf_counter() - t0, first

    async def client_loop() -> None:
        nonlocal tokens, exact
        while todo:
            i, chat = todo.pop(0)
            ids, latency, first = await one(chat)
            latencies.append(latency)
            if first is not None:
                ttfts.append(first)
            tokens += len(ids)
            exact += ids == expected[i]

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(w.clients)))
    seconds = time.perf_counter() - start
    await client.close()
    return summarise(w, seconds, latencies, ttfts, tokens, exact)


def batch_totals(url: str) -> tuple[float, float]:
    """(requests run, model runs) so far, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in ("args_batch_size_sum", "args_batch_size_count"):
                values[sample.name] = sample.value
    return values.get("args_batch_size_sum", 0.0), values.get("args_batch_size_count", 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "args_runtime.serve.cli", str(bundle), "--port", str(port), "--k", str(args.k), "--w", str(args.w),
           "--max-batch", str(args.max_batch), "--model-name", "bench", "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"args-serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("args-serve did not become ready")


def draw(rows, title: str, machine_label: str):
    """The figure: tokens/s against concurrent clients (plain and streamed), and their p50 / p99 latency and the
    streamed time to first token; the in-process one-at-a-time run (rows[0]) is the baseline."""
    base = rows[0]
    fig, axes = report.figure(title, machine_label, panels=2, size=(12.0, 5.0))
    series = [("plain (batched)", "p50 latency"), ("plain (batched)", "p99 latency"), ("streamed", "p50 latency"),
              ("streamed", "p99 latency"), ("streamed", "p50 time to first token")]
    styles = report.line_styles(series + [(key, "") for key in ("plain (batched)", "streamed")])
    for stream, key in ((False, "plain (batched)"), (True, "streamed")):
        sel = [r for r in rows[1:] if r.stream == stream]
        clients = [r.clients for r in sel]
        axes[0].plot(clients, [r.tokens_per_s for r in sel], label=f"{key}: tokens/s", **styles[(key, "")])
        figures = [("p50 latency", "latency_p50_ms"), ("p99 latency", "latency_p99_ms")]
        figures += [("p50 time to first token", "ttft_p50_ms")] if stream else []
        for what, attr in figures:
            axes[1].plot(clients, [getattr(r, attr) for r in sel], label=f"{key}: {what}", **styles[(key, what)])
    axes[0].axhline(base.tokens_per_s, color="#7f7f7f", ls=":", label="one at a time, in-process: tokens/s")
    axes[0].set_ylabel("tokens/s (all clients together)")
    axes[1].set_ylabel("ms per request (log scale)")
    axes[1].set_yscale("log")
    ticks = sorted({r.clients for r in rows[1:]})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, labels=[str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent clients (count)")
        ax.grid(alpha=0.3)
    return report.finish(fig)


def plot(rows: list[Measured], path: Path, title: str, machine_label: str) -> None:
    """draw()'s figure as a PNG at `path`."""
    if report.have_matplotlib():
        draw(rows, title, machine_label).savefig(path, dpi=110)


def plot_title(bundle: str, settings: dict) -> str:
    """A serve plot's title: the bundle and the workload's settings."""
    return (f"args-serve, {Path(bundle).name}: {settings['requests']} chat requests × {settings['max_new_tokens']} tokens, "
            f"ARGS-greedy k={settings['k']} w={settings['w']}, max batch {settings['max_batch']}")


def replot(doc: dict) -> dict[str, object]:
    """The figure of a committed serve result, from its JSON rows."""
    rows = [Measured(**r) for r in doc["rows"]]
    return {"": draw(rows, plot_title(doc["bundle"], doc["settings"]), report.machine_name(doc["machine"]))}


def print_table(rows: list[Measured]) -> None:
    base = rows[0].tokens_per_s
    print(f"{'workload':34} {'req/s':>7} {'tok/s':>7} {'vs 1-at-a-time':>14} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'exact':>6}")
    for r in rows:
        ttft = (f"{r.ttft_p50_ms:9.0f} {r.ttft_p99_ms:9.0f}") if r.ttft_p50_ms is not None else f"{'-':>9} {'-':>9}"
        print(f"{r.name:34} {r.requests_per_s:7.2f} {r.tokens_per_s:7.1f} {r.tokens_per_s / base:13.2f}x {ttft} "
              f"{r.latency_p50_ms:8.0f} {r.latency_p99_ms:8.0f} {r.mean_batch:6.1f} {r.exact:>3}/{r.requests}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench serve`'s options."""
    p.add_argument("--bundle", type=Path, help="bundle to serve (default: the demo bundle, exported on first use)")
    p.add_argument("--requests", type=int, default=32, help="requests per workload (default 32)")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request, EOS ignored (default 32)")
    p.add_argument("--clients", default="1,4,16", help="concurrent client counts (default 1,4,16)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per graph, baseline and server alike")
    p.add_argument("--quick", action="store_true", help="8 requests × 8 tokens, 1 and 4 clients")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")
    p.add_argument("--name", default="serve", help="file name stem of the results (default serve)")


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.serve`: the same as `args-bench serve`."""
    from args_benchmarks.common import module_main

    return module_main(sys.modules[__name__], "args-bench serve", argv)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.requests, args.max_tokens, args.clients = 8, 8, "1,4"
    from args_benchmarks.common import machine, results_folder

    info = machine()
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if bundle is None:
        from args_export.demo.prepare import cache_dir, prepare_bundle

        bundle = prepare_bundle(cache_dir())
    from args_export.rewards.sentiment_pairs import load_prompts

    prompts = load_prompts("eval")
    chats = [[{"role": "user", "content": prompts[i % len(prompts)]}] for i in range(args.requests)]
    settings = dict(k=args.k, w=args.w, max_new_tokens=args.max_tokens, ignore_eos=True)
    clients = [int(c) for c in args.clients.split(",") if c]

    print(f"serve benchmark: {bundle.name}, {args.requests} requests × {args.max_tokens} tokens, k={args.k}, w={args.w}, "
          f"{info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}", flush=True)
    expected, baseline = one_at_a_time(bundle, chats, settings, args.threads)
    rows = [baseline]
    print(f"  {baseline.name}: {baseline.tokens_per_s:.1f} tokens/s", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(bundle, args, port)
    try:
        wait_ready(url, server)
        args_body = {"k": args.k, "w": args.w, "ignore_eos": True}
        asyncio.run(run_clients(url, "bench", Workload("warm-up", 1, False), chats[:1], args_body, 2, [[]]))
        for stream in (False, True):
            for c in clients:
                w = Workload(f"{'streamed' if stream else 'plain'}, {c} client{'s' if c > 1 else ''}", c, stream)
                before = batch_totals(url)
                m = asyncio.run(run_clients(url, "bench", w, chats, args_body, args.max_tokens, expected))
                after = batch_totals(url)
                m.mean_batch = round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)
                rows.append(m)
                print(f"  {m.name}: {m.tokens_per_s:.1f} tokens/s, p50 {m.latency_p50_ms:.0f} ms, exact {m.exact}/{m.requests}", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    doc = {"machine": info, "bundle": str(bundle), "settings": {**settings, "requests": args.requests, "max_batch": args.max_batch,
                                                                 "threads": args.threads},
           "created": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": [asdict(r) for r in rows]}
    tmp = out / f".{args.name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / f"{args.name}.json")
    plot(rows, out / f"{args.name}.png", plot_title(doc["bundle"], doc["settings"]), report.machine_name(info))
    print()
    print_table(rows)
    print(f"\nwrote {out / (args.name + '.json')} and {out / (args.name + '.png')}")
    return 0 if all(r.exact == r.requests for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
