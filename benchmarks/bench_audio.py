"""Audio representations: batched STFT + 32-iteration Griffin-Lim vs librosa, encode backends.

Run: python benchmarks/bench_audio.py [--clips 512] [--threads N] [--repeats 2]
Prints times, the speed-up over librosa on the same clips (target >= 5x on one thread) for the default
torch.fft encode and for nnAudio's (backend="nnaudio", the default of version 1 that older runs keep), where
the difference between them goes (encode and decode timed apart), where the decode time goes beside the
loop's FFTs alone (the floor of this design), agreement with librosa, nnAudio vs torch.stft encode time,
cochleagram decode quality, and CUDA figures when a GPU is present.
"""

from __future__ import annotations

import argparse
import os
import time

import librosa
import numpy as np
import torch

import avgen
from _timing import record  # benchmarks/_timing.py
from avgen_audio import fourier
from avgen_audio.griffin_lim import CPU_CHUNK_FRAMES, griffin_lim_phase, random_phase

SR = 22050
SAMPLES = 11025  # 0.5 s
N_ITER = 32


def impact_clips(count: int, seed: int = 0) -> np.ndarray:
    """Decaying harmonic tones with noise bursts at random onsets, float32 [count, SAMPLES]."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / SR
    clips = np.zeros((count, SAMPLES))
    for i in range(count):
        for _ in range(3):
            onset, f0, decay = rng.uniform(0, 0.4), rng.uniform(200, 3000), rng.uniform(10, 40)
            env = np.where(t >= onset, np.exp(-(t - onset) * decay), 0.0)
            clips[i] += env * sum(np.sin(2 * np.pi * f0 * k * 1.01 * (t - onset)) / k for k in range(1, 4))
            clips[i] += 0.3 * env * rng.standard_normal(SAMPLES) * np.exp(-(t - onset) * 80)
        clips[i] *= 0.5 / np.abs(clips[i]).max()
    return clips.astype(np.float32)


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of repeats calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def ours(rep, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return rep.decode(rep.encode(wave))


def fft_floor(spectrum: torch.Tensor) -> None:
    """Only the FFTs of the Griffin-Lim loop: per chunk (as the loop cuts them) N_ITER x irfft + rfft."""
    per_chunk = max(1, CPU_CHUNK_FRAMES // spectrum.shape[1])
    for begin in range(0, spectrum.shape[0], per_chunk):
        chunk = spectrum[begin : begin + per_chunk]
        for _ in range(N_ITER):
            chunk = torch.fft.rfft(torch.fft.irfft(chunk, n=2048, dim=-1), dim=-1)


def librosa_per_clip(clips: np.ndarray) -> np.ndarray:
    return np.stack([librosa.griffinlim(np.abs(librosa.stft(c)), n_iter=N_ITER, random_state=0) for c in clips])


def librosa_batched(clips: np.ndarray) -> np.ndarray:
    return librosa.griffinlim(np.abs(librosa.stft(clips)), n_iter=N_ITER, random_state=0)


def spectral_convergence(magnitude: np.ndarray, wave: np.ndarray) -> np.ndarray:
    rebuilt = np.abs(librosa.stft(wave))
    return np.linalg.norm(rebuilt - magnitude, axis=(-2, -1)) / np.linalg.norm(magnitude, axis=(-2, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: librosa is single-threaded, and OpenMP threads collapse on a shared machine; 0 = torch's default)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2,
        help="runs per timing, the best kept, for avgen and librosa alike (default 2: one run hit by another process no longer decides the ratio)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clips = impact_clips(args.clips)
    wave = torch.from_numpy(clips)
    print(f"{args.clips} clips of {SAMPLES / SR} s at {SR} Hz; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; librosa {librosa.__version__}")

    rep = avgen.create("representation", "stft")  # the default (version 2): torch.fft encode, fast Griffin-Lim decode
    rep_nn = avgen.create("representation", "stft", backend="nnaudio")  # version 1's encode, kept by runs made with it
    ours(rep, wave[:8])  # warm-up
    ours(rep_nn, wave[:8])
    librosa_per_clip(clips[:2])
    librosa_batched(clips[:2])

    t_ours, _ = timed(lambda: ours(rep, wave), args.repeats)
    t_ours_nn, _ = timed(lambda: ours(rep_nn, wave), args.repeats)
    t_lib_loop, _ = timed(lambda: librosa_per_clip(clips), args.repeats)
    t_lib_batch, _ = timed(lambda: librosa_batched(clips), args.repeats)
    print(f"\n== encode + 32-iteration fast Griffin-Lim (CPU), best of {args.repeats} ==")
    print(f"avgen stft, torch.fft encode (the default): {t_ours:7.2f} s   {t_lib_loop / t_ours:5.2f}x librosa clip by clip, "
          f"{t_lib_batch / t_ours:.2f}x batched")
    print(f"avgen stft, nnAudio encode (version 1):     {t_ours_nn:7.2f} s   {t_lib_loop / t_ours_nn:5.2f}x librosa clip by clip, "
          f"{t_lib_batch / t_ours_nn:.2f}x batched")
    print(f"librosa, clip by clip:                      {t_lib_loop:7.2f} s")
    print(f"librosa, one batched call:                  {t_lib_batch:7.2f} s")

    print(f"\n== the two encodes apart: the same decode follows both (best of {args.repeats}) ==")
    with torch.inference_mode():
        t_enc, encoded = timed(lambda: rep.encode(wave), args.repeats)
        t_enc_nn, _ = timed(lambda: rep_nn.encode(wave), args.repeats)
        t_dec, _ = timed(lambda: rep.decode(encoded), args.repeats)
        calls = []
        hook = rep_nn.nnaudio_stft.register_forward_hook(lambda *_: calls.append(1))
        rep_nn.decode(rep_nn.encode(wave[:8]))
        hook.remove()
    print(f"encode: torch.fft {t_enc:.2f} s, nnAudio {t_enc_nn:.2f} s (+{t_enc_nn - t_enc:.2f} s); decode {t_dec:.2f} s; "
          f"the pipelines differ by {t_ours_nn - t_ours:.2f} s. nnAudio STFT calls in one encode + decode: {len(calls)} "
          "(Griffin-Lim's own STFTs are torch.fft in both)")

    print(f"\n== where the decode goes (torch.fft encode, best of {args.repeats}) ==")
    with torch.inference_mode():
        t_encode, encoded = timed(lambda: rep.encode(wave), args.repeats)
        magnitude = rep.to_magnitude(encoded).transpose(1, 2).contiguous()
        t_init, init = timed(lambda: random_phase(magnitude.shape, magnitude.device, torch.complex64, 0), args.repeats)
        t_loop, phase = timed(lambda: griffin_lim_phase(magnitude, rep.window, 512, True, "constant", N_ITER, 0.99, init),
                              args.repeats)
        t_istft, _ = timed(lambda: fourier.istft(magnitude * phase, rep.window, 512, True), args.repeats)
        t_fft, _ = timed(lambda: fft_floor(magnitude * init), args.repeats)
    ceiling = t_lib_loop / (t_encode + t_fft)
    print(f"encode {t_encode:.2f} s, random start {t_init:.2f} s, Griffin-Lim loop {t_loop:.2f} s, final inverse STFT {t_istft:.2f} s")
    print(f"the loop's FFTs alone (32 x irfft + rfft, same chunks): {t_fft:.2f} s = {t_fft / t_loop:.0%} of the loop; "
          f"encode + FFTs alone would be {ceiling:.1f}x librosa clip by clip (the ceiling of this design)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) after the timings: {load:.2f}")
    record("audio", librosa_loop_ratio=t_lib_loop / t_ours, librosa_batch_ratio=t_lib_batch / t_ours,
           nnaudio_encode_librosa_loop_ratio=t_lib_loop / t_ours_nn, fft_floor_share=t_fft / t_loop,
           fft_ceiling_ratio=ceiling)

    print("\n== agreement with librosa ==")
    reference = np.abs(librosa.stft(clips.astype(np.float64)))
    encoded = rep.encode(wave).numpy()
    print(f"encode (torch)   vs librosa.stft |.|: relative error {np.linalg.norm(encoded - reference) / np.linalg.norm(reference):.2e}")
    encoded_nn = rep_nn.encode(wave).numpy()
    print(f"encode (nnAudio) vs librosa.stft |.|: relative error {np.linalg.norm(encoded_nn - reference) / np.linalg.norm(reference):.2e}")
    subset = encoded[:16]
    zero = avgen.create("representation", "stft", griffin_lim_init="zero")
    ours_zero = zero.decode(torch.from_numpy(subset)).numpy()
    lib_zero = librosa.griffinlim(subset, n_iter=N_ITER, init=None)
    print(f"Griffin-Lim, zero start, 16 clips: waveform relative difference {np.linalg.norm(ours_zero - lib_zero) / np.linalg.norm(lib_zero):.2e} (float32; the loop amplifies rounding)")
    rep64 = avgen.create("representation", "stft", griffin_lim_init="zero").double()
    ours64 = rep64.decode(torch.from_numpy(subset[:4]).double()).numpy()
    lib64 = librosa.griffinlim(subset[:4].astype(np.float64), n_iter=N_ITER, init=None)
    print(f"  same in float64, 4 clips: {np.linalg.norm(ours64 - lib64) / np.linalg.norm(lib64):.2e}")
    print(f"  spectral convergence: avgen {spectral_convergence(subset, ours_zero).mean():.4f}, librosa {spectral_convergence(subset, lib_zero).mean():.4f}")
    ours_random = rep.decode(torch.from_numpy(subset)).numpy()
    lib_random = librosa.griffinlim(subset, n_iter=N_ITER, random_state=0)
    print(f"  random start: avgen {spectral_convergence(subset, ours_random).mean():.4f}, librosa {spectral_convergence(subset, lib_random).mean():.4f}")
    given = rep.decode(torch.from_numpy(encoded), phase="given", reference=wave)
    snr = 10 * torch.log10(wave.pow(2).sum() / (wave - given).pow(2).sum())
    print(f"given-phase ISTFT: SNR {snr:.1f} dB")

    print("\n== encode only ==")
    window = torch.hann_window(2048)
    with torch.inference_mode():
        t_nn, _ = timed(lambda: rep_nn.encode(wave), 3)
        t_fft, _ = timed(lambda: rep.encode(wave), 3)
        t_stft, _ = timed(lambda: torch.stft(wave, 2048, 512, window=window, center=True, pad_mode="constant", return_complex=True).abs(), 3)
    t_lib_stft, _ = timed(lambda: np.abs(librosa.stft(clips)), 3)
    print(f"nnAudio STFT (conv1d): {t_nn * 1e3:8.1f} ms")
    print(f"torch.stft:            {t_stft * 1e3:8.1f} ms   ({t_nn / t_stft:.1f}x faster than nnAudio)")
    print(f"avgen torch.fft path:  {t_fft * 1e3:8.1f} ms")
    print(f"librosa.stft (batch):  {t_lib_stft * 1e3:8.1f} ms")

    print("\n== cochleagram ==")
    coch = avgen.create("representation", "cochleagram")
    with torch.inference_mode():
        t_coch, decoded = timed(lambda: coch.decode(coch.encode(wave), length=SAMPLES))
        c = coch.encode(wave)
        again = coch.encode(decoded)
    sc = torch.linalg.norm(again - c, dim=(1, 2)) / torch.linalg.norm(c, dim=(1, 2))
    mag, mag_again = coch.magnitude(wave), coch.magnitude(decoded)
    sc_mag = torch.linalg.norm(mag_again - mag, dim=(1, 2)) / torch.linalg.norm(mag, dim=(1, 2))
    print(f"encode + decode: {t_coch:.2f} s; cochleagram round-trip spectral convergence mean {sc.mean():.3f} "
          f"(min {sc.min():.3f}, max {sc.max():.3f}); STFT magnitude spectral convergence mean {sc_mag.mean():.3f}")

    if torch.cuda.is_available():
        print("\n== CUDA ==")
        gpu = avgen.create("representation", "stft").to("cuda")
        gpu_nn = avgen.create("representation", "stft", backend="nnaudio").to("cuda")
        wave_gpu = wave.to("cuda")

        def on_gpu(r):
            out = ours(r, wave_gpu)
            torch.cuda.synchronize()
            return out

        on_gpu(gpu)
        on_gpu(gpu_nn)
        t_gpu, _ = timed(lambda: on_gpu(gpu), 3)
        t_gpu_nn, _ = timed(lambda: on_gpu(gpu_nn), 3)
        print(f"{torch.cuda.get_device_name()}: encode + GL {t_gpu * 1e3:.1f} ms (torch.fft), {t_gpu_nn * 1e3:.1f} ms (nnAudio); "
              f"{t_lib_loop / t_gpu:.0f}x librosa clip by clip")


if __name__ == "__main__":
    main()
