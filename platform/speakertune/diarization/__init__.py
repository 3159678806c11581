"""Speaker diarization: VAD, windowed embeddings, AHC, RTTM and DER."""
