"""Pitch tracking: the builder's hand-written YIN (``data_builders.tone``) vs. librosa's pYIN and YIN.

Both run on the same 16 kHz audio and the same frames (50 ms windows every 10 ms, 70-450 Hz; librosa
with ``center=False`` so frame i covers the same samples). Ours is the full voicing track the tone uses
(energy gate + YIN aperiodicity < 0.35); pYIN decides voicing itself (HMM); librosa's YIN gives F0 only
(its voicing is taken from ours, so its row is F0 accuracy alone).

- **synthetic** (known F0 per frame): harmonic tones (1/k harmonics, like a glottal source) with steady,
  gliding and vibrato contours, separated by unvoiced stretches (white noise, like a fricative) and
  silence, at SNR clean / 20 dB / 10 dB. Frames straddling a segment edge are not scored.
  GPE = voiced frames (truth and tracker agree) whose F0 is > 20 % off; FPE = median |error| in cents
  on the rest; VDE = frames whose voiced / unvoiced decision is wrong.
- **speech** (``espeak-ng``; its F0 is not ground truth): agreement of each tracker with ours
  (voicing, median F0 difference) and whether the tone phrase a record gets would change if the
  prosody used the library's F0 / voicing instead.
- **speed**: the three trackers on the same audio (the 20 dB clip + the speech), each doing its own work
  only (ours its YIN, pYIN with its voicing, librosa's YIN its F0 alone), one thread (set before
  numpy / numba load), timed with the shared protocol (benchmarks/protocol.py): interleaved in a rotating
  order, ``--warmup`` rounds discarded, ``--rounds`` kept; per tracker the median time [min-max] and x real
  time, and the median per-round time ratio ours / each librosa tracker [min-max, IQR] (below 1: ours
  is faster; its inverse is the speed-up).

    python benchmarks/pitch.py [--rounds 15] [--warmup 2] [--json out.json]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one thread: the figure is per core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402

from data_builders import tone  # noqa: E402

SR, HOP, FRAME = tone.SR, tone.HOP, tone.FRAME
ROUNDS = 15  # rounds for the ratios to repeat to +-0.03 on an idle machine (benchmarks/README.md)
SENTENCES = ("I am so happy to see you today.", "Why would you ever do that to me?",
             "Well, I suppose we could try again tomorrow.", "Get out of here right now!")


# ----------------------------------------------------------------------------------------- trackers


_VOICING = tone._voicing  # the real one: tone_with() swaps tone._voicing while it runs


def ours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    track = _VOICING(x, SR, -55.0)
    n = len(tone._frames(x))
    if track is None:
        return np.zeros(n), np.zeros(n, dtype=bool)
    return track[3], track[4]


def pyin(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    f0, voiced, _ = librosa.pyin(x.astype(np.float64), fmin=tone.FMIN, fmax=tone.FMAX, sr=SR, frame_length=FRAME,
                                 hop_length=HOP, center=False)
    return np.nan_to_num(f0), voiced


def yin_f0(x: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.yin(x.astype(np.float64), fmin=tone.FMIN, fmax=tone.FMAX, sr=SR, frame_length=FRAME,
                       hop_length=HOP, center=False, trough_threshold=0.15)


def yin(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f0 = yin_f0(x)
    return f0, ours(x)[1][: len(f0)]  # F0 only: our voicing decision


TRACKERS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "ours (tone.yin_f0)": ours, "librosa.pyin": pyin, "librosa.yin": yin}


# ---------------------------------------------------------------------------------------- synthetic


def harmonic(f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(f0) / SR + rng.uniform(0, 2 * np.pi)
    k = np.arange(1, 16)[:, None]
    alias = (k * f0[None, :]) < SR / 2  # no partial above Nyquist
    return (np.sin(k * phase[None, :]) / k * alias).sum(axis=0)


def synthetic(snr_db: float | None, seed: int = 0, telephone: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(audio, F0 per sample (0 = unvoiced)): voiced, unvoiced and silent stretches; ``telephone``:
    band-passed to 300-3400 Hz, so the fundamental of a low voice is missing."""
    rng = np.random.default_rng(seed)
    segs: list[tuple[str, np.ndarray]] = []
    for kind, dur, a, b in [("v", 0.6, 100, 100), ("n", 0.3, 0, 0), ("v", 0.6, 220, 220), ("s", 0.25, 0, 0),
                            ("v", 0.8, 120, 300), ("n", 0.3, 0, 0), ("v", 0.8, 300, 90), ("s", 0.25, 0, 0),
                            ("vib", 1.0, 180, 180), ("n", 0.2, 0, 0), ("v", 0.5, 400, 400), ("v", 0.5, 75, 75)]:
        n = int(dur * SR)
        if kind == "v":
            f = np.geomspace(a, b, n)
        elif kind == "vib":  # 5 Hz vibrato, +-1 semitone
            f = a * 2 ** (np.sin(2 * np.pi * 5 * np.arange(n) / SR) / 12)
        else:
            f = np.zeros(n)
        segs.append((kind, f))
    f0 = np.concatenate([f for _, f in segs])
    x = np.zeros_like(f0)
    pos = 0
    for kind, f in segs:
        n = len(f)
        if kind in ("v", "vib"):
            x[pos : pos + n] = 0.1 * harmonic(f, rng)
        elif kind == "n":
            x[pos : pos + n] = 0.05 * rng.standard_normal(n)
        pos += n
    if telephone:
        from scipy.signal import butter, sosfiltfilt

        x = sosfiltfilt(butter(6, [300, 3400], btype="bandpass", fs=SR, output="sos"), x)
    if snr_db is not None:
        p = np.mean(x[f0 > 0] ** 2)
        x = x + rng.standard_normal(len(x)) * np.sqrt(p / 10 ** (snr_db / 10))
    return x, f0


def frame_truth(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: F0 at the centre, voiced, and scored (the frame lies inside one segment kind)."""
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(1 + (len(f0) - FRAME) // HOP)[:, None]
    win = f0[idx]
    voiced = (win > 0).all(axis=1)
    scored = voiced | (win == 0).all(axis=1)
    return win[:, FRAME // 2], voiced, scored


def accuracy(f0: np.ndarray, voiced: np.ndarray, t_f0: np.ndarray, t_voiced: np.ndarray,
             scored: np.ndarray) -> dict[str, float]:
    n = min(len(f0), len(t_f0))
    f0, voiced, t_f0, t_voiced, scored = f0[:n], voiced[:n], t_f0[:n], t_voiced[:n], scored[:n]
    both = scored & voiced & t_voiced
    err = np.abs(f0[both] / t_f0[both] - 1)
    gross = err > 0.2
    cents = np.abs(1200 * np.log2(f0[both][~gross] / t_f0[both][~gross]))
    return {"gpe_pct": 100 * float(gross.mean()) if both.any() else float("nan"),
            "fpe_cents": float(np.median(cents)) if cents.size else float("nan"),
            "vde_pct": 100 * float((voiced[scored] != t_voiced[scored]).mean()),
            "missed_voiced_pct": 100 * float((~voiced[scored & t_voiced]).mean()),
            "false_voiced_pct": 100 * float(voiced[scored & ~t_voiced].mean())}


# ------------------------------------------------------------------------------------------- speech


def speech() -> list[np.ndarray]:
    import librosa

    from emollm.testing.speech import can_speak, speak

    if not can_speak():
        return []
    out = []
    for s in SENTENCES:
        wave, rate = speak(s)
        out.append(librosa.resample(wave.astype(np.float64), orig_sr=rate, target_sr=SR, res_type="soxr_hq"))
    return out


def tone_with(tracker: Callable, x: np.ndarray) -> str | None:
    """The tone phrase a record would get if the prosody used ``tracker``'s F0 and voicing."""
    def patched(audio: np.ndarray, sr: int, silence_dbfs: float):  # noqa: ANN202
        track = _VOICING(audio, sr, silence_dbfs)
        if track is None:
            return None
        db, peak, active, _, _ = track
        f0, voiced = tracker(audio)
        n = len(db)
        f0, voiced = np.resize(f0, n), np.resize(voiced, n) & active  # same frame count (center=False)
        return db, peak, active, f0, voiced

    tone._voicing = patched
    try:
        return tone.describe_prosody(x).tone
    finally:
        tone._voicing = _VOICING


def speed(audio: np.ndarray, rounds: int, warmup: int, stop: dict | None = None) -> dict:
    """The trackers on the same audio with the protocol; ratios are ours / each librosa tracker.

    Each side is the tracker's own work: ours its YIN over the frames, librosa's YIN its F0 alone (the
    accuracy rows borrow our voicing for it; timing that too would charge it for ours)."""
    seconds = len(audio) / SR
    own = {ours: lambda x: tone.yin_f0(tone._frames(x)), yin: yin_f0}
    work = {t: own.get(f, f) for t, f in TRACKERS.items()}
    fns = {t: (lambda f=f, x=audio: f(x)) for t, f in work.items()}
    for f in work.values():
        f(audio[:SR])  # numba compiles librosa's kernels on first use: not a warm-up round's job
    res = protocol.compare(fns, warmup=warmup, repeats=rounds, **(stop or {}))
    rounds = res["repeats"]
    print(f"speed, 1 thread, {seconds:.1f} s of audio ({rounds} rounds, {warmup} warm-up{protocol.ci_note(res['ci_reached'])}):")
    out: dict = {"audio_s": seconds, "rounds": rounds, "warmup": warmup, "trackers": {}, "ratios": res["ratios"],
                 "ci_reached": res["ci_reached"]}
    for tname, st in res["sides"].items():
        out["trackers"][tname] = {"seconds": st["median"], "seconds_min": st["min"], "seconds_max": st["max"],
                                  "x_real_time": seconds / st["median"]}
        print(f"  {tname:<20} {st['median'] * 1000:8.1f} ms [{st['min'] * 1000:.1f}-{st['max'] * 1000:.1f}]  "
              f"{seconds / st['median']:7.1f}x real time")
    for key, r in res["ratios"].items():
        print(f"  ratio {key:<36} {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}, IQR {r['iqr']:.3f}, "
              f"95% CI +-{r['ci_half']:.3f}]  "
              f"(ours {max(r['median'], 1 / r['median']):.1f}x {'faster' if r['median'] < 1 else 'slower'})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=ROUNDS,
                        help=f"speed: timed rounds after the warm-up (default {ROUNDS})")
    parser.add_argument("--warmup", type=int, default=protocol.WARMUP, help="speed: rounds discarded first")
    parser.add_argument("--speed-only", action="store_true", help="only the speed part (same audio)")
    parser.add_argument("--json", help="also write the results here")
    protocol.add_stopping_arguments(parser)
    args = parser.parse_args(argv)
    info = protocol.setup_threads(1)  # the figure is per core
    print(protocol.header(info))
    report: dict = {"protocol": info, "synthetic": {}, "speech": {}, "speed": {}}

    if not args.speed_only:
        print("synthetic (known F0): GPE % / FPE cents / VDE % (missed voiced %, false voiced %)")
    clips = {}
    for snr, phone in ((None, False), (20.0, False), (10.0, False), (0.0, False), (20.0, True), (5.0, True)):
        name = ("clean" if snr is None else f"snr {snr:g} dB") + (" tel." if phone else "")
        x, f0 = synthetic(snr, telephone=phone)
        clips[name] = x
        if args.speed_only:
            continue
        t_f0, t_voiced, scored = frame_truth(f0)
        for tname, tracker in TRACKERS.items():
            acc = accuracy(*tracker(x), t_f0, t_voiced, scored)
            report["synthetic"].setdefault(name, {})[tname] = acc
            print(f"  {name:<16} {tname:<20} GPE {acc['gpe_pct']:5.2f}  FPE {acc['fpe_cents']:5.1f}  "
                  f"VDE {acc['vde_pct']:5.2f} ({acc['missed_voiced_pct']:.2f}, {acc['false_voiced_pct']:.2f})")

    waves = speech()
    if args.speed_only:
        pass
    elif waves:
        print(f"speech (espeak-ng, {len(waves)} sentences): agreement with ours, and the tone phrase")
        base = [ours(w) for w in waves]
        for tname, tracker in list(TRACKERS.items())[1:]:
            agree, diffs, same_tone = [], [], 0
            for w, (f_o, v_o) in zip(waves, base, strict=True):
                f, v = tracker(w)
                n = min(len(f), len(f_o))
                agree.append(float((v[:n] == v_o[:n]).mean()))
                both = v[:n] & v_o[:n]
                diffs.extend(np.abs(f[:n][both] / f_o[:n][both] - 1).tolist())
                same_tone += tone_with(tracker, w) == tone.describe_prosody(w).tone
            row = {"voicing_agreement_pct": 100 * statistics.mean(agree),
                   "median_f0_diff_pct": 100 * float(np.median(diffs)) if diffs else float("nan"),
                   "f0_diff_over_20pct": 100 * float(np.mean(np.array(diffs) > 0.2)) if diffs else float("nan"),
                   "same_tone_phrase": f"{same_tone}/{len(waves)}"}
            report["speech"][tname] = row
            print(f"  {tname:<20} voicing agrees {row['voicing_agreement_pct']:5.1f}%  median F0 diff "
                  f"{row['median_f0_diff_pct']:.2f}%  >20% off {row['f0_diff_over_20pct']:.2f}%  "
                  f"same tone phrase {row['same_tone_phrase']}")
        for s, w in zip(SENTENCES, waves, strict=True):
            print(f"    {s!r}: ours {tone.describe_prosody(w).tone!r} | pyin {tone_with(pyin, w)!r}")
    else:
        print("speech: espeak-ng not installed (skipped)")

    audio = np.concatenate([clips["snr 20 dB"], *waves])
    report["speed"] = speed(audio, args.rounds, args.warmup, protocol.stopping(args))

    import librosa

    report["versions"] = {"librosa": librosa.__version__, "numpy": np.__version__}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
