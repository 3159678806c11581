"""Helpers shared by the tests and the benchmarks (importable, so neither reaches into the
other through ``sys.path``): a real S3 server (``s3server``), toy voices and a tiny trained
model (``toy_speakers``), and a local Ray for benchmarks on a loaded machine (``local_ray``)."""
