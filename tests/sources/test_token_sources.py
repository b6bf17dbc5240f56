"""Language-model sources on real text: tokenizers, token datasets (every spec kind), the GPT, and
Hugging Face causal LMs built locally (nothing is downloaded)."""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.errors import DatasetError, LogitCacheError, ModelError, SpecError
from logitcache.sources import (
    get_model,
    get_token_dataset,
    get_tokenizer,
    list_token_datasets,
    lm_context_length,
)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "data" / "text" / "shakespeare"
PLAYS = sorted(p.name for p in SHAKESPEARE.glob("*.md"))
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHATS = [
    [{"role": "system", "content": "Speak as Hamlet."}, {"role": "user", "content": "Who's there?"},
     {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the king!"},
     {"role": "assistant", "content": "Bernardo?"}],
    [{"role": "user", "content": "Say, what is Horatio there?"}, {"role": "assistant", "content": "A piece of him."}],
    [{"role": "user", "content": "No answer comes."}],
]


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and isinstance(excinfo.value, LogitCacheError), message
    return message


def check_rows(source, seq_len):
    """The row invariants every TokenSource keeps."""
    tokens, mask, lengths = source.tokens, source.loss_mask, source.lengths
    n = len(source.keys)
    assert tokens.shape == mask.shape == (n, seq_len) and lengths.shape == (n,)
    assert tokens.dtype == np.int64 and mask.dtype == bool and lengths.dtype == np.int64
    assert len(set(source.keys)) == n and (lengths >= 1).all() and (lengths <= seq_len).all()
    columns = np.arange(seq_len)[None, :]
    assert not mask[:, -1].any() and not mask[columns >= lengths[:, None] - 1].any()
    assert (tokens[columns >= lengths[:, None]] == source.tokenizer.pad_id).all()
    assert ((tokens >= 0) & (tokens < source.tokenizer.vocab_size)).all()
    json.dumps(source.description)
    assert source.description["rows"] == n and source.description["targets"] == int(mask.sum())


def stream_of(source, indices=None) -> np.ndarray:
    """Cut rows overlap by one token: the first row whole, then every row but its first token."""
    indices = range(len(source.keys)) if indices is None else indices
    rows = [source.tokens[i, : source.lengths[i]] for i in indices]
    return np.concatenate([rows[0]] + [row[1:] for row in rows[1:]])


def flat(lists) -> list:
    return [item for part in lists for item in part]


def joined(parts, eos) -> list[int]:
    """Token lists joined with ``eos`` between them, as packing joins documents."""
    return flat(part + [eos] for part in parts)[:-1]


def play_tokens(tokenizer, name) -> list[int]:
    return tokenizer.encode((SHAKESPEARE / name).read_text(encoding="utf-8"))


def write_tokenizer(directory: Path, text: str, vocab_size=300, extra_tokens=(), template=CHAT_TEMPLATE) -> Path:
    """A byte-level BPE tokenizer trained on ``text``, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    tokenizer.add_tokens(list(extra_tokens))
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    text = (SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")[:30000]
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "bpe", text, extra_tokens=["<|user|>", "<|assistant|>"])


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module of token-dataset and tokenizer factories, importable as ``lc_tokens.factories``."""
    (tmp_path / "lc_tokens").mkdir()
    (tmp_path / "lc_tokens" / "__init__.py").write_text("")
    (tmp_path / "lc_tokens" / "factories.py").write_text(textwrap.dedent("""
        def lines():
            return ["To be, or not to be", "that is the question"] * 10

        def chats():
            return [{"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Me."}]}]

        def ids():
            return [{"input_ids": [5, 6, 7, 8], "loss_mask": [False, True, True, False]}, {"input_ids": [1, 2, 3]}]

        def too_big():
            return [{"input_ids": [1, 2, 999]}]

        def per_token_mask():
            return [{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}]

        def by_split(split):
            return {"train": ["abc", "def"], "val": ["ghi"], "all": ["abc", "def", "ghi"]}[split]

        def numbers():
            return [3, 4]

        class Letters:
            vocab_size = 27
            eos_id = 26
            def encode(self, text):
                return [ord(c) - 97 for c in text.lower() if "a" <= c <= "z"]
            def decode(self, ids):
                return "".join(chr(i + 97) for i in ids if i < 26)

        def letters():
            return Letters()

        def not_a_tokenizer():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lc_tokens.factories"
    sys.modules.pop("lc_tokens.factories", None)
    sys.modules.pop("lc_tokens", None)


# ---------------------------------------------------------------- tokenizers

def test_bytes_tokenizer_round_trips_utf8():
    tokenizer = get_tokenizer("bytes")
    text = "Now cracks a noble heart. Good night, sweet prince: — ça va, 王子 🙂"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8")) and tokenizer.decode(ids) == text
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id) == (256, 0, 0)
    described = tokenizer.describe()
    assert json.loads(json.dumps(described)) == described and described["identity"].startswith("sha256:")
    assert described["identity"] == get_tokenizer("bytes").identity


def test_hf_tokenizer_directory_identity_follows_the_vocabulary(hf_dir, tmp_path):
    tokenizer = get_tokenizer(f"hf:{hf_dir}")
    text = "O, that this too too solid flesh would melt"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab_size == 302 and tokenizer.eos_id == tokenizer.encode("<|endoftext|>")[0]
    copy = shutil.copytree(hf_dir, tmp_path / "elsewhere")
    assert get_tokenizer(str(copy)).identity == tokenizer.identity  # a plain path works; the place does not count
    hamlet = (SHAKESPEARE / "hamlet.md").read_text(encoding="utf-8")[:30000]
    other = write_tokenizer(tmp_path / "other", hamlet, extra_tokens=["<|user|>"])  # one added token fewer
    assert get_tokenizer(str(other)).identity != tokenizer.identity
    assert get_tokenizer(str(other)).vocab_size == 301


def test_hf_tokenizer_without_transformers_reads_tokenizer_json(hf_dir, monkeypatch):
    full = get_tokenizer(f"hf:{hf_dir}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    bare = get_tokenizer(f"hf:{hf_dir}")
    text = (SHAKESPEARE / "macbeth.md").read_text(encoding="utf-8")[:2000]
    assert bare.encode(text) == full.encode(text) and bare.identity == full.identity
    assert (bare.vocab_size, bare.eos_id) == (full.vocab_size, full.eos_id)
    with pytest.raises(SpecError) as excinfo:
        bare.render_chat(CHATS[1])
    assert "logitcache[lm]" in one_line(excinfo)


def test_factory_tokenizers(factories):
    letters = get_tokenizer(f"{factories}:letters")
    assert letters.encode("Ab c") == [0, 1, 2] and letters.decode([7, 8]) == "hi" and letters.eos_id == 26
    assert letters.identity == get_tokenizer(f"{factories}:letters").identity
    with pytest.raises(SpecError, match="has no encode"):
        get_tokenizer(f"{factories}:not_a_tokenizer")


@pytest.mark.parametrize("spec, message", [
    ("gpt2-made-up", "unknown tokenizer 'gpt2-made-up': not 'bytes', not hf:DIR"),
    ("hf:/no/such/dir", "directory '/no/such/dir' does not exist"),
    ("no_such_module_x.y:build", "cannot import 'no_such_module_x.y'"),
])
def test_tokenizer_spec_errors(spec, message):
    with pytest.raises(SpecError) as excinfo:
        get_tokenizer(spec)
    assert message in one_line(excinfo)


def test_a_directory_without_tokenizer_files_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecError) as excinfo:
        get_tokenizer(f"hf:{tmp_path}")
    assert "holds no tokenizer files (looked for tokenizer.json" in one_line(excinfo)


def test_hf_tokenizer_needs_transformers_or_tokenizers(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(SpecError) as excinfo:
        get_tokenizer(str(hf_dir))
    assert "pip install 'logitcache[lm]'" in one_line(excinfo)


# ---------------------------------------------------------------- text

def test_text_is_packed_with_eos_between_documents_and_split_by_tokens():
    tokenizer = get_tokenizer("bytes")
    spec = f"text:{SHAKESPEARE}/*.md"
    train, val = (get_token_dataset(f"{spec}@{split}", tokenizer, 512) for split in ("train", "val"))
    for source in (train, val):
        check_rows(source, 512)
        assert source.description["packing"] and source.description["documents"] == 4
        assert (source.lengths[:-1] == 512).all()  # packed: only the last row is short
    plays = [play_tokens(tokenizer, name) for name in PLAYS]
    cuts = [len(p) - len(p) // 10 for p in plays]
    assert stream_of(train).tolist() == joined([p[:c] for p, c in zip(plays, cuts)], tokenizer.eos_id)
    assert stream_of(val).tolist() == joined([p[c:] for p, c in zip(plays, cuts)], tokenizer.eos_id)
    # every token but the first is a target exactly once: rows overlap by one token
    assert train.loss_mask.sum() == sum(cuts) + 3 - 1
    assert train.keys[:2] == ["hamlet.md#0", "hamlet.md#511"] and val.keys[0] == f"hamlet.md#{cuts[0]}"
    assert not set(train.keys) & set(val.keys)
    assert get_token_dataset(spec, tokenizer, 512, split="val").keys == val.keys


def test_text_with_a_hf_tokenizer_is_deterministic_and_unpacked_rows_stay_in_their_document(hf_dir, tmp_path):
    texts = {name: (SHAKESPEARE / name).read_text(encoding="utf-8")[:6000] for name in ("macbeth.md", "othello.md")}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    tokenizer = get_tokenizer(f"hf:{hf_dir}")
    first, again = (get_token_dataset(f"text:{tmp_path}/*.md", tokenizer, 64, pack=False) for _ in range(2))
    check_rows(first, 64)
    assert all(np.array_equal(getattr(first, a), getattr(again, a)) for a in ("tokens", "loss_mask", "lengths"))
    assert first.keys == again.keys and first.description == again.description
    real = np.arange(64)[None, :] < first.lengths[:, None]
    assert tokenizer.eos_id not in first.tokens[real].tolist()  # no separator: documents stay apart
    macbeth = [i for i, key in enumerate(first.keys) if key.startswith("macbeth.md#")]
    short = [i for i in range(len(first.keys)) if first.lengths[i] < 64]
    assert len(short) == 2 and macbeth[-1] in short  # each document's last row is padded
    assert stream_of(first, macbeth).tolist() == tokenizer.encode(texts["macbeth.md"])


def test_split_names_and_at_signs_in_paths(tmp_path):
    (tmp_path / "notes@v2.txt").write_text("Ay, there's the rub. " * 40)
    tokenizer = get_tokenizer("bytes")
    every = get_token_dataset(f"text:{tmp_path}/notes@v2.txt", tokenizer, 32)
    val = get_token_dataset(f"text:{tmp_path}/notes@v2.txt@val", tokenizer, 32)
    assert every.description["split"] == "all" and val.description["split"] == "val"
    assert val.description["corpus_tokens"] == 84 and val.description["tokens"] == 32 + 32 + 22  # rows overlap
    assert list_token_datasets() == ["hf", "jsonl", "parquet", "text"]
    with pytest.raises(SpecError) as excinfo:
        get_token_dataset(f"text:{tmp_path}/notes@v2.txt@val", tokenizer, 32, split="train")
    assert "names split 'val' but --split is 'train'" in one_line(excinfo)


@pytest.mark.parametrize("spec, seq_len, error, message", [
    ("text:{tmp}/nothing/*.txt", 16, DatasetError, "no file matches"),
    ("text:{tmp}/missing.txt", 16, DatasetError, "no file"),
    ("text:{tmp}", 16, DatasetError, "is a directory; give a file or a glob"),
    ("text:{tmp}/empty.txt", 16, DatasetError, "holds no tokens"),
    ("text:{tmp}/one.txt", 1, SpecError, "seq_len must be an integer of at least 2"),
    ("words:{tmp}/one.txt", 16, SpecError, "unknown token dataset 'words'; known: hf, jsonl, parquet, text"),
    ("text:{tmp}/one.txt", 16, SpecError, "unknown split 'test'"),
    ("text:{tmp}/latin1.txt", 16, DatasetError, "is not UTF-8 text"),
])
def test_token_dataset_errors_are_one_line(tmp_path, spec, seq_len, error, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("Words, words, words.")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    split = "test" if "unknown split" in message else None
    with pytest.raises(error) as excinfo:
        get_token_dataset(spec.format(tmp=tmp_path), get_tokenizer("bytes"), seq_len, split=split)
    assert message in one_line(excinfo)


# ---------------------------------------------------------------- records: jsonl, parquet, hf, factories

def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def targets_of(source, row) -> list[int]:
    """The tokens row ``row`` trains on: tokens[t + 1] wherever loss_mask[t]."""
    return source.tokens[row, 1:][source.loss_mask[row, :-1]].tolist()


def test_chat_records_train_on_the_assistant_tokens_only(tmp_path, hf_dir):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"id": i, "messages": chat} for i, chat in enumerate(CHATS)])
    unanswered = write_jsonl(tmp_path / "unanswered.jsonl", [{"messages": CHATS[2]}])
    for tokenizer in (get_tokenizer("bytes"), get_tokenizer(f"hf:{hf_dir}")):
        with pytest.raises(DatasetError) as excinfo:
            get_token_dataset(f"jsonl:{unanswered}", tokenizer, 128)
        assert "has no target token (chats without an assistant message?" in one_line(excinfo)
        source = get_token_dataset(f"jsonl:{path}", tokenizer, 160)  # FIELD: messages, the first default present
        check_rows(source, 160)
        assert source.keys == ["chats.jsonl:1", "chats.jsonl:2", "chats.jsonl:3"]
        assert not source.description["packing"] and source.description["field"] == "messages"
        for row, chat in enumerate(CHATS):
            end = "<|endoftext|>" if tokenizer.kind == "hf" else "\0"  # the template's end of turn; bytes: eos
            replies = [m["content"] + end for m in chat if m["role"] == "assistant"]
            assert targets_of(source, row) == flat(tokenizer.encode(r) for r in replies)
            rendered = tokenizer.decode(source.tokens[row, : source.lengths[row]])
            assert rendered.startswith("<|system|>" if row == 0 else "<|user|>") and rendered.endswith(end)
        packed = get_token_dataset(f"jsonl:{path}", tokenizer, 24, pack=True)  # chats end themselves: no separator
        check_rows(packed, 24)
        assert stream_of(packed).tolist() == flat(source.tokens[i, : source.lengths[i]].tolist() for i in range(3))
        assert flat(targets_of(packed, row) for row in range(len(packed.keys))) == flat(
            targets_of(source, row) for row in range(3))


def test_jsonl_text_records_fields_packing_and_val_every_tenth(tmp_path):
    lines = (SHAKESPEARE / "twelfth-night.md").read_text(encoding="utf-8").splitlines()
    speeches = [line for line in lines if len(line) > 30][:40]
    path = write_jsonl(tmp_path / "speeches.jsonl", [{"line": s, "n": i} for i, s in enumerate(speeches)])
    tokenizer = get_tokenizer("bytes")
    every = get_token_dataset(f"jsonl:{path}:line", tokenizer, 160)
    train, val = (get_token_dataset(f"jsonl:{path}:line@{s}", tokenizer, 160) for s in ("train", "val"))
    check_rows(every, 160)
    assert val.keys == [f"speeches.jsonl:{i}" for i in (10, 20, 30, 40)] and len(train.keys) == 36
    assert sorted(train.keys + val.keys) == sorted(every.keys)
    assert tokenizer.decode(every.tokens[3, : every.lengths[3]]) == speeches[3]
    packed = get_token_dataset(f"jsonl:{path}:line", tokenizer, 160, pack=True)
    check_rows(packed, 160)
    assert stream_of(packed).tolist() == joined([tokenizer.encode(s) for s in speeches], 0)
    with pytest.raises(DatasetError) as excinfo:
        get_token_dataset(f"jsonl:{path}:line", tokenizer, 40)
    assert "record speeches.jsonl:2 has 64 tokens, more than seq_len 40" in one_line(excinfo)
    with pytest.raises(DatasetError) as excinfo:
        get_token_dataset(f"jsonl:{path}:speech", tokenizer, 160)
    assert f"{path}:1 has no field 'speech'; its fields: line, n" in one_line(excinfo)


def test_bad_json_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "Alas, poor Yorick!"}\n\n{"text": "I knew him\n')
    with pytest.raises(DatasetError) as excinfo:
        get_token_dataset(f"jsonl:{path}", get_tokenizer("bytes"), 64)
    assert f"{path}:3 is not valid JSON" in one_line(excinfo)
    write_jsonl(path, [{"text": ["a", 1]}])
    with pytest.raises(DatasetError, match="holds a list, not text, chat messages"):
        get_token_dataset(f"jsonl:{path}", get_tokenizer("bytes"), 64)


def test_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    speeches = ["Out, damned spot! out, I say!", "What's done cannot be undone.", "To bed, to bed, to bed."]
    pq.write_table(pa.table({"text": speeches, "act": [5, 5, 5]}), tmp_path / "macbeth.parquet")
    pq.write_table(pa.table({"input_ids": [[1, 2, 3, 4]], "loss_mask": [[False, True, True, False]]}),
                   tmp_path / "ids.parquet")
    tokenizer = get_tokenizer("bytes")
    source = get_token_dataset(f"parquet:{tmp_path}/macbeth.parquet", tokenizer, 40)
    check_rows(source, 40)
    assert source.keys == ["macbeth.parquet#0", "macbeth.parquet#1", "macbeth.parquet#2"]
    assert [tokenizer.decode(source.tokens[i, : source.lengths[i]]) for i in range(3)] == speeches
    ids = get_token_dataset(f"parquet:{tmp_path}/ids.parquet", tokenizer, 8)
    assert targets_of(ids, 0) == [3, 4] and ids.lengths.tolist() == [4]
    with pytest.raises(DatasetError) as excinfo:
        get_token_dataset(f"parquet:{tmp_path}/macbeth.parquet:speech", tokenizer, 40)
    assert "has no field 'speech'; its fields: text, act" in one_line(excinfo)


def test_saved_hugging_face_datasets(tmp_path):
    import datasets

    speeches = [f"{i}: " + s for i, s in enumerate(["Fair is foul", "and foul is fair"] * 6)]
    datasets.Dataset.from_dict({"text": speeches}).save_to_disk(str(tmp_path / "flat"))
    parts = {"train": speeches[:8], "test": speeches[8:]}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": part}) for name, part in parts.items()}
                         ).save_to_disk(str(tmp_path / "dict"))
    tokenizer = get_tokenizer("bytes")
    every = get_token_dataset(f"hf:{tmp_path}/flat", tokenizer, 32)
    check_rows(every, 32)
    assert every.keys == [str(i) for i in range(12)]
    assert get_token_dataset(f"hf:{tmp_path}/flat:text@val", tokenizer, 32).keys == ["9"]
    val = get_token_dataset(f"hf:{tmp_path}/dict@val", tokenizer, 32)
    assert val.keys == ["test/0", "test/1", "test/2", "test/3"]
    assert tokenizer.decode(val.tokens[0, : val.lengths[0]]) == speeches[8]
    assert len(get_token_dataset(f"hf:{tmp_path}/dict", tokenizer, 32).keys) == 12
    datasets.Dataset.from_dict({"messages": CHATS[1:], "n": [1, 2]}).save_to_disk(str(tmp_path / "chats"))
    chats = get_token_dataset(f"hf:{tmp_path}/chats", tokenizer, 80)
    assert chats.description["field"] == "messages" and targets_of(chats, 0) == tokenizer.encode("A piece of him.\0")
    with pytest.raises(DatasetError) as excinfo:
        get_token_dataset(f"hf:{tmp_path}/nowhere", tokenizer, 32)
    assert "does not exist" in one_line(excinfo)


def test_factory_token_datasets(factories):
    tokenizer = get_tokenizer("bytes")
    lines = get_token_dataset(f"{factories}:lines", tokenizer, 32)
    assert len(lines.keys) == 20 and lines.keys[0] == "0"
    assert get_token_dataset(f"{factories}:lines@val", tokenizer, 32).keys == ["9", "19"]
    chats = get_token_dataset(f"{factories}:chats", tokenizer, 32)
    assert targets_of(chats, 0) == tokenizer.encode("Me.") + [0]
    ids = get_token_dataset(f"{factories}:ids", tokenizer, 8)
    assert ids.tokens[:, :4].tolist() == [[5, 6, 7, 8], [1, 2, 3, 0]] and ids.lengths.tolist() == [4, 3]
    assert ids.loss_mask[:, :4].tolist() == [[False, True, True, False], [True, True, False, False]]
    assert get_token_dataset(f"{factories}:by_split@val", tokenizer, 8).lengths.tolist() == [3]
    letters = get_tokenizer(f"{factories}:letters")
    packed = get_token_dataset(f"{factories}:lines", letters, 16, pack=True)
    pair = [letters.encode("To be, or not to be"), letters.encode("that is the question")]
    assert stream_of(packed).tolist() == joined(pair * 10, 26)


@pytest.mark.parametrize("factory, message", [
    ("too_big", "token id 999 is outside the vocabulary of tokenizer 'bytes' (ids 0-255)"),
    ("per_token_mask", "loss_mask marks its last position"),
    ("numbers", "item 0 is a int, not text or a dict"),
    ("missing", "has no 'missing'"),
])
def test_factory_token_dataset_errors(factories, factory, message):
    with pytest.raises(LogitCacheError) as excinfo:
        get_token_dataset(f"{factories}:{factory}", get_tokenizer("bytes"), 8)
    assert message in one_line(excinfo)


# ---------------------------------------------------------------- models

def test_gpt_is_causal_deterministic_and_knows_its_context():
    torch.manual_seed(0)
    model = get_model("gpt:n_layer=2,n_head=2,n_embd=32,block_size=24", num_classes=256).eval()
    torch.manual_seed(0)
    again = get_model("gpt:n_layer=2,n_head=2,n_embd=32,block_size=24", num_classes=256)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    idx = torch.tensor([get_tokenizer("bytes").encode("Something is rotten in th")[:24]])
    changed = idx.clone()
    changed[0, 15] = 7
    with torch.no_grad():
        logits, other = model(idx), model(changed)
    assert logits.shape == (1, 24, 256) and lm_context_length(model) == 24
    assert torch.equal(logits[:, :15], other[:, :15]) and not torch.allclose(logits[:, 15:], other[:, 15:])
    with pytest.raises(ModelError, match="longer than its block_size 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    assert model.head.weight is model.wte.weight
    assert lm_context_length(get_model("mlp", num_classes=3)) is None


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=302, bos_token_id=0,
                        eos_token_id=0)
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    return directory


def test_hugging_face_causal_lm_wrapper(gpt2_dir, hf_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = get_tokenizer(f"hf:{hf_dir}")
    teacher = get_model(f"hf:{gpt2_dir}", num_classes=tokenizer.vocab_size).eval()
    idx = torch.tensor([tokenizer.encode("Frailty, thy name is woman!")])
    with torch.no_grad():
        logits = teacher(idx)
        expected = AutoModelForCausalLM.from_pretrained(str(gpt2_dir), local_files_only=True)(idx).logits
    assert logits.shape == (1, idx.shape[1], 302) and torch.allclose(logits, expected)
    assert lm_context_length(teacher) == 64 and teacher.vocab_size == 302
    torch.manual_seed(1)
    student = get_model(f"hf-config:{gpt2_dir}/config.json", num_classes=302)
    torch.manual_seed(1)
    twin = get_model(f"hf-config:{gpt2_dir}", num_classes=302)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), twin.state_dict().values()))
    assert not torch.equal(student.model.lm_head.weight, teacher.model.lm_head.weight)


@pytest.mark.parametrize("spec, num_classes, error, message", [
    ("hf:{gpt2}", 400, ModelError, "predicts 302 tokens, but 400 were asked for"),
    ("hf-config:{gpt2}/config.json", 303, ModelError, "predicts 302 tokens, but 303 were asked for"),
    ("hf:{gpt2}/nowhere", 302, ModelError, "does not exist"),
    ("hf:{tok}", 302, ModelError, "holds no config.json"),
])
def test_hugging_face_model_errors(gpt2_dir, hf_dir, spec, num_classes, error, message):
    with pytest.raises(error) as excinfo:
        get_model(spec.format(gpt2=gpt2_dir, tok=hf_dir), num_classes=num_classes)
    assert message in one_line(excinfo)


def test_hugging_face_models_need_transformers(gpt2_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(SpecError) as excinfo:
        get_model(f"hf:{gpt2_dir}", num_classes=302)
    assert "pip install 'logitcache[lm]'" in one_line(excinfo)
