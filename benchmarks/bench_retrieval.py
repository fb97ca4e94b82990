"""Exemplar retrieval over 10 k, 100 k and 1 M training clips: exact search, bf16 + proof, faiss.

    python benchmarks/bench_retrieval.py [--sizes 10000 100000 1000000] [--queries 256] [--threads N]
                                         [--backend exact faiss] [--nprobe 16 32 64] [--device cpu|cuda]

The bank is random but clustered (``--classes`` centres + unit noise, 1025-d like the time-averaged
STFT), generated and L2-normalised in chunks. For each size it times a batch of queries with
``topk_cosine`` (exact, fp32), ``CosineIndex(precision="bf16")`` (bf16 pass, float64 rescoring, exact
unless a query falls back), both of ``plugins/avgen_retrieval/search.py`` (the ``exact`` index) and, when faiss and examples/avgen-faiss are present,
an IVF-Flat index at each ``--nprobe`` with its recall@k against the exact top-k. The exact search
is set against a plain fp32 matmul of the same shapes measured in the same run (the physical limit:
every query must be multiplied with every bank row).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from avgen_retrieval.search import CosineIndex, chunk_size_for, l2_normalize, topk_cosine
from _timing import matmul_flops, record, sync, timed  # benchmarks/_timing.py

FAISS_PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "avgen-faiss"
GENERATE_ROWS = 65536


class PeakMemory:
    """Highest resident memory of this process while inside the ``with`` block (polled every 2 ms)."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clustered_bank(rows: int, dim: int, classes: int, seed: int, device: torch.device) -> torch.Tensor:
    """[rows, dim] unit rows: a random class centre plus unit Gaussian noise each, made in chunks."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    bank = torch.empty(rows, dim, device=device)
    for start in range(0, rows, GENERATE_ROWS):
        n = min(GENERATE_ROWS, rows - start)
        labels = torch.randint(0, classes, (n,), generator=g)
        bank[start : start + n] = l2_normalize(centres[labels] + torch.randn(n, dim, generator=g)).to(device)
    return bank


def matmul_rates(query: torch.Tensor, bank: torch.Tensor, chunk: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """(FLOP/s of the search's own matmuls without top-k, FLOP/s of a large square sgemm)."""
    square = matmul_flops(device, repeats)  # also turns TF32 off on CUDA: true fp32

    def same_shapes() -> None:
        for start in range(0, bank.shape[0], chunk):
            query @ bank[start : start + chunk].T

    flops = 2 * query.shape[0] * bank.shape[0] * bank.shape[1]
    return flops / timed(same_shapes, device, repeats), square


def overlap(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each query's exact top-k that ``found`` holds (recall@k against exact search)."""
    return float((found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=1).float().mean())


def time_search(name: str, search: Callable[[torch.Tensor], object], queries: torch.Tensor, flops: float | None,
                rate: float, device: torch.device, repeats: int, single_repeats: int, seconds: float = 0.0) -> float:
    """Print ms/query and queries/s for the batch, its matmul-rate fraction (exact search), one query's latency;
    return the batch seconds per query.

    ``seconds``: the batch time when already measured (then one call here gives the memory peak).
    """
    with PeakMemory() as memory:
        if seconds:
            search(queries)  # timed already: one more call for its memory peak
        else:
            seconds = timed(lambda: search(queries), device, repeats)
    single = timed(lambda: search(queries[:1]), device, single_repeats)
    per_query = seconds / queries.shape[0]
    achieved = f"{flops / seconds / 1e9:5.0f} GFLOP/s = {flops / seconds / rate:6.1%} of matmul" if flops else " " * 34
    print(f"  {name:<38} {per_query * 1e3:7.2f} ms/query {1 / per_query:8.0f} queries/s  {achieved}  "
          f"1 query {single * 1e3:7.1f} ms  search memory +{memory.extra_mb:.0f} MB")
    return per_query


def bench_size(rows: int, args: argparse.Namespace, device: torch.device, faiss_module) -> None:
    started = time.perf_counter()
    bank = clustered_bank(rows, args.dim, args.classes, seed=rows, device=device)
    queries = clustered_bank(args.queries, args.dim, args.classes, seed=rows + 1, device=device)
    sync(device)
    n, bank_mb = args.queries, bank.numel() * 4 / 2**20
    chunk = args.chunk_size or chunk_size_for(n, args.dim, normalize=False)
    flops = 2.0 * n * rows * args.dim
    single_repeats = args.repeats if rows <= 100_000 else 1
    print(f"\nbank {rows} x {args.dim} fp32 ({bank_mb:.0f} MB, made in {time.perf_counter() - started:.1f} s), "
          f"{n} queries, k={args.k}, chunk {chunk} rows")
    _, exact = topk_cosine(queries, bank, args.k, chunk, bank_normalized=True)
    same, square = matmul_rates(queries, bank, chunk, device, args.repeats)
    if "exact" in args.backend:
        search = lambda q: topk_cosine(q, bank, args.k, chunk, bank_normalized=True)  # noqa: E731
        seconds = timed(lambda: search(queries), device, args.repeats)
        after, square_after = matmul_rates(queries, bank, chunk, device, args.repeats)
        same, square = max(same, after), max(square, square_after)  # the less disturbed of the two
    print(f"  fp32 matmul (best of before and after): {same / 1e9:.0f} GFLOP/s in the search's shapes "
          f"({flops / same / n * 1e3:.2f} ms/query is the exact-search limit), {square / 1e9:.0f} GFLOP/s as a square sgemm")
    if "exact" in args.backend:
        per_query = time_search("exact fp32 (topk_cosine)", search, queries, flops, same, device, args.repeats,
                                single_repeats, seconds=seconds)
        record("retrieval", **{f"exact_fp32_{rows}_ms_per_query": per_query * 1e3,
                               f"exact_limit_{rows}_ms_per_query": flops / same / n * 1e3})
        if device.type == "cpu" or torch.cuda.is_bf16_supported():
            with PeakMemory() as memory:
                index = CosineIndex(bank, normalized=True, precision="bf16", chunk_size=args.chunk_size or None,
                                    rerank=args.rerank)
            _, found = index.search(queries, args.k)
            agree = float((found == exact).all(dim=1).float().mean())
            print(f"  bf16 copy: +{memory.extra_mb:.0f} MB; {index.fallbacks}/{n} queries fell back to fp32, "
                  f"{agree:.1%} identical to the fp32 top-{args.k}")
            per_query = time_search(f"exact bf16 + proof (rerank {args.rerank})", lambda q: index.search(q, args.k),
                                    queries, flops, same, device, args.repeats, single_repeats)
            record("retrieval", **{f"exact_bf16_{rows}_ms_per_query": per_query * 1e3})
            del index
    if "faiss" in args.backend and faiss_module is not None:
        with PeakMemory() as memory:
            built = time.perf_counter()
            nlist = min(args.nlist, rows // 39) if args.nlist else 0
            index = faiss_module.build_index(bank, index=args.faiss_index, nlist=nlist, threads=args.threads)
        nlist = getattr(index.index, "nlist", 0)
        print(f"  faiss {args.faiss_index} (nlist {nlist}): built in {time.perf_counter() - built:.1f} s, +{memory.extra_mb:.0f} MB")
        for nprobe in args.nprobe:
            if hasattr(index.index, "nprobe"):
                index.index.nprobe = nprobe
            elif hasattr(index.index, "hnsw"):
                index.index.hnsw.efSearch = nprobe
            _, found = index.search(queries, args.k)
            time_search(f"faiss nprobe/ef {nprobe}: recall@{args.k} {overlap(found, exact):.3f}",
                        lambda q: index.search(q, args.k), queries, None, same, torch.device("cpu"),
                        args.repeats, single_repeats)
        del index  # free its memory before the next size


def load_faiss_plugin():
    """avgen_faiss (installed, or from examples/avgen-faiss), or None when faiss is missing."""
    if importlib.util.find_spec("faiss") is None:
        return None
    if str(FAISS_PACKAGE) not in sys.path:
        sys.path.insert(0, str(FAISS_PACKAGE))
    import avgen_faiss

    return avgen_faiss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--dim", type=int, default=1025, help="1025: the STFT's frequency bins")
    parser.add_argument("--classes", type=int, default=17)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--backend", nargs="+", choices=["exact", "faiss"], default=["exact", "faiss"])
    parser.add_argument("--chunk-size", type=int, default=0, help="bank rows per matmul (0: the library default)")
    parser.add_argument("--rerank", type=int, default=64, help="extra bf16 candidates rescored in float64 per query")
    parser.add_argument("--faiss-index", choices=["ivf_flat", "hnsw", "flat"], default="ivf_flat")
    parser.add_argument("--nlist", type=int, default=1024,
                        help="IVF cells, at most rows / 39 (0: the plugin's 4 sqrt(rows); 1024 keeps the 1 M build short on 2 cores)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64], help="IVF cells probed (efSearch for hnsw)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch and faiss CPU threads (0: their default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (faiss always runs on the CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    faiss_module = load_faiss_plugin() if "faiss" in args.backend else None
    if "faiss" in args.backend and faiss_module is None:
        print("faiss is not installed (pip install faiss-cpu): faiss rows skipped")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, load average "
          f"{os.getloadavg()[0]:.1f}")
    for rows in args.sizes:
        bench_size(rows, args, device, faiss_module)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; peak resident memory "
          f"{resident_peak_mb():.0f} MB")


def resident_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
