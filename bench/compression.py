"""Measure batch compression choices for dossier records and print a table.

    .venv/bin/python bench/compression.py

A record is the msgpack encoding of a ``created`` event map (the dossier gets a
``code``, loses None values, has no ``id``). A batch payload is a msgpack array
of those record bytes (``bin`` values), compressed as a whole (see SPEC.md §13).

Reported per codec:

* bytes per dossier: compressed payload bytes / records, summed over a stream of
  1000 dossiers (seed 1) cut into consecutive batches of each size (so 300 means
  three batches of 300 and one of 100);
* CPU (time.process_time, best of 3): encode records + batch + compress 10,000
  dossiers (seed 2) in batches of 300, and decompress + unpack the batch array;
* the size of each trained dictionary, raw and compressed, to judge shipping it
  in the protocol package.

Dictionaries are trained on records from other seeds (100-109), never on the
measured ones. The generator is narrow (8 procedures, a few dozen names), so
dictionary gains here are an upper bound for real commune data.
"""

from __future__ import annotations

import base64
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.dossiers import make_dossiers

STREAM = 1000
STREAM_SEED = 1
BATCH_SIZES = (1, 5, 10, 50, 100, 300, 1000)
CPU_DOSSIERS = 10_000
CPU_SEED = 2
CPU_BATCH = 300
CPU_REPEAT = 3
TRAIN_SEEDS = range(100, 110)
TRAIN_PER_SEED = 500
DICT_SIZES = (2 * 1024, 8 * 1024, 32 * 1024)
ZDICT_RECORDS = 8
DICT_ID_BASE = 0x8000
UPLINK = 6000  # bytes per second of a 2G uplink
COMMUNE = "02647"
MONTH = "2611"


# --------------------------------------------------------------------------- records

def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def created_events(dossiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wire ``created`` events: a per-day sequential code, no None, no id."""
    per_day: dict[int, int] = {}
    events = []
    for dossier in dossiers:
        day = int(dossier["received_at"][8:10])
        per_day[day] = per_day.get(day, 0) + 1
        body = _drop_none({k: v for k, v in dossier.items() if k != "id"})
        body["code"] = f"{COMMUNE}-{MONTH}{day:02d}-{per_day[day]:04d}"
        events.append({"t": "created", "dossier": body})
    return events


def encode_record(event: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(event, use_bin_type=True))


def encode_batch(records: list[bytes]) -> bytes:
    return bytes(msgpack.packb(records, use_bin_type=True))


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- codecs

@dataclass
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]
    note: str = ""


def zlib_codec(level: int, zdict: bytes | None = None, name: str = "") -> Codec:
    if zdict is None:
        return Codec(name or f"zlib {level}",
                     lambda data: zlib.compress(data, level), zlib.decompress)

    def compress(data: bytes) -> bytes:
        obj = zlib.compressobj(level, zdict=zdict)
        return obj.compress(data) + obj.flush()

    def decompress(data: bytes) -> bytes:
        obj = zlib.decompressobj(zdict=zdict)
        return obj.decompress(data) + obj.flush()

    return Codec(name, compress, decompress)


def zstd_codec(level: int, zdict: zstandard.ZstdCompressionDict | None = None,
               name: str = "", *, lean: bool = False) -> Codec:
    """``lean`` drops the dict id and content size from the frame header (the
    protocol would carry the dictionary id itself)."""
    params: dict[str, Any] = {"level": level}
    if zdict is not None:
        params["dict_data"] = zdict
    if lean:
        params.update(write_dict_id=False, write_content_size=False)
    cctx = zstandard.ZstdCompressor(**params)
    dctx = zstandard.ZstdDecompressor(dict_data=zdict) if zdict else zstandard.ZstdDecompressor()
    # 16 MiB cap: enough for any batch here, needed when the frame omits its size.
    return Codec(name or f"zstd {level}", cctx.compress,
                 lambda data: dctx.decompress(data, max_output_size=16 << 20))


def train_dicts(samples: list[bytes]) -> dict[int, zstandard.ZstdCompressionDict]:
    # Explicit dict ids: a shipped dictionary is versioned by its id. Ids 32768-65535 are
    # the smallest private-use ones (RFC 8878) and cost 2 bytes in every frame header.
    return {size: zstandard.train_dictionary(size, samples, dict_id=DICT_ID_BASE + n)
            for n, size in enumerate(DICT_SIZES)}


def sample_zdict(samples: list[bytes]) -> bytes:
    # zlib matches best against the end of the preset dictionary; put records there.
    return b"".join(samples[:ZDICT_RECORDS])


def build_codecs(dicts: dict[int, zstandard.ZstdCompressionDict], zdict: bytes) -> list[Codec]:
    d8, d32 = dicts[8 * 1024], dicts[32 * 1024]
    codecs = [zlib_codec(level) for level in (1, 6, 9)]
    codecs.append(zlib_codec(9, zdict, f"zlib 9 + zdict {len(zdict)} B ({ZDICT_RECORDS} rec)"))
    # zlib can use any bytes as a preset dictionary, including a zstd-trained one.
    codecs.append(zlib_codec(9, d8.as_bytes(), "zlib 9 + zdict = zstd 8K dict"))
    codecs.append(zlib_codec(9, d32.as_bytes(), "zlib 9 + zdict = zstd 32K dict"))
    codecs += [zstd_codec(level) for level in (3, 9, 15, 19, 22)]
    for size, zd in dicts.items():
        codecs.append(zstd_codec(19, zd, f"zstd 19 + dict {size // 1024}K"))
    codecs.append(zstd_codec(19, d8, "zstd 19 + dict 8K, lean hdr", lean=True))
    codecs += [zstd_codec(level, d8, f"zstd {level} + dict 8K") for level in (3, 9)]
    codecs += [zstd_codec(level, d32, f"zstd {level} + dict 32K") for level in (3, 9, 12)]
    return codecs


# --------------------------------------------------------------------------- measures

def bytes_per_dossier(codec: Codec | None, records: list[bytes], size: int) -> float:
    total = 0
    for batch in chunks(records, size):
        payload = encode_batch(batch)
        if codec is not None:
            packed = codec.compress(payload)
            assert codec.decompress(packed) == payload, codec.name
            payload = packed
        total += len(payload)
    return total / len(records)


def cpu_times(codec: Codec | None, events: list[dict[str, Any]]) -> tuple[float, float]:
    """Best-of-N process time (s): encode+compress, then decompress+unpack."""
    enc_runs, dec_runs = [], []
    for _ in range(CPU_REPEAT):
        started = time.process_time()
        payloads = []
        for batch in chunks(events, CPU_BATCH):
            payload = encode_batch([encode_record(e) for e in batch])
            payloads.append(codec.compress(payload) if codec else payload)
        enc_runs.append(time.process_time() - started)
        started = time.process_time()
        for payload in payloads:
            msgpack.unpackb(codec.decompress(payload) if codec else payload)
        dec_runs.append(time.process_time() - started)
    return min(enc_runs), min(dec_runs)


def one_piece_zstd19(objs: list[Any]) -> float:
    blob = msgpack.packb(objs, use_bin_type=True)
    return len(zstandard.ZstdCompressor(level=19).compress(blob)) / len(objs)


# --------------------------------------------------------------------------- report

def print_table(rows: list[tuple[str, list[float], float, float]], floor: float) -> None:
    sizes = "".join(f"{s:>7}" for s in BATCH_SIZES)
    print(f"{'codec':<36}{sizes}  {'x floor':>7}  {'enc ms':>6}  {'dec ms':>6}")
    print(f"{'':<36}{'bytes per dossier, by batch size':^{7 * len(BATCH_SIZES)}}  "
          f"{'@300':>7}  {'10k/300':>6}  {'10k/300':>6}")
    print("-" * (36 + 7 * len(BATCH_SIZES) + 27))
    at300 = BATCH_SIZES.index(300)
    for name, per_size, enc, dec in rows:
        cells = "".join(f"{v:>7.1f}" for v in per_size)
        print(f"{name:<36}{cells}  {per_size[at300] / floor:>7.2f}  "
              f"{enc * 1000:>6.0f}  {dec * 1000:>6.0f}")


def print_dicts(dicts: dict[int, zstandard.ZstdCompressionDict], zdict: bytes,
                training: list[dict[str, Any]]) -> None:
    """Sizes, and how many training applicants' ID numbers sit verbatim in each."""
    print("\nDictionary sizes (what the protocol package would ship):")
    print(f"{'dictionary':<22}{'id':>8}{'raw':>8}{'zstd 19':>9}{'zlib 9':>8}{'b85(zstd)':>11}"
          f"{'training ID numbers inside':>28}")
    entries = [(f"zstd trained {size // 1024}K", f"{zd.dict_id():#x}", zd.as_bytes())
               for size, zd in dicts.items()]
    entries.append((f"zlib zdict {ZDICT_RECORDS} rec", "-", zdict))
    id_numbers = [e["dossier"]["applicant"]["id_number"].encode() for e in training]
    for name, ident, raw in entries:
        zs = zstandard.ZstdCompressor(level=19).compress(raw)
        leaked = sum(1 for number in id_numbers if number in raw)
        print(f"{name:<22}{ident:>8}{len(raw):>8}{len(zs):>9}"
              f"{len(zlib.compress(raw, 9)):>8}{len(base64.b85encode(zs)):>11}{leaked:>28}")


def print_airtime(rows: list[tuple[str, list[float], float, float]], picks: list[str]) -> None:
    print(f"\nAirtime at {UPLINK} B/s (payload only, no envelope/HTTP/TCP overhead):")
    print(f"{'codec':<36}{'1 dossier':>11}{'5 dossiers':>12}{'300 dossiers':>14}"
          f"{'dossiers/s':>12}")
    i1, i5, i300 = (BATCH_SIZES.index(s) for s in (1, 5, 300))
    for name, per_size, _, _ in rows:
        if name not in picks:
            continue
        print(f"{name:<36}{per_size[i1] / UPLINK * 1000:>9.0f}ms"
              f"{5 * per_size[i5] / UPLINK * 1000:>10.0f}ms"
              f"{300 * per_size[i300] / UPLINK:>13.1f}s"
              f"{UPLINK / per_size[i300]:>12.1f}")


def main() -> None:
    events = created_events(make_dossiers(STREAM, seed=STREAM_SEED))
    records = [encode_record(e) for e in events]
    cpu_events = created_events(make_dossiers(CPU_DOSSIERS, seed=CPU_SEED))
    training_events = [e for seed in TRAIN_SEEDS
                       for e in created_events(make_dossiers(TRAIN_PER_SEED, seed=seed))]
    training = [encode_record(e) for e in training_events]
    assert not set(training) & set(records), "training overlaps the measured records"

    started = time.process_time()
    dicts = train_dicts(training)
    train_s = time.process_time() - started
    zdict = sample_zdict(training)
    floor = one_piece_zstd19(make_dossiers(STREAM, seed=STREAM_SEED))

    print(f"records: {STREAM} (seed {STREAM_SEED}), mean record "
          f"{statistics.mean(map(len, records)):.0f} B; training: {len(training)} records "
          f"(seeds {TRAIN_SEEDS.start}-{TRAIN_SEEDS.stop - 1}), {train_s:.1f} s CPU")
    print(f"FLOOR: {STREAM} dossiers as generated, one msgpack array of maps, zstd 19, "
          f"one piece: {floor:.1f} B/dossier")
    print(f"  same, but our created events (with code) as maps, not bin records: "
          f"{one_piece_zstd19(events):.1f} B/dossier\n")

    rows = []
    for codec in [None, *build_codecs(dicts, zdict)]:
        name = codec.name if codec else "none (msgpack batch)"
        per_size = [bytes_per_dossier(codec, records, s) for s in BATCH_SIZES]
        rows.append((name, per_size, *cpu_times(codec, cpu_events)))
    print_table(rows, floor)
    print("enc ms = encode 10,000 records + batches + compress; dec ms = decompress + unpack "
          "batch array (process_time, best of 3)")
    print_dicts(dicts, zdict, training_events)
    print_airtime(rows, ["zlib 9", "zlib 9 + zdict = zstd 32K dict", "zstd 19",
                         "zstd 19 + dict 32K", "zstd 9 + dict 8K", "zstd 9 + dict 32K",
                         "zstd 12 + dict 32K"])


if __name__ == "__main__":
    main()
