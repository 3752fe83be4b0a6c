"""hnrnn.data reproduces every value the lesson's seeds print (fastai v1 HUMAN_NUMBERS)."""
import pytest
import torch

from hnrnn.data import LMLoader, from_text_file, human_numbers, number_words, tokenize

SEED_ITOS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxmaj", "xxup", "xxrep", "xxwrep", ",",
             "hundred", "thousand", "one", "two", "three", "four", "five", "six", "seven", "eight",
             "nine", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
             "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
             "eighteen", "nineteen"]

X1_0 = [2, 19, 11, 12, 9, 19, 11, 13, 9, 19, 11, 14, 9, 19, 11, 15, 9, 19, 11, 16, 9, 19, 11, 17, 9,
        19, 11, 18, 9, 19, 11, 19, 9, 19, 11, 20, 9, 19, 11, 29, 9, 19, 11, 30, 9, 19, 11, 31, 9, 19,
        11, 32, 9, 19, 11, 33, 9, 19, 11, 34, 9, 19, 11, 35, 9, 19, 11, 36, 9, 19]
Y1_0 = X1_0[1:] + [11]

TEXTIFY = {  # (batch, row) -> text, from seed 000
    (0, 0): "xxbos eight thousand one , eight thousand two , eight thousand three , eight thousand four , eight thousand five , eight thousand six , eight thousand seven , eight thousand eight , eight thousand nine , eight thousand ten , eight thousand eleven , eight thousand twelve , eight thousand thirteen , eight thousand fourteen , eight thousand fifteen , eight thousand sixteen , eight thousand seventeen , eight",
    (1, 0): "thousand eighteen , eight thousand nineteen , eight thousand twenty , eight thousand twenty one , eight thousand twenty two , eight thousand twenty three , eight thousand twenty four , eight thousand twenty five , eight thousand twenty six , eight thousand twenty seven , eight thousand twenty eight , eight thousand twenty nine , eight thousand thirty , eight thousand thirty one , eight thousand thirty two ,",
    (2, 0): "eight thousand thirty three , eight thousand thirty four , eight thousand thirty five , eight thousand thirty six , eight thousand thirty seven , eight thousand thirty eight , eight thousand thirty nine , eight thousand forty , eight thousand forty one , eight thousand forty two , eight thousand forty three , eight thousand forty four , eight thousand forty five , eight thousand forty six , eight",
    (0, 1): ", eight thousand forty six , eight thousand forty seven , eight thousand forty eight , eight thousand forty nine , eight thousand fifty , eight thousand fifty one , eight thousand fifty two , eight thousand fifty three , eight thousand fifty four , eight thousand fifty five , eight thousand fifty six , eight thousand fifty seven , eight thousand fifty eight , eight thousand fifty nine ,",
    (1, 1): "eight thousand sixty , eight thousand sixty one , eight thousand sixty two , eight thousand sixty three , eight thousand sixty four , eight thousand sixty five , eight thousand sixty six , eight thousand sixty seven , eight thousand sixty eight , eight thousand sixty nine , eight thousand seventy , eight thousand seventy one , eight thousand seventy two , eight thousand seventy three , eight thousand",
    (2, 1): "seventy four , eight thousand seventy five , eight thousand seventy six , eight thousand seventy seven , eight thousand seventy eight , eight thousand seventy nine , eight thousand eighty , eight thousand eighty one , eight thousand eighty two , eight thousand eighty three , eight thousand eighty four , eight thousand eighty five , eight thousand eighty six , eight thousand eighty seven , eight thousand eighty",
    (2, 63): "ninety , nine thousand nine hundred ninety one , nine thousand nine hundred ninety two , nine thousand nine hundred ninety three , nine thousand nine hundred ninety four , nine thousand nine hundred ninety five , nine thousand nine hundred ninety six , nine thousand nine hundred ninety seven , nine thousand nine hundred ninety eight , nine thousand nine hundred ninety nine xxbos eight thousand one , eight",
}

# data.show_batch(ds_type=Valid) after three batches were drawn: fastai's loader goes on to batch 3.
SHOW_BATCH_BPTT70 = [
    "thousand forty seven , eight thousand forty eight , eight thousand forty nine , eight thousand fifty , eight thousand fifty one , eight thousand fifty two , eight thousand fifty three , eight thousand fifty four , eight thousand fifty five , eight thousand fifty six , eight thousand fifty seven , eight thousand fifty eight , eight thousand fifty nine , eight thousand sixty , eight thousand sixty",
    "eight , eight thousand eighty nine , eight thousand ninety , eight thousand ninety one , eight thousand ninety two , eight thousand ninety three , eight thousand ninety four , eight thousand ninety five , eight thousand ninety six , eight thousand ninety seven , eight thousand ninety eight , eight thousand ninety nine , eight thousand one hundred , eight thousand one hundred one , eight thousand one",
    "thousand one hundred twenty four , eight thousand one hundred twenty five , eight thousand one hundred twenty six , eight thousand one hundred twenty seven , eight thousand one hundred twenty eight , eight thousand one hundred twenty nine , eight thousand one hundred thirty , eight thousand one hundred thirty one , eight thousand one hundred thirty two , eight thousand one hundred thirty three , eight thousand",
    "three , eight thousand one hundred fifty four , eight thousand one hundred fifty five , eight thousand one hundred fifty six , eight thousand one hundred fifty seven , eight thousand one hundred fifty eight , eight thousand one hundred fifty nine , eight thousand one hundred sixty , eight thousand one hundred sixty one , eight thousand one hundred sixty two , eight thousand one hundred sixty three",
    "thousand one hundred eighty three , eight thousand one hundred eighty four , eight thousand one hundred eighty five , eight thousand one hundred eighty six , eight thousand one hundred eighty seven , eight thousand one hundred eighty eight , eight thousand one hundred eighty nine , eight thousand one hundred ninety , eight thousand one hundred ninety one , eight thousand one hundred ninety two , eight thousand",
]
SHOW_BATCH_BPTT3 = ["xxbos eight thousand", ", eight thousand", "thousand eighty seven",
                    "one hundred twenty", "two , eight"]

# Seed 003: the bptt=3 train batch drawn by one_batch() after fastai's sanity check drew one.
TRAIN_BPTT3_X_0_5 = [[13, 9, 14], [13, 10, 30], [10, 26, 17], [9, 16, 10], [18, 10, 20]]
TRAIN_BPTT3_X_COL0 = [13, 13, 10, 9, 18, 9, 11, 11, 13, 19, 16, 23, 24, 9, 12, 9, 13, 14, 15, 11, 10,
                      22, 15, 9, 10, 14, 11, 16, 10, 28, 11, 9, 20, 9, 15, 15, 11, 18, 10, 28, 23, 24,
                      9, 16, 10, 16, 19, 20, 12, 10, 22, 16, 17, 17, 17, 11, 24, 10, 9, 15, 16, 9, 18, 11]


@pytest.fixture(scope="module")
def data():
    return human_numbers()


def test_texts_match_the_lesson():
    from hnrnn.data import numbers_text
    train, valid = numbers_text(1, 7999), numbers_text(8001, 9999)
    assert train[:80] == "one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirt"
    assert valid[-80:] == " nine thousand nine hundred ninety eight, nine thousand nine hundred ninety nine"
    assert " ".join(tokenize(train))[:80] == "xxbos one , two , three , four , five , six , seven , eight , nine , ten , eleve"


def test_number_words():
    assert number_words(1) == "one"
    assert number_words(101) == "one hundred one"
    assert number_words(8124) == "eight thousand one hundred twenty four"
    assert number_words(9999) == "nine thousand nine hundred ninety nine"
    with pytest.raises(ValueError, match="1..9999"):
        number_words(0)


def test_vocab_and_token_counts(data):
    assert data.vocab == SEED_ITOS
    assert len(data.train_ids) == 50079
    assert len(data.valid_ids) == 13017
    assert data.train_ids.dtype == data.valid_ids.dtype == torch.int64


def test_valid_loader_walkthrough(data):
    dl = LMLoader(data.valid_ids, bs=64, bptt=70)
    assert (dl.bptt, len(dl)) == (70, 3)
    batches = list(dl)
    assert len(batches) == 3
    assert sum(x.numel() for x, _ in batches) == 13440
    for x, y in batches:
        assert x.shape == y.shape == (64, 70) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert batches[0][0][0].tolist() == X1_0
    assert batches[0][1][0].tolist() == Y1_0
    for (b, row), text in TEXTIFY.items():
        assert data.textify(batches[b][0][row]) == text
    assert data.textify(batches[0][1][0]) == TEXTIFY[(0, 0)].split(" ", 1)[1] + " thousand"


def test_show_batch_rows(data):
    after_three = LMLoader(data.valid_ids, bs=64, bptt=70).batch(3)[0]
    assert [data.textify(after_three[i]) for i in range(5)] == SHOW_BATCH_BPTT70
    first = LMLoader(data.valid_ids, bs=64, bptt=3).batch(0)[0]
    assert [data.textify(first[i]) for i in range(5)] == SHOW_BATCH_BPTT3


def test_train_bptt3_batch(data):
    dl = LMLoader(data.train_ids, bs=64, bptt=3)
    assert len(dl) == 261
    x, y = dl.batch(1)
    assert x.shape == y.shape == (64, 3)
    assert x[0:5].tolist() == TRAIN_BPTT3_X_0_5
    assert x[:, 0].tolist() == TRAIN_BPTT3_X_COL0


def test_each_epoch_starts_again(data):
    dl = LMLoader(data.valid_ids, bs=64, bptt=20)
    first = [x for x, _ in dl]
    second = [x for x, _ in dl]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_rows_wrap_and_continue(data):
    # Consecutive batches of a row continue the stream; the last row wraps to the start.
    dl = LMLoader(torch.arange(10), bs=2, bptt=3)
    assert len(dl) == 2
    (x0, y0), (x1, y1) = list(dl)
    assert x0.tolist() == [[0, 1, 2], [5, 6, 7]]
    assert x1.tolist() == [[3, 4, 5], [8, 9, 0]]
    assert y1.tolist() == [[4, 5, 6], [9, 0, 1]]


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        LMLoader(torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        LMLoader(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="positive"):
        LMLoader(torch.arange(5), bs=0)


def test_user_text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The cat sat,\nthe cat ran.\nthe dog sat\nthe cat sat\nthe dog ran\n")
    d = from_text_file(str(f))
    # lines joined by ", " (so "sat," becomes "sat , ,"); words seen once in train become xxunk
    assert d.textify(d.train_ids[:8]) == "xxbos xxmaj the cat sat , , the"
    assert d.vocab == SEED_ITOS[:9] + ["the", ",", "cat", "sat"]
    assert d.textify(d.valid_ids) == "xxbos the xxunk xxunk"


@pytest.mark.parametrize("content,match", [(b"", "at least two"), (b"\n\n  \n", "at least two"),
                                            (b"\x00\x01\x02abc\n", "binary"), (b"\xff\xfe\xfa\n", "UTF-8")])
def test_user_text_file_errors(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        from_text_file(str(f))


def test_missing_text_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        from_text_file(str(tmp_path / "nope.txt"))


def test_directory_is_not_a_text_file(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        from_text_file(str(tmp_path))


def test_unreadable_text_file(tmp_path, monkeypatch):
    f = tmp_path / "locked.txt"
    f.write_text("one\ntwo\n")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(ValueError, match="cannot read .*Permission denied"):
        from_text_file(str(f))
