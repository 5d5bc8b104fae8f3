"""Real speech for demos and tests, synthesised by Debian's ``espeak-ng`` (when it is installed).

Speech a real recogniser can transcribe, put on a real face with :func:`emollm.media.write.cut_clip`:
how the demo gets a clip whose subtitle comes from ASR without shipping anyone's recording.

>>> wave, rate = speak("I am so happy to see you today.")   # doctest: +SKIP
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave as wavelib

import numpy as np

from emollm.errors import FixtureError

ESPEAK = "espeak-ng"


def can_speak() -> bool:
    """True when ``espeak-ng`` is on PATH (``apt-get install espeak-ng``)."""
    return shutil.which(ESPEAK) is not None


def speak(text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng: (mono float32 samples in [-1, 1], sample rate)."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise FixtureError("espeak-ng is not installed: no speech can be synthesised",
                           hint="apt-get install espeak-ng")  # fmt: skip
    try:
        done = subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                              capture_output=True, timeout=60, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise FixtureError(f"espeak-ng failed on {text!r}: {e}") from e
    with wavelib.open(io.BytesIO(done.stdout)) as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        raw = wav.readframes(wav.getnframes())
    if width != 2:
        raise FixtureError(f"espeak-ng wrote {8 * width}-bit audio; 16-bit expected")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


__all__ = ["can_speak", "speak"]
