"""Train the shipped zstd dictionary from synthetic dossier records.

    .venv/bin/python bench/train_dictionary.py [DICT_ID]

Prints a new entry for ``protocol/zstd_dictionaries.py``. Samples come from
the synthetic generator with seeds the tests and benchmarks never use, so the
measured gains are not the dictionary remembering its own test data. Before a
real deployment, retrain on scrubbed records from the field under a new id.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import DossierCreated, StatusChanged, encode_event, validate_dossier
from protocol.events import derive_dossier_id
from tests.support.dossiers import make_dossiers

DICT_SIZE = 32 * 1024
TRAINING_SEEDS = range(9000, 9010)


def samples() -> list[bytes]:
    out = []
    for seed in TRAINING_SEEDS:
        for index, raw in enumerate(make_dossiers(500, seed=seed)):
            dossier = validate_dossier(raw)
            day = dossier["received_at"][2:10].replace("-", "")
            dossier["code"] = f"{10000 + seed:05d}-{day}-{index + 1:04d}"
            dossier["id"] = derive_dossier_id("ag-training", 1, index + 1)
            out.append(encode_event(DossierCreated(dossier, derived_id=True)))
            if index % 5 == 0:
                out.append(encode_event(StatusChanged(dossier["id"], "processing",
                                                      dossier["received_at"], "Cán bộ một cửa")))
    return out


def main() -> None:
    dict_id = int(sys.argv[1], 0) if len(sys.argv) > 1 else 0x8001
    trained = zstandard.train_dictionary(DICT_SIZE, samples(), dict_id=dict_id, level=19)
    packed = zstandard.ZstdCompressor(level=19).compress(trained.as_bytes())
    text = base64.b85encode(packed).decode()
    lines = [text[i:i + 88] for i in range(0, len(text), 88)]
    print(f"    {dict_id:#x}: (")
    for line in lines:
        print(f'        "{line}"')
    print("    ),")


if __name__ == "__main__":
    main()
