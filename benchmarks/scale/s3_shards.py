"""Epoch reads from object storage (SeaweedFS on 127.0.0.1): Parquet shards vs one object per
utterance, same corpus, same process, same number of fetch threads. Both arms read and decode
every utterance to float32 (what the training stream does before cropping); the server's own
Prometheus counters give the number of S3 requests each arm made.

    .venv/bin/python benchmarks/scale/s3_shards.py [--corpus DIR] [--shard-mb 8] [--threads 8]

Without --corpus a synthetic corpus of 16 x 8 utterances is built (slow: espeak-ng).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speakertune.data.audio import load_audio
from speakertune.data.manifest import read_manifest
from speakertune.data.shards import decode_row, read_shard, write_shards
from speakertune.data.storage import read_bytes
from speakertune.data.synthetic import ensure_synthetic_corpus
from speakertune.testing.s3server import SeaweedS3, free_ports

SR = 16000


def requests(metrics_url: str, bucket: str) -> int:
    """S3 requests the server has answered for ``bucket`` (all types: GET, HEAD, LIST...)."""
    text = urllib.request.urlopen(metrics_url).read().decode()
    head = re.escape(f'SeaweedFS_s3_request_seconds_count{{bucket="{bucket}",')
    pat = re.compile("^" + head + r".*\} (\d+)", re.M)
    return sum(int(n) for n in pat.findall(text))


def per_file(uris: list[str], opts: dict, threads: int, decode: bool = True) -> int:
    def one(uri: str) -> int:
        (load_audio(uri, SR, opts) if decode else read_bytes(uri, opts))
        return 1

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, uris))


def sharded(shards: list[str], opts: dict, threads: int, decode: bool = True) -> int:
    def one(uri: str) -> int:
        df = read_shard(uri, opts)
        for utt, audio in zip(df["utt"], df["audio"]):
            if decode:
                decode_row(audio, SR, utt)
        return len(df)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, shards))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="an existing prepared corpus dir (manifest.parquet)")
    ap.add_argument("--shard-mb", type=float, default=8.0,
                    help="shard size (small corpus here: 8 MB gives several shards)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.corpus) if args.corpus else ensure_synthetic_corpus(
            Path(tmp) / "c", 16, 8, progress=None)
        port = free_ports(1)[0]
        with SeaweedS3(Path(tmp) / "s3", extra_args=(f"-metricsPort={port}",)) as s3:
            metrics = f"http://127.0.0.1:{port}/metrics"
            bucket = s3.make_bucket("bench")
            opts = s3.storage_options
            s3.upload_dir(root / "wav", bucket, "c/wav")
            s3.client().upload_file(str(root / "manifest.parquet"), bucket, "c/manifest.parquet")
            df = read_manifest(f"s3://{bucket}/c/manifest.parquet", opts)
            t0 = time.perf_counter()
            out = write_shards(df, f"s3://{bucket}/c/shards", opts, shard_mb=args.shard_mb)
            pack_s = time.perf_counter() - t0
            uris = df["uri"].tolist()
            per_file(uris[:4], opts, 2)  # warm-up: client, imports
            arms = {"per-file": (per_file, uris, True), "sharded": (sharded, out.files, True),
                    "per-file, read only": (per_file, uris, False),
                    "sharded, read only": (sharded, out.files, False)}  # fmt: skip
            best, reqs = dict.fromkeys(arms, 0.0), {}
            for _ in range(args.rounds):  # interleaved rounds, best of each: shared machine
                for name, (fn, items, decode) in arms.items():
                    before, t0 = requests(metrics, bucket), time.perf_counter()
                    n = fn(items, opts, args.threads, decode)
                    took = time.perf_counter() - t0
                    assert n == len(df), (name, n)
                    reqs[name] = requests(metrics, bucket) - before
                    best[name] = max(best[name], n / took)
    n, mb = len(df), out.bytes / 2**20
    print(f"{n} utterances ({df['duration_s'].sum() / 3600:.2f} h), {len(out.files)} shards "
          f"({mb:.1f} MB FLAC, packed from the bucket in {pack_s:.1f} s), {args.threads} threads, "
          f"best of {args.rounds} rounds")
    for name in best:
        print(f"  {name:>19}: {best[name]:7.1f} utterances/s, {reqs[name]:5d} S3 requests/epoch")
    ratio = best["sharded"] / best["per-file"]
    req_ratio = reqs["per-file"] / max(1, reqs["sharded"])
    io_ratio = best["sharded, read only"] / best["per-file, read only"]
    print(f"ratio sharded/per-file: {ratio:.2f}x utterances/s read + decode, {io_ratio:.2f}x "
          f"read only; {req_ratio:.0f}x fewer requests")
    print("\n| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print("|---|---|---|---|---|")
    print(f"| s3 epoch reads, sharded vs per-file ({n} utts) | {best['sharded']:.1f} utts/s, "
          f"{reqs['sharded']} requests | {best['per-file']:.1f} utts/s, {reqs['per-file']} "
          f"requests | {ratio:.2f}x | read + decode, {args.threads} threads, SeaweedFS on "
          f"localhost, {len(out.files)} shards of <= {args.shard_mb:g} MB |")
    print(f"| s3 epoch reads only (no decode) | {best['sharded, read only']:.1f} utts/s | "
          f"{best['per-file, read only']:.1f} utts/s | {io_ratio:.2f}x | same corpus and server |")


if __name__ == "__main__":
    main()
