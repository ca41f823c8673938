"""Seven Bridges API `v2`, as the overview (seed 003) and the public docs describe it, quirks included.

- Every call but `GET /v2/` needs `X-SBG-Auth-Token` (seed: Authentication); otherwise 401 with
  SBG's error body `{"status", "code", "message", "more_info"}`, code 90001 (SBG's status-code
  table, as copied in sbg/biocompute `R/api-status-code.R`).
- Lists answer `{"href", "items", "links"}`; `limit` defaults to 50, at most 100 (400 above), with
  `offset`; the total is the `X-Total-Matching-Query` header, sent when `offset` was given (seed:
  Response pagination). Pages are further capped by `knobs.page_cap`, so a client must page by
  what it received; `links` holds a `next` (and `prev`) link with absolute URLs.
- Lists return a few default fields (`href`, `id`, `name`, ...) unless `fields` asks for more:
  `fields=a,b`, `!a` to drop one, `_all` for everything (seed: Generic query parameters). Single
  resources return every field.
- Every answer carries `X-RateLimit-Limit/Remaining/Reset` (1000 requests a 5-minute window,
  `Reset` a Unix time; public docs). The limit is reported, not enforced: 429s come from the
  knobs' injected failures (`rate_limit_failure`).
- Projects are `owner/short-name`; `GET /v2/projects` lists the user's (owned or shared), not the
  public `admin/sbg-public-data`, which `GET /v2/projects/admin/sbg-public-data` and
  `GET /v2/files?project=admin/sbg-public-data` still serve (seed: Public Reference Files).
- Files: ids are 24 hex digits, per project (seed: Files). `GET /v2/files?project=` lists the
  root, `?parent=<folder id>` a folder, never both (code 5031); items have `type` `file` or
  `folder` (public docs; sevenbridges-python `File`).
- `GET /v2/files/{id}/download_info` answers `{"url"}` only, a presigned URL of the shared store
  (sevenbridges-python `DownloadInfo`): no expiry is stated, so `knobs.url_expiry_skew` has no
  effect here, while `knobs.url_lifetime` does. Folders cannot be downloaded (code 5017).
- `POST /v2/bulk/files/get` `{"file_ids": [...]}` answers `{"items": [{"resource"} | {"error"}]}`
  (sevenbridges-python `File.bulk_get`), at most 100 ids.
- Tasks: UUID ids, `GET /v2/tasks?project=`, `GET /v2/tasks/{id}`; `outputs` maps output ids to
  CWL `File` objects `{"class", "path": <file id>, "name", "secondaryFiles"}` or null (seed: Inputs;
  sevenbridges-python tests' task provider).

Writes (docs.sevenbridges.com's upload and file calls; sevenbridges-python `transfer/upload.py` and
`File`; sevenbridges2 `Upload` and `Part`), checked as strictly as the real service checks them:
- `POST /v2/upload/multipart[?overwrite=true]` `{"project" | "parent", "name", "size", "part_size"}`
  answers the upload (`upload_id`, `part_size`, `initiated`, ...). `size` is optional, as the docs
  say; a `part_size` that is missing or that S3 cannot take (under 5 MiB, over 5 GiB, or more than
  10,000 parts of `size`) is replaced by the service's own, which the answer states. A name already
  taken in the folder is refused (409, 8004) unless `overwrite` is true and the name is a file's.
- `GET /v2/upload/multipart/{id}/part/{n}` answers `{"method", "url", "expires", "headers",
  "success_codes", "report": {"headers": ["ETag"]}}`: a presigned PUT of the shared part store
  (`multipart.PartStore`), valid `knobs.part_url_lifetime` seconds (SBG: about a minute), with
  `expires` in ISO 8601. Part numbers run 1..ceil(size / part_size) (one part for an empty file).
- `POST /v2/upload/multipart/{id}/part` `{"part_number", "response": {"headers": {"ETag"}}}`
  reports a part; `POST .../complete` (optionally `{"parts": [reports]}`, as sevenbridges2 sends)
  assembles the file once every part is there with the ETag the store answered, its parts add up
  to `size` and all but the last are at least 5 MiB (8007 otherwise), and answers the new file;
  `overwrite` deletes the old file then (a new id). `DELETE /v2/upload/multipart/{id}` aborts.
- `POST /v2/files` `{"name", "type": "folder", "project" | "parent"}` creates a folder (409, 5030
  when the name is taken; names starting with `__` are refused, 5024); `DELETE /v2/files/{id}`
  deletes a file or an empty folder (5021 otherwise); `PATCH /v2/files/{id}` `{"name"}` renames a
  file (folders: 5023); `POST /v2/files/{id}/actions/move` `{"parent", "name"}` moves a file to a
  folder of the same project (5015 across projects; folders cannot be moved this way).
- Only members with `write` permission write (403: 5001, 8002); the public project is read-only.
- `GET /v2/files` takes `name` (repeatable) to find files by name, as sevenbridges-python's query.
What is written lives in this process only (the generated data on disk never changes), its bytes
under `written/<pid>/` beside the generated objects, so that a test's emulator leaves nothing behind.

The generated data (under `world.data_dir / "sevenbridges"`, reused when present) is a user
`alice` with a WGS cohort project (FASTQ pairs, a task's BAM/BAI and VCF/TBI in folders, 130
scatter interval lists in one folder, tasks that share a name), a small RNA project, a project
shared by `bob` with an empty folder, and the public reference project.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pysam
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omicsfs.emulator import World, multipart, sampledata

PREFIX = "/sevenbridges"
#: What `omicsfs demo` adds to this platform's table: the public reference project too.
DEMO_SETTINGS = {"public_files": True}
API = "v2"
GENERATOR_VERSION = 1

PUBLIC_PROJECT = "admin/sbg-public-data"
USERNAME = "alice"
DEFAULT_LIMIT, MAX_LIMIT = 50, 100
MAX_BULK = 100
RATE_LIMIT, RATE_WINDOW = 1000, 300
MORE_INFO = "https://docs.sevenbridges.com/reference#api-status-codes"
#: The fields a list returns when `fields` is not given.
LIST_FIELDS = {
    "projects": ("href", "id", "name"),
    "files": ("href", "id", "name", "project", "parent", "type"),
    "tasks": ("href", "id", "name", "project", "status"),
}
SCATTER_COUNT = 130
#: The contigs of `sampledata.reference_genome()`, for the interval lists' headers.
_CONTIGS = (("chr1", 2_000_000), ("chr2", 1_500_000), ("chr3", 1_000_000))


def rate_limit_failure(count: int = 1, reset_in: float = 2.0) -> dict:
    """A knob value for a 429 storm the way Seven Bridges sends it: `X-RateLimit-Reset` a Unix time."""
    return {
        "prefix": PREFIX,
        "status": 429,
        "count": count,
        "headers": {
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time() + reset_in)),
        },
        "body": _error_body(429, 1000, "Rate limit exceeded! Check response headers."),
    }


def _error_body(status: int, code: int, message: str) -> dict:
    return {"status": status, "code": code, "message": message, "more_info": MORE_INFO}


def error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(_error_body(status, code, message), status_code=status)


# -- the generated data --------------------------------------------------------------------------


def generate(data_dir: Path) -> dict:
    """Create (or reuse, when `account.json` was written by this generator version) the data."""
    objects = Path(data_dir) / "objects"
    wanted = {"version": GENERATOR_VERSION}
    return sampledata.generated(
        Path(data_dir) / "account.json", wanted, objects, lambda workdir: _Builder(objects, workdir).build()
    )


def object_path(data_dir: Path, file_id: str) -> Path:
    return Path(data_dir) / "objects" / file_id


def _stamp(moment: datetime) -> str:
    """SBG dates: ISO 8601, whole seconds, UTC with `Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Builder:
    """Writes the objects and describes them the way the API answers (plus `_path` and `_md5`)."""

    def __init__(self, objects: Path, workdir: Path):
        self.objects = objects
        self.workdir = workdir
        self.rng = random.Random("sevenbridges")
        self.projects: list[dict] = []
        self.files: list[dict] = []
        self.tasks: list[dict] = []

    def new_id(self, moment: datetime) -> str:
        """24 hex digits, time first, as the ids in the seed's examples."""
        return f"{int(moment.timestamp()):08x}{self.rng.getrandbits(64):016x}"

    def project(self, pid: str, name: str, description: str, moment: datetime, member: bool = True) -> dict:
        project = {
            "id": pid,
            "name": name,
            "description": description,
            "type": "v2",
            "category": "PUBLIC" if not member else "PRIVATE",
            "billing_group": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "tags": [],
            "settings": {"locked": False, "use_interruptible_instances": True, "use_memoization": False},
            "root_folder": self.new_id(moment),
            "created_by": pid.split("/")[0],
            "created_on": _stamp(moment),
            "modified_on": _stamp(moment),
            "permissions": {"read": True, "copy": True, "write": member, "execute": member, "admin": member},
            "_member": member,
        }
        self.projects.append(project)
        return project

    def folder(self, project: dict, parent: dict | None, name: str, moment: datetime) -> dict:
        folder = self._item(project, parent, name, moment, "folder")
        folder["_path"] = f"{(parent or {}).get('_path', project['id'])}/{name}"
        self.files.append(folder)
        return folder

    def file(self, project: dict, parent: dict | None, name: str, data: bytes | Path, moment: datetime, **extra) -> dict:
        item = self._item(project, parent, name, moment, "file")
        dest = self.objects / item["id"]
        if isinstance(data, Path):
            shutil.move(data, dest)
        else:
            dest.write_bytes(data)
        item.update(
            size=dest.stat().st_size,
            storage={"type": "PLATFORM", "hosted_on_locations": ["aws:us-east-1"]},
            origin={},
            metadata={},
            tags=[],
            _md5=hashlib.md5(dest.read_bytes()).hexdigest(),
            _path=f"{(parent or {}).get('_path', project['id'])}/{name}",
        )
        item.update(extra)
        self.files.append(item)
        return item

    def _item(self, project: dict, parent: dict | None, name: str, moment: datetime, kind: str) -> dict:
        return {
            "id": self.new_id(moment),
            "name": name,
            "type": kind,
            "project": project["id"],
            "parent": (parent or {}).get("id", project["root_folder"]),
            "created_on": _stamp(moment),
            "modified_on": _stamp(moment),
        }

    def later(self, moment: datetime, hours: float) -> datetime:
        return moment + timedelta(seconds=self.rng.randrange(60, int(hours * 3600)))

    # -- the projects --------------------------------------------------------------------------

    def build(self) -> dict:
        reference = sampledata.reference_genome()
        public = self._public_project(reference)
        self._wgs_project(reference, public)
        self._rna_project()
        self._shared_project()
        user = {
            "username": USERNAME,
            "email": "alice.moreau@example.org",
            "first_name": "Alice",
            "last_name": "Moreau",
            "affiliation": "Example Genome Center",
            "phone": "",
            "address": "",
            "city": "Boston",
            "state": "MA",
            "country": "United States",
            "zip_code": "",
            "role": "USER",
            "tags": [],
        }
        return {"user": user, "projects": self.projects, "files": self.files, "tasks": self.tasks}

    def _public_project(self, reference: dict) -> dict:
        moment = datetime(2016, 2, 1, 9, 0, tzinfo=timezone.utc)
        project = self.project(PUBLIC_PROJECT, "SBG Public Data", "Public reference files", moment, member=False)
        fasta = self.workdir / "synthetic_reference.fasta"
        with open(fasta, "w") as out:
            for contig, sequence in reference.items():
                out.write(f">{contig}\n")
                for start in range(0, len(sequence), 60):
                    out.write(sequence[start : start + 60].decode() + "\n")
        pysam.faidx(str(fasta))
        fai = Path(f"{fasta}.fai")
        self.file(project, None, "synthetic_reference.fasta.fai", fai, moment)
        return self.file(project, None, "synthetic_reference.fasta", fasta, moment)

    def _wgs_project(self, reference: dict, fasta: dict) -> None:
        moment = datetime(2024, 3, 4, 15, 12, 40, tzinfo=timezone.utc)
        project = self.project("alice/wgs-cohort", "WGS Cohort 2024", "Germline WGS of the GIAB trio", moment)
        self.file(project, None, "README.md", b"# WGS Cohort 2024\n\nGermline calls for HG002 and HG003.\n", moment)
        samples = ("HG002", "HG003")
        sheet = "sample,fastq_1,fastq_2\n" + "".join(
            f"{s},fastq/{s}_S{n}_L001_R1_001.fastq.gz,fastq/{s}_S{n}_L001_R2_001.fastq.gz\n" for n, s in enumerate(samples, 1)
        )
        self.file(project, None, "samplesheet.csv", sheet.encode(), moment)
        fastq = self.folder(project, None, "fastq", self.later(moment, 2))
        reads = []
        for number, sample in enumerate(samples, start=1):
            uploaded = self.later(moment, 24)
            pair = sampledata.fastq_pair(random.Random(f"sbg:fastq:{sample}"), number)
            for read, text in enumerate(pair, start=1):
                name = f"{sample}_S{number}_L001_R{read}_001.fastq.gz"
                item = self.file(project, fastq, name, gzip.compress(text, compresslevel=6, mtime=0), uploaded,
                                 metadata={"sample_id": sample, "paired_end": str(read), "platform": "ILLUMINA"})
                reads.append(item)
        scatter = self.folder(project, None, "intervals", self.later(moment, 30))
        for index in range(SCATTER_COUNT):
            self.file(project, scatter, f"{index:04d}-scattered.interval_list", _interval_list(index), self.later(moment, 30))
        self._tasks(project, reference, fasta, reads, moment + timedelta(days=6))

    def _tasks(self, project: dict, reference: dict, fasta: dict, reads: list[dict], moment: datetime) -> None:
        app = f"{project['id']}/bwa-gatk-germline/3"
        ref_input = {"class": "File", "path": fasta["id"], "name": fasta["name"]}

        def task(name: str, status: str, created: datetime, sample_reads: list[dict]) -> dict:
            item = {
                "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                "name": name,
                "status": status,
                "description": "BWA-MEM + GATK HaplotypeCaller",
                "project": project["id"],
                "app": app,
                "type": "v2",
                "created_by": USERNAME,
                "executed_by": USERNAME if status != "DRAFT" else None,
                "created_time": _stamp(created),
                "start_time": None,
                "end_time": None,
                "batch": False,
                "errors": [],
                "warnings": [],
                "use_interruptible_instances": True,
                "inputs": {
                    "reads": [{"class": "File", "path": r["id"], "name": r["name"]} for r in sample_reads],
                    "reference": ref_input,
                },
                "outputs": {"aligned_reads": None, "variants": None, "alignment_stats": None},
                "execution_status": {
                    "message": status.title(), "queued": 0, "running": 0, "completed": 0, "failed": 0, "aborted": 0
                },
                "price": {"currency": "USD", "amount": "0.00", "breakdown": {"storage": "0.00", "computation": "0.00"}},
            }
            self.tasks.append(item)
            return item

        first = task("Germline WGS HG002", "FAILED", moment, reads[:2])
        first.update(start_time=_stamp(moment + timedelta(minutes=3)), end_time=_stamp(moment + timedelta(minutes=41)))
        first["execution_status"].update(message="Failed", failed=1, completed=2)
        first["errors"] = [{"message": "bwa-mem: instance ran out of memory"}]
        started = moment + timedelta(hours=2)
        ended = started + timedelta(hours=5, minutes=17)
        second = task("Germline WGS HG002", "COMPLETED", started - timedelta(minutes=4), reads[:2])
        second.update(start_time=_stamp(started), end_time=_stamp(ended))
        second["execution_status"].update(message="Completed", completed=5)
        second["price"].update(amount="3.84", breakdown={"storage": "0.12", "computation": "3.72"})
        task("Germline WGS HG003", "DRAFT", ended + timedelta(days=1), reads[2:])

        origin = {"task": second["id"]}
        bam, bai = sampledata.write_bam(self.workdir, "HG002", reference)
        vcf, tbi = sampledata.write_vcf(self.workdir, "HG002", reference)
        flagstat = pysam.flagstat(str(bam)).encode()
        alignments = self.folder(project, None, "alignments", ended)
        stats = self.folder(project, alignments, "stats", ended)
        variants = self.folder(project, None, "variants", ended)
        outputs = {}
        for output, folder, primary, index in (("aligned_reads", alignments, bam, bai), ("variants", variants, vcf, tbi)):
            index_item = self.file(project, folder, index.name, index, ended, origin=dict(origin))
            item = self.file(project, folder, primary.name, primary, ended, origin=dict(origin))
            outputs[output] = {**_cwl_file(item), "secondaryFiles": [_cwl_file(index_item)]}
        stats_item = self.file(project, stats, "HG002.flagstat.txt", flagstat, ended, origin=dict(origin))
        outputs["alignment_stats"] = _cwl_file(stats_item)
        second["outputs"] = outputs

    def _rna_project(self) -> None:
        moment = datetime(2024, 9, 18, 8, 30, 5, tzinfo=timezone.utc)
        project = self.project("alice/rna-pilot", "RNA pilot", "Pilot RNA-seq of two cell lines", moment)
        self.file(project, None, "design.tsv", b"sample\tcondition\nK562\tcontrol\n", moment)
        raw = self.folder(project, None, "raw", moment)
        pair = sampledata.fastq_pair(random.Random("sbg:fastq:K562"), 1)
        for read, text in enumerate(pair, start=1):
            data = gzip.compress(text, compresslevel=6, mtime=0)
            self.file(project, raw, f"K562_R{read}.fastq.gz", data, self.later(moment, 3))

    def _shared_project(self) -> None:
        moment = datetime(2023, 11, 2, 17, 45, 0, tzinfo=timezone.utc)
        project = self.project("bob/shared-controls", "Shared controls", "Control samples shared with collaborators", moment)
        self.file(project, None, "controls.tsv", b"sample\tsex\tancestry\nNA12878\tF\tCEU\nNA12891\tM\tCEU\n", moment)
        self.folder(project, None, "truth-sets", moment)


def _cwl_file(item: dict) -> dict:
    return {"class": "File", "path": item["id"], "name": item["name"]}


def _interval_list(index: int) -> bytes:
    """A Picard interval list, as GATK SplitIntervals writes one per scatter shard."""
    header = "@HD\tVN:1.6\tSO:coordinate\n" + "".join(f"@SQ\tSN:{contig}\tLN:{length}\n" for contig, length in _CONTIGS)
    width = 4_500_000 // SCATTER_COUNT
    start = index * width
    offset = 0
    for contig, length in _CONTIGS:
        if start < offset + length:
            break
        offset += length
    first = start - offset + 1
    return (header + f"{contig}\t{first}\t{min(length, first + width - 1)}\t+\t.\n").encode()


# -- the API -------------------------------------------------------------------------------------


class Account:
    """The generated data, indexed the way the endpoints look things up."""

    def __init__(self, world: World):
        directory = world.data_dir / "sevenbridges"
        self.data = generate(directory)
        self.user = self.data["user"]
        self.projects = {p["id"]: p for p in self.data["projects"]}
        self.files = {f["id"]: f for f in self.data["files"]}
        self.tasks = {t["id"]: t for t in self.data["tasks"]}
        self.children: dict[str, list[dict]] = {}
        for item in self.data["files"]:
            self.children.setdefault(item["parent"], []).append(item)
            if item["type"] == "file":
                world.objects[item["id"]] = object_path(directory, item["id"])
        self.root_of = {p["root_folder"]: p for p in self.data["projects"]}
        self.world = world
        #: Where the bytes of files written through the API go: this process's own directory,
        #: so that the generated data stays as generated whoever else serves it.
        self.written = directory / "written" / str(os.getpid())
        _remove_stale_written(directory / "written")

    def folder(self, folder_id: str) -> tuple[dict, dict | None] | None:
        """(project, folder item) of a folder id; the item is None for a project's root folder."""
        if folder_id in self.root_of:
            return self.root_of[folder_id], None
        item = self.files.get(folder_id)
        if item is None or item["type"] != "folder":
            return None
        return self.projects[item["project"]], item

    def named(self, folder_id: str, name: str) -> dict | None:
        return next((item for item in self.children.get(folder_id, []) if item["name"] == name), None)

    def add(self, item: dict, path: Path | None = None) -> None:
        self.files[item["id"]] = item
        self.children.setdefault(item["parent"], []).append(item)
        if path is not None:
            self.world.objects[item["id"]] = path

    def remove(self, item: dict) -> None:
        del self.files[item["id"]]
        self.children[item["parent"]].remove(item)
        path = self.world.objects.pop(item["id"], None)
        if path is not None and path.is_relative_to(self.written):  # never the generated data
            path.unlink(missing_ok=True)

    def move(self, item: dict, parent_id: str, name: str) -> None:
        self.children[item["parent"]].remove(item)
        item.update(parent=parent_id, name=name, modified_on=_stamp(datetime.now(timezone.utc)))
        self.children.setdefault(parent_id, []).append(item)

    def new_id(self) -> str:
        """24 hex digits, time first, as the generated ids."""
        return f"{int(time.time()):08x}{random.getrandbits(64):016x}"


def _remove_stale_written(directory: Path) -> None:
    """Drop what emulators that are gone wrote (a directory per process id)."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        try:
            os.kill(int(child.name), 0)
        except ProcessLookupError:
            shutil.rmtree(child, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _public(item: dict) -> dict:
    """The resource as the API shows it: without the generator's own keys."""
    return {key: value for key, value in item.items() if not key.startswith("_")}


def select_fields(item: dict, fields: str | None, defaults: tuple[str, ...] | None) -> dict:
    """Apply `fields` as the seed describes: a list, `!` exclusions, nested `a.b`, or `_all`."""
    if fields is None:
        return {k: v for k, v in item.items() if k in defaults} if defaults else item
    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    if "_all" in wanted:
        return item
    included = [f for f in wanted if not f.startswith("!")]
    excluded = [f[1:] for f in wanted if f.startswith("!")]
    if included:
        selected: dict = {}
        for name in included:
            top, _, nested = name.partition(".")
            if top not in item:
                continue
            if nested and isinstance(item[top], dict):
                if nested in item[top]:
                    selected.setdefault(top, {})[nested] = item[top][nested]
            else:
                selected[top] = item[top]
        selected.setdefault("href", item.get("href"))
    else:
        selected = dict(item) if defaults is None else {k: v for k, v in item.items() if k in defaults}
    for name in excluded:
        top, _, nested = name.partition(".")
        if nested and isinstance(selected.get(top), dict):
            selected[top] = {k: v for k, v in selected[top].items() if k != nested}
        else:
            selected.pop(top, None)
    return selected


def routes(world: World) -> list[Route]:
    account = Account(world)
    window = {"start": time.time(), "count": 0}

    def base(request: Request) -> str:
        return f"{str(request.base_url).rstrip('/')}{PREFIX}/{API}"

    def rate_state() -> tuple[int, int]:
        """Requests left in the current window, and the Unix time the window ends."""
        now = time.time()
        if now - window["start"] >= RATE_WINDOW:
            window["start"], window["count"] = now, 0
        return max(0, RATE_LIMIT - window["count"]), int(window["start"] + RATE_WINDOW)

    def rate_headers() -> dict[str, str]:
        window["count"] += 1
        remaining, reset = rate_state()
        return {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}

    def endpoint(handler, auth: bool = True):
        async def guarded(request: Request) -> Response:
            world.stats.api_requests += 1
            if auth and request.headers.get("x-sbg-auth-token") != world.token:
                response = error(401, 90001, "Unauthorized.")
            else:
                response = await handler(request, **request.path_params)
            response.headers.update(rate_headers())
            return response

        return guarded

    def link(request: Request, rel: str, offset: int, limit: int) -> dict:
        return {"href": str(request.url.include_query_params(offset=offset, limit=limit)), "rel": rel, "method": "GET"}

    def page(request: Request, items: list[dict], kind: str) -> Response:
        query = request.query_params
        try:
            offset = int(query.get("offset", 0))
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return error(400, 90000, "Bad request: offset and limit must be integers.")
        if not 0 < limit <= MAX_LIMIT or offset < 0:
            return error(400, 90000, f"Bad request: limit must be between 1 and {MAX_LIMIT}, offset at least 0.")
        shown = items[offset : offset + min(limit, max(1, world.knobs.page_cap))]
        links = []
        if offset + len(shown) < len(items):
            links.append(link(request, "next", offset + len(shown), limit))
        if offset > 0:
            links.append(link(request, "prev", max(0, offset - limit), limit))
        body = {
            "href": str(request.url),
            "items": [select_fields(item, query.get("fields"), LIST_FIELDS[kind]) for item in shown],
            "links": links,
        }
        headers = {"X-Total-Matching-Query": str(len(items))} if "offset" in query else {}
        return JSONResponse(body, headers=headers)

    def detail(request: Request, item: dict) -> Response:
        return JSONResponse(select_fields(item, request.query_params.get("fields"), None))

    def project_resource(request: Request, project: dict) -> dict:
        return {"href": f"{base(request)}/projects/{project['id']}", **_public(project)}

    def file_resource(request: Request, item: dict) -> dict:
        return {"href": f"{base(request)}/files/{item['id']}", **_public(item)}

    def task_resource(request: Request, task: dict) -> dict:
        return {"href": f"{base(request)}/tasks/{task['id']}", **task}

    async def paths(request):
        root = base(request)
        names = ("user", "users", "projects", "files", "tasks", "apps", "billing", "rate_limit", "upload", "bulk")
        return JSONResponse({f"{name}_url": f"{root}/{name}" for name in names})

    async def user(request):
        return JSONResponse({"href": f"{base(request)}/users/{USERNAME}", **account.user})

    async def rate_limit(request):
        remaining, reset = rate_state()
        rate = {"limit": RATE_LIMIT, "remaining": remaining, "reset": reset}
        return JSONResponse({"rate": rate, "instance_limit": {"limit": 25, "remaining": 25}})

    async def projects(request):
        mine = [project_resource(request, p) for p in account.projects.values() if p["_member"]]
        return page(request, mine, "projects")

    async def project(request, owner, name):
        found = account.projects.get(f"{owner}/{name}")
        if found is None:
            return error(404, 3002, "Requested project or member does not exist.")
        return detail(request, project_resource(request, found))

    async def files(request):
        query = request.query_params
        project_id, parent_id = query.get("project"), query.get("parent")
        if project_id and parent_id:
            return error(400, 5031, "Providing both `parent` and `project` is not allowed.")
        if project_id:
            if "/" not in project_id:
                return error(400, 5005, "Malformed project query parameter. Expecting `?project=owner/project`")
            found = account.projects.get(project_id)
            if found is None:
                return error(404, 3002, "Requested project or member does not exist.")
            parent_id = found["root_folder"]
        elif parent_id:
            folder = account.files.get(parent_id)
            if folder is None and parent_id not in account.root_of:
                return error(404, 5002, "Requested file does not exist.")
            if folder is not None and folder["type"] != "folder":
                return error(400, 5022, "The parent specified is not a folder.")
        else:
            return error(400, 5005, "Malformed project query parameter. Expecting `?project=owner/project`")
        names = query.getlist("name")
        found = [item for item in account.children.get(parent_id, []) if not names or item["name"] in names]
        return page(request, [file_resource(request, item) for item in found], "files")

    async def file(request, fid):
        found = account.files.get(fid)
        if found is None:
            return error(404, 5002, "Requested file does not exist.")
        return detail(request, file_resource(request, found))

    async def download_info(request, fid):
        found = account.files.get(fid)
        if found is None:
            return error(404, 5002, "Requested file does not exist.")
        if found["type"] == "folder":
            return error(400, 5017, "Downloading folders is not supported.")
        url, _ = world.presign(request, fid)
        return JSONResponse({"url": url})

    async def bulk_files(request):
        try:
            ids = (await request.json())["file_ids"]
        except (ValueError, KeyError, TypeError):
            return error(400, 90000, "Bad request: expecting {\"file_ids\": [...]}.")
        if not isinstance(ids, list) or len(ids) > MAX_BULK:
            return error(400, 90000, f"Bad request: at most {MAX_BULK} file ids.")
        items = []
        for fid in ids:
            found = account.files.get(str(fid))
            if found is None:
                items.append({"error": _error_body(404, 5002, "Requested file does not exist.")})
            else:
                items.append({"resource": file_resource(request, found)})
        return JSONResponse({"items": items})

    async def tasks(request):
        query = request.query_params
        found = [t for t in account.tasks.values() if query.get("project") in (None, t["project"])]
        if query.get("status"):
            found = [t for t in found if t["status"] == query["status"]]
        return page(request, [task_resource(request, t) for t in found], "tasks")

    async def task(request, tid):
        found = account.tasks.get(tid)
        if found is None:
            return error(404, 7002, "Requested task does not exist.")
        return detail(request, task_resource(request, found))

    writes = Writes(world, account, file_resource)
    v2 = f"/{API}"
    upload = f"{v2}/upload/multipart"
    return [
        Route(upload, endpoint(writes.init_upload), methods=["POST"]),
        Route(f"{upload}/{{upload_id}}", endpoint(writes.upload_info), methods=["GET"]),
        Route(f"{upload}/{{upload_id}}", endpoint(writes.abort_upload), methods=["DELETE"]),
        Route(f"{upload}/{{upload_id}}/part/{{number}}", endpoint(writes.part_url), methods=["GET"]),
        Route(f"{upload}/{{upload_id}}/part", endpoint(writes.report_part), methods=["POST"]),
        Route(f"{upload}/{{upload_id}}/complete", endpoint(writes.complete_upload), methods=["POST"]),
        Route(f"{v2}/files", endpoint(writes.create_folder), methods=["POST"]),
        Route(f"{v2}/files/{{fid}}", endpoint(writes.delete), methods=["DELETE"]),
        Route(f"{v2}/files/{{fid}}", endpoint(writes.update), methods=["PATCH"]),
        Route(f"{v2}/files/{{fid}}/actions/move", endpoint(writes.move), methods=["POST"]),
        Route(f"{v2}/", endpoint(paths, auth=False)),
        Route(f"{v2}/user", endpoint(user)),
        Route(f"{v2}/rate_limit", endpoint(rate_limit)),
        Route(f"{v2}/projects", endpoint(projects)),
        Route(f"{v2}/projects/{{owner}}/{{name}}", endpoint(project)),
        Route(f"{v2}/files", endpoint(files)),
        Route(f"{v2}/files/{{fid}}", endpoint(file)),
        Route(f"{v2}/files/{{fid}}/download_info", endpoint(download_info)),
        Route(f"{v2}/bulk/files/get", endpoint(bulk_files), methods=["POST"]),
        Route(f"{v2}/tasks", endpoint(tasks)),
        Route(f"{v2}/tasks/{{tid}}", endpoint(task)),
    ]


# -- writes --------------------------------------------------------------------------------------

MAX_PARTS = multipart.MAX_PARTS
MIN_PART, MAX_PART = multipart.S3_MIN_PART, multipart.S3_MAX_PART
MAX_FILE = 5 * 1024**4
MAX_NAME = 255
MiB = 1024 * 1024


@dataclass
class Upload:
    """A multipart upload as the API holds it; its parts are in the shared part store."""

    parts: multipart.Upload
    project: dict
    folder_id: str
    name: str
    size: int | None
    part_size: int
    overwrite: bool
    initiated: str
    #: part number -> the ETag reported for it
    reported: dict[int, str] = field(default_factory=dict)

    @property
    def part_count(self) -> int | None:
        if self.size is None:
            return None
        return max(1, math.ceil(self.size / self.part_size))


def default_part_size(size: int | None) -> int:
    """The service's part size when the client's cannot be used: the smallest whole MiB that fits
    the file in S3's part count, at least S3's minimum."""
    needed = math.ceil((size or 0) / MAX_PARTS / MiB) * MiB
    return max(MIN_PART, needed)


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and "/" not in name and name not in (".", "..")


def _writable(project: dict) -> bool:
    return bool(project.get("_member") and (project.get("permissions") or {}).get("write"))


async def _json_body(request: Request) -> dict | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Writes:
    """The endpoints that change the account: uploads, folders, deletes, renames and moves."""

    def __init__(self, world: World, account: Account, resource):
        self.world = world
        self.account = account
        self.resource = resource
        self.uploads: dict[str, Upload] = {}

    def _target(self, body: dict, code: int) -> tuple[dict, str] | Response:
        """The project and folder id that `project` or `parent` names, or the error to answer."""
        project_id, parent_id = body.get("project"), body.get("parent")
        if project_id and parent_id:
            return error(400, 5031, "Providing both `parent` and `project` is not allowed.")
        if project_id:
            if not isinstance(project_id, str) or "/" not in project_id:
                return error(400, 8010 if code == 8013 else 3012, "Malformed project id. Expecting `owner/project`.")
            project = self.account.projects.get(project_id)
            if project is None:
                return error(404, 3002, "Requested project or member does not exist.")
            return project, project["root_folder"]
        if parent_id:
            found = self.account.folder(str(parent_id))
            if found is None:
                if str(parent_id) in self.account.files:
                    return error(400, 5022, "The parent specified is not a folder.")
                return error(404, 5026, "Destination folder is not found.")
            return found[0], str(parent_id)
        return error(400, code, "Missing `parent` or `project` field.")

    # -- uploads ---------------------------------------------------------------------------------

    async def init_upload(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return error(400, 8013, "Invalid `init` request.")
        target = self._target(body, 8013)
        if isinstance(target, Response):
            return target
        project, folder_id = target
        if not _writable(project):
            return error(403, 8002, "Insufficient privileges to access the requested file.")
        name, size, part_size = body.get("name"), body.get("size"), body.get("part_size")
        if not _valid_name(name):
            return error(400, 5024, "Invalid name parameter. Check the documentation.")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE):
            return error(400, 8013, f"Invalid `init` request: size must be between 0 and {MAX_FILE}.")
        overwrite = request.query_params.get("overwrite", "false").lower() == "true"
        taken = self.account.named(folder_id, name)
        if taken is not None and not (overwrite and taken["type"] == "file"):
            return error(409, 8004, "Requested file already exists.")
        usable = isinstance(part_size, int) and MIN_PART <= part_size <= MAX_PART and (
            size is None or math.ceil(size / part_size) <= MAX_PARTS)
        if not usable:
            part_size = default_part_size(size)
        parts = self.world.parts.create(min_part=MIN_PART, max_part=MAX_PART, max_parts=MAX_PARTS)
        upload = Upload(parts, project, folder_id, name, size, part_size, overwrite, _stamp(datetime.now(timezone.utc)))
        self.uploads[parts.upload_id] = upload
        return JSONResponse(self._upload_resource(request, upload))

    def _upload_resource(self, request: Request, upload: Upload, list_parts: bool = False) -> dict:
        base = f"{str(request.base_url).rstrip('/')}{PREFIX}/{API}"
        resource = {
            "href": f"{base}/upload/multipart/{upload.parts.upload_id}",
            "upload_id": upload.parts.upload_id,
            "project": upload.project["id"],
            "parent": upload.folder_id,
            "name": upload.name,
            "size": upload.size,
            "part_size": upload.part_size,
            "initiated": upload.initiated,
            "parallel_uploads": True,
            "uploaded_parts_count": len(upload.reported),
        }
        if list_parts:
            resource["parts"] = [
                {"part_number": number, "response": {"headers": {"ETag": etag}}} for number, etag in sorted(upload.reported.items())
            ]
        return resource

    def _upload(self, upload_id: str) -> Upload | Response:
        upload = self.uploads.get(upload_id)
        if upload is None or self.world.parts.get(upload_id) is None:
            return error(404, 8003, "Requested upload does not exist.")
        return upload

    def _part_number(self, upload: Upload, value: object) -> int | None:
        try:
            number = int(value)
        except (TypeError, ValueError):
            return None
        highest = upload.part_count or MAX_PARTS
        return number if 1 <= number <= highest and not isinstance(value, bool) else None

    async def upload_info(self, request: Request, upload_id: str) -> Response:
        upload = self._upload(upload_id)
        if isinstance(upload, Response):
            return upload
        list_parts = request.query_params.get("list_parts", "false").lower() == "true"
        return JSONResponse(self._upload_resource(request, upload, list_parts))

    async def part_url(self, request: Request, upload_id: str, number: str) -> Response:
        upload = self._upload(upload_id)
        if isinstance(upload, Response):
            return upload
        part = self._part_number(upload, number)
        if part is None:
            return error(400, 8012, "Part number is missing or invalid.")
        url, expires = self.world.parts.presign_part(request, upload_id, part)
        return JSONResponse({
            "method": "PUT",
            "url": url,
            "expires": _stamp(datetime.fromtimestamp(expires, timezone.utc)),
            "headers": {},
            "success_codes": [200],
            "report": {"headers": ["ETag"], "body": {}},
        })

    async def report_part(self, request: Request, upload_id: str) -> Response:
        upload = self._upload(upload_id)
        if isinstance(upload, Response):
            return upload
        body = await _json_body(request)
        if body is None:
            return error(400, 8014, "Invalid `part` report.")
        number = self._part_number(upload, body.get("part_number"))
        if number is None:
            return error(400, 8012, "Part number is missing or invalid.")
        etag = _reported_etag(body)
        if etag is None:
            return error(400, 8014, "Invalid `part` report.")
        upload.reported[number] = etag
        return Response(status_code=204)

    async def complete_upload(self, request: Request, upload_id: str) -> Response:
        upload = self._upload(upload_id)
        if isinstance(upload, Response):
            return upload
        reported = dict(upload.reported)
        if await request.body():
            body = await _json_body(request)
            if body is None or not isinstance(body.get("parts"), list):
                return error(400, 8015, "Invalid list of parts. Expecting an object with `parts`: [ array of part reports ].")
            reported = {}
            for report in body["parts"]:
                number = self._part_number(upload, report.get("part_number") if isinstance(report, dict) else None)
                etag = _reported_etag(report) if isinstance(report, dict) else None
                if number is None or etag is None:
                    return error(400, 8015, "Invalid list of parts. Expecting an object with `parts`: [ array of part reports ].")
                reported[number] = etag
        refused = self._incomplete(upload, reported)
        if refused:
            return error(400, 8007, f"Failed to complete upload: {refused}")
        taken = self.account.named(upload.folder_id, upload.name)
        if taken is not None and not (upload.overwrite and taken["type"] == "file"):
            return error(409, 8004, "Requested file already exists.")
        file_id = self.account.new_id()
        destination = self.account.written / file_id
        try:
            size, md5 = self.world.parts.complete(upload.parts, sorted(reported.items()), destination)
        except multipart.UploadError as exc:
            return error(400, 8007, f"Failed to complete upload: {exc}")
        del self.uploads[upload_id]
        if taken is not None:
            self.account.remove(taken)  # overwrite: the old file goes, the new one takes its name
        now = _stamp(datetime.now(timezone.utc))
        item = {
            "id": file_id,
            "name": upload.name,
            "type": "file",
            "project": upload.project["id"],
            "parent": upload.folder_id,
            "size": size,
            "created_on": now,
            "modified_on": now,
            "storage": {"type": "PLATFORM", "hosted_on_locations": ["aws:us-east-1"]},
            "origin": {},
            "metadata": {},
            "tags": [],
            "_md5": md5,
        }
        self.account.add(item, destination)
        return JSONResponse(self.resource(request, item))

    def _incomplete(self, upload: Upload, reported: dict[int, str]) -> str:
        """Why the reported parts do not make the file, or "" when they do."""
        held = upload.parts.parts
        if upload.part_count is not None:
            missing = sorted(set(range(1, upload.part_count + 1)) - reported.keys())
            if missing:
                return f"parts {missing[:10]} of {upload.part_count} were not reported"
        elif not reported:
            return "no part was reported"
        for number, etag in reported.items():
            if number not in held or held[number][0] != etag:
                return f"part {number} was not uploaded, or its ETag does not match the one reported"
        total = sum(held[number][1] for number in reported)
        if upload.size is not None and total != upload.size:
            return f"the parts hold {total} bytes, the upload was initialized with size {upload.size}"
        return ""

    async def abort_upload(self, request: Request, upload_id: str) -> Response:
        upload = self._upload(upload_id)
        if isinstance(upload, Response):
            return upload
        self.world.parts.abort(upload.parts)
        del self.uploads[upload_id]
        return Response(status_code=204)

    # -- folders, deletes, renames, moves ----------------------------------------------------------

    async def create_folder(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return error(400, 90009, "An error occurred during the decoding of the request content.")
        if body.get("type") != "folder":
            return error(400, 5012, "Invalid `type` supplied. Allowed values: [folder].")
        name = body.get("name")
        if not _valid_name(name) or name.startswith("__"):
            return error(400, 5024, "Invalid name parameter. Check the documentation.")
        target = self._target(body, 5029)
        if isinstance(target, Response):
            return target
        project, folder_id = target
        if not _writable(project):
            return error(403, 5001, "Insufficient privileges to access the requested file.")
        if self.account.named(folder_id, name) is not None:
            return error(409, 5030, "Requested folder already exists.")
        now = _stamp(datetime.now(timezone.utc))
        item = {"id": self.account.new_id(), "name": name, "type": "folder", "project": project["id"],
                "parent": folder_id, "created_on": now, "modified_on": now}
        self.account.add(item)
        return JSONResponse(self.resource(request, item), status_code=201)

    def _own(self, fid: str) -> dict | Response:
        """The file or folder `fid`, if the user may change it."""
        item = self.account.files.get(fid)
        if item is None:
            return error(404, 5002, "Requested file does not exist.")
        if not _writable(self.account.projects[item["project"]]):
            return error(403, 5001, "Insufficient privileges to access the requested file.")
        return item

    async def delete(self, request: Request, fid: str) -> Response:
        item = self._own(fid)
        if isinstance(item, Response):
            return item
        if item["type"] == "folder" and self.account.children.get(fid):
            return error(400, 5021, "Deleting non-empty folders is not supported.")
        self.account.remove(item)
        return Response(status_code=204)

    async def update(self, request: Request, fid: str) -> Response:
        item = self._own(fid)
        if isinstance(item, Response):
            return item
        if item["type"] == "folder":
            return error(400, 5023, "Updating folder details is not supported.")
        body = await _json_body(request)
        if body is None:
            return error(400, 90009, "An error occurred during the decoding of the request content.")
        if "name" in body and body["name"] != item["name"]:
            if not _valid_name(body["name"]):
                return error(400, 5024, "Invalid name parameter. Check the documentation.")
            if self.account.named(item["parent"], body["name"]) is not None:
                return error(409, 5003, "Requested file already exists.")
            self.account.move(item, item["parent"], body["name"])
        if isinstance(body.get("metadata"), dict):
            item["metadata"] = body["metadata"]
        return JSONResponse(self.resource(request, item))

    async def move(self, request: Request, fid: str) -> Response:
        item = self._own(fid)
        if isinstance(item, Response):
            return item
        if item["type"] == "folder":
            return error(400, 5033, "Moving folders is not supported by this call.")
        body = await _json_body(request)
        if body is None or not body.get("parent"):
            return error(400, 5033, "Invalid request please check the documentation.")
        found = self.account.folder(str(body["parent"]))
        if found is None:
            return error(404, 5026, "Destination folder is not found.")
        project, _ = found
        if project["id"] != item["project"]:
            return error(400, 5015, "Moving files between projects is not supported.")
        name = body.get("name") or item["name"]
        if not _valid_name(name):
            return error(400, 5024, "Invalid name parameter. Check the documentation.")
        taken = self.account.named(str(body["parent"]), name)
        if taken is not None and taken is not item:
            return error(409, 5003, "Requested file already exists.")
        self.account.move(item, str(body["parent"]), name)
        return JSONResponse(self.resource(request, item))


def _reported_etag(report: dict) -> str | None:
    """The ETag of a part report `{"part_number", "response": {"headers": {"ETag"}}}`, unquoted."""
    headers = (report.get("response") or {}).get("headers") if isinstance(report.get("response"), dict) else None
    if not isinstance(headers, dict):
        return None
    etag = next((value for key, value in headers.items() if key.lower() == "etag"), None)
    return etag.strip().strip('"') if isinstance(etag, str) and etag.strip() else None
