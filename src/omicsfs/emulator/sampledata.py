"""Deterministic sample BaseSpace V1 account for the emulator.

The emulator serves what this module writes: ``account.json`` describes the
user, projects, samples, app results and runs in BaseSpace's own spelling, and
``objects/<file id>`` holds each file's bytes.  Every item draws from its own
fixed seed, so two generations give byte-identical files (and Md5s); tests can
rely on known content and a data dir can be reused between sessions.

The account is built to exercise awkward cases: two projects with the same
name, a project name with a slash, a run with more than 1000 files whose names
repeat across folders, real BAM/VCF files with indexes for range reads, and
one large file whose size the caller chooses.

Two more items are made only when asked (bench/ asks; the tests' data has
neither): a deep coordinate-sorted BAM of about `deep_bam_size` bytes with its
index, for region queries on a BAM of realistic size, and an app result whose
`wide_directory_files` files all sit in one directory, for listing it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import heapq
import shutil
import struct
import subprocess
import tempfile
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pysam

GENERATOR_VERSION = 2

_CHUNK = 8 << 20
_TICKS_PER_SECOND = 10_000_000  # BaseSpace dates carry .NET's 100 ns ticks
_EPOCH = datetime(2000, 1, 1)

# 256-entry translate tables: random byte -> base, random byte -> binned
# Illumina quality (mostly high, so FASTQ/BAM sizes look realistic).
_ACGT = bytes(b"ACGT"[i % 4] for i in range(256))
_QUALS = b"F" * 232 + b":" * 16 + b"," * 6 + b"#" * 2

_INSTRUMENT = "M00123"
_RUN_NUMBER = 42
_FLOWCELL = "000000000-KX7F2"
_RUN_DAY = date(2022, 11, 3)
_RUN_NAME = f"{_RUN_DAY:%y%m%d}_{_INSTRUMENT}_{_RUN_NUMBER:04d}_{_FLOWCELL}"
_EXPERIMENT = f"RNA Pilot run {_RUN_NUMBER}"
_TILES = (1101, 1102, 1103, 1104, 2101, 2102, 2103, 2104)
_CYCLES = 151
_READ_LEN = 151

_CONTIGS = (("chr1", 2_000_000), ("chr2", 1_500_000), ("chr3", 1_000_000))
_READ_PAIRS = 36_000
_VARIANTS = 3_000
_ALIGNED_SAMPLE = "S1"
_DEEP_SAMPLE = "D1"
#: What a read pair of the deep BAM takes, compressed (measured): turns its asked size into pairs.
_DEEP_BAM_BYTES_PER_PAIR = 100

# (name, description, number of samples, creation day)
_PROJECTS = (
    ("RNA Pilot", "Pilot RNA-seq of cell lines, batch A", 3, date(2022, 10, 20)),
    ("RNA Pilot", "Pilot RNA-seq, batch B re-prep", 2, date(2022, 11, 8)),
    ("Tumor-Normal WGS", "Matched tumor/normal whole-genome sequencing", 2, date(2023, 5, 17)),
    ("Exome 2024/Q3", "Exome panel cohort, third quarter 2024", 1, date(2024, 7, 9)),
)
_WGS_PROJECT = "Tumor-Normal WGS"
_RESULTS_DAY = date(2023, 6, 2)  # when the WGS app results were produced


def generate(data_dir: Path, large_file_size: int = 1 << 30, deep_bam_size: int = 0, wide_directory_files: int = 0) -> dict:
    """Create (or reuse, if data_dir/account.json exists and was made by the
    same GENERATOR_VERSION and sizes) the sample account; return the account
    dict. `deep_bam_size` and `wide_directory_files` (0: none) add the
    bench's deep BAM and wide directory."""
    data_dir = Path(data_dir)
    objects = data_dir / "objects"
    wanted = {"version": GENERATOR_VERSION, "large_file_size": large_file_size}
    # In the stamp only when asked: the default data's stamp, and so its data dirs, stay valid.
    if deep_bam_size:
        wanted["deep_bam_size"] = deep_bam_size
    if wide_directory_files:
        wanted["wide_directory_files"] = wide_directory_files

    def build(workdir: Path) -> dict:
        return _build(_Store(objects), large_file_size, workdir, deep_bam_size, wide_directory_files)

    return generated(data_dir / "account.json", wanted, objects, build)


def generated(manifest: Path, stamp: object, files: Path, build: Callable[[Path], dict]) -> dict:
    """The data `manifest` describes if the same generator (`stamp`) wrote it, else built anew.

    Every emulator's data is made this way. `files` is emptied before `build(workdir)` writes into
    it; the old manifest goes first and the new one is written last, atomically, so a crash never
    leaves a manifest pointing at missing or half-written files.
    """
    try:
        data = json.loads(manifest.read_text())
        if data.get("generator") == stamp:
            return data
    except (OSError, ValueError):
        pass
    manifest.unlink(missing_ok=True)
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as workdir:
        data = {"generator": stamp, **build(Path(workdir))}
    partial = manifest.with_name(manifest.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, manifest)
    return data


def load(data_dir: Path) -> dict:
    """Read the account description written by generate()."""
    return json.loads((Path(data_dir) / "account.json").read_text())


def object_path(data_dir: Path, file_id: str) -> Path:
    """Where the bytes of file ``file_id`` live."""
    return Path(data_dir) / "objects" / str(file_id)


def iter_files(account: dict) -> Iterator[tuple[str, dict, dict]]:
    """Yield (container_kind, container, file) for every file in the account."""
    for project in account["projects"]:
        for sample in project["samples"]:
            for file in sample["files"]:
                yield "sample", sample, file
        for appresult in project["appresults"]:
            for file in appresult["files"]:
                yield "appresult", appresult, file
            appsession = appresult.get("appsession")
            for file in appsession["logs"] if appsession else ():
                yield "appsession", appsession, file
    for run in account["runs"]:
        for file in run["files"]:
            yield "run", run, file


class _Store:
    """Hands out account-wide unique ids and writes file objects."""

    def __init__(self, objects: Path):
        self._objects = objects
        self._rng = random.Random("ids")
        self._last_id = 1_863_960

    def new_id(self) -> str:
        """Next id; random gaps keep ids opaque like BaseSpace's."""
        self._last_id += self._rng.randint(1, 40)
        return str(self._last_id)

    def add(self, path: str, chunks: Iterable[bytes], created: int, zulu: bool = False) -> dict:
        """Store a file's bytes and return its BaseSpace description."""
        file_id = self.new_id()
        size, md5 = _write_object(self._objects / file_id, chunks)
        return {
            "Id": file_id,
            "Name": path.rsplit("/", 1)[-1],
            "Path": path,
            "Size": size,
            "ContentType": _content_type(path),
            "DateCreated": _stamp(created, zulu),
            "Md5": md5,
        }


def _write_object(dest: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write chunks to dest, hashing on the way so large files are read once."""
    md5 = hashlib.md5()
    size = 0
    with open(dest, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _content_type(path: str) -> str:
    if path.endswith(".gz"):
        return "application/x-gzip"
    if path.endswith(".xml"):
        return "text/xml"
    return "application/octet-stream"


def _on(day: date, rng: random.Random) -> int:
    """Ticks at a random moment of ``day``."""
    midnight = datetime.combine(day, time()) - _EPOCH
    return midnight // timedelta(microseconds=1) * 10 + rng.randrange(86_400 * _TICKS_PER_SECOND)


def _later(ticks: int, rng: random.Random, seconds: int) -> int:
    """A random moment within ``seconds`` after ``ticks``."""
    return ticks + rng.randrange(1, seconds * _TICKS_PER_SECOND)


def _stamp(ticks: int, zulu: bool = False) -> str:
    """BaseSpace date text: seven fractional digits, usually no zone."""
    moment = _EPOCH + timedelta(microseconds=ticks // 10)
    text = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}{ticks % 10}"
    return text + "Z" if zulu else text


def _build(store: _Store, large_file_size: int, workdir: Path, deep_bam_size: int = 0, wide_directory_files: int = 0) -> dict:
    """Everything in account.json except the generator stamp."""
    projects = [_project(store, index, *spec) for index, spec in enumerate(_PROJECTS)]
    wgs = next(p for p in projects if p["Name"] == _WGS_PROJECT)
    reference = reference_genome()
    wgs["appresults"] = [
        _alignment_result(store, _ALIGNED_SAMPLE, reference, workdir),
        _archive_result(store, large_file_size),
    ]
    for appresult in wgs["appresults"]:
        appresult["appsession"] = _appsession(store, appresult)
    account = {"user": _user(), "projects": projects, "runs": [_run(store)]}
    # Made last, so that every other id is the same with or without them.
    if deep_bam_size:
        wgs["appresults"].append(_deep_alignment_result(store, deep_bam_size, reference, workdir))
    if wide_directory_files:
        wgs["appresults"].append(_wide_result(store, wide_directory_files))
    return account


def _appsession(store: _Store, appresult: dict) -> dict:
    """The analysis (V2 "AppSession") that produced an app result, with the logs BaseSpace keeps."""
    rng = random.Random(f"appsession:{appresult['Name']}")
    created = _later(_on(_RESULTS_DAY, rng) - 6 * 3600 * _TICKS_PER_SECOND, rng, 3600)
    app = "BWA Aligner" if appresult["Name"].startswith("BWA") else "File Archiver"
    started = _EPOCH + timedelta(microseconds=created // 10)
    lines = [f"[{started:%Y-%m-%d %H:%M:%S}] {app} 1.1.4 started for {appresult['Name']}"]
    lines += [f"[{started:%Y-%m-%d %H:%M:%S}] step {step}: {rng.choice(['ok', 'ok', 'retried', 'ok'])}" for step in range(1, 40)]
    logs = [
        store.add("Logs/stdout.txt", ["\n".join(lines).encode() + b"\n"], created),
        store.add("Logs/stderr.txt", [f"WARNING: {rng.randint(1, 9)} reads with low MAPQ\n".encode()], created),
        store.add("Logs/Workflow/commands.sh", [f"bwa mem -t 16 ref.fa R1.fq.gz R2.fq.gz | samtools sort -o {appresult['Name']}.bam\n".encode()], created),
    ]
    return {
        "Id": hashlib.md5(f"appsession:{appresult['Id']}".encode()).hexdigest(),
        "Name": f"{appresult['Name']} {started:%m/%d/%Y %H:%M:%S}",
        "Application": app,
        "ExecutionStatus": "Complete",
        "DateCreated": _stamp(created),
        "logs": logs,
    }


def _user() -> dict:
    rng = random.Random("user")
    email = "dana.whitfield@example.org"
    gravatar = hashlib.md5(email.encode()).hexdigest()
    return {
        "Id": "1001",
        "Name": "Dana Whitfield",
        "Email": email,
        "GravatarUrl": f"https://secure.gravatar.com/avatar/{gravatar}.jpg?s=20&d=mm&r=PG",
        "DateCreated": _stamp(_on(date(2021, 3, 4), rng)),
        # V1pre3User.StorageStatistics (seed 001): what `df` shows on the mount.
        "StorageStatistics": {"Unit": "bytes", "Quota": 1 << 40, "TotalSize": 187_512_345_678, "TotalOwnedSize": 187_512_345_678},
    }


def _project(store: _Store, index: int, name: str, description: str, samples: int, day: date) -> dict:
    """A project with FASTQ samples; seeded by position since names repeat."""
    project_id = store.new_id()
    created = _on(day, random.Random(f"project:{index}"))
    return {
        "Id": project_id,
        "Name": name,
        "Description": description,
        "DateCreated": _stamp(created),
        "samples": [
            _sample(store, f"project:{index}:sample:{number}", number, created)
            for number in range(1, samples + 1)
        ],
        "appresults": [],
    }


def _sample(store: _Store, seed: str, number: int, after: int) -> dict:
    rng = random.Random(seed)
    name = f"S{number}"
    sample_id = store.new_id()
    created = _later(after, rng, 14 * 86_400)
    files = [
        store.add(
            f"{name}_L001_R{read}_001.fastq.gz",
            [gzip.compress(fastq, compresslevel=6, mtime=0)],
            _later(created, rng, 3600),
        )
        for read, fastq in enumerate(fastq_pair(rng, number), start=1)
    ]
    return {
        "Id": sample_id,
        "Name": name,
        "SampleId": name,
        "Status": "Complete",
        "IsPairedEnd": True,
        "DateCreated": _stamp(created),
        "files": files,
    }


def fastq_pair(rng: random.Random, sample_number: int) -> tuple[bytes, bytes]:
    """R1 and R2 FASTQ text whose records share cluster names, as bcl2fastq writes them."""
    reads = ([], [])
    for _ in range(rng.randint(3000, 4500)):
        cluster = _cluster_name(rng)
        for read, records in enumerate(reads, start=1):
            records.append(
                f"@{cluster} {read}:N:0:{sample_number}\n"
                f"{_bases(rng, _READ_LEN)}\n+\n{_quals(rng, _READ_LEN)}\n"
            )
    return tuple("".join(records).encode() for records in reads)


def _cluster_name(rng: random.Random) -> str:
    """Illumina read name: instrument:run:flowcell:lane:tile:x:y."""
    x, y = rng.randint(1000, 29000), rng.randint(1000, 29000)
    return f"{_INSTRUMENT}:{_RUN_NUMBER}:{_FLOWCELL}:1:{rng.choice(_TILES)}:{x}:{y}"


def _bases(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).translate(_ACGT).decode()


def _quals(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).translate(_QUALS).decode()


def reference_genome() -> dict[str, bytes]:
    """Synthetic genome that reads and variants are drawn from."""
    rng = random.Random("reference")
    return {contig: rng.randbytes(length).translate(_ACGT) for contig, length in _CONTIGS}


def _alignment_result(store: _Store, sample: str, reference: dict, workdir: Path) -> dict:
    """App result with an indexed BAM and an indexed VCF, for range reads."""
    rng = random.Random(f"alignment:{sample}")
    result_id = store.new_id()
    created = _on(_RESULTS_DAY, rng)
    bam, bai = write_bam(workdir, sample, reference)
    vcf, tbi = write_vcf(workdir, sample, reference)
    outputs = (
        (f"Alignment/{sample}.bam", bam),
        (f"Alignment/{sample}.bam.bai", bai),
        (f"Variants/{sample}.vcf.gz", vcf),
        (f"Variants/{sample}.vcf.gz.tbi", tbi),
    )
    return {
        "Id": result_id,
        "Name": f"BWA Alignment {sample}",
        "Description": f"BWA-MEM alignment and variant calls for {sample}",
        "Status": "Complete",
        "DateCreated": _stamp(created, zulu=True),
        "files": [
            store.add(path, _read_chunks(local), _later(created, rng, 7200), zulu=True)
            for path, local in outputs
        ],
    }


def write_bam(workdir: Path, sample: str, reference: dict) -> tuple[Path, Path]:
    """Coordinate-sorted, indexed BAM of read pairs drawn from the reference.

    Pairs are written in random order and then sorted by samtools, the way a
    pipeline would; --no-PG keeps the command line (with temp paths) out of
    the header so the bytes stay identical between generations.
    """
    rng = random.Random(f"bam:{sample}")
    header = {
        "HD": {"VN": "1.6", "SO": "unsorted"},
        "SQ": [{"SN": contig, "LN": length} for contig, length in _CONTIGS],
        "RG": [{"ID": sample, "SM": sample, "PL": "ILLUMINA"}],
    }
    unsorted = workdir / f"{sample}.unsorted.bam"
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for _ in range(_READ_PAIRS):
            for segment in _read_pair(rng, out.header, reference, sample):
                out.write(segment)
    bam = workdir / f"{sample}.bam"
    bai = workdir / f"{sample}.bam.bai"
    pysam.sort("--no-PG", "-o", str(bam), str(unsorted))
    pysam.index(str(bam), str(bai))
    return bam, bai


def _read_pair(rng: random.Random, header, reference: dict, sample: str) -> Iterator[pysam.AlignedSegment]:
    """A properly paired, inward-facing read pair with a few sequencing errors."""
    tid = rng.choices(range(len(_CONTIGS)), weights=[length for _, length in _CONTIGS])[0]
    contig, length = _CONTIGS[tid]
    insert = max(_READ_LEN, round(rng.gauss(350, 50)))
    left = rng.randrange(length - insert)
    right = left + insert - _READ_LEN
    name = _cluster_name(rng)
    # SAM flags: 99/147 when read 1 is on the forward strand, else 163/83.
    first_forward = rng.random() < 0.5
    layout = (
        (99 if first_forward else 163, left, right, insert),
        (147 if first_forward else 83, right, left, -insert),
    )
    for flag, start, mate_start, template_length in layout:
        sequence, mismatches = _with_errors(rng, reference[contig][start : start + _READ_LEN])
        segment = pysam.AlignedSegment(header)
        segment.query_name = name
        segment.flag = flag
        segment.reference_id = tid
        segment.reference_start = start
        segment.mapping_quality = 60
        segment.cigarstring = f"{_READ_LEN}M"
        segment.next_reference_id = tid
        segment.next_reference_start = mate_start
        segment.template_length = template_length
        segment.query_sequence = sequence
        segment.query_qualities = pysam.qualitystring_to_array(_quals(rng, _READ_LEN))
        segment.set_tags([("NM", mismatches), ("RG", sample)])
        yield segment


def _with_errors(rng: random.Random, bases: bytes) -> tuple[str, int]:
    """Bases with 0-3 substitutions, and how many were made."""
    read = bytearray(bases)
    positions = rng.sample(range(len(read)), rng.choice((0, 0, 0, 1, 1, 2, 3)))
    for i in positions:
        read[i] = rng.choice([b for b in b"ACGT" if b != read[i]])
    return read.decode(), len(positions)


def write_vcf(workdir: Path, sample: str, reference: dict) -> tuple[Path, Path]:
    """Bgzipped, tabix-indexed VCF of variants against the reference."""
    rng = random.Random(f"vcf:{sample}")
    lines = _vcf_header(sample)
    for contig, length in _CONTIGS:
        count = _VARIANTS * length // sum(length for _, length in _CONTIGS)
        for pos in sorted(rng.sample(range(1, length - 10), count)):
            lines.append(_variant_line(rng, contig, pos, reference[contig]))
    text = workdir / f"{sample}.vcf"
    text.write_text("\n".join(lines) + "\n")
    vcf = Path(pysam.tabix_index(str(text), preset="vcf", force=True))
    return vcf, Path(f"{vcf}.tbi")


def _vcf_header(sample: str) -> list[str]:
    return [
        "##fileformat=VCFv4.2",
        "##source=HaplotypeCaller",
        "##reference=file:///genomes/synthetic/genome.fa",
        *(f"##contig=<ID={contig},length={length}>" for contig, length in _CONTIGS),
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Approximate read depth">',
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths for the ref and alt alleles">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
        '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", sample]),
    ]


def _variant_line(rng: random.Random, contig: str, pos: int, sequence: bytes) -> str:
    """One call at 1-based ``pos``: mostly SNVs, some short indels."""
    ref = sequence[pos - 1 : pos].decode()
    kind = rng.random()
    if kind < 0.85:
        alt = rng.choice([b for b in "ACGT" if b != ref])
    elif kind < 0.93:
        ref, alt = sequence[pos - 1 : pos + rng.randint(1, 6)].decode(), ref
    else:
        alt = ref + _bases(rng, rng.randint(1, 6))
    depth = rng.randint(8, 60)
    heterozygous = rng.random() < 0.6
    alt_depth = round(depth * rng.uniform(0.3, 0.7)) if heterozygous else depth
    qual = rng.uniform(20, 3000)
    fields = [
        contig, str(pos), ".", ref, alt, f"{qual:.2f}", "PASS" if qual >= 50 else "LowQual",
        f"DP={depth};AF={0.5 if heterozygous else 1.0}", "GT:AD:DP:GQ",
        f"{'0/1' if heterozygous else '1/1'}:{depth - alt_depth},{alt_depth}:{depth}:{min(99, round(qual / 10))}",
    ]
    return "\t".join(fields)


def _archive_result(store: _Store, size: int) -> dict:
    """App result holding one large pseudorandom file, for big-file reads."""
    rng = random.Random("archive")
    result_id = store.new_id()
    created = _on(_RESULTS_DAY, rng)
    archive = store.add(
        "Archive/reportarchive.bin",
        _random_chunks(random.Random("reportarchive"), size),
        _later(created, rng, 3600),
        zulu=True,
    )
    return {
        "Id": result_id,
        "Name": "Archive",
        "Description": "Report archive",
        "Status": "Complete",
        "DateCreated": _stamp(created, zulu=True),
        "files": [archive],
    }


def _deep_alignment_result(store: _Store, size: int, reference: dict, workdir: Path) -> dict:
    """App result with a deep (about 150x at 230 MB) coordinate-sorted BAM of about `size` bytes and its index."""
    rng = random.Random(f"alignment:{_DEEP_SAMPLE}")
    result_id = store.new_id()
    created = _on(_RESULTS_DAY, rng)
    bam, bai = write_deep_bam(workdir, _DEEP_SAMPLE, reference, max(1, size // _DEEP_BAM_BYTES_PER_PAIR))
    return {
        "Id": result_id,
        "Name": f"Deep Alignment {_DEEP_SAMPLE}",
        "Description": f"Deep BWA-MEM alignment of {_DEEP_SAMPLE}",
        "Status": "Complete",
        "DateCreated": _stamp(created, zulu=True),
        "files": [
            store.add(path, _read_chunks(local), _later(created, rng, 7200), zulu=True)
            for path, local in ((f"Alignment/{_DEEP_SAMPLE}.bam", bam), (f"Alignment/{_DEEP_SAMPLE}.bam.bai", bai))
        ],
    }


def write_deep_bam(workdir: Path, sample: str, reference: dict, pairs: int) -> tuple[Path, Path]:
    """A coordinate-sorted, indexed BAM of `pairs` read pairs drawn from the reference.

    Millions of reads: written in coordinate order as SAM text into `samtools view` (no sort
    pass, no Python object per read), the mates held in a heap until their position comes.
    """
    samtools = shutil.which("samtools")
    if samtools is None:
        raise RuntimeError("the deep BAM is written with samtools, which is not on PATH")
    rng = random.Random(f"bam:{sample}")
    total = sum(length for _, length in _CONTIGS)
    bam = workdir / f"{sample}.bam"
    bai = workdir / f"{sample}.bam.bai"
    header = "".join([
        "@HD\tVN:1.6\tSO:coordinate\n",
        *(f"@SQ\tSN:{contig}\tLN:{length}\n" for contig, length in _CONTIGS),
        f"@RG\tID:{sample}\tSM:{sample}\tPL:ILLUMINA\n",
    ])
    command = [samtools, "view", "--no-PG", "-b", "-@", str(os.cpu_count() or 1), "-o", str(bam), "-"]
    with subprocess.Popen(command, stdin=subprocess.PIPE) as writer:
        assert writer.stdin is not None
        out = writer.stdin
        out.write(header.encode())
        for contig, length in _CONTIGS:
            sequence = reference[contig]
            lefts = sorted(rng.randrange(length - 1000) for _ in range(pairs * length // total))
            mates: list[tuple[int, str]] = []
            lines = []
            for left in lefts:
                while mates and mates[0][0] <= left:
                    lines.append(heapq.heappop(mates)[1])
                insert = max(_READ_LEN, round(rng.gauss(350, 50)))
                right = left + insert - _READ_LEN
                name = _cluster_name(rng)
                first_forward = rng.random() < 0.5
                for flag, start, mate, template in (
                    (99 if first_forward else 163, left, right, insert),
                    (147 if first_forward else 83, right, left, -insert),
                ):
                    bases, mismatches = _with_errors(rng, sequence[start : start + _READ_LEN])
                    line = (f"{name}\t{flag}\t{contig}\t{start + 1}\t60\t{_READ_LEN}M\t=\t{mate + 1}\t{template}\t"
                            f"{bases}\t{_quals(rng, _READ_LEN)}\tNM:i:{mismatches}\tRG:Z:{sample}\n")
                    if start == left:
                        lines.append(line)
                    else:
                        heapq.heappush(mates, (start, line))
                if len(lines) >= 4096:
                    out.write("".join(lines).encode())
                    lines.clear()
            lines += [line for _, line in sorted(mates)]
            out.write("".join(lines).encode())
        out.close()
    if writer.returncode != 0:
        raise RuntimeError(f"samtools view exited with status {writer.returncode} writing {bam}")
    pysam.index(str(bam), str(bai))
    return bam, bai


def _wide_result(store: _Store, count: int) -> dict:
    """App result whose `count` small files all sit in one directory: listing it takes many pages."""
    rng = random.Random("wide")
    result_id = store.new_id()
    created = _on(_RESULTS_DAY, rng)
    files = []
    for number in range(1, count + 1):
        counts = "".join(f"GENE{gene:04d}\t{rng.randint(0, 500)}\n" for gene in range(1, 9))
        files.append(store.add(f"cell_{number:05d}.tsv", [counts.encode()], _later(created, rng, 3600), zulu=True))
    return {
        "Id": result_id,
        "Name": "Per-cell Counts",
        "Description": f"Expression counts, one file per cell ({count} cells)",
        "Status": "Complete",
        "DateCreated": _stamp(created, zulu=True),
        "files": files,
    }


def _random_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    """``size`` pseudorandom bytes, a chunk at a time so memory stays flat."""
    for offset in range(0, size, _CHUNK):
        yield rng.randbytes(min(_CHUNK, size - offset))


def _run(store: _Store) -> dict:
    """A MiSeq run whose BaseCalls folders repeat the same file names."""
    rng = random.Random("run")
    run_id = store.new_id()
    started = _on(_RUN_DAY, rng) // _TICKS_PER_SECOND * _TICKS_PER_SECOND
    files = [
        store.add("RunInfo.xml", [_run_info().encode()], started),
        store.add("RunParameters.xml", [_run_parameters().encode()], started),
    ]
    cycle_ticks = 300 * _TICKS_PER_SECOND
    for cycle in range(1, _CYCLES + 1):
        for tile in _TILES:
            path = f"Data/Intensities/BaseCalls/L001/C{cycle}.1/s_1_{tile}.bcl"
            files.append(store.add(path, [_bcl(cycle, tile)], started + cycle * cycle_ticks))
    return {
        "Id": run_id,
        "Name": _RUN_NAME,
        "ExperimentName": _EXPERIMENT,
        "Status": "Complete",
        "DateCreated": _stamp(started),
        "files": files,
    }


def _bcl(cycle: int, tile: int) -> bytes:
    """BCL layout: cluster count (uint32 LE), then one byte per cluster.

    The count is per tile, as on a real flow cell, so a tile's files agree
    across cycles.
    """
    clusters = random.Random(f"tile:{tile}").randint(96, 596)
    return struct.pack("<I", clusters) + random.Random(f"bcl:{cycle}:{tile}").randbytes(clusters)


def _run_info() -> str:
    return f"""<?xml version="1.0"?>
<RunInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="2">
  <Run Id="{_RUN_NAME}" Number="{_RUN_NUMBER}">
    <Flowcell>{_FLOWCELL}</Flowcell>
    <Instrument>{_INSTRUMENT}</Instrument>
    <Date>{_RUN_DAY:%y%m%d}</Date>
    <Reads>
      <Read NumCycles="{_CYCLES}" Number="1" IsIndexedRead="N" />
    </Reads>
    <FlowcellLayout LaneCount="1" SurfaceCount="2" SwathCount="1" TileCount="{len(_TILES) // 2}" />
  </Run>
</RunInfo>
"""


def _run_parameters() -> str:
    return f"""<?xml version="1.0"?>
<RunParameters xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <EnableCloud>true</EnableCloud>
  <RunParametersVersion>MiSeq_1_1</RunParametersVersion>
  <Setup>
    <ApplicationName>MiSeq Control Software</ApplicationName>
    <ApplicationVersion>2.6.2.1</ApplicationVersion>
  </Setup>
  <RunID>{_RUN_NAME}</RunID>
  <ScannerID>{_INSTRUMENT}</ScannerID>
  <RunNumber>{_RUN_NUMBER}</RunNumber>
  <RTAVersion>1.18.54</RTAVersion>
  <Barcode>{_FLOWCELL}</Barcode>
  <ExperimentName>{_EXPERIMENT}</ExperimentName>
  <Chemistry>Default</Chemistry>
  <Username>sbsuser</Username>
  <Reads>
    <RunInfoRead Number="1" NumCycles="{_CYCLES}" IsIndexedRead="N" />
  </Reads>
</RunParameters>
"""
