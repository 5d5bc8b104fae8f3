"""Audio tone from prosody: pitch (a YIN-style F0 tracker), energy, speaking rate, pauses -> a phrase.

Everything runs on 16 kHz mono float audio (``emollm.media.load_audio``) with numpy only:

- frames of 50 ms every 10 ms; **energy** = RMS in dBFS per frame;
- **silence**: the loudest frame below ``silence_dbfs`` -> ``silent_audio`` (no tone, nothing invented);
- **active** frames: energy within 30 dB of the loudest frame's and above ``silence_dbfs``;
- **F0** (YIN, de Cheveigné & Kawahara 2002): difference function via FFT autocorrelation, cumulative
  mean normalised, absolute threshold 0.15, parabolic refinement, search 70-450 Hz; a frame is voiced
  when it is active and its normalised difference is below 0.35;
- **speaking-rate proxy**: syllable nuclei = peaks of the smoothed energy envelope on voiced frames at
  least 3 dB above the surrounding dips and 100 ms apart, per second of active time;
- **pauses**: inactive gaps of at least 250 ms between active stretches.
Less than ``MIN_VOICED_S`` of voiced speech -> ``no_speech_detected`` (no tone).

The describer is pluggable (:data:`DESCRIBERS`): ``prosody`` is built in; an audio-LLM describer can
register itself under another name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

VERSION = "prosody/1"
SR = 16000
FRAME = 800  # 50 ms
HOP = 160  # 10 ms
FMIN, FMAX = 70.0, 450.0
MIN_VOICED_S = 0.3


@dataclass
class Prosody:
    duration_s: float
    active_s: float
    voiced_s: float
    peak_dbfs: float
    energy_dbfs: float  # mean energy of active frames
    pitch_hz: float | None  # median F0 of voiced frames
    pitch_range_st: float | None  # 10th-90th percentile span, semitones
    pitch_slope_st_s: float | None  # linear trend of voiced F0, semitones per second
    syllable_rate: float | None  # energy peaks per active second
    pauses: int
    pause_ratio: float  # pause time / (active + pause time)

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class ToneResult:
    tone: str | None
    prosody: Prosody | None
    flags: list[str]


def _frames(x: np.ndarray) -> np.ndarray:
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    n = 1 + (len(x) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    return x[idx]


YIN_BLOCK = 256  # frames per block: every step is per frame, and blocks keep the spectra a few MB


def yin_f0(frames: np.ndarray, sr: int = SR, fmin: float = FMIN, fmax: float = FMAX,
           threshold: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame F0 (Hz) and the normalised difference at the chosen lag (lower = more periodic).

    Computed in blocks of :data:`YIN_BLOCK` frames, the same values as in one pass (each frame is its
    own transform): a long clip's spectra in one piece were hundreds of MB, allocated and faulted in on
    every call, which made its time scatter 3x call to call."""
    if len(frames) <= YIN_BLOCK:
        return _yin_block(frames, sr, fmin, fmax, threshold)
    parts = [_yin_block(frames[i : i + YIN_BLOCK], sr, fmin, fmax, threshold) for i in range(0, len(frames), YIN_BLOCK)]
    return np.concatenate([f for f, _ in parts]), np.concatenate([b for _, b in parts])


def _yin_block(frames: np.ndarray, sr: int, fmin: float, fmax: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    tau_min, tau_max = int(sr / fmax), int(sr / fmin)
    w = frames.shape[1] - tau_max
    if w <= 0 or len(frames) == 0:
        return np.zeros(len(frames)), np.ones(len(frames))
    frames = frames - frames.mean(axis=1, keepdims=True)
    nfft = 1 << int(np.ceil(np.log2(frames.shape[1] + w)))
    fx = np.fft.rfft(frames, nfft, axis=1)
    fw = np.fft.rfft(frames[:, :w], nfft, axis=1)
    acf = np.fft.irfft(np.conj(fw) * fx, nfft, axis=1)[:, : tau_max + 1]  # r(tau) = sum x[j] x[j+tau], j < w
    sq = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    e0 = sq[:, w][:, None]
    et = sq[:, taus + w] - sq[:, taus]
    d = np.maximum(e0 + et - 2 * acf, 0.0)
    d[:, 0] = 0.0
    cum = np.cumsum(d[:, 1:], axis=1) / np.arange(1, tau_max + 1)[None, :]
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] / np.maximum(cum, 1e-12)
    f0 = np.zeros(len(frames))
    best = np.ones(len(frames))
    for i, row in enumerate(cmnd):
        seg = row[tau_min : tau_max + 1]
        below = np.flatnonzero(seg < threshold)
        if below.size:
            t = below[0]
            while t + 1 < len(seg) and seg[t + 1] < seg[t]:
                t += 1
        else:
            t = int(np.argmin(seg))
        tau = t + tau_min
        best[i] = row[tau]
        if 0 < tau < tau_max:  # parabolic refinement
            a, b, c = row[tau - 1], row[tau], row[tau + 1]
            den = a - 2 * b + c
            shift = 0.5 * (a - c) / den if abs(den) > 1e-12 else 0.0
        else:
            shift = 0.0
        f0[i] = sr / (tau + float(np.clip(shift, -1, 1)))
    return f0, best


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each True run."""
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(m))
    return list(zip(edges[::2], edges[1::2], strict=True))


_LAST_VOICING: tuple = (None, None)  # (key, track): the last clip's, read-only


def _voicing(x: np.ndarray, sr: int, silence_dbfs: float):  # noqa: ANN202 - tuple of arrays
    """Per 10 ms frame: (energy dB, peak dB, active, F0, voiced), or None for silent audio.

    A clip's audio is tracked twice (the analysis' voiced frames, then its prosody tone): the last
    answer is kept, keyed by a digest of the samples, and given again (arrays read-only)."""
    global _LAST_VOICING
    x = np.ascontiguousarray(x, dtype=np.float64)
    key = (hashlib.blake2b(memoryview(x).cast("B"), digest_size=16).digest(), len(x), sr, silence_dbfs)
    if _LAST_VOICING[0] == key:
        return _LAST_VOICING[1]
    track = _voicing_uncached(x, sr, silence_dbfs)
    if track is not None:
        for a in track:
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
    _LAST_VOICING = (key, track)
    return track


def _voicing_uncached(x: np.ndarray, sr: int, silence_dbfs: float):  # noqa: ANN202
    frames = _frames(x)
    rms = np.sqrt(np.mean(frames**2, axis=1) + 1e-20)
    db = 20 * np.log10(rms + 1e-12)
    peak = float(db.max())
    if peak < silence_dbfs:
        return None
    active = db > max(silence_dbfs, peak - 30.0)
    f0, aperiodicity = yin_f0(frames, sr)
    voiced = active & (aperiodicity < 0.35) & (f0 >= FMIN) & (f0 <= FMAX)
    return db, peak, active, f0, voiced


def voiced_at(audio: np.ndarray, times_s: np.ndarray, *, sr: int = SR, silence_dbfs: float = -55.0,
              window_s: float = 0.1) -> np.ndarray:
    """True at each of ``times_s`` where the speaker's voice is heard within +-``window_s`` (the
    same voicing test as the prosody): the frames where a moving mouth may be speech, not expression."""
    times = np.asarray(times_s, dtype=np.float64)
    x = np.asarray(audio, dtype=np.float64).ravel()
    if len(x) < FRAME or len(times) == 0:
        return np.zeros(len(times), dtype=bool)
    track = _voicing(x, sr, silence_dbfs)
    if track is None:
        return np.zeros(len(times), dtype=bool)
    voiced = track[4]
    centres = (np.arange(len(voiced)) * HOP + FRAME / 2) / sr
    out = np.zeros(len(times), dtype=bool)
    for k, t in enumerate(times):
        near = np.abs(centres - t) <= window_s
        out[k] = bool(voiced[near].any())
    return out


def prosody_features(audio: np.ndarray, sr: int = SR, silence_dbfs: float = -55.0) -> Prosody | None:
    """Prosody of ``audio`` (16 kHz mono float); None when it is silent."""
    x = np.asarray(audio, dtype=np.float64).ravel()
    if sr != SR:
        raise ValueError(f"prosody expects {SR} Hz audio, got {sr}")
    duration = len(x) / sr
    if len(x) == 0:
        return None
    track = _voicing(x, sr, silence_dbfs)
    if track is None:
        return None
    db, peak, active, f0, voiced = track
    active_s = float(active.sum() * HOP / sr)
    voiced_s = float(voiced.sum() * HOP / sr)
    pitch = rng = slope = None
    if voiced.sum() >= 5:
        st = 12 * np.log2(f0[voiced] / 100.0)
        # drop octave jumps: keep frames within 7 semitones of the median
        keep = np.abs(st - np.median(st)) <= 7.0
        st, t = st[keep], (np.flatnonzero(voiced)[keep] * HOP / sr)
        if len(st) >= 5:
            pitch = float(100.0 * 2 ** (np.median(st) / 12))
            rng = float(np.percentile(st, 90) - np.percentile(st, 10))
            slope = float(np.polyfit(t, st, 1)[0]) if np.ptp(t) > 0.2 else 0.0
    # syllable nuclei: smoothed-envelope peaks on voiced frames
    kernel = np.hanning(7)
    env = np.convolve(db, kernel / kernel.sum(), mode="same")
    peaks = 0
    last = -100
    for i in range(1, len(env) - 1):
        if voiced[i] and env[i] >= env[i - 1] and env[i] > env[i + 1] and i - last >= 10:
            lo = max(0, i - 15)
            hi = min(len(env), i + 16)
            if env[i] - max(env[lo:i].min(), env[i + 1 : hi].min()) >= 3.0:
                peaks += 1
                last = i
    rate = peaks / active_s if active_s > 0 else None
    runs = _runs(active)
    gaps = [(b2 - a1) * HOP / sr for (_, a1), (b2, _) in zip(runs[:-1], runs[1:], strict=True)]
    pauses = [g for g in gaps if g >= 0.25]
    pause_s = float(sum(pauses))
    return Prosody(duration_s=duration, active_s=active_s, voiced_s=voiced_s, peak_dbfs=peak,
                   energy_dbfs=float(db[active].mean()) if active.any() else peak, pitch_hz=pitch,
                   pitch_range_st=rng, pitch_slope_st_s=slope, syllable_rate=rate, pauses=len(pauses),
                   pause_ratio=pause_s / (active_s + pause_s) if active_s + pause_s > 0 else 0.0)


def tone_phrase(p: Prosody) -> str:
    """``"speaks loudly and quickly with a rising, lively pitch and frequent pauses"``."""
    loud = "loudly" if p.energy_dbfs > -18 else "softly" if p.energy_dbfs < -34 else None
    rate = None
    if p.syllable_rate is not None:
        rate = "quickly" if p.syllable_rate > 5.0 else "slowly" if p.syllable_rate < 2.5 else None
    how = " and ".join(w for w in (loud, rate) if w) or "at a moderate volume and pace"
    words = []
    if p.pitch_slope_st_s is not None and abs(p.pitch_slope_st_s) >= 1.0:
        words.append("rising" if p.pitch_slope_st_s > 0 else "falling")
    if p.pitch_range_st is not None:
        if p.pitch_range_st >= 8.0:
            words.append("lively" if not (loud == "loudly" or rate == "quickly") else "excited")
        elif p.pitch_range_st <= 3.0:
            words.append("flat")
        else:
            words.append("varied")
    if p.pitch_hz is not None:
        words.append("high" if p.pitch_hz > 250 else "low" if p.pitch_hz < 110 else "")
    words = [w for w in words if w]
    parts = [f"speaks {how}"]
    if words:
        parts.append(f"with a {', '.join(words)} pitch")
    if p.pauses and p.pause_ratio >= 0.25:
        parts.append("and frequent pauses" if len(parts) > 1 else "with frequent pauses")
    elif p.active_s >= 2.0 and p.pauses == 0:
        parts.append("and without pausing" if len(parts) > 1 else "without pausing")
    return " ".join(parts)


def describe_prosody(audio: np.ndarray, sr: int = SR, *, silence_dbfs: float = -55.0) -> ToneResult:
    p = prosody_features(audio, sr, silence_dbfs)
    if p is None:
        return ToneResult(None, None, ["silent_audio"])
    if p.voiced_s < MIN_VOICED_S or p.pitch_hz is None:
        return ToneResult(None, p, ["no_speech_detected"])
    return ToneResult(tone_phrase(p), p, [])


# name -> callable(audio, sr, silence_dbfs=...) -> ToneResult; an audio-LLM describer registers here
DESCRIBERS: dict[str, Callable[..., ToneResult]] = {"prosody": describe_prosody}

__all__ = ["DESCRIBERS", "Prosody", "ToneResult", "VERSION", "describe_prosody", "prosody_features", "tone_phrase",
           "yin_f0"]
