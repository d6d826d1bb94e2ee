"""How the record codec's constants were chosen: keyframe interval K, zstd levels, and
whether a trained dictionary pays for small states.

    python benchmarks/bench_codec.py

Pure CPU and bytes (no disk): encodes the growing-chat workload (one 300-800 byte
message per step) and a small-state workload the way steplog's records do.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import msgspec
import zstandard
from bench import chat_states, next_state, sized_state  # type: ignore[import-not-found]

from steplog import _record


def delta(payload: bytes, base: bytes, level: int) -> bytes:
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(level=level, dict_data=d, write_checksum=True).compress(payload)


def undelta(data: bytes, base: bytes) -> bytes:
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=d).decompress(data)


def chain_costs(payloads: list[bytes], k: int, level: int) -> dict[str, float]:
    full = zstandard.ZstdCompressor(level=3, write_checksum=True)
    sizes, enc = [], 0.0
    records: list[tuple[bool, bytes]] = []
    for i, p in enumerate(payloads):
        t = time.perf_counter()
        if i % k == 0:
            rec = (True, full.compress(p))
        else:
            rec = (False, delta(p, payloads[i - 1], level))
        enc += time.perf_counter() - t
        records.append(rec)
        sizes.append(len(rec[1]))
    # worst-case load: the last record of the last full chain (k - 1 deltas after its
    # keyframe), or of the only chain if there is no full one
    last = max(len(payloads) // k * k - 1, min(k, len(payloads)) - 1)
    start = last - last % k
    t = time.perf_counter()
    for _ in range(5):
        base = zstandard.ZstdDecompressor().decompress(records[start][1])
        for j in range(start + 1, last + 1):
            base = undelta(records[j][1], base)
    worst = (time.perf_counter() - t) / 5
    return {
        "bytes": statistics.mean(sizes),
        "encode_us": enc / len(payloads) * 1e6,
        "worst_load_ms": worst * 1e3,
    }


def stream_costs(payloads: list[bytes], k: int) -> dict[str, float]:
    """steplog's own codec (stream chains) with keyframe interval ``k``."""
    saved = _record.KEYFRAME_INTERVAL, _record.LONG_KEYFRAME_INTERVAL
    _record.KEYFRAME_INTERVAL = _record.LONG_KEYFRAME_INTERVAL = k
    try:
        bodies: list[_record.Body] = []
        t = time.perf_counter()
        for i, p in enumerate(payloads):
            if i == 0:
                body = _record.keyframe(p)
            else:
                prev = bodies[-1]
                body = _record.follow(p, payloads[i - 1], prev.depth, prev.stream, prev.pos)
            bodies.append(body)
        enc = (time.perf_counter() - t) / len(payloads)
    finally:
        _record.KEYFRAME_INTERVAL, _record.LONG_KEYFRAME_INTERVAL = saved
    records = [
        _record.frame(b, seq=i, created_ns=0, status=_record.Status.RUNNING)
        for i, b in enumerate(bodies)
    ]
    heads = [_record.read_header("r", i, r) for i, r in enumerate(records)]
    # worst-case cold load: the deepest record, decoded from its keyframe
    last = max(range(len(records)), key=lambda i: (heads[i].depth, i))
    start = last - heads[last].depth
    t = time.perf_counter()
    for _ in range(5):
        chain = _record.Chain()
        for j in range(start, last + 1):
            chain.decode("r", j, records[j], heads[j], 1 << 30)
    worst = (time.perf_counter() - t) / 5
    return {
        "bytes": statistics.mean(len(r) for r in records),
        "encode_us": enc * 1e6,
        "worst_load_ms": worst * 1e3,
    }


def stream_params(payloads: list[bytes], level: int, min_match: int) -> tuple[float, float]:
    """Bytes and microseconds per record of one stream chain with these match-finder
    settings (tables as steplog's Stream sizes them)."""
    params = _record.stream_params(max(map(len, payloads)), level, min_match)
    best, size = float("inf"), 0
    for _ in range(3):
        cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
        size = 0
        t = time.perf_counter()
        for i, p in enumerate(payloads):
            block = cobj.compress(p) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            size += len(block) if i else 0
        best = min(best, time.perf_counter() - t)
    return size / (len(payloads) - 1), best / len(payloads) * 1e6


def main() -> None:
    workloads = {}
    for nbytes in (2048, 20480):
        state, chain = sized_state(nbytes, 1), []
        for i in range(200):
            state = next_state(state, i)
            chain.append(msgspec.msgpack.encode((None, {}, state)))
        workloads[f"{nbytes // 1024} KiB"] = chain
    states = chat_states(4, 200)
    workloads["chat"] = [msgspec.msgpack.encode((None, {}, s)) for s in states[0]]
    print(
        "stream match finder: B / us per record "
        "(steplog: level 3, min match 6; from 32 KiB states min match 5)"
    )
    for level, min_match in ((3, 5), (3, 6), (5, 5), (5, 6), (6, 6)):
        cells = [
            "{:>6.0f} B {:>5.1f} us".format(*stream_params(chain, level, min_match))
            for chain in workloads.values()
        ]
        print(
            f"level {level} min match {min_match}: "
            + " | ".join(f"{name} {cell}" for name, cell in zip(workloads, cells, strict=True))
        )
    print()

    payloads = [msgspec.msgpack.encode((None, {}, s)) for run in states for s in run][:200]
    print(
        f"growing chat, {len(payloads)} steps, last payload {len(payloads[-1]):,} B, "
        f"full zstd-3 {len(zstandard.ZstdCompressor(level=3).compress(payloads[-1])):,} B"
    )
    print(
        f"{'K':>4} {'delta level':>11} {'B/checkpoint':>13} {'encode us':>10} {'worst load ms':>14}"
    )
    for k in (8, 16, 32, 64):
        for level in (1, 3):
            c = chain_costs(payloads, k, level)
            print(
                f"{k:>4} {level:>11} {c['bytes']:>13,.0f} {c['encode_us']:>10,.0f} "
                f"{c['worst_load_ms']:>14.2f}"
            )

    print("steplog stream chains (codecs 3/4, dictionary deltas where a stream cannot follow)")
    print(f"{'K':>4} {'B/checkpoint':>25} {'encode us':>10} {'worst load ms':>14}")
    for k in (16, 32, 64, 128):
        c = stream_costs(payloads, k)
        print(f"{k:>4} {c['bytes']:>25,.0f} {c['encode_us']:>10,.0f} {c['worst_load_ms']:>14.2f}")
    rng = random.Random(0)
    small: list[Any] = [
        {
            "step": i,
            "node": rng.choice(["plan", "act", "observe"]),
            "ok": rng.random() > 0.1,
            "cost": rng.random(),
            "user": f"user-{rng.randint(0, 50)}",
        }
        for i in range(2000)
    ]
    enc = [msgspec.msgpack.encode((None, {}, s)) for s in small]
    plain = zstandard.ZstdCompressor(level=3)
    trained = zstandard.train_dictionary(4096, enc[:1000])
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=trained)
    raw = statistics.mean(len(e) for e in enc[1000:])
    p = statistics.mean(min(len(e), len(plain.compress(e))) for e in enc[1000:])
    d = statistics.mean(len(with_dict.compress(e)) for e in enc[1000:])
    print(
        f"\nsmall states ({raw:.0f} B msgpack): raw-or-zstd {p:.0f} B, "
        f"trained 4 KiB dictionary {d:.0f} B per record"
    )


if __name__ == "__main__":
    main()
