"""espeak-ng text-to-speech through its C API (ctypes), using the library and voice data
shipped in the ``espeakng-loader`` wheel, so no system package is needed."""

from __future__ import annotations

import ctypes

import numpy as np

from speakertune.data.errors import DataError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAMS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Espeak:
    """One espeak-ng engine per process (the C library keeps global state)."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise DataError(f"espeak-ng: initialisation failed (data path {data.decode()})")
        self.sample_rate = int(rate)
        self._lib = lib
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):  # called synchronously from espeak_Synth
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _SynthCallback(collect)  # keep a reference: C holds a raw pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def synth(self, text: str, voice: str, **params: int) -> np.ndarray:
        """Speak ``text`` with ``voice`` (e.g. ``"en-us+f2"``) and parameters ``rate`` (words
        per minute), ``pitch``/``range`` (0-100); returns float32 at ``self.sample_rate``."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise DataError(f"espeak-ng: unknown voice {voice!r}")
        for name, value in params.items():
            self._lib.espeak_SetParameter(_PARAMS[name], int(value), 0)
        self._chunks = []
        raw = text.encode("utf-8")
        err = self._lib.espeak_Synth(
            raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
        )
        if err != 0 or not self._chunks:
            raise DataError(f"espeak-ng: synthesis failed (error {err}) for {text[:40]!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0
