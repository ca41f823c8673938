"""BugSeq API 0.1.0, as its OpenAPI page (seed 000) describes it: jobs and their results, and uploads.

- `GET /v1/users/me` → `UserResponse`.
- `GET /v1/jobs/` (trailing slash: the server is FastAPI, which answers `/v1/jobs` with a 307) with
  `skip` (default 0), `limit` (default 20), and the filters `ids`, `owner_ids`, `lab_ids`,
  `user_provided_name` → `{"job_runs": [...], "has_more": bool}`, newest first. Pages are further
  capped by `knobs.page_cap`, so a client must skip by what it received.
- `GET /v1/jobs/{job_id}/results` → the job's fields (no `results_url`) with `inputs` and `outputs`
  `[{"filename", "size"}]`: `size` may be null, and `outputs` is null until the job has results.
- `GET /v1/jobs/{job_id}/results/download?filename=F` → `{"url": "<presigned store URL>"}` (JSON, not a
  redirect, and no expiry stated; the store URL carries its own `X-Expires`).
- Every schema has `additionalProperties: false`; the emulator is stricter than FastAPI's default,
  which ignores unknown query parameters: it refuses them with 422 `extra_forbidden`, so a client
  sending a misspelt parameter (`offset` for `skip`) fails loudly instead of paging forever.
- Errors as FastAPI sends them: `{"detail": "..."}`, and 422 `HTTPValidationError`
  `{"detail": [{"loc", "msg", "type"}]}` for bad parameters; 401 `{"detail": "Not authenticated"}`
  without a Bearer token, `{"detail": "Could not validate credentials"}` with a wrong one.
- 429s come from the shared failure injection: `rate_limit_failure()` builds one the way a FastAPI
  rate limiter sends it (`Retry-After` in seconds, a `detail` body).

Uploads (the seed's `files` section; every body `additionalProperties: false`, checked as pydantic
checks it: 422 `extra_forbidden`, `missing`, `string_type`, `int_type`, `json_invalid`):
- `POST /v1/files/multipart/init` `{"filename", "s3_region"?}` → `{"id", "presigned_s3_data":
  {"upload_id", "bucket", "key"}}`: an S3 multipart upload of the shared `multipart.PartStore` (S3's
  rules: parts of 5 MiB..5 GiB but the last, numbered 1..10000, `Content-MD5` checked, ETag = MD5).
- `POST /v1/files/multipart/chunk` `{"file_id", "upload_id", "part_number"}` → `{"id",
  "presigned_s3_data": {"url", "method": "PUT", "headers": {}}}`: the store's presigned part URL,
  which lives `knobs.part_url_lifetime` seconds. As boto3 presigns without asking S3, any part number
  is presigned and the store refuses what S3 refuses (0 or above 10000, a finished upload).
- `POST /v1/files/multipart/complete` `{"file_id", "upload_id", "parts": [{"PartNumber", "ETag"}]}` →
  200 `null` (the seed describes no answer). Refused with 400 `{"detail": "<S3 code>: ..."}`: parts
  not numbered 1..n without gaps, out of order, not uploaded or with another ETag, a part but the last
  under 5 MiB; 404 once the upload is completed (as S3's NoSuchUpload).
- `POST /v1/files/singlepart/init` `{"filename", "s3_region"?}` → `{"id", "presigned_s3_data": {"url",
  "method": "PUT", "headers": {"Content-Type": "application/octet-stream"}}}`: one presigned PUT to the
  emulated bucket (`PUT /bugseq/bucket/{file_id}`), whose signature covers that Content-Type, as an
  S3 URL presigned with `ContentType` does (a PUT without it: 403 SignatureDoesNotMatch). The PUT is a
  one-part upload of the `PartStore` (its checks, faults and stats), complete as soon as its part is;
  a PUT again replaces the object, as on S3.
- Both PUTs need a `Content-Length` (411 MissingContentLength otherwise, as S3 answers chunked PUTs).
- There is no endpoint that lists, reads, deletes or aborts uploads. The control endpoint
  `GET /bugseq/_emulator/uploads` shows tests every file the API was told of: `id`, `filename`,
  `s3_region`, `kind`, `status` ("pending", "uploaded"), `size`, `md5` and `path` (its bytes on disk).

Where the seed is silent (invented, and named here so nobody mistakes it for BugSeq's word): job ids
are UUIDs; `job_status` values other than `created` (`running`, `success`, `failed`); `results_url`
points at `app.bugseq.com`; `limit` is at most 100; output filenames may hold `/` (the public
`bugseq-client` README creates parent folders when saving outputs).

The generated account (deterministic, under `world.data_dir / "bugseq"`) is a lab's metagenomic
classification jobs: 25 of them, so the default `limit` of 20 needs two pages; some names are null,
some repeat (two "Wastewater 2024-03", two "Negative control"), one holds a `/`; one job is running
and one only created (outputs null), one failed. Outputs are `report.html`, `classification.tsv`,
`krona.html`, `qc/read_stats.tsv`, and for the two wastewater jobs a sorted BAM + BAI of reads against
the reference and a bgzipped VCF + TBI; several sizes are null in the results answer, one of them
an empty file's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omicsfs.emulator import World, _s3_error
from omicsfs.emulator import multipart, sampledata

PREFIX = "/bugseq"
GENERATOR_VERSION = 1
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

#: Fields of the list item (`JobRunResponse`) and of the results answer (`JobRunResultsResponse`), in the seed's order.
JOB_FIELDS = ("id", "user_provided_name", "owner_id", "created", "end_time", "job_status", "results_url", "org_id",
              "pipeline_version")
RESULTS_FIELDS = ("id", "user_provided_name", "owner_id", "created", "end_time", "job_status", "inputs", "outputs", "org_id",
                  "pipeline_version")
USER_FIELDS = ("id", "email", "first_name", "last_name", "created", "affiliation", "billing_account_id", "pipeline_version",
               "pinned_region", "enabled_features")


def rate_limit_failure(retry_after: int = 1, count: int = 1) -> dict:
    """A knob value for a 429 storm on the BugSeq API."""
    return {
        "prefix": PREFIX,
        "status": 429,
        "count": count,
        "headers": {"Retry-After": str(retry_after)},
        "body": {"detail": "Too Many Requests"},
    }


# -- the generated account -------------------------------------------------------------------------

# (user_provided_name, status, wastewater sample or None); index = position, oldest first.
_JOBS = (
    ("ZymoBIOMICS mock community", "success", None),
    (None, "success", None),
    ("Wastewater 2024-03", "success", "WW-0311"),
    ("Wastewater 2024-03", "success", "WW-0325"),
    ("Sputum TB-0017", "success", None),
    (None, "success", None),
    ("Blood culture BC-0412", "success", None),
    ("CSF meningitis panel", "success", None),
    ("Negative control", "success", None),
    ("Negative control", "success", None),
    (None, "success", None),
    ("Nasal swab NS-22", "success", None),
    ("Urine UTI-108", "success", None),
    ("Run 2024/05 barcode07", "success", None),
    ("Hospital sink biofilm", "success", None),
    (None, "failed", None),
    ("Wound swab WS-3", "success", None),
    ("Wastewater 2024-06", "success", None),
    ("Stool C. diff screen", "success", None),
    ("Tick pool 2024-07", "success", None),
    ("Bronchoalveolar lavage BAL-5", "success", None),
    (None, "success", None),
    ("Isolate KP-ST258", "success", None),
    ("Plasma cfDNA", "running", None),
    ("Sputum TB-0018", "created", None),
)
#: (job index, filename) whose size the results answer leaves null.
_NULL_SIZES = {
    (0, "classification.tsv"),
    (2, "alignment/WW-0311.sorted.bam"),
    (2, "report.html"),
    (3, "variants/WW-0325.vcf.gz.tbi"),
    (3, "warnings.txt"),
    (3, "krona.html"),
    (11, "qc/read_stats.tsv"),
}
_FIRST_DAY = datetime(2024, 2, 19, tzinfo=timezone.utc)  # a job a week: the two 2024-03 ones in March

# NCBI taxonomy ids and names, for classification tables that look like a metagenomic run's.
_TAXA = (
    (562, "Escherichia coli"), (573, "Klebsiella pneumoniae"), (287, "Pseudomonas aeruginosa"),
    (1280, "Staphylococcus aureus"), (1352, "Enterococcus faecium"), (470, "Acinetobacter baumannii"),
    (817, "Bacteroides fragilis"), (1313, "Streptococcus pneumoniae"), (1773, "Mycobacterium tuberculosis"),
    (1496, "Clostridioides difficile"), (727, "Haemophilus influenzae"), (480, "Moraxella catarrhalis"),
    (5476, "Candida albicans"), (853, "Faecalibacterium prausnitzii"), (28197, "Aliarcobacter butzleri"),
    (644, "Aeromonas hydrophila"), (139, "Borreliella burgdorferi"), (2697049, "Severe acute respiratory syndrome coronavirus 2"),
)


def generate(data_dir: Path) -> dict:
    """Create (or reuse, when made by the same GENERATOR_VERSION) the sample account; return its description.

    `jobs.json` describes the user and the jobs as the API shows them, plus for each output its
    object id, real size and md5 (never served); `objects/<id>` holds the bytes.
    """
    objects = Path(data_dir) / "objects"
    return sampledata.generated(Path(data_dir) / "jobs.json", GENERATOR_VERSION, objects, lambda workdir: _build(objects, workdir))


def load(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / "jobs.json").read_text())


def object_path(data_dir: Path, object_id: str) -> Path:
    return Path(data_dir) / "objects" / object_id


def _uuid(seed: str) -> str:
    return str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4))


def _stamp(moment: datetime) -> str:
    """As pydantic v2 writes an aware UTC datetime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _build(objects: Path, workdir: Path) -> dict:
    owner = _uuid("bugseq:user")
    org = _uuid("bugseq:org")
    user = {
        "id": owner,
        "email": "priya.raman@example.org",
        "first_name": "Priya",
        "last_name": "Raman",
        "created": _stamp(datetime(2023, 9, 14, 16, 2, 11, 408000, tzinfo=timezone.utc)),
        "affiliation": "Provincial Public Health Laboratory",
        "billing_account_id": _uuid("bugseq:billing"),
        "pipeline_version": None,
        "pinned_region": None,
        "enabled_features": ["amr", "outbreak_analysis"],
    }
    reference = sampledata.reference_genome()
    jobs = [_job(objects, workdir, reference, index, owner, org, *spec) for index, spec in enumerate(_JOBS)]
    return {"user": user, "jobs": jobs}


def _job(objects: Path, workdir: Path, reference: dict, index: int, owner: str, org: str,
         name: str | None, status: str, sample: str | None) -> dict:
    rng = random.Random(f"bugseq:job:{index}")
    job_id = _uuid(f"bugseq:job-id:{index}")
    created = _FIRST_DAY + timedelta(days=index * 7, seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000))
    finished = status in ("success", "failed")
    end = created + timedelta(seconds=rng.randint(1800, 5 * 3600), microseconds=rng.randrange(1_000_000)) if finished else None
    barcode = f"barcode{rng.randint(1, 24):02d}"
    inputs = [{"filename": f"{barcode}.fastq.gz", "size": None if index % 6 == 5 else rng.randint(40 << 20, 900 << 20)}]
    if index % 5 == 3:
        inputs.append({"filename": f"{barcode}_pass_2.fastq.gz", "size": rng.randint(40 << 20, 400 << 20)})
    outputs = None
    if finished:
        contents = _outputs(rng, workdir, reference, name or job_id, status, sample, index)
        outputs = [_store(objects, job_id, index, filename, data) for filename, data in contents]
    return {
        "id": job_id,
        "user_provided_name": name,
        "owner_id": owner,
        "created": _stamp(created),
        "end_time": _stamp(end) if end else None,
        "job_status": status,
        "results_url": f"https://app.bugseq.com/results/{job_id}",
        "org_id": org if index % 4 == 1 else None,
        "pipeline_version": "latest",
        "lab_id": None,
        "inputs": inputs,
        "outputs": outputs,
    }


def _store(objects: Path, job_id: str, index: int, filename: str, data: bytes | Path) -> dict:
    object_id = "bugseq-" + hashlib.sha1(f"{job_id}/{filename}".encode()).hexdigest()[:20]
    target = objects / object_id
    if isinstance(data, Path):
        shutil.copyfile(data, target)
    else:
        target.write_bytes(data)
    content = target.read_bytes()
    size = len(content)
    return {
        "filename": filename,
        "size": None if (index, filename) in _NULL_SIZES else size,
        "object": object_id,
        "bytes": size,
        "md5": hashlib.md5(content).hexdigest(),
    }


def _outputs(rng: random.Random, workdir: Path, reference: dict, title: str, status: str, sample: str | None,
             index: int) -> list[tuple[str, bytes | Path]]:
    if status == "failed":
        log = "\n".join([
            "[pipeline] read QC: 0 reads passed (min length 200, min mean quality 7)",
            "[pipeline] ERROR: no reads left after quality filtering; was the right kit selected?",
        ])
        return [("pipeline.log", (log + "\n").encode())]
    abundances = _abundances(rng)
    outputs: list[tuple[str, bytes | Path]] = [
        ("report.html", _report(title, abundances)),
        ("classification.tsv", _classification(abundances)),
        ("krona.html", _krona(title, abundances)),
        ("qc/read_stats.tsv", _read_stats(rng)),
    ]
    if sample:
        bam, bai = sampledata.write_bam(workdir, sample, reference)
        vcf, tbi = sampledata.write_vcf(workdir, sample, reference)
        outputs += [
            (f"alignment/{sample}.sorted.bam", bam),
            (f"alignment/{sample}.sorted.bam.bai", bai),
            (f"variants/{sample}.vcf.gz", vcf),
            (f"variants/{sample}.vcf.gz.tbi", tbi),
        ]
    if index == 3:
        outputs.append(("warnings.txt", b""))  # nothing to warn about: an empty output
    return outputs


def _abundances(rng: random.Random) -> list[tuple[int, str, int]]:
    taxa = rng.sample(_TAXA, rng.randint(5, 12))
    return sorted(((taxid, name, int(rng.paretovariate(1.2) * 500)) for taxid, name in taxa), key=lambda t: -t[2])


def _classification(abundances) -> bytes:
    total = sum(reads for _, _, reads in abundances)
    lines = ["taxid\tname\trank\treads\trelative_abundance"]
    lines += [f"{taxid}\t{name}\tspecies\t{reads}\t{reads / total:.5f}" for taxid, name, reads in abundances]
    return ("\n".join(lines) + "\n").encode()


def _report(title: str, abundances) -> bytes:
    rows = "\n".join(f"      <tr><td>{name}</td><td>{taxid}</td><td>{reads}</td></tr>" for taxid, name, reads in abundances)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>BugSeq report: {title}</title></head>
<body>
  <h1>{title}</h1>
  <h2>Organisms detected</h2>
  <table>
    <thead><tr><th>Organism</th><th>Taxonomy ID</th><th>Reads</th></tr></thead>
    <tbody>
{rows}
    </tbody>
  </table>
</body>
</html>
""".encode()


def _krona(title: str, abundances) -> bytes:
    nodes = "\n".join(f'      <node name="{name}"><magnitude><val>{reads}</val></magnitude></node>'
                      for _, name, reads in abundances)
    total = sum(reads for _, _, reads in abundances)
    return f"""<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Krona: {title}</title></head>
<body>
<div style="display:none">
  <krona collapse="true" key="true">
    <attributes magnitude="magnitude"><attribute display="Reads">magnitude</attribute></attributes>
    <datasets><dataset>{title}</dataset></datasets>
    <node name="Root"><magnitude><val>{total}</val></magnitude>
{nodes}
    </node>
  </krona>
</div>
</body>
</html>
""".encode()


def _read_stats(rng: random.Random) -> bytes:
    reads = rng.randint(40_000, 900_000)
    n50 = rng.randint(1_500, 9_000)
    quality = rng.uniform(11, 18)
    return f"metric\tvalue\nreads\t{reads}\nbases\t{reads * n50 // 2}\nread_n50\t{n50}\nmean_quality\t{quality:.1f}\n".encode()


# -- the API ---------------------------------------------------------------------------------------


class Account:
    def __init__(self, world: World):
        directory = world.data_dir / "bugseq"
        data = generate(directory)
        self.user = data["user"]
        # Newest first, as a lab's job list reads.
        self.jobs = sorted(data["jobs"], key=lambda job: job["created"], reverse=True)
        self.by_id = {job["id"]: job for job in self.jobs}
        for job in self.jobs:
            for output in job["outputs"] or []:
                world.objects[output["object"]] = object_path(directory, output["object"])


def _detail(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _invalid(errors: list[dict]) -> JSONResponse:
    return _detail(422, errors)


class _Query:
    """Query parameters checked as FastAPI checks them, with unknown ones forbidden."""

    def __init__(self, request: Request, allowed: set[str]):
        self.params = request.query_params
        self.errors = [
            {"loc": ["query", name], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
            for name in dict.fromkeys(self.params.keys())
            if name not in allowed
        ]

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        text = self.params.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            self._error(name, "Input should be a valid integer, unable to parse string as an integer", "int_parsing")
            return default
        if value < low:
            self._error(name, f"Input should be greater than or equal to {low}", "greater_than_equal")
        elif high is not None and value > high:
            self._error(name, f"Input should be less than or equal to {high}", "less_than_equal")
        return value

    def _error(self, name: str, msg: str, kind: str) -> None:
        self.errors.append({"loc": ["query", name], "msg": msg, "type": kind})

    def required(self, name: str) -> str:
        value = self.params.get(name)
        if value is None:
            self._error(name, "Field required", "missing")
            return ""
        return value


def routes(world: World) -> list[Route]:
    account = Account(world)

    def refused(request: Request) -> JSONResponse | None:
        world.stats.api_requests += 1
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _detail(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})
        if token.strip() != world.token:
            return _detail(401, "Could not validate credentials", {"WWW-Authenticate": "Bearer"})
        return None

    def job_item(job: dict) -> dict:
        return {key: job[key] for key in JOB_FIELDS}

    def results_item(job: dict) -> dict:
        answer = {key: job[key] for key in RESULTS_FIELDS}
        if job["outputs"] is not None:
            answer["outputs"] = [{"filename": o["filename"], "size": o["size"]} for o in job["outputs"]]
        return answer

    async def current_user(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        query = _Query(request, set())
        if query.errors:
            return _invalid(query.errors)
        return JSONResponse({key: account.user[key] for key in USER_FIELDS})

    async def list_jobs(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        query = _Query(request, {"ids", "owner_ids", "lab_ids", "user_provided_name", "skip", "limit"})
        skip = query.integer("skip", 0, 0)
        limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        if query.errors:
            return _invalid(query.errors)
        jobs = account.jobs
        params = request.query_params
        for name, field in (("ids", "id"), ("owner_ids", "owner_id"), ("lab_ids", "lab_id")):
            wanted = params.getlist(name)
            if wanted:
                jobs = [job for job in jobs if job[field] in wanted]
        if "user_provided_name" in params:
            jobs = [job for job in jobs if job["user_provided_name"] == params["user_provided_name"]]
        shown = jobs[skip : skip + min(limit, world.knobs.page_cap)]
        return JSONResponse({"job_runs": [job_item(job) for job in shown], "has_more": skip + len(shown) < len(jobs)})

    async def job_results(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        query = _Query(request, set())
        if query.errors:
            return _invalid(query.errors)
        job = account.by_id.get(request.path_params["job_id"])
        if job is None:
            return _detail(404, "Job not found")
        return JSONResponse(results_item(job))

    async def download(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        query = _Query(request, {"filename"})
        filename = query.required("filename")
        if query.errors:
            return _invalid(query.errors)
        job = account.by_id.get(request.path_params["job_id"])
        if job is None:
            return _detail(404, "Job not found")
        found = next((o for o in job["outputs"] or [] if o["filename"] == filename), None)
        if found is None:
            return _detail(404, f"No result file {filename!r} for this job")
        url, _ = world.presign(request, found["object"])
        return JSONResponse({"url": url})

    return [
        Route("/v1/users/me", current_user),
        Route("/v1/jobs/", list_jobs),
        Route("/v1/jobs/{job_id}/results", job_results),
        Route("/v1/jobs/{job_id}/results/download", download),
        *Uploads(world, account, refused).routes(),
    ]


# -- uploads ---------------------------------------------------------------------------------------

#: The bucket BugSeq's presigned URLs name (invented).
BUCKET = "bugseq-uploads"
#: The Content-Type a single-part upload URL is presigned with: the PUT must send it.
SINGLE_CONTENT_TYPE = "application/octet-stream"
#: Request bodies (pydantic models with `extra="forbid"`): field → (type, required).
FILE_CREATE = {"filename": ("str", True), "s3_region": ("str|null", False)}
CHUNK = {"file_id": ("str", True), "upload_id": ("str", True), "part_number": ("int", True)}
COMPLETE = {"file_id": ("str", True), "upload_id": ("str", True), "parts": ("any", True)}


@dataclass
class UploadedFile:
    """A file the API was told of: `pending` until its bytes are all in the bucket."""

    id: str
    filename: str
    s3_region: str | None
    kind: str  # "singlepart" | "multipart"
    upload_id: str
    key: str
    status: str = "pending"
    size: int | None = None
    md5: str | None = None


class Uploads:
    """BugSeq's `files` endpoints over the shared part store; uploaded bytes under `bugseq/uploaded/`."""

    def __init__(self, world: World, account: Account, refused):
        self.world = world
        self.account = account
        self.refused = refused
        self.files: dict[str, UploadedFile] = {}
        # The record of uploads lives in memory: bytes left by an earlier emulator belong to nobody.
        self.directory = world.data_dir / "bugseq" / "uploaded"
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files/singlepart/init", self.singlepart_init, methods=["POST"]),
            Route("/v1/files/multipart/init", self.multipart_init, methods=["POST"]),
            Route("/v1/files/multipart/chunk", self.chunk, methods=["POST"]),
            Route("/v1/files/multipart/complete", self.complete, methods=["POST"]),
            Route("/bucket/{file_id}", self.put_single, methods=["PUT"]),
            Route("/_emulator/uploads", self.listing),
        ]

    def path(self, file: UploadedFile) -> Path:
        return self.directory / file.id

    async def _request(self, request: Request, schema: dict) -> tuple[dict | None, Response | None]:
        """The checked body, or the answer refusing the request."""
        if (denied := self.refused(request)) is not None:
            return None, denied
        body, errors = _checked_body(await request.body(), schema)
        return (None, _invalid(errors)) if errors else (body, None)

    def _new(self, body: dict, kind: str, upload_id: str) -> UploadedFile:
        file_id = str(uuid.uuid4())
        key = f"{self.account.user['id']}/{file_id}/{body['filename']}"
        file = UploadedFile(file_id, body["filename"], body.get("s3_region"), kind, upload_id, key)
        self.files[file_id] = file
        return file

    def _file(self, body: dict, kind: str) -> UploadedFile | Response:
        """The file a chunk or complete request names, or the answer refusing it."""
        file = self.files.get(body["file_id"])
        if file is None:
            return _detail(404, "File not found")
        if file.kind != kind or body["upload_id"] != file.upload_id:
            return _detail(400, "upload_id does not belong to this file")
        return file

    async def singlepart_init(self, request: Request) -> Response:
        body, refusal = await self._request(request, FILE_CREATE)
        if refusal:
            return refusal
        upload = self.world.parts.create(max_parts=1)
        file = self._new(body, "singlepart", upload.upload_id)
        expires = int(time.time() + self.world.knobs.part_url_lifetime)
        signature = self.world._signature(_single_key(file.id, SINGLE_CONTENT_TYPE), expires)
        url = f"{str(request.base_url).rstrip('/')}{PREFIX}/bucket/{file.id}?X-Expires={expires}&X-Signature={signature}"
        presigned = {"url": url, "method": "PUT", "headers": {"Content-Type": SINGLE_CONTENT_TYPE}}
        return JSONResponse({"id": file.id, "presigned_s3_data": presigned})

    async def put_single(self, request: Request) -> Response:
        """`PUT /bucket/{file_id}`: the presigned single-part upload, signed with its Content-Type."""
        world = self.world
        file_id = request.path_params["file_id"]
        refused = world.verify(_single_key(file_id, request.headers.get("content-type", "")),
                               request.query_params.get("X-Expires", ""), request.query_params.get("X-Signature", ""))
        if refused:
            await multipart._drain(request)
            return _s3_error(403, "SignatureDoesNotMatch" if refused == "SignatureDoesNotMatch" else "AccessDenied", refused)
        if "content-length" not in request.headers:
            await multipart._drain(request)
            return _s3_error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        file = self.files[file_id]  # signed by singlepart_init, so known
        upload = world.parts.get(file.upload_id)
        if upload is None or upload.completed:  # a PUT again replaces the object
            upload = world.parts.create(max_parts=1)
            file.upload_id = upload.upload_id
        answer = await world.parts.receive(request, upload, 1)
        if 1 in upload.parts:  # the bytes are in: the object exists
            file.size, file.md5 = world.parts.complete(upload, [(1, upload.parts[1][0])], self.path(file))
            file.status = "uploaded"
        return answer

    async def multipart_init(self, request: Request) -> Response:
        body, refusal = await self._request(request, FILE_CREATE)
        if refusal:
            return refusal
        upload = self.world.parts.create()
        file = self._new(body, "multipart", upload.upload_id)
        presigned = {"upload_id": upload.upload_id, "bucket": BUCKET, "key": file.key}
        return JSONResponse({"id": file.id, "presigned_s3_data": presigned})

    async def chunk(self, request: Request) -> Response:
        body, refusal = await self._request(request, CHUNK)
        if refusal:
            return refusal
        file = self._file(body, "multipart")
        if isinstance(file, Response):
            return file
        url, _ = self.world.parts.presign_part(request, file.upload_id, body["part_number"])
        return JSONResponse({"id": file.id, "presigned_s3_data": {"url": url, "method": "PUT", "headers": {}}})

    async def complete(self, request: Request) -> Response:
        body, refusal = await self._request(request, COMPLETE)
        if refusal:
            return refusal
        file = self._file(body, "multipart")
        if isinstance(file, Response):
            return file
        parts = body["parts"]
        if not isinstance(parts, list) or not all(_is_part(part) for part in parts):
            return _detail(400, 'MalformedXML: parts must be a list of {"PartNumber": int, "ETag": str}')
        numbers = [part["PartNumber"] for part in parts]
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            return _detail(400, "InvalidPart: parts must be numbered from 1 without gaps")
        upload = self.world.parts.get(file.upload_id)
        if upload is None:
            return _detail(404, "NoSuchUpload: The specified upload does not exist.")
        try:
            file.size, file.md5 = self.world.parts.complete(upload, [(p["PartNumber"], p["ETag"]) for p in parts], self.path(file))
        except multipart.UploadError as exc:
            return _detail(exc.status, f"{exc.code}: {exc}")
        file.status = "uploaded"
        return JSONResponse(None)

    async def listing(self, request: Request) -> Response:
        """The control endpoint: every file the API was told of (no auth: it is the emulator's own)."""
        files = [{**dataclasses.asdict(file), "path": str(self.path(file))} for file in self.files.values()]
        return JSONResponse({"files": files})


def _single_key(file_id: str, content_type: str) -> str:
    """What a single-part upload URL's signature covers: the object and its signed Content-Type."""
    return f"bugseq-single:{file_id}:{content_type}"


def _is_part(part: object) -> bool:
    return (isinstance(part, dict) and set(part) == {"PartNumber", "ETag"} and isinstance(part["ETag"], str)
            and isinstance(part["PartNumber"], int) and not isinstance(part["PartNumber"], bool))


def _checked_body(raw: bytes, schema: dict[str, tuple[str, bool]]) -> tuple[dict, list[dict]]:
    """A JSON body checked against `schema` as pydantic checks a model with `extra="forbid"`:
    the values (lax mode: an integer may come as a string of digits), and the errors."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return {}, [{"type": "json_invalid", "loc": ["body", getattr(exc, "pos", 0)], "msg": "JSON decode error"}]
    if not isinstance(data, dict):
        return {}, [{"type": "model_attributes_type", "loc": ["body"],
                     "msg": "Input should be a valid dictionary or object to extract fields from"}]
    errors = [{"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted"}
              for name in data if name not in schema]
    for name, (kind, required) in schema.items():
        if name not in data:
            if required:
                errors.append({"type": "missing", "loc": ["body", name], "msg": "Field required"})
            continue
        value = data[name]
        if kind == "int" and isinstance(value, str) and value.strip().isdigit():
            data[name] = value = int(value)
        if kind in ("str", "str|null") and not isinstance(value, str) and not (kind == "str|null" and value is None):
            errors.append({"type": "string_type", "loc": ["body", name], "msg": "Input should be a valid string"})
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append({"type": "int_type", "loc": ["body", name], "msg": "Input should be a valid integer"})
    return data, errors
