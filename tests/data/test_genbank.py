"""GenBank CDS features: transcript order on both strands and across joins (checked against the real
Klebsiella records' own /translation), and strict against skip-and-count on a malformed file."""
from __future__ import annotations

import pytest

from dnamamba.data.genbank import SKIP_REASONS, read_genbank, translate_codon
from dnamamba.errors import InputError

from support import FIXTURES, shared_file

GENBANK = FIXTURES / "genbank"


def protein(cds, seq: bytes) -> str:
    t = cds.transcript(seq)[cds.codon_start - 1:]
    return "".join(translate_codon(t[i:i + 3], cds.table) for i in range(0, len(t), 3))


@pytest.fixture(scope="module")
def klebsiella():
    return read_genbank(shared_file("klebsiella_k_locus.gbk.gz"), strict=False)


def test_minus_strand_cds_translate_to_their_annotated_protein(klebsiella):
    from Bio import SeqIO
    import gzip

    with gzip.open(shared_file("klebsiella_k_locus.gbk.gz"), "rt") as f:
        annotated = {r.name: r for r in SeqIO.parse(f, "genbank")}
    minus = [(r, c) for r in klebsiella.records for c in r.cds if c.parts[0][2] == -1]
    assert len(minus) >= 15  # the file has 18 minus-strand CDS
    checked = 0
    for record, cds in minus:
        expected = annotated[record.name].features[cds.index].qualifiers.get("translation", [""])[0]
        if not expected:
            continue
        # /translation gives the start codon as M whatever it reads as inside a protein.
        assert protein(cds, record.seq)[1:-1] == expected[1:], (record.name, cds.name)
        checked += 1
    assert checked >= 15


def test_the_real_file_reads_in_strict_mode_with_its_skips_counted(klebsiella):
    strict = read_genbank(shared_file("klebsiella_k_locus.gbk.gz"), strict=True)
    assert [r.name for r in strict.records] == [r.name for r in klebsiella.records]
    assert len(klebsiella.records) == 162
    # One /pseudogene and two CDS that do not end in a stop codon: skipped in both modes, not errors.
    assert klebsiella.skipped == {"pseudo": 1, "no_stop": 2}
    assert sum(len(r.cds) for r in klebsiella.records) + 3 == 3285


def test_joins_on_both_strands_give_the_unsplit_gene(klebsiella):
    """The fixture splits two real CDS of ERR3449083 with 45 inserted bases; joined back, each gives
    the original gene's bases."""
    real = {c.name: c for r in klebsiella.records if r.name == "ERR3449083" for c in r.cds}
    real_seq = next(r.seq for r in klebsiella.records if r.name == "ERR3449083")
    joins = read_genbank(GENBANK / "joins.gbk", strict=True)
    records = {r.name: r for r in joins.records}
    plus = next(c for c in records["JOIN_PLUS"].cds if c.name == "KL172_00004_join")
    minus = records["JOIN_MINUS"].cds[0]
    assert plus.parts == ((336, 367, 1), (412, 492, 1))
    assert minus.parts == ((127, 185, -1), (32, 82, -1))  # complement(join(33..82,128..185)): 3' part first
    assert plus.transcript(records["JOIN_PLUS"].seq) == real["KL172_00004"].transcript(real_seq)
    assert minus.transcript(records["JOIN_MINUS"].seq) == real["KL172_00003"].transcript(real_seq)
    assert list(minus.positions()[56:60]) == [128, 127, 81, 80]  # across the join, descending


def test_malformed_file_strict_names_the_first_bad_record():
    with pytest.raises(InputError) as e:
        read_genbank(GENBANK / "malformed.gbk", strict=True)
    message = str(e.value)
    assert "malformed.gbk: record BAD_LOC:" in message and "\n" not in message
    assert SKIP_REASONS["bad_location"] in message


def test_malformed_file_skip_counts_each_reason():
    gb = read_genbank(GENBANK / "malformed.gbk", strict=False)
    assert [r.name for r in gb.records] == ["GOOD_PLUS", "PSEUDO_PARTIAL", "BAD_LOC", "PAST_END", "BAD_LENGTH",
                                            "BAD_TABLE"]
    assert [c.name for c in gb.records[0].cds] == ["KL172_00003", "KL172_00004_join"]
    assert all(not r.cds for r in gb.records[1:])
    assert gb.skipped == {"pseudo": 1, "partial": 1, "bad_location": 2, "bad_length": 1, "bad_table": 1,
                          "unparsable_record": 1}


def test_files_without_usable_records(tmp_path):
    empty = tmp_path / "empty.gbk"
    empty.write_text("")
    with pytest.raises(InputError, match="no GenBank record"):
        read_genbank(empty, strict=False)
    unparsable = tmp_path / "unparsable.gbk"
    unparsable.write_text("LOCUS" + (GENBANK / "malformed.gbk").read_text().split("LOCUS")[-1])
    with pytest.raises(InputError, match="no usable record; skipped: record Biopython cannot parse 1"):
        read_genbank(unparsable, strict=False)


def test_missing_file():
    with pytest.raises(InputError, match="GenBank file not found"):
        read_genbank("/nonexistent/file.gbk")
