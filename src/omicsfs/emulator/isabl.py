"""Isabl API v1 (Django REST Framework), as the API reference (seed 004) and isabl_cli describe it.

- Paths (the seed has none): DRF routers' `/{endpoint}/` and `/{endpoint}/{id}/` under the API
  base, e.g. `http://host/api/v1/`. The unslashed spelling answers `301 Moved Permanently` to the
  slashed one with an empty body, as Django's `APPEND_SLASH` (on by default) does. Instances are found by pk, or by
  `system_id` for individuals, samples and experiments (isabl_cli `get_instance`).
- `Authorization: Token <key>` (DRF TokenAuthentication; the key comes from `rest-auth/login/`);
  anything else gets 401 `{"detail": ...}` with `WWW-Authenticate: Token`, as DRF answers.
  `rest-auth/user/` gives the user (isabl_cli checks its token with it). `rest-auth/login/` takes
  the user's `username` and `password` (`PASSWORD`; JSON or a form) and answers `{"key": token}`,
  or 400 `{"non_field_errors": [...]}` as dj-rest-auth does.
- Lists: DRF `LimitOffsetPagination`: `{"count", "next", "previous", "results"}`, `next` and
  `previous` absolute URLs; `limit` (default 100) is further capped by `knobs.page_cap`.
  `ordering` sorts by a field (unknown fields are dropped, as DRF's OrderingFilter does).
- Filters: every other query parameter is a Django lookup over the object's fields and relations
  (seed: "Advanced Lookups", "Related Filters"): `projects=1`, `individual__pk=2`,
  `targets__pk__in=3,4`, `status!=FAILED`, `project_level_analysis__isnull=true`... A related
  object compares by its pk. A field the object does not have answers 400.
- Results (docs.isabl.io "Writing Applications"): an analysis's `results` maps keys to paths,
  strings (MD5s), numbers...; every application has `command_script`, `command_log`,
  `command_err`. Paths live under `storage_url`, laid out `<root>/analyses/12/01/1201` as isabl_cli
  `data._make_storage_directory(use_hash=True)` does; the files are under `data_dir/isabl/storage`.
- Content (seed operations `analyses_download_read`, `analyses_stream_read`):
  `analyses/{id}/download?result=KEY` sends the whole file (HEAD gives its `Content-Length`);
  `analyses/{id}/stream?result=KEY&bytes=START-END` sends bytes START..END inclusive with 206 and
  `Content-Range` (a `Range` header works too), 416 when out of range. A result that is not a
  file (a number, a directory, a path that does not exist) answers 400 or 404.
- 429s (injected through the knobs) look like DRF throttling: `Retry-After` and
  `{"detail": "Request was throttled. Expected available in N seconds."}`.

Stats: API calls count in `api_requests`; content GETs (stream, download) in `store_requests`,
`store_bytes` and `store_ranges`, so benchmarks compare them with the other platforms' stores.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omicsfs.emulator import World, file_response, form_fields, parse_range, sampledata

PREFIX = "/isabl"
API = "/api/v1"
GENERATOR_VERSION = 1
#: The emulated installation's BASE_STORAGE_DIRECTORY (isabl_cli settings).
STORAGE_ROOT = "/data/isabl"
DEFAULT_LIMIT = 100
#: The emulated user's password (the username is the installation's, `analyst`).
PASSWORD = "omicsfs-demo-password"
ENDPOINTS = ("projects", "individuals", "samples", "experiments", "analyses")
#: Query parameters that are not filters (seed: every list's own parameters; isabl_cli adds `format`).
RESERVED = {"limit", "offset", "ordering", "search", "count_limit", "fields", "format"}


def rate_limit_failure(retry_after: int = 1, count: int = 1, prefix: str = PREFIX) -> dict:
    """A knob value for a 429 storm the way DRF throttling sends it."""
    return {
        "prefix": prefix,
        "status": 429,
        "count": count,
        "headers": {"Retry-After": str(retry_after)},
        "body": {"detail": f"Request was throttled. Expected available in {retry_after} second{'s' if retry_after != 1 else ''}."},
    }


def stream_prefix(analysis_pk: int) -> str:
    """The path prefix of one analysis's stream endpoint, for failures injected into reads."""
    return f"{PREFIX}{API}/analyses/{analysis_pk}/stream"


# -- the generated installation -----------------------------------------------------------------

_TIME = "-04:00"  # DRF renders datetimes in the installation's zone (America/New_York in summer)
_CENTER = {"pk": 1, "name": "Example Cancer Center", "acronym": "ECC", "slug": "ecc"}
_PLATFORM = {"pk": 1, "name": "Illumina NovaSeq 6000", "manufacturer": "Illumina", "slug": "illumina-novaseq-6000"}
_DISEASE = {"pk": 1, "name": "Breast Invasive Carcinoma", "acronym": "BRCA", "slug": "brca"}
_TECHNIQUES = {
    "WGS": {"pk": 1, "name": "Whole Genome Sequencing", "slug": "wgs", "method": "WG", "category": "DNA"},
    "TD": {"pk": 2, "name": "Targeted Panel 400 genes", "slug": "td-400", "method": "TD", "category": "DNA"},
}
_ASSEMBLY = {"pk": 1, "name": "GRCh37", "species": "HUMAN"}
_APPLICATIONS = {
    "BWA": {"pk": 11, "name": "BWA-MEM", "version": "0.7.17", "application_class": "brca_apps.apps.BwaMem"},
    "MUTECT": {"pk": 12, "name": "MUTECT2", "version": "4.1.0.0", "application_class": "brca_apps.apps.Mutect2"},
    "QC": {"pk": 13, "name": "COHORT-QC", "version": "1.2.0", "application_class": "brca_apps.apps.CohortQC"},
}
# (pk, title, short_title, description, created); the seed wants short titles of 10-30 characters
_PROJECTS = (
    (1, "Breast cancer tumor-normal whole genomes", "BRCA-WGS-2023", "Matched tumor/normal WGS of a breast cancer cohort", "2023-03-01T09:12:44.482913"),
    (2, "Targeted panel pilot", "PANEL-PILOT-2022", "Pilot of the 400-gene panel", "2022-10-11T15:40:02.100220"),
)
# (individual pk, system_id, identifier, gender, birth year, project pk, sample categories, technique)
_INDIVIDUALS = (
    (1, "ISB_H000001", "BRCA-0001", "FEMALE", 1961, 1, ("TUMOR", "NORMAL"), "WGS"),
    (2, "ISB_H000002", "BRCA-0002", "FEMALE", 1974, 1, ("TUMOR", "NORMAL"), "WGS"),
    (3, "ISB_H000003", "PNL-0001", "MALE", 1958, 2, ("TUMOR",), "TD"),
)


def _stamp(day: str, seconds: int = 0) -> str:
    """A DRF datetime: `day` (ISO, no zone) plus `seconds`, in the installation's zone."""
    moment = datetime.fromisoformat(day) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds") + _TIME


def storage_url(endpoint: str, pk: int) -> str:
    """isabl_cli `_make_storage_directory(use_hash=True)`: 1201 → `<root>/analyses/12/01/1201`."""
    digits = f"{pk:04d}"
    return f"{STORAGE_ROOT}/{endpoint}/{digits[-4:-2]}/{digits[-2:]}/{pk}"


class Installation:
    """The generated Isabl database and its result files, written once under `data_dir/isabl`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.storage = self.directory / "storage"
        data = sampledata.generated(self.directory / "installation.json", GENERATOR_VERSION, self.storage, self._build)
        self.user = data["user"]
        self.tables: dict[str, dict[int, dict]] = {name: {o["pk"]: o for o in data[name]} for name in ENDPOINTS}

    def local_path(self, path: str) -> Path:
        """Where a storage path of the installation lives on the emulator's disk."""
        return self.storage / path.lstrip("/")

    # -- building --------------------------------------------------------------------------

    def _write(self, path: str, content: bytes | Path) -> None:
        target = self.local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.move(content, target)
        else:
            target.write_bytes(content)

    def _build(self, workdir: Path) -> dict:
        reference = sampledata.reference_genome()
        projects = [self._project(*spec) for spec in _PROJECTS]
        individuals, samples, experiments, analyses = [], [], [], []
        for pk, system_id, identifier, gender, birth_year, project_pk, categories, technique in _INDIVIDUALS:
            created = _stamp(projects[project_pk - 1]["created"][:26], 86_400 * pk)
            individuals.append({
                "pk": pk, "model_name": "Individual", "system_id": system_id, "identifier": identifier,
                "species": "HUMAN", "gender": gender, "birth_year": birth_year, "center": _CENTER,
                "storage_url": storage_url("individuals", pk), "storage_usage": None,
                "created": created, "modified": created, "created_by": "admin",
                "custom_fields": {}, "tags": [], "notes": None, "data": {},
            })
            for number, category in enumerate(categories, start=1):
                sample_pk = len(samples) + 1
                sample_id = f"{system_id}_{category[0]}01"
                samples.append({
                    "pk": sample_pk, "model_name": "Sample", "system_id": sample_id,
                    "identifier": f"{identifier}-{category[0]}", "category": category,
                    "individual": pk, "disease": _DISEASE if category == "TUMOR" else None,
                    "collection_days": 0, "storage_url": None, "storage_usage": None,
                    "created": _stamp(created[:26], 3600 * number), "modified": _stamp(created[:26], 3600 * number),
                    "created_by": "admin", "custom_fields": {}, "tags": [], "notes": None, "data": {},
                })
                experiment_pk = len(experiments) + 1
                experiment_id = f"{sample_id}_01_{technique}"
                raw = f"{storage_url('experiments', experiment_pk)}/{experiment_id}"
                experiments.append({
                    "pk": experiment_pk, "model_name": "Experiment", "system_id": experiment_id,
                    "identifier": f"{identifier}-{category[0]}-{technique}", "sample": sample_pk,
                    "technique": _TECHNIQUES[technique], "platform": _PLATFORM, "center": _CENTER,
                    "projects": [project_pk], "aliquot_id": None,
                    "raw_data": [
                        {"file_url": f"{raw}_R{read}.fastq.gz", "file_type": f"FASTQ_R{read}", "file_data": {}}
                        for read in (1, 2)
                    ],
                    "bam_files": {}, "storage_url": storage_url("experiments", experiment_pk), "storage_usage": None,
                    "created": _stamp(created[:26], 7200 * number), "modified": _stamp(created[:26], 7200 * number),
                    "created_by": "admin", "custom_fields": {}, "tags": [], "notes": None, "data": {},
                })
        wgs = [e for e in experiments if e["technique"]["method"] == "WG"]
        for individual in (1, 2):
            tumor, normal = (e for e in wgs if samples[e["sample"] - 1]["individual"] == individual)
            # Normals came with BAMs aligned elsewhere, imported into `bam_files` (isabl_cli
            # `data.update_experiment_bam_file`); tumors are aligned here. (Also: one BAM less to generate.)
            normal["bam_files"]["GRCh37"] = {"url": f"{normal['storage_url']}/{normal['system_id']}.bam", "analysis": None}
            analyses.append(self._alignment(1201 + len(analyses), tumor, reference, workdir))
            dependencies = [analyses[-1]["pk"]]
            analyses.append(self._somatic(1201 + len(analyses), tumor, normal, dependencies, reference, workdir))
        analyses.append(self._cohort_qc(1201 + len(analyses), projects[0], [a for a in analyses if a["application"] == "BWA"], experiments))
        panel = next(e for e in experiments if e["technique"]["method"] == "TD")
        analyses.append(self._failed(1201 + len(analyses), panel))
        user = {"pk": 7, "username": "analyst", "email": "analyst@example.org", "first_name": "Ada", "last_name": "Lovelace"}
        return {"user": user, "projects": projects, "individuals": individuals, "samples": samples,
                "experiments": experiments, "analyses": analyses}

    def _project(self, pk: int, title: str, short_title: str, description: str, created: str) -> dict:
        return {
            "pk": pk, "model_name": "Project", "title": title, "short_title": short_title, "description": description,
            "principal_investigator": "pi@example.org", "analyst": "analyst@example.org",
            "coordinator": "coordinator@example.org", "owner": "owner@example.org", "group": None,
            "storage_url": storage_url("projects", pk), "storage_usage": None,
            "created": _stamp(created), "modified": _stamp(created, 600), "created_by": "admin",
            "custom_fields": {}, "tags": [], "notes": None, "data": {},
        }

    def _analysis(self, pk: int, application: str, targets: list[int], references: list[int], results: dict,
                  started: str, status: str = "SUCCEEDED", project: int | None = None, dependencies: list[int] = ()) -> dict:
        url = storage_url("analyses", pk)
        usage = sum(self.local_path(v).stat().st_size for v in results.values()
                    if isinstance(v, str) and self.local_path(v).is_file())
        return {
            "pk": pk, "model_name": "Analysis", "application": application, "status": status,
            "previous_status": "STARTED", "targets": targets, "references": references,
            "analyses": list(dependencies), "project_level_analysis": project, "individual_level_analysis": None,
            "results": results, "storage_url": url, "storage_usage": usage, "ran_by": "isabl",
            "created": _stamp(started, -900), "modified": _stamp(started, 4000), "submitted": _stamp(started, -600),
            "started": _stamp(started), "finished": _stamp(started, 3600), "run_time": 3600.0, "wait_time": 600.0,
            "created_by": "analyst", "custom_fields": {}, "tags": [], "notes": None, "data": {},
        }

    def _commands(self, url: str, script: str, log: str, err: str = "") -> dict:
        """The three results every Isabl application has (docs.isabl.io, Writing Applications)."""
        files = {"command_script": ("head_job.sh", script), "command_log": ("head_job.log", log), "command_err": ("head_job.err", err)}
        for name, content in files.values():
            self._write(f"{url}/{name}", content.encode())
        return {key: f"{url}/{name}" for key, (name, _) in files.items()}

    def _alignment(self, pk: int, experiment: dict, reference: dict, workdir: Path) -> dict:
        url, name = storage_url("analyses", pk), experiment["system_id"]
        here = workdir / f"bwa-{pk}"
        here.mkdir()
        bam, bai = sampledata.write_bam(here, name, reference)
        self._write(f"{url}/{name}.bam", bam)
        self._write(f"{url}/{name}.bam.bai", bai)
        fastqs = " ".join(raw["file_url"] for raw in experiment["raw_data"])
        script = (f"#!/bin/bash\nset -euo pipefail\ncd {url}\n"
                  f"bwa mem -t 16 -R '@RG\\tID:{name}\\tSM:{name}' {STORAGE_ROOT}/assemblies/GRCh37/genome.fa {fastqs} \\\n"
                  f"  | samtools sort -@ 4 -o {name}.bam -\nsamtools index {name}.bam\n")
        log = "[M::bwa_idx_load_from_disk] read 0 ALT contigs\n[main] Version: 0.7.17-r1188\n[main] Real time: 3512.201 sec\n"
        results = self._commands(url, script, log)
        results.update({
            "bam": f"{url}/{name}.bam",
            "bai": f"{url}/{name}.bam.bai",
            "bam_md5": hashlib.md5(self.local_path(f"{url}/{name}.bam").read_bytes()).hexdigest(),
            "mapped_reads": 72000,
        })
        experiment["bam_files"]["GRCh37"] = {"url": results["bam"], "analysis": pk}
        return self._analysis(pk, "BWA", [experiment["pk"]], [], results, f"2023-04-{pk - 1190:02d}T08:00:00.000000")

    def _somatic(self, pk: int, tumor: dict, normal: dict, dependencies: list[int], reference: dict, workdir: Path) -> dict:
        url = storage_url("analyses", pk)
        pair = f"{tumor['system_id']}_vs_{normal['system_id']}"
        here = workdir / f"mutect-{pk}"
        here.mkdir()
        vcf, tbi = sampledata.write_vcf(here, tumor["system_id"], reference)
        self._write(f"{url}/{pair}.somatic.vcf.gz", vcf)
        self._write(f"{url}/{pair}.somatic.vcf.gz.tbi", tbi)
        self._write(f"{url}/{pair}.somatic.vcf.gz.stats", b"statistic\tvalue\ncallable\t4.4E+06\n")
        script = (f"#!/bin/bash\nset -euo pipefail\ncd {url}\n"
                  f"gatk Mutect2 -R {STORAGE_ROOT}/assemblies/GRCh37/genome.fa -I {tumor['bam_files']['GRCh37']['url']} "
                  f"-I {normal['bam_files']['GRCh37']['url']} -normal {normal['system_id']} -O {pair}.somatic.vcf.gz\n")
        results = self._commands(url, script, "Tool returned:\nSUCCESS\n")
        results.update({
            "vcf": f"{url}/{pair}.somatic.vcf.gz",
            "tbi": f"{url}/{pair}.somatic.vcf.gz.tbi",
            "stats": f"{url}/{pair}.somatic.vcf.gz.stats",
            "n_variants": 3000,
        })
        return self._analysis(pk, "MUTECT", [tumor["pk"]], [normal["pk"]], results, f"2023-05-{pk - 1200:02d}T10:30:00.000000",
                              dependencies=dependencies)

    def _cohort_qc(self, pk: int, project: dict, alignments: list[dict], experiments: list[dict]) -> dict:
        """A project-level analysis; two results share a file name, one names a directory, one a missing file."""
        url = storage_url("analyses", pk)
        names = [experiments[a["targets"][0] - 1]["system_id"] for a in alignments]
        rows = "".join(f"<tr><td>{n}</td><td>72000</td><td>0.98</td></tr>\n" for n in names)
        self._write(f"{url}/cohort_qc.html", (
            f"<html><head><title>{project['short_title']} QC</title></head><body>\n<table>\n"
            f"<tr><th>experiment</th><th>reads</th><th>mapped</th></tr>\n{rows}</table>\n</body></html>\n").encode())
        self._write(f"{url}/coverage/summary.tsv", ("experiment\tmean_coverage\n" + "".join(f"{n}\t0.61\n" for n in names)).encode())
        self._write(f"{url}/qc/summary.tsv", ("experiment\tduplicates\n" + "".join(f"{n}\t0.012\n" for n in names)).encode())
        results = self._commands(url, f"#!/bin/bash\ncohort_qc --project {project['pk']} --outdir {url}\n", f"cohort_qc: {len(names)} experiments\n")
        results.update({
            "report": f"{url}/cohort_qc.html",
            "coverage_summary": f"{url}/coverage/summary.tsv",
            "qc_summary": f"{url}/qc/summary.tsv",
            "outdir": url,  # a directory: not a file
            "plots": f"{url}/plots.pdf",  # declared by the application, never written
            "n_experiments": len(names),
        })
        return self._analysis(pk, "QC", [], [], results, "2023-06-02T12:00:00.000000", project=project["pk"],
                              dependencies=[a["pk"] for a in alignments])

    def _failed(self, pk: int, experiment: dict) -> dict:
        url = storage_url("analyses", pk)
        err = "[E::bwa_idx_load_from_disk] fail to locate the index files\n"
        results = self._commands(url, f"#!/bin/bash\ncd {url}\nbwa mem ...\n", "", err)
        return self._analysis(pk, "BWA", [experiment["pk"]], [], results, "2022-11-03T09:00:00.000000", status="FAILED")


# -- what the API answers -----------------------------------------------------------------------


class Views:
    """The installation as the API serializes it: nested objects, and the records filters see."""

    def __init__(self, installation: Installation):
        self.db = installation
        self.t = installation.tables

    def project(self, pk: int, compact: bool = False) -> dict:
        project = self.t["projects"][pk]
        if compact:
            return {key: project[key] for key in ("pk", "title", "short_title", "storage_url", "model_name")}
        return dict(project)

    def individual(self, pk: int, compact: bool = False) -> dict:
        individual = self.t["individuals"][pk]
        if compact:
            return {key: individual[key] for key in ("pk", "system_id", "identifier", "species", "gender", "model_name")}
        return dict(individual)

    def sample(self, pk: int, compact: bool = False) -> dict:
        sample = dict(self.t["samples"][pk])
        sample["individual"] = self.individual(sample["individual"], compact=True)
        if compact:
            return {key: sample[key] for key in ("pk", "system_id", "identifier", "category", "individual", "model_name")}
        return sample

    def experiment(self, pk: int, compact: bool = False) -> dict:
        experiment = dict(self.t["experiments"][pk])
        experiment["sample"] = self.sample(experiment["sample"], compact=True)
        experiment["projects"] = [self.project(p, compact=True) for p in experiment["projects"]]
        if compact:
            keys = ("pk", "system_id", "identifier", "sample", "technique", "projects", "bam_files", "model_name")
            return {key: experiment[key] for key in keys}
        return experiment

    def analysis(self, pk: int) -> dict:
        analysis = dict(self.t["analyses"][pk])
        application = _APPLICATIONS[analysis["application"]]
        analysis["application"] = {**application, "assembly": _ASSEMBLY, "model_name": "Application"}
        analysis["targets"] = [self.experiment(e, compact=True) for e in analysis["targets"]]
        analysis["references"] = [self.experiment(e, compact=True) for e in analysis["references"]]
        project = analysis["project_level_analysis"]
        analysis["project_level_analysis"] = self.project(project, compact=True) if project else None
        return analysis

    def serialize(self, endpoint: str, pk: int) -> dict:
        return getattr(self, endpoint[:-1] if endpoint != "analyses" else "analysis")(pk)

    # -- records for filters: the answer plus the relations the seed filters by -----------------

    def _experiments_of_sample(self, sample_pk: int) -> list[dict]:
        return [e for e in self.t["experiments"].values() if e["sample"] == sample_pk]

    def record(self, endpoint: str, pk: int) -> dict:
        answer = self.serialize(endpoint, pk)
        if endpoint == "individuals":
            samples = [s for s in self.t["samples"].values() if s["individual"] == pk]
            experiments = [e for s in samples for e in self._experiments_of_sample(s["pk"])]
            answer["samples"] = [self.sample(s["pk"], compact=True) for s in samples]
            answer["experiments"] = [self.experiment(e["pk"], compact=True) for e in experiments]
            answer["projects"] = [self.project(p, compact=True) for p in sorted({p for e in experiments for p in e["projects"]})]
        elif endpoint == "samples":
            experiments = self._experiments_of_sample(pk)
            answer["experiments"] = [self.experiment(e["pk"], compact=True) for e in experiments]
            answer["projects"] = [self.project(p, compact=True) for p in sorted({p for e in experiments for p in e["projects"]})]
        elif endpoint == "experiments":
            answer["individual"] = answer["sample"]["individual"]
        elif endpoint == "analyses":
            answer["projects"] = [p for e in answer["targets"] for p in e["projects"]]
            answer["name"] = answer["application"]["name"]  # seed: `name` filters by application__name
            answer["version"] = answer["application"]["version"]
        return answer


class InvalidFilter(ValueError):
    pass


_LOOKUPS = {"exact", "iexact", "contains", "icontains", "startswith", "istartswith", "endswith", "iendswith",
            "in", "isnull", "regex", "gt", "gte", "lt", "lte"}


def _resolve(record: dict, parts: list[str]) -> list:
    """The values `a__b__c` reaches, through nested objects and lists of them."""
    values: list = [record]
    for part in parts:
        reached = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if item is None:
                    reached.append(None)
                elif isinstance(item, dict):
                    if part not in item:
                        raise InvalidFilter(part)
                    reached.append(item[part])
                else:
                    raise InvalidFilter(part)
        values = reached
    leaves = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            leaves.append(item.get("pk") if isinstance(item, dict) else item)  # a related object: its pk
    return leaves


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _compare(leaf, lookup: str, wanted: str) -> bool:
    if lookup == "isnull":
        return (leaf is None) == (wanted.lower() in ("true", "1"))
    if leaf is None:
        return False
    text = _text(leaf)
    if lookup in ("gt", "gte", "lt", "lte"):
        try:
            left, right = float(leaf), float(wanted)
        except (TypeError, ValueError):
            left, right = text, wanted
        return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[lookup]
    if lookup in ("iexact", "icontains", "istartswith", "iendswith"):
        text, wanted, lookup = text.lower(), wanted.lower(), lookup[1:]
    return {
        "exact": lambda: text == wanted,
        "contains": lambda: wanted in text,
        "startswith": lambda: text.startswith(wanted),
        "endswith": lambda: text.endswith(wanted),
        "in": lambda: text in wanted.split(","),
        "regex": lambda: re.search(wanted, text) is not None,
    }[lookup]()


def matches(record: dict, key: str, wanted: str) -> bool:
    """Whether `record` passes the Django-style filter `key=wanted` (`key!` negates, seed)."""
    negate = key.endswith("!")
    parts = key.rstrip("!").split("__")
    lookup = parts.pop() if len(parts) > 1 and parts[-1] in _LOOKUPS else "exact"
    hit = any(_compare(leaf, lookup, wanted) for leaf in _resolve(record, parts))
    return hit != negate


def routes(world: World) -> list[Route]:
    installation = Installation(world.data_dir / "isabl")
    views = Views(installation)

    def token_ok(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "token" and key.strip() == world.token

    def unauthorized(request: Request) -> JSONResponse:
        detail = "Invalid token." if request.headers.get("authorization") else "Authentication credentials were not provided."
        return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Token"})

    def not_found() -> JSONResponse:
        return JSONResponse({"detail": "Not found."}, status_code=404)

    def api(handler):
        async def guarded(request: Request) -> Response:
            world.stats.api_requests += 1
            if not token_ok(request):
                return unauthorized(request)
            return handler(request, **request.path_params)

        return guarded

    def find(endpoint: str, identifier: str) -> int | None:
        table = installation.tables[endpoint]
        if identifier.isdigit():
            return int(identifier) if int(identifier) in table else None
        if endpoint in ("individuals", "samples", "experiments"):
            return next((pk for pk, o in table.items() if o["system_id"] == identifier), None)
        return None

    def page(request: Request, endpoint: str) -> JSONResponse:
        query = request.query_params
        try:
            records = [views.record(endpoint, pk) for pk in installation.tables[endpoint]]
            for key, wanted in query.multi_items():
                if key not in RESERVED:
                    records = [r for r in records if matches(r, key, wanted)]
        except InvalidFilter as exc:
            return JSONResponse({"detail": f"Invalid filter: cannot resolve '{exc}' on {endpoint}."}, status_code=400)
        if query.get("search"):
            records = [r for r in records if query["search"].lower() in json.dumps(r).lower()]
        fields = {"id", *(records[0] if records else {})}  # unknown fields are dropped, as DRF's OrderingFilter does
        ordering = [f for f in query.get("ordering", "").split(",") if f.lstrip("-") in fields]
        for field in reversed(ordering or ["pk"]):
            name = "pk" if field.lstrip("-") == "id" else field.lstrip("-")
            records.sort(key=lambda r: (r.get(name) is None, str(r.get(name)) if not isinstance(r.get(name), int) else r.get(name)),
                         reverse=field.startswith("-"))
        limit, offset = _positive(query.get("limit"), DEFAULT_LIMIT), _positive(query.get("offset"), 0, strict=False)
        limit = min(limit, max(1, world.knobs.page_cap))
        shown = [views.serialize(endpoint, r["pk"]) for r in records[offset : offset + limit]]
        if query.get("fields"):
            wanted = set(query["fields"].split(",")) | {"pk"}
            shown = [{k: v for k, v in item.items() if k in wanted} for item in shown]
        return JSONResponse({
            "count": len(records),
            "next": _page_url(request, limit, offset + limit) if offset + limit < len(records) else None,
            "previous": _page_url(request, limit, max(0, offset - limit)) if offset > 0 else None,
            "results": shown,
        })

    def lister(endpoint: str):
        return api(lambda request: page(request, endpoint))

    def detail(endpoint: str):
        def handler(request: Request, identifier: str) -> Response:
            pk = find(endpoint, identifier)
            return JSONResponse(views.serialize(endpoint, pk)) if pk is not None else not_found()

        return api(handler)

    @api
    def current_user(request: Request) -> Response:
        return JSONResponse(installation.user)

    async def log_in(request: Request) -> Response:
        world.stats.api_requests += 1
        if request.headers.get("content-type", "").startswith("application/json"):
            credentials = await request.json()
        else:
            credentials = await form_fields(request)
        if not isinstance(credentials, dict) or (credentials.get("username"), credentials.get("password")) != (
            installation.user["username"], PASSWORD
        ):
            return JSONResponse({"non_field_errors": ["Unable to log in with provided credentials."]}, status_code=400)
        return JSONResponse({"key": world.token})

    def result_file(request: Request, identifier: str) -> tuple[Path, str] | Response:
        """The file behind `?result=KEY` of an analysis, or the error the API answers."""
        pk = find("analyses", identifier)
        if pk is None:
            return not_found()
        key = request.query_params.get("result")
        if not key:
            return JSONResponse({"result": ["This field is required."]}, status_code=400)
        results = installation.tables["analyses"][pk]["results"] or {}
        if key not in results:
            return JSONResponse({"detail": f"Analysis {pk} has no result '{key}'."}, status_code=404)
        value = results[key]
        if not isinstance(value, str) or not value.startswith("/"):
            return JSONResponse({"detail": f"Result '{key}' is not a file."}, status_code=400)
        path = installation.local_path(value)
        if path.is_dir():
            return JSONResponse({"detail": f"Result '{key}' is a directory."}, status_code=400)
        if not path.is_file():
            return JSONResponse({"detail": f"Result '{key}' file does not exist."}, status_code=404)
        return path, f"isabl:{pk}:{key}"

    async def download(request: Request) -> Response:
        if request.method == "HEAD":
            world.stats.api_requests += 1
        else:
            world.stats.store_requests += 1
        if not token_ok(request):
            return unauthorized(request)
        found = result_file(request, request.path_params["identifier"])
        if isinstance(found, Response):
            return found
        path, object_id = found
        size = path.stat().st_size
        headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{path.name}"'}
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type="application/octet-stream")
        world.stats.store_ranges.append(f"{object_id}:0-{size - 1}")
        return file_response(world, path, 0, size, 200, headers)

    async def stream(request: Request) -> Response:
        world.stats.store_requests += 1
        if not token_ok(request):
            return unauthorized(request)
        found = result_file(request, request.path_params["identifier"])
        if isinstance(found, Response):
            return found
        path, object_id = found
        size = path.stat().st_size
        wanted = request.query_params.get("bytes")
        header = (wanted if wanted.startswith("bytes=") else f"bytes={wanted}") if wanted else request.headers.get("range")
        span = parse_range(header, size)
        if span == "unsatisfiable":
            return JSONResponse({"detail": f"Range not satisfiable: {wanted or header}"}, status_code=416,
                                headers={"Content-Range": f"bytes */{size}"})
        start, end = span if span else (0, size - 1)
        length = max(0, end - start + 1)
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(length)}
        if span:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        world.stats.store_ranges.append(f"{object_id}:{start}-{end}")
        return file_response(world, path, start, length, 206 if span else 200, headers)

    async def append_slash(request: Request) -> Response:
        """Django's CommonMiddleware under APPEND_SLASH (the default): a path that matches only with
        a trailing slash answers 301 to it, query kept, with an empty body."""
        world.stats.api_requests += 1
        world.stats.redirects += 1
        query = f"?{request.url.query}" if request.url.query else ""
        return Response(status_code=301, headers={"Location": f"{request.url.path}/{query}"})

    def both(path: str, endpoint, **kwargs) -> list[Route]:
        """A DRF router's route (slash-terminated), and its unslashed spelling redirected as Django does."""
        return [Route(API + path + "/", endpoint, **kwargs), Route(API + path, append_slash, **kwargs)]

    table = both("/rest-auth/user", current_user)
    table += both("/rest-auth/login", log_in, methods=["POST"])
    table += both("/analyses/{identifier}/stream", stream, methods=["GET"])
    table += both("/analyses/{identifier}/download", download, methods=["GET", "HEAD"])
    for endpoint in ENDPOINTS:
        table += both(f"/{endpoint}", lister(endpoint))
        table += both(f"/{endpoint}/{{identifier}}", detail(endpoint))
    return table


def _positive(text: str | None, default: int, strict: bool = True) -> int:
    """DRF `_positive_int`: a bad or (strictly) zero value gives the default."""
    try:
        value = int(text) if text is not None else default
    except ValueError:
        return default
    if value < 0 or (strict and value == 0):
        return default
    return value


def _page_url(request: Request, limit: int, offset: int) -> str:
    """An absolute page URL: the request's own with `limit`/`offset` replaced, as DRF builds it."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "offset")]
    query.append(("limit", str(limit)))
    if offset:
        query.append(("offset", str(offset)))
    return str(request.url.replace(query=urlencode(query)))
