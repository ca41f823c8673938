"""What bench/ relies on, without mounting: the emulator's store knob and object list, and the
bench's delaying proxy forwarding requests and bodies intact. No timing is asserted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from omicsfs.emulator import sampledata

CONTENT = "basespace/v1pre3/files/{}/content"


def archive(emulator) -> dict:
    account = sampledata.load(Path(emulator.data_dir) / "basespace")
    return next(f for _, _, f in sampledata.iter_files(account) if f["Path"] == "Archive/reportarchive.bin")


def presigned(emulator, file_id: str) -> str:
    response = httpx.get(f"{emulator.url}/{CONTENT.format(file_id)}", params={"redirect": "meta"},
                         headers={"x-access-token": emulator.token}, timeout=30).raise_for_status()
    return response.json()["Response"]["HrefContent"]


def test_presigned_urls_point_where_the_store_url_knob_says(fresh_emulator):
    item = archive(fresh_emulator)
    assert presigned(fresh_emulator, item["Id"]).startswith(f"{fresh_emulator.url}/store/{item['Id']}?X-Expires=")
    fresh_emulator.knobs(store_url="http://127.0.0.1:9/elsewhere/")
    assert presigned(fresh_emulator, item["Id"]).startswith(f"http://127.0.0.1:9/elsewhere/{item['Id']}?X-Expires=")


def test_the_object_list_names_every_object_with_its_file(fresh_emulator):
    objects = fresh_emulator.objects()
    item = archive(fresh_emulator)
    path = Path(objects[item["Id"]])
    assert hashlib.md5(path.read_bytes()).hexdigest() == item["Md5"]
    account = sampledata.load(Path(fresh_emulator.data_dir) / "basespace")
    assert {f["Id"] for _, _, f in sampledata.iter_files(account)} <= set(objects)
