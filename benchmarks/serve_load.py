"""
# How much does the course's HTTP service serve?

Starts the real service (`python -m llm_tutorial.serve` in a subprocess on 127.0.0.1 and a free
port) with the components `classify` (MiniLM + logistic regression fitted at start-up on
`--articles-per-class` BBC articles per topic) and `feedback` (SQLite, one flush to disk per
rating), once per micro-batch size in `--batch-sizes` (size 1 is no batching), waits for
`/healthz`, and drives it with `llm_tutorial.serve.load_test`:

* `POST /classify`, one sentence per request (from BBC articles the classifier did not see);
  the servers are loaded in turn, `--rounds` times, each round a share of `--requests`, so
  that other work on the machine slows all of them alike;
* `POST /feedback`, one rating per request, on the first server.

For each: throughput, latency percentiles, failures, and (for /classify) the sizes of the
micro-batches the server ran, read from its `/metrics`. Then `serve.crash_test`: 8 clients post
ratings, the server is killed with SIGKILL after 100 acknowledgements, restarted on the same
file, and every acknowledged rating must be there.

    python benchmarks/serve_load.py [--requests 500] [--concurrency 8] [--route both]

The results go to `docs/results/serving.md` (see `--out`). The load generator runs on the same
machine as the servers and, on a small machine, takes a share of its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import fastapi
import httpx
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from llm_tutorial import assets, serve
from llm_tutorial.token_classification import sample_sentences

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "serving.md"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def batch_histogram(url: str) -> dict[str, float]:
    """The server's micro-batch size histogram: cumulative counts by bucket, `sum` and `count`."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text):
        if family.name == "llm_tutorial_serve_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[sample.labels["le"]] = sample.value
                elif sample.name.endswith(("_sum", "_count")):
                    out[sample.name.rsplit("_", 1)[1]] = sample.value
    return out


def batch_summary(before: dict[str, float], after: dict[str, float]) -> tuple[float, str]:
    """Mean batch size, and the share of batches in each size range, between two histograms."""
    batches = after.get("count", 0) - before.get("count", 0)
    if not batches:
        return float("nan"), "none"
    parts, below, low = [], 0.0, 1
    for le in (b for b in after if b not in ("sum", "count")):
        cumulative = after[le] - before.get(le, 0)
        if cumulative > below:
            high = "more" if le == "+Inf" else f"{float(le):g}"
            span = high if str(low) == high else f"{low} to {high}"
            parts.append(f"{span}: {(cumulative - below) / batches:.0%}")
        below = cumulative
        low = int(float(le)) + 1 if le != "+Inf" else low
    return (after["sum"] - before.get("sum", 0)) / batches, ", ".join(parts)


def combine(results: list[dict]) -> dict:
    """Several load tests of one configuration as one: requests, seconds and latencies pooled."""
    latencies = [ms for r in results for ms in r["latencies_ms"]]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    seconds = sum(r["seconds"] for r in results)
    return {"requests": len(latencies), "concurrency": results[0]["concurrency"], "seconds": seconds,
            "throughput": len(latencies) / seconds, "p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98],
            "failed": sum(r["failed"] for r in results),
            "round_throughputs": [r["throughput"] for r in results]}


def classify_bodies(articles_per_class: int, n: int = 200) -> list[dict]:
    """One sentence per request from BBC articles the service did not train on (seeded)."""
    served = set(assets.load_bbc_news(max_per_class=articles_per_class).train_texts)
    unseen = [t for t in assets.load_bbc_news().test_texts if t not in served]
    return [{"texts": [s]} for s in sample_sentences(unseen, n, seed=0)]


def row(route: str, batch: str, r: dict) -> str:
    mean = f"{r['mean_batch']:.1f}" if "mean_batch" in r else ""
    spread = (f"{min(r['round_throughputs']):,.0f} to {max(r['round_throughputs']):,.0f}"
              if len(r.get("round_throughputs", [])) > 1 else "")
    return (f"| {route} | {batch} | {r['requests']} | {r['concurrency']} | {r['seconds']:.1f} | "
            f"{r['throughput']:,.0f} | {spread} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['failed']} | {mean} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0].lstrip("# "))
    parser.add_argument("--requests", type=int, default=500, help="requests per route and server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--route", choices=["classify", "feedback", "both"], default="both")
    parser.add_argument("--batch-sizes", default="16,1", help="micro-batch sizes of /classify, one server each")
    parser.add_argument("--rounds", type=int, default=5, help="the servers are loaded in turn this many times")
    parser.add_argument("--articles-per-class", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per load test")
    parser.add_argument("--server-threads", type=int, default=0,
                        help="PyTorch threads in each server (OMP_NUM_THREADS); 0: PyTorch's default")
    parser.add_argument("--no-crash-test", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    options = {"requests": args.requests, "concurrency": args.concurrency, "route": args.route,
               "batch-sizes": args.batch_sizes, "rounds": args.rounds}
    if args.server_threads:
        options["server-threads"] = args.server_threads
    command = "python benchmarks/serve_load.py " + " ".join(f"--{k} {v}" for k, v in options.items())
    load, started = [load_average()], time.perf_counter()
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.route != "feedback" else [1]
    components = "feedback" if args.route == "feedback" else "classify,feedback"
    bodies = classify_bodies(args.articles_per_class) if args.route != "feedback" else []
    per_round = max(2, args.requests // args.rounds)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers, startup = {}, {}
        for size in sizes:
            env = {"LLM_TUTORIAL_SERVE_COMPONENTS": components, "LLM_TUTORIAL_SERVE_DB": f"{tmp}/load{size}.db",
                   "LLM_TUTORIAL_SERVE_ARTICLES_PER_CLASS": str(args.articles_per_class),
                   "LLM_TUTORIAL_SERVE_BATCH_SIZE": str(size)}
            if args.server_threads:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.server_threads)
            start = time.perf_counter()
            servers[size] = stack.enter_context(serve.running_server(env, startup_timeout_s=600))
            startup[size] = time.perf_counter() - start
        results: dict[tuple[str, int], dict] = {}
        if args.route != "feedback":
            before = {}
            for size, server in servers.items():  # warm-up, not reported
                serve.load_test(server.url, "/classify", bodies, requests=4 * args.concurrency,
                                concurrency=args.concurrency)
                before[size] = batch_histogram(server.url)
            rounds: dict[int, list[dict]] = {size: [] for size in sizes}
            for _ in range(args.rounds):
                for size, server in servers.items():
                    rounds[size].append(serve.load_test(server.url, "/classify", bodies, requests=per_round,
                                                        concurrency=args.concurrency, timeout_s=args.timeout))
            for size, server in servers.items():
                result = results["classify", size] = combine(rounds[size])
                result["mean_batch"], result["batches"] = batch_summary(before[size], batch_histogram(server.url))
        if args.route != "classify":
            ratings = [{"item_id": str(i), "rating": 1 + i % 5, "request_id": f"load-{i}"} for i in range(100)]
            results["feedback", sizes[0]] = combine([serve.load_test(
                servers[sizes[0]].url, "/feedback", ratings, requests=args.requests,
                concurrency=args.concurrency, timeout_s=args.timeout)])
        stack.close()  # stop the servers before the crash test
        for (route, size), r in results.items():
            print(f"{route:8} batch max {size:2}: {r['throughput']:6.1f} requests/s, p50 {r['p50_ms']:.1f} ms, "
                  f"p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, failed {r['failed']}")
        crash = None if args.no_crash_test else serve.crash_test(Path(tmp) / "crash.sqlite3")
    if crash:
        print("crash test:", crash)
    total = time.perf_counter() - started
    load.append(load_average())

    lines = [
        "# Serving: notebook 13's HTTP service under load",
        "",
        "Module `llm_tutorial/serve.py`, tests `tests/test_serve.py`, benchmark `benchmarks/serve_load.py`. "
        "The real service (`python -m llm_tutorial.serve`, one uvicorn worker) in a subprocess on 127.0.0.1, "
        f"with the components classify (MiniLM mean-pooled embeddings + logistic regression fitted at "
        f"start-up on the train split of {args.articles_per_class} BBC articles per topic) and feedback "
        "(SQLite, WAL, `synchronous=FULL`: one flush to disk per rating). One server per micro-batch size; "
        "size 1 is no batching. The load generator (`serve.load_test`: httpx, "
        f"{args.concurrency} clients on one event loop, each sending its next request as soon as its "
        "previous answer came) runs on the same machine. `/classify` requests carry one sentence each, "
        "drawn from BBC articles the classifier did not see; after a warm-up of "
        f"{4 * args.concurrency} requests each, the servers are loaded in turn, {args.rounds} rounds of "
        f"{per_round} requests, and the table pools the rounds (the spread is the slowest and fastest "
        "round). `/feedback` requests carry one rating each.",
        "",
        f"## Run of {dt.date.today().isoformat()}",
        "",
        f"`{command}`, {total:.0f} s in all, on {cpu_model()} ({os.cpu_count()} cores), no GPU; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({args.server_threads or torch.get_num_threads()} threads in each server), fastapi "
        f"{fastapi.__version__}, uvicorn {uvicorn.__version__}. 1-minute load average {load[0]:.2f} at the "
        f"start and {load[1]:.2f} at the end: above {os.cpu_count()}, other processes shared the cores, and "
        "the absolute numbers move with them.",
        "",
        "| route | micro-batch max | requests | concurrency | seconds | requests/s | spread | p50 ms | p95 ms "
        "| p99 ms | failed | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(f"POST /{route}", str(size) if route == "classify" else "", r) for (route, size), r in results.items()]
    lines.append("")
    for size in sizes:
        if ("classify", size) in results:
            lines.append(f"- Micro-batch max {size}: the server started (models loaded, classifier fitted) in "
                         f"{startup[size]:.1f} s; the batches it ran under load, by size: "
                         f"{results['classify', size]['batches']}.")
    classify = {size: r for (route, size), r in results.items() if route == "classify"}
    if len(classify) > 1:
        (first, base), *others = classify.items()
        for size, other in others:
            lines.append(f"- Micro-batches of up to {first} served {base['throughput'] / other['throughput']:.2f} "
                         f"times the requests per second of batches of up to {size}, at p50 latency "
                         f"{base['p50_ms']:.0f} ms against {other['p50_ms']:.0f} ms. With {args.concurrency} "
                         f"clients at most {args.concurrency} texts wait at once, so no batch can be larger.")
    if crash:
        lines += [
            "",
            "## Crash test",
            "",
            "`serve.crash_test`: a server with only the feedback component; 8 clients post ratings; after "
            f"{crash['acknowledged']} ratings were acknowledged (201 with the row id) the server is killed "
            "with SIGKILL while requests are in flight, and a new server is started on the same SQLite file.",
            "",
            "| acknowledged | acknowledged and present (same rating) | acknowledged but missing | sent, never "
            "acknowledged | of those, stored | rows after restart | /feedback/count after restart |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {crash['acknowledged']} | {crash['acknowledged_present']} | {len(crash['acknowledged_missing'])} "
            f"| {crash['sent'] - crash['acknowledged']} | {crash['unacknowledged_present']} | {crash['rows']} "
            f"| {crash['count_after_restart']} |",
            "",
            "- Every acknowledged rating survived: the service answers 201 only after SQLite's commit has "
            "returned. A request in flight at the kill may or may not be stored (its client saw an error and "
            "would retry; a `request_id` lets the reader drop duplicates).",
            "- `kill -9` tests the process dying, not the machine losing power (the operating system's cache "
            "survives a killed process); that is what `synchronous=FULL`'s flush per commit is for, and it is "
            "not tested here.",
        ]
    lines += ["", f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by `{command}`.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
