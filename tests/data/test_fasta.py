import bz2
import gzip
import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch
from Bio import bgzf
from torch.utils.data import DataLoader, Dataset

from dnamamba.data import fasta as fasta_mod
from dnamamba.data.fasta import FastaFile, default_cache_dir, demo_genome_path
from dnamamba.errors import InputError

LAMBDA = "gi|9626243|ref|NC_001416.1|"


def random_slices(length, n=50, seed=0):
    rng = random.Random(seed)
    out = [(0, 1), (length - 1, length), (0, length)]
    for _ in range(n):
        a, b = sorted(rng.sample(range(length + 1), 2))
        out.append((a, b))
    return out


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    yield folder
    folder.chmod(stat.S_IRWXU)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DNAMAMBA_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DNAMAMBA_CACHE")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "dnamamba"


def test_demo_genome_is_lambda(lambda_seq):
    with FastaFile(demo_genome_path()) as f:
        assert f.names == [LAMBDA]
        assert f.lengths == {LAMBDA: 48502}
        assert f.fetch(LAMBDA, 0, 48502) == lambda_seq


def test_plain_fasta_fetch_matches_text(lambda_fa, lambda_seq, tmp_path):
    f = FastaFile(lambda_fa, cache_dir=tmp_path / "cache")
    assert f.path == str(lambda_fa)
    assert f.names == [LAMBDA] and f.lengths[LAMBDA] == len(lambda_seq) == 48502
    for a, b in random_slices(48502):
        assert f.fetch(LAMBDA, a, b) == lambda_seq[a:b]
    assert f.fetch(LAMBDA, 5, 5) == b""
    tokens = f.fetch_tokens(LAMBDA, 100, 170)
    assert tokens.dtype == torch.long and tokens.shape == (70,)
    assert bytes(tokens.to(torch.uint8).tolist()) == lambda_seq[100:170]
    assert [p for p in listing(lambda_fa.parent) if p.startswith("lambda")] == ["lambda.fa"]
    assert list((tmp_path / "cache" / "fasta").glob("*/lambda.fa.fai"))


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_plain_reads_at_index_offsets_across_line_ends_and_records(make_fasta, lambda_seq, tmp_path, newline):
    """Plain files are read at the offsets the .fai gives: every slice, at line ends of odd widths, in a later
    record, equals the text, with LF or CRLF line ends."""
    a, b = lambda_seq[:997].decode(), lambda_seq[1000:1500].decode()
    path = make_fasta({"first": a, "second": b}, width=7)
    if newline != "\n":
        path.write_bytes(path.read_bytes().replace(b"\n", newline.encode()))
    f = FastaFile(path, cache_dir=tmp_path / "cache")
    rng = np.random.default_rng(0)
    for name, seq in (("first", a), ("second", b)):
        for lo in list(range(0, 16)) + list(rng.integers(0, len(seq), 40)):
            for hi in {lo + 1, lo + 6, lo + 7, lo + 8, lo + 50, len(seq)}:
                if lo < hi <= len(seq):
                    assert f.fetch(name, int(lo), int(hi)) == seq[lo:hi].encode(), (name, lo, hi)


def test_out_of_range_and_unknown_record_name_file_and_record(lambda_fa):
    f = FastaFile(lambda_fa)
    for a, b in [(-1, 10), (48000, 48503), (10, 5)]:
        with pytest.raises(InputError) as e:
            f.fetch(LAMBDA, a, b)
        assert str(lambda_fa) in str(e.value) and LAMBDA in str(e.value) and "48502" in str(e.value)
    with pytest.raises(InputError) as e:
        f.fetch("chrX", 0, 10)
    msg = str(e.value)
    assert str(lambda_fa) in msg and "chrX" in msg and LAMBDA in msg  # lists what is there


def test_plain_gzip_is_decompressed_once_into_cache(tmp_path, read_only_dir, lambda_text, lambda_seq, capsys):
    src = read_only_dir / "lambda.fa.gz"
    with gzip.open(src, "wt") as f:
        f.write(lambda_text)
    read_only_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    before = listing(read_only_dir)
    cache = tmp_path / "cache"

    f = FastaFile(src, cache_dir=cache)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decompressing" in err and str(src) in err
    assert f.fetch(LAMBDA, 1000, 1100) == lambda_seq[1000:1100]
    entry = next((cache / "fasta").iterdir())
    copy = entry / "lambda.fa"
    assert copy.read_bytes() == lambda_text.encode()
    mtime = copy.stat().st_mtime_ns

    g = FastaFile(src, cache_dir=cache)
    assert capsys.readouterr().err == ""  # reused: no second decompression
    assert copy.stat().st_mtime_ns == mtime
    assert g.fetch(LAMBDA, 0, 48502) == lambda_seq
    assert listing(read_only_dir) == before
    assert not [p for p in entry.iterdir() if ".tmp" in p.name]


def test_cache_entry_follows_file_changes(make_fasta, tmp_path):
    path = make_fasta({"r": "ACGT" * 50})
    cache = tmp_path / "cache"
    assert FastaFile(path, cache).fetch("r", 0, 8) == b"ACGTACGT"
    make_fasta({"r": "TTGCA" * 50})
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    f = FastaFile(path, cache)
    assert f.lengths == {"r": 250} and f.fetch("r", 0, 8) == b"TTGCATTG"


def test_bgzip_random_access_with_indexes_in_cache(tmp_path, read_only_dir, lambda_seq, capsys):
    seq = lambda_seq.decode()
    records = {"lambda_a": seq, "short": "ACGTNacgtn" * 7, "lambda_rc_half": seq[:20000].lower()}
    src = read_only_dir / "multi.fa.gz"
    with bgzf.BgzfWriter(str(src)) as w:
        for name, s in records.items():
            w.write(f">{name} description here\n")
            for i in range(0, len(s), 60):
                w.write(s[i:i + 60] + "\n")
    read_only_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    cache = tmp_path / "cache"

    f = FastaFile(src, cache_dir=cache)
    assert capsys.readouterr().err == ""  # bgzip is read in place, never decompressed
    assert f.names == list(records)
    assert f.lengths == {k: len(v) for k, v in records.items()}
    for name, s in records.items():
        for a, b in random_slices(len(s), n=20, seed=len(name)):
            assert f.fetch(name, a, b) == s[a:b].encode()
    entry = next((cache / "fasta").iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "multi.fa.gz.fai", "multi.fa.gz.gzi"]
    assert listing(read_only_dir) == ["multi.fa.gz"]


def test_multi_record_choice_by_first_header_word(make_fasta):
    path = make_fasta({"chrA": "ACGT" * 30, "chrB": "GGCC" * 5, "chrC": "T" * 7})
    f = FastaFile(path)
    assert f.names == ["chrA", "chrB", "chrC"]
    assert f.lengths == {"chrA": 120, "chrB": 20, "chrC": 7}
    assert f.fetch("chrB", 2, 6) == b"CCGG"
    assert "chrC" in f and "chrA test" not in f


class _FetchDataset(Dataset):
    def __init__(self, fasta, name, n):
        self.fasta, self.name, self.n = fasta, name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        tokens = self.fasta.fetch_tokens(self.name, i * 100, i * 100 + 100)
        # The handle in use must have been opened by this worker process, not inherited.
        return tokens, self.fasta._pid == os.getpid(), os.getpid()


def test_dataloader_workers_each_open_their_own_handle(lambda_fa, lambda_seq):
    f = FastaFile(lambda_fa)
    f.fetch(LAMBDA, 0, 10)  # open a handle in the parent before forking
    loader = DataLoader(_FetchDataset(f, LAMBDA, 40), batch_size=4, num_workers=2)
    pids = set()
    got = []
    for tokens, own, pid in loader:
        assert own.all()
        pids.update(pid.tolist())
        got.extend(bytes(t.to(torch.uint8).tolist()) for t in tokens)
    assert got == [lambda_seq[i * 100:i * 100 + 100] for i in range(40)]
    assert len(pids) == 2 and os.getpid() not in pids


def test_pickle_drops_handle_and_reopens(lambda_fa, lambda_seq):
    f = FastaFile(lambda_fa)
    f.fetch(LAMBDA, 0, 10)
    g = pickle.loads(pickle.dumps(f))
    assert g._handle is None
    assert g.fetch(LAMBDA, 300, 400) == lambda_seq[300:400]
    f.close()
    assert f.fetch(LAMBDA, 0, 5) == lambda_seq[:5]  # reopens after close


def test_n_runs_on_real_gap_edges(n_fixture):
    f = FastaFile(n_fixture)
    assert f.names == ["20_58000_62000", "20_29651908_29655908"]
    s, e = f.n_runs("20_58000_62000")
    assert s.tolist() == [0] and e.tolist() == [2000]
    s, e = f.n_runs("20_29651908_29655908")
    assert s.tolist() == [2000] and e.tolist() == [4000]


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_n_count_matches_brute_force(make_fasta, monkeypatch, chunk):
    rng = random.Random(chunk)
    seq = "".join(rng.choice("ACGTacgt") if rng.random() < 0.8 else rng.choice("NnRy") * rng.randint(1, 30)
                  for _ in range(600))
    monkeypatch.setattr(fasta_mod, "_SCAN_CHUNK", chunk)  # runs crossing scan chunks must be joined
    f = FastaFile(make_fasta({"r": seq}))
    s, e = f._scan_n_runs("r")
    mask = np.array([c not in "ACGTacgt" for c in seq])
    assert int((e - s).sum()) == int(mask.sum())
    assert np.all(s[1:] > e[:-1])  # maximal runs: never touching
    starts = np.array([rng.randrange(len(seq)) for _ in range(200)])
    ends = np.minimum(starts + np.array([rng.randrange(1, 300) for _ in range(200)]), len(seq))
    f._n_runs["r"] = (s, e)
    expect = [int(mask[a:b].sum()) for a, b in zip(starts, ends)]
    assert f.n_count("r", starts, ends).tolist() == expect


def test_missing_file():
    with pytest.raises(InputError) as e:
        FastaFile("/nonexistent/genome.fa")
    assert "/nonexistent/genome.fa" in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("content", [b"", b">only_header\n", b">a\n>b\n"])
def test_empty_fasta(tmp_path, content):
    path = tmp_path / "empty.fa"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        FastaFile(path)
    assert str(path) in str(e.value) and "empty FASTA" in str(e.value)


def test_empty_plain_gzip(tmp_path):
    path = tmp_path / "empty.fa.gz"
    with gzip.open(path, "wb"):
        pass
    with pytest.raises(InputError) as e:
        FastaFile(path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value) and "empty FASTA" in str(e.value)


def test_non_iupac_bytes_name_file_record_and_position(make_fasta):
    path = make_fasta({"good": "ACGT" * 40, "bad": "ACGT" * 20 + "ACXT" + "ACGT" * 19})
    f = FastaFile(path)
    assert f.fetch("bad", 0, 80) == b"ACGT" * 20  # only fetched bytes are checked
    with pytest.raises(InputError) as e:
        f.fetch("bad", 70, 90)
    msg = str(e.value)
    assert str(path) in msg and "record bad" in msg and "'X'" in msg and "82" in msg
    with pytest.raises(InputError, match="record bad"):
        f.n_runs("bad")


def test_other_bad_files_are_input_errors(tmp_path):
    cases = {
        "dup.fa": b">a\nACGT\n>a\nACGT\n",
        "text.fa": b"hello world\nACGT\n",
        "ragged.fa": b">r\nACGTACGT\nAC\nACGTACGT\nAC\n",
        "seq.fa.bz2": bz2.compress(b">r\nACGT\n"),
        "fake.fa.gz": b">r\nACGT\n",
        "truncated.fa.gz": gzip.compress(b">r\n" + bytes(random.Random(0).choices(b"ACGT", k=4000)) + b"\n")[:500],
        "binary.fa": b">r\n\xff\xfe\x00\x01\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as e:
            f = FastaFile(path, cache_dir=tmp_path / "cache")
            f.fetch(f.names[0], 0, f.lengths[f.names[0]])
        assert str(path) in str(e.value), name


def test_bad_bgzip_files(tmp_path, lambda_text):
    full = tmp_path / "full.fa.gz"
    with bgzf.BgzfWriter(str(full)) as w:
        w.write(lambda_text)
    data = full.read_bytes()
    cases = {"truncated.fa.gz": data[:len(data) // 2], "no_eof.fa.gz": data[:-28]}
    empty = tmp_path / "empty.fa.gz"
    with bgzf.BgzfWriter(str(empty)):
        pass
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(InputError, match="not a valid bgzip") as e:
            FastaFile(tmp_path / name, cache_dir=tmp_path / "cache")
        assert name in str(e.value)
    with pytest.raises(InputError, match="empty FASTA"):
        FastaFile(empty, cache_dir=tmp_path / "cache")


def test_unusable_cache_is_an_input_error(lambda_fa, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(InputError) as e:
        FastaFile(lambda_fa, cache_dir=blocker)
    assert str(lambda_fa) in str(e.value) and "DNAMAMBA_CACHE" in str(e.value)
    with pytest.raises(InputError, match="DNAMAMBA_CACHE"):
        FastaFile(demo_genome_path(), cache_dir=blocker)
