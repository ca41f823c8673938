import gzip
import hashlib
import re

import pysam
import pytest

from omicsfs.emulator import sampledata

LARGE = 4 << 20
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z?$")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("account")
    return data_dir, sampledata.generate(data_dir, large_file_size=LARGE)


def files_named(account, suffix):
    return [f for _, _, f in sampledata.iter_files(account) if f["Path"].endswith(suffix)]


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_second_call_reuses_account(generated):
    data_dir, account = generated
    stamp = (data_dir / "account.json").stat().st_mtime_ns
    assert sampledata.generate(data_dir, large_file_size=LARGE) == account
    assert (data_dir / "account.json").stat().st_mtime_ns == stamp
    assert sampledata.load(data_dir) == account


def test_fresh_dir_gives_identical_bytes(generated, tmp_path):
    data_dir, account = generated
    again = sampledata.generate(tmp_path, large_file_size=LARGE)
    assert again == account
    for _, _, file in sampledata.iter_files(again):
        path = sampledata.object_path(tmp_path, file["Id"])
        assert md5_of(path) == file["Md5"], file["Path"]


def test_md5_and_size_match_objects(generated):
    data_dir, account = generated
    for _, _, file in sampledata.iter_files(account):
        path = sampledata.object_path(data_dir, file["Id"])
        assert path.stat().st_size == file["Size"], file["Path"]
        assert md5_of(path) == file["Md5"], file["Path"]


def test_account_shape(generated):
    _, account = generated
    names = [p["Name"] for p in account["projects"]]
    assert names.count("RNA Pilot") == 2
    assert any("/" in name for name in names)
    pilots = [p["Id"] for p in account["projects"] if p["Name"] == "RNA Pilot"]
    assert pilots[0] != pilots[1]

    run_files = [f for kind, _, f in sampledata.iter_files(account) if kind == "run"]
    assert len(run_files) > 1000
    assert len({f["Path"] for f in run_files}) == len(run_files)
    assert len({f["Name"] for f in run_files}) < len(run_files)

    (archive,) = files_named(account, "reportarchive.bin")
    assert archive["Size"] == LARGE
    assert account["generator"] == {"version": sampledata.GENERATOR_VERSION, "large_file_size": LARGE}


def test_ids_unique_and_dates_formatted(generated):
    _, account = generated
    items = [account["user"], *account["runs"]]
    for project in account["projects"]:
        items += [project, *project["samples"], *project["appresults"]]
    items += [f for _, _, f in sampledata.iter_files(account)]
    ids = [item["Id"] for item in items]
    assert len(set(ids)) == len(ids)
    assert all(DATE.match(item["DateCreated"]) for item in items)
    assert any(item["DateCreated"].endswith("Z") for item in items)


def test_fastq_is_valid(generated):
    data_dir, account = generated
    fastq = files_named(account, "_R1_001.fastq.gz")[0]
    lines = gzip.decompress(sampledata.object_path(data_dir, fastq["Id"]).read_bytes()).decode().splitlines()
    assert len(lines) % 4 == 0
    for header, bases, plus, quals in zip(*[iter(lines)] * 4):
        assert header.startswith("@M00123:") and header.endswith(" 1:N:0:1")
        assert set(bases) <= set("ACGT") and plus == "+" and len(quals) == len(bases)


def test_bam_region_query(generated):
    data_dir, account = generated
    (bam,) = files_named(account, ".bam")
    (bai,) = files_named(account, ".bam.bai")
    with pysam.AlignmentFile(
        str(sampledata.object_path(data_dir, bam["Id"])),
        index_filename=str(sampledata.object_path(data_dir, bai["Id"])),
    ) as alignments:
        assert alignments.header["HD"]["SO"] == "coordinate"
        assert "PG" not in alignments.header
        reads = list(alignments.fetch("chr1", 100_000, 101_000))
        assert reads and all(r.reference_name == "chr1" for r in reads)
        assert alignments.mapped > 60_000


def test_vcf_tabix_query(generated):
    data_dir, account = generated
    (vcf,) = files_named(account, ".vcf.gz")
    (tbi,) = files_named(account, ".vcf.gz.tbi")
    with pysam.TabixFile(
        str(sampledata.object_path(data_dir, vcf["Id"])),
        index=str(sampledata.object_path(data_dir, tbi["Id"])),
    ) as variants:
        assert "##fileformat=VCFv4.2" in variants.header
        rows = list(variants.fetch("chr2", 0, 300_000))
        assert rows and all(row.startswith("chr2\t") for row in rows)


def test_bench_extras_come_only_when_asked_and_leave_the_rest_alone(generated, tmp_path):
    data_dir, account = generated
    assert [a["Name"] for p in account["projects"] for a in p["appresults"]] == ["BWA Alignment S1", "Archive"]
    extended = sampledata.generate(tmp_path, large_file_size=LARGE, deep_bam_size=250_000, wide_directory_files=25)
    assert extended["generator"] == {"version": sampledata.GENERATOR_VERSION, "large_file_size": LARGE,
                                     "deep_bam_size": 250_000, "wide_directory_files": 25}
    # Every file of the default data is there with the same id and bytes.
    before = {(c["Name"], f["Path"]): (f["Id"], f["Md5"]) for _, c, f in sampledata.iter_files(account)}
    after = {(c["Name"], f["Path"]): (f["Id"], f["Md5"]) for _, c, f in sampledata.iter_files(extended)}
    assert {key: after[key] for key in before} == before

    appresults = {a["Name"]: a for p in extended["projects"] for a in p["appresults"]}
    wide = appresults["Per-cell Counts"]["files"]
    assert len(wide) == 25 and all("/" not in f["Path"] for f in wide)
    assert len({f["Name"] for f in wide}) == 25

    deep = {f["Path"]: f for f in appresults["Deep Alignment D1"]["files"]}
    bam = sampledata.object_path(tmp_path, deep["Alignment/D1.bam"]["Id"])
    bai = sampledata.object_path(tmp_path, deep["Alignment/D1.bam.bai"]["Id"])
    # "About" the size asked: shallow reads overlap less and compress worse, so a small BAM comes out
    # larger than asked (the bench's 230 MB comes within a few percent).
    assert 250_000 / 2 < bam.stat().st_size < 3 * 250_000
    with pysam.AlignmentFile(str(bam), "rb", index_filename=str(bai)) as alignments:
        assert alignments.header.to_dict()["HD"]["SO"] == "coordinate"
        positions = [(r.reference_id, r.reference_start) for r in alignments.fetch(until_eof=True)]
        assert positions == sorted(positions)
        names = [r.query_name for r in alignments.fetch(until_eof=True)]
        assert all(names.count(name) == 2 for name in names[:200])  # every read has its mate
        region = sum(1 for r in alignments.fetch("chr2", 700_000, 705_000))
    on_the_contig = sum(1 for contig, start in positions if contig == 1 and 700_000 - 151 < start < 705_000)
    assert region == on_the_contig > 0  # the index finds what a scan finds
