"""Tests of rcond.toyworld: determinism, record schema, real VADER rewards, spread, atomic output."""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import re
import statistics
import string
import subprocess
import sys
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rcond import toyworld
from rcond.cli import build_parser, main

SMALL = {"n_reviews": 300, "n_dialogs": 60, "n_text": 60, "progress": False}
ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def file_bytes(paths: dict) -> dict:
    return {name: p.read_bytes() for name, p in paths.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return toyworld.generate(tmp_path_factory.mktemp("tw") / "out", seed=0, **SMALL)


@pytest.fixture(scope="module")
def vader():
    return SentimentIntensityAnalyzer()


def test_returns_the_four_files(small):
    assert set(small) == {"reviews", "dialogs", "text", "meta"}
    assert sorted(p.name for p in small["meta"].parent.iterdir()) == [
        "dialogs.jsonl", "meta.json", "reviews.jsonl", "text.jsonl"]
    assert len(read_jsonl(small["reviews"])) == 300
    assert len(read_jsonl(small["dialogs"])) == 60
    assert len(read_jsonl(small["text"])) == 60


def test_same_seed_is_byte_identical_and_other_seed_differs(small, tmp_path):
    again = toyworld.generate(tmp_path / "again", seed=0, **SMALL)
    assert file_bytes(again) == file_bytes(small)
    other = toyworld.generate(tmp_path / "other", seed=1, **SMALL)
    for name in ("reviews", "dialogs", "text"):
        assert other[name].read_bytes() != small[name].read_bytes()


def test_streams_are_independent_of_the_other_counts(small, tmp_path):
    fewer = toyworld.generate(tmp_path / "fewer", seed=0, n_reviews=100, n_dialogs=5, n_text=0, progress=False)
    assert read_jsonl(fewer["reviews"]) == read_jsonl(small["reviews"])[:100]
    assert read_jsonl(fewer["dialogs"]) == read_jsonl(small["dialogs"])[:5]
    assert fewer["text"].read_bytes() == b""


def test_review_schema_and_rewards_are_vader(small, vader):
    for rec in read_jsonl(small["reviews"]):
        assert set(rec) == {"prompt", "response", "reward", "topic", "entity", "latent_sentiment", "latent_label"}
        assert rec["prompt"] == f"Review of {rec['entity']} ({_label(rec['topic'])}):"
        assert rec["response"].strip() == rec["response"] and rec["response"]
        assert rec["reward"] == vader.polarity_scores(rec["response"])["compound"]
        assert -1.0 <= rec["latent_sentiment"] <= 1.0
        assert rec["latent_label"] == toyworld.latent_label(rec["latent_sentiment"])


def _label(topic_name: str) -> str:
    return next(t["label"] for t in toyworld.load_assets()["topics"] if t["name"] == topic_name)


def test_dialog_turns_alternate_and_assistant_turns_carry_vader(small, vader):
    for rec in read_jsonl(small["dialogs"]):
        assert set(rec) == {"turns", "topic", "entity", "styles", "latent_helpfulness"}
        turns = rec["turns"]
        assert 4 <= len(turns) <= 8 and len(turns) % 2 == 0
        for i, turn in enumerate(turns):
            assert turn["role"] == ("user" if i % 2 == 0 else "assistant")
            assert isinstance(turn["content"], str) and turn["content"]
            if turn["role"] == "assistant":
                assert set(turn) == {"role", "content", "reward"}
                assert turn["reward"] == vader.polarity_scores(turn["content"])["compound"]
            else:
                assert set(turn) == {"role", "content"}
        assert len(rec["styles"]) == len(rec["latent_helpfulness"]) == len(turns) // 2


def test_text_documents(small):
    docs = read_jsonl(small["text"])
    for doc in docs:
        assert set(doc) == {"text", "topic", "entity"}
        assert len(doc["text"].split()) >= 8
    assert len({doc["text"] for doc in docs}) > 0.9 * len(docs)


def test_meta_summarises_the_run(small):
    meta = json.loads(small["meta"].read_text())
    rewards = [r["reward"] for r in read_jsonl(small["reviews"])]
    turns = [t["reward"] for d in read_jsonl(small["dialogs"]) for t in d["turns"] if t["role"] == "assistant"]
    assert meta["seed"] == 0
    assert meta["generator_version"] == toyworld.GENERATOR_VERSION
    assert meta["counts"]["reviews"] == 300 and meta["counts"]["assistant_turns"] == len(turns)
    stats = meta["reward"]["reviews"]
    assert stats["count"] == 300 and sum(stats["histogram"]) == 300
    assert stats["deciles"] == [round(x, 4) for x in statistics.quantiles(rewards, n=10, method="inclusive")]
    assert stats["min"] == min(rewards) and stats["max"] == max(rewards)
    assert meta["reward"]["assistant_turns"]["count"] == len(turns)
    assert meta["files"]["reviews"]["bytes"] == small["reviews"].stat().st_size


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A larger world (seed 3) for what needs many records: spreads, rare sentence kinds, styles."""
    return toyworld.generate(tmp_path_factory.mktemp("twbig") / "out", seed=3, n_reviews=3000, n_dialogs=300,
                             n_text=300, progress=False)


@pytest.fixture(scope="module")
def world3():
    return toyworld.build_world(3)


def test_reward_spread_and_relation_to_the_latent(big):
    paths = big
    recs = read_jsonl(paths["reviews"])
    rewards = [r["reward"] for r in recs]
    deciles = statistics.quantiles(rewards, n=10)
    assert deciles[0] < -0.3 and deciles[-1] > 0.7
    assert len({round(d, 1) for d in deciles}) >= 7
    hist = json.loads(paths["meta"].read_text())["reward"]["reviews"]["histogram"]
    assert all(count >= 0.02 * len(recs) for count in hist)
    pos = [r["reward"] for r in recs if r["latent_sentiment"] > 0.33]
    neg = [r["reward"] for r in recs if r["latent_sentiment"] < -0.33]
    assert statistics.fmean(pos) > statistics.fmean(neg) + 0.5
    corr = statistics.correlation([r["latent_sentiment"] for r in recs], rewards)
    assert 0.4 < corr < 0.95
    words = [len(r["response"].split()) for r in recs]
    assert 20 <= statistics.median(words) <= 60 and max(words) <= 100
    assert len({r["response"] for r in recs}) > 0.99 * len(recs)
    turn_rewards = [t["reward"] for d in read_jsonl(paths["dialogs"]) for t in d["turns"] if t["role"] == "assistant"]
    assert min(turn_rewards) < -0.5 and max(turn_rewards) > 0.7


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_no_toy_world_is_refused_even_with_overwrite(tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a toy world .*meta.json.*only an earlier output of this kind"):
        toyworld.generate(out, overwrite=overwrite, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_earlier_toy_world_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    toyworld.generate(out, n_reviews=5, n_dialogs=2, n_text=2, progress=False)
    before = file_bytes({p.name: p for p in out.iterdir()})
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        toyworld.generate(out, n_reviews=7, n_dialogs=2, n_text=2, progress=False)
    assert file_bytes({p.name: p for p in out.iterdir()}) == before


def test_empty_directory_is_used_and_overwrite_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    toyworld.generate(out, n_reviews=5, n_dialogs=2, n_text=2, progress=False)
    (out / "notes.txt").write_text("a user's file")  # a toy world with it is kept whole, not replaced
    with pytest.raises(FileExistsError, match=r"holds a toy world and also notes\.txt, which a toy world does not hold"):
        toyworld.generate(out, n_reviews=7, n_dialogs=2, n_text=2, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "a user's file" and len(read_jsonl(out / "reviews.jsonl")) == 5
    (out / "notes.txt").unlink()
    toyworld.generate(out, n_reviews=7, n_dialogs=2, n_text=2, progress=False, overwrite=True)
    assert len(read_jsonl(out / "reviews.jsonl")) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        toyworld.generate(tmp_path / "out", overwrite=True, **SMALL)


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch, exc):
    real = toyworld._write_jsonl
    calls = []

    def fail_on_second(path, records):
        calls.append(path.name)
        if len(calls) == 2:
            raise exc
        return real(path, records)

    monkeypatch.setattr(toyworld, "_write_jsonl", fail_on_second)
    with pytest.raises(type(exc)):
        toyworld.generate(tmp_path / "out", **SMALL)
    assert calls == ["reviews.jsonl", "dialogs.jsonl"]
    assert list(tmp_path.iterdir()) == []


def test_failure_while_overwriting_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    toyworld.generate(out, n_reviews=5, n_dialogs=2, n_text=2, progress=False)
    before = file_bytes({p.name: p for p in out.iterdir()})

    def fail(path, records):
        raise RuntimeError("disk full")

    monkeypatch.setattr(toyworld, "_write_jsonl", fail)
    with pytest.raises(RuntimeError):
        toyworld.generate(out, n_reviews=9, n_dialogs=2, n_text=2, progress=False, overwrite=True)
    assert file_bytes({p.name: p for p in out.iterdir()}) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("bad", [{"n_reviews": -1}, {"n_text": 2.5}, {"seed": "zero"}, {"n_dialogs": True}])
def test_bad_counts_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        toyworld.generate(tmp_path / "out", **{**SMALL, **bad})
    assert not (tmp_path / "out").exists()


def test_world_facts_are_consistent_between_files(small):
    world = toyworld.build_world(0)
    by_name = {e.name: e for e in world.entities}
    for rec in read_jsonl(small["reviews"]):
        e = by_name[rec["entity"]]
        assert e.topic["name"] == rec["topic"]
        if e.kind == "product":
            for spec, value in e.specs:
                prefix = spec["fact"].split("{v}")[0]
                if prefix in rec["response"]:
                    assert spec["fact"].format(v=value) in rec["response"]
    for doc in read_jsonl(small["text"]):
        if doc["entity"] in by_name and by_name[doc["entity"]].kind == "product":
            assert f"${by_name[doc['entity']].facts['price']}" in doc["text"]


def test_a_before_a_vowel_sound_is_an(small):
    """Templates put 'a' before slots ('a {genre} film', 'A {Noun} in {Adj}', 'a {v}-hour battery')
    that the vocabulary fills with 'animated', 'Orchard' or 81: the text says 'an' there, and keeps
    'a' before 'use...' and 'one'."""
    import re

    from rcond.toyworld import _articles

    assert _articles("a animated, A Orchard, a 81-minute, a 11-inch, a 1800-page book; a useless, a one-off, a 110-minute, "
                     "a horror") == ("an animated, An Orchard, an 81-minute, an 11-inch, an 1800-page book; a useless, a one-off, "
                                     "a 110-minute, a horror")
    wrong = re.compile(r"\b[Aa] (?!use|one\b|a\b)[AEIOUaeiou]|\b[Aa] (8|11\b|18\b)")
    for name in ("reviews", "dialogs", "text"):
        text = small[name].read_text()
        assert not wrong.findall(text), (name, wrong.findall(text)[:5])
        assert not re.findall(r"\b[Aa]n? a (?:bit|little)\b", text)
        assert not re.findall(r"\b[Aa]n (?:[Uu]s[eiu]|[Oo]ne\b)", text)  # 'an useless', 'an one'


def test_an_adjective_hedged_with_a_bit_takes_its_article_after_the_hedge():
    """'gives {a_adj} performance' with 'a bit sturdy' said 'gives an a bit sturdy performance'."""
    from rcond.toyworld import _with_article

    assert _with_article("sturdy") == "a sturdy"
    assert _with_article("awkward") == "an awkward"
    assert _with_article("AWFUL") == "an AWFUL"
    assert _with_article("fairly awkward") == "a fairly awkward"
    assert _with_article("a bit sturdy") == "a bit of a sturdy"
    assert _with_article("a bit awkward") == "a bit of an awkward"
    assert _with_article("a little uneven") == "a little bit of an uneven"
    assert _with_article("useless") == "a useless" and _with_article("a bit useless") == "a bit of a useless"



def test_latent_labels_bucket_by_exclusive_upper_bounds():
    """The five labels split [-1, 1] at -0.6, -0.2, 0.2, 0.6, each bound belonging to the label
    above it (a latent of exactly -0.6 is 'negative', not 'very negative')."""
    cases = {-1.0: "very negative", -0.601: "very negative", -0.6: "negative", -0.201: "negative",
             -0.2: "neutral", 0.0: "neutral", 0.199: "neutral", 0.2: "positive", 0.599: "positive",
             0.6: "very positive", 1.0: "very positive"}
    assert {s: toyworld.latent_label(s) for s in cases} == cases


def test_latent_sentiment_is_clipped_to_exactly_minus_one_and_one(small):
    """The latent is drawn around the entity's quality with enough noise that some reviews fall
    outside [-1, 1]: those are clipped to the bounds themselves, so both bounds occur."""
    latents = [r["latent_sentiment"] for r in read_jsonl(small["reviews"])]
    assert min(latents) == -1.0 and max(latents) == 1.0


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text)


def test_every_sentence_starts_with_a_capital(small):
    """Templates often open with a lower-case slot ('{aspect}', a clause); every sentence of every
    file still starts with a capital letter (an emoticon at the end of a review aside)."""
    emoticons = {e for group in toyworld.load_assets()["sentiment"]["emoticons"].values() for e in group}
    texts = [r["response"] for r in read_jsonl(small["reviews"])]
    texts += [t["content"] for d in read_jsonl(small["dialogs"]) for t in d["turns"]]
    texts += [d["text"] for d in read_jsonl(small["text"])]
    lower = [s for text in texts for s in sentences(text) if s not in emoticons and not s[0].isupper()]
    assert not lower, lower[:5]


def test_a_product_is_named_with_the_and_a_plural_aspect_takes_are(small):
    """In what the customer and the assistant say, a product is 'the Velix Aura' (never a bare
    'Velix Aura'); an aspect named in the plural ('the zippers') takes 'are', a singular one 'is'."""
    world = toyworld.build_world(0)
    said = "\n".join(t["content"] for d in read_jsonl(small["dialogs"]) for t in d["turns"])
    products = [e.name for e in world.entities if e.kind == "product"]
    mentions = [m for name in products for m in re.finditer(re.escape(name), said)]
    assert len(mentions) > 50
    bare = [said[max(0, m.start() - 12):m.end()] for m in mentions if said[max(0, m.start() - 4):m.start()].lower() != "the "]
    assert not bare, bare[:5]
    text = said + "\n".join(r["response"] for r in read_jsonl(small["reviews"]))
    aspects = {a.name: a.plural for e in world.entities for a, _ in e.aspects}
    verbs = Counter((plural, m.group(1)) for name, plural in aspects.items()
                    for m in re.finditer(rf"\b[Tt]he {re.escape(name)} (is|are)\b", text))
    assert verbs[(True, "is")] == verbs[(False, "are")] == 0
    assert verbs[(True, "are")] > 20 and verbs[(False, "is")] > 20


def test_words_said_with_a_yoo_sound_keep_a():
    """'use...' words start with a consonant sound whatever their third letter: 'a useful', 'a
    using', 'a usual' stay as they are; 'an umbrella' does not."""
    assert toyworld._articles("a useful, a using, a usual, a umbrella") == "a useful, a using, a usual, an umbrella"


def test_an_article_before_the_word_a_stays_a():
    """'a' before the word 'a' itself ('a a bit ...' from a hedge put into an 'a {adjp}' slot) is
    left alone: it never becomes 'an a'."""
    assert toyworld._articles("a a bit awkward, A a little off") == "a a bit awkward, A a little off"


class _RangeEnd:
    """Stands in for random.Random in _spec_value: its randint gives the low or the high end."""

    def __init__(self, high: bool):
        self.high = high

    def randint(self, a, b):
        return b if self.high else a


def test_spec_values_reach_both_ends_of_their_range_on_the_step_grid():
    """A spec's value runs from its 'min' to its 'max' inclusive in steps of 'step', written as
    an integer where min and step are integers and with one decimal otherwise; every value the
    world draws is on that grid."""
    assets = toyworld.load_assets()
    specs = [s for t in assets["topics"] for s in t.get("specs", [])] + assets["film_specs"]
    for spec in specs:
        whole = isinstance(spec["min"], int) and isinstance(spec["step"], int)
        fmt = "{:d}" if whole else "{:.1f}"
        assert toyworld._spec_value(_RangeEnd(False), spec) == fmt.format(spec["min"]), spec
        assert toyworld._spec_value(_RangeEnd(True), spec) == fmt.format(spec["max"]), spec
    for e in toyworld.build_world(0, assets).entities:
        for spec, value in e.specs:
            assert re.fullmatch(r"\d+" if isinstance(spec["step"], int) else r"\d+\.\d", value), (spec, value)
            steps = (float(value) - spec["min"]) / spec["step"]
            assert spec["min"] <= float(value) <= spec["max"] and abs(steps - round(steps)) < 1e-6


def test_prices_lie_in_the_topic_range_and_end_in_a_9():
    """A product's price is drawn within its topic's [low, high] and written as a shop price: a
    multiple of ten less one ($499), never below $9."""
    assets = toyworld.load_assets()
    for seed in (0, 1):
        for e in toyworld.build_world(seed, assets).entities:
            if e.kind == "product":
                lo, hi = e.topic["price"]
                price = int(e.facts["price"])
                assert price % 10 == 9 and lo - 6 <= price <= hi + 4, (e.name, price, lo, hi)


def test_film_casts_are_two_people_and_titles_never_repeat_a_noun():
    """A film's director is one of the world's directors and its two actors are two different
    actors; a title pattern with two nouns ('{Noun} and {Noun2}') gets two different ones."""
    assets = toyworld.load_assets()
    nouns = set(assets["names"]["title_nouns"])
    for seed in (0, 1, 2):
        world = toyworld.build_world(seed, assets)
        for e in world.entities:
            if e.kind == "film":
                f = e.facts
                assert world.people[f["director"]]["job"] == "director"
                assert f["actor"] != f["actor2"]
                assert {world.people[f["actor"]]["job"], world.people[f["actor2"]]["job"]} == {"actor"}
                counts = Counter(w for w in re.findall(r"\w+", e.name) if w in nouns)
                assert max(counts.values()) == 1, e.name


def test_aspect_qualities_and_review_latents_are_drawn_around_the_entity_quality(small):
    """The docstring's world: an entity has an overall quality and a quality per aspect drawn
    around it, and a reviewer's latent sentiment is drawn around the entity's quality; across
    entities and reviews both follow that quality (the noise keeps it well short of 1)."""
    world = toyworld.build_world(0)
    qualities = [e.quality for e in world.entities]
    mean_aspect = [statistics.fmean(q for _, q in e.aspects) for e in world.entities]
    assert statistics.correlation(qualities, mean_aspect) > 0.7
    by_name = {e.name: e for e in world.entities}
    recs = read_jsonl(small["reviews"])
    assert statistics.correlation([by_name[r["entity"]].quality for r in recs],
                                  [r["latent_sentiment"] for r in recs]) > 0.4


def template_re(template: str, **known: str) -> re.Pattern:
    """A regex for what ``template.format(...)`` gives: the ``known`` fields as the text given,
    every other field as a group of any text."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if field is not None:
            out.append(re.escape(known[field]) if field in known else f"(?P<{field}>.+?)")
    return re.compile("".join(out))


def named_in_listing(listing: str, items: set[str]) -> list[str] | None:
    """The items of a listing written 'A', 'A and B' or 'A, B and C' (names may themselves hold
    ' and '), or None when it is not such a listing of ``items``."""
    for x in items:
        if listing == x:
            return [x]
        if listing.startswith(x + " and ") and listing[len(x) + 5:] in items:
            return [x, listing[len(x) + 5:]]
        if listing.startswith(x + ", "):
            rest = named_in_listing(listing[len(x) + 2:], items)
            if rest and len(rest) >= 2:
                return [x] + rest
    return None


def test_brand_and_person_profiles_list_only_their_own_products_and_films():
    """A brand's profile lists up to five of its own products, a person's up to four of the films
    they directed or act in (either of the two leads), each once and in random order; a brand
    with no products (seed 42 has one) gets no profile. Checked against the world's entities, not its brand and people
    tables."""
    world = toyworld.build_world(42)
    products, films = defaultdict(set), defaultdict(set)
    for e in world.entities:
        if e.kind == "product":
            products[e.facts["brand"]].add(e.name)
        else:
            for p in (e.facts["director"], e.facts["actor"], e.facts["actor2"]):
                films[p].add(e.name)
    assert set(world.brands) - set(products) and set(world.people) - set(films)
    t = world.assets["text"]
    writer = toyworld._TextWriter(world, random.Random(0))
    for make, own, key, most in ((writer._brand, products, "brand_range", 5),
                                 (writer._person, films, "person_works", 4)):
        seen, listings = set(), defaultdict(set)
        for _ in range(300):
            doc = make()
            name = doc["entity"]
            assert name in own, doc
            listing = doc["text"].split(". ", 1)[1]
            match = next(m for tpl in t[key] if (m := template_re(tpl, person=name).fullmatch(listing)))
            listed = named_in_listing(match.groups()[-1], own[name])
            assert listed is not None and len(set(listed)) == len(listed) == min(most, len(own[name])), doc
            seen.add(name)
            listings[name].add(tuple(listed))
        assert len(seen) > 0.8 * len(own)
        assert sum(len(v) > 1 for v in listings.values()) > 0.5 * len(listings)  # 'in random order'


def test_same_seed_is_byte_identical_in_a_fresh_process_with_another_hash_seed(small, tmp_path):
    """Byte-identical per seed means across runs, not only within one process: a second Python
    with another PYTHONHASHSEED (string hashes, set order) writes the same bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PYTHONHASHSEED": "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"}
    code = ("import sys; from rcond.toyworld import generate; "
            "generate(sys.argv[1], seed=0, n_reviews=300, n_dialogs=60, n_text=60, progress=False)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fresh")], env=env, check=True, timeout=120)
    assert {n: (tmp_path / "fresh" / p.name).read_bytes() for n, p in small.items()} == file_bytes(small)


@pytest.fixture(scope="module")
def world0():
    return toyworld.build_world(0)


def test_next_aspect_names_every_aspect_once_before_repeating_one(world0):
    """A record talks about each of its entity's aspects once before any comes back ('an aspect
    not yet talked about'), in an order drawn afresh for each record (not always the same aspect
    first); after that any aspect of the same entity may."""
    writer = toyworld._ReviewWriter(world0, random.Random(0))
    first = set()
    for _ in range(50):
        e = writer.start()
        names = [a.name for a, _ in e.aspects]
        said = [writer.next_aspect()[0].name for _ in names]
        assert sorted(said) == sorted(names)
        first.add(names.index(said[0]))
        assert {writer.next_aspect()[0].name for _ in range(20)} <= set(names)
    assert len(first) > 3


def test_other_is_another_entity_of_the_same_topic(world0):
    """The entity a review compares with, or a customer asks about, is of the same topic and is
    never the entity itself."""
    writer = toyworld._ReviewWriter(world0, random.Random(0))
    for e in world0.entities[::7]:
        for _ in range(20):
            o = writer.other(e)
            assert o is not e and o.topic["name"] == e.topic["name"]


def test_tier_rounds_stochastically_to_the_two_nearest_tiers_without_bias(world0):
    """tier(v) is 3v rounded down or up at random, up with the chance of its fractional part, so
    its mean is 3v; thirds are exact and values beyond [-1, 1] count as the bound."""
    writer = toyworld._Writer(world0, random.Random(0))
    for v, tier in ((-1.5, -3), (-1.0, -3), (-1 / 3, -1), (0.0, 0), (1 / 3, 1), (2 / 3, 2), (1.0, 3), (2.0, 3)):
        assert {writer.tier(v) for _ in range(50)} == {tier}, v
    for v, (lo, hi) in ((-0.9, (-3, -2)), (-0.1, (-1, 0)), (0.5, (1, 2)), (0.95, (2, 3))):
        draws = [writer.tier(v) for _ in range(4000)]
        assert set(draws) == {lo, hi} and statistics.fmean(draws) == pytest.approx(3 * v, abs=0.05), v


def test_verb_phrases_and_exclamations_follow_the_tier(world0):
    """A positive tier takes one of the aspect's good verb phrases, a negative one a bad one, tier
    0 a neutral predicate after is/are; only strong sentences (|tier| >= 2) may end in '!'."""
    writer = toyworld._Writer(world0, random.Random(0))
    neutral = writer.s["neutral_predicates"]
    for aspect, _ in world0.entities[0].aspects + world0.entities[-1].aspects:
        for t in (1, 2, 3):
            assert writer.vp(aspect, t) in aspect.good and writer.vp(aspect, -t) in aspect.bad
        assert writer.vp(aspect, 0) in {f"{aspect.be} {n}" for n in neutral}
    for t in (-1, 0, 1):
        assert {writer.end("It is fine.", t) for _ in range(200)} == {"It is fine."}
    for t in (-3, -2, 2, 3):
        assert {writer.end("It is great.", t) for _ in range(400)} == {"It is great.", "It is great!", "It is great!!"}
        assert {writer.end("Is it great?", t) for _ in range(50)} == {"Is it great?"}


def test_mild_adjectives_are_hedged_up_or_down_and_strong_ones_only_up(world0):
    """A booster before an adjective of tier ±1 is either an intensifier ('very') or a hedge
    ('a bit'); a strong adjective is only intensified, and only the strongest (±3) are now and
    then shouted ('AWFUL'). Tiers with negations ('not bad') use one now and then."""
    writer = toyworld._Writer(world0, random.Random(0))
    boosters = writer.s["boosters"]
    for t in (-3, -2, -1, 1, 2, 3):
        shouted = sum(a.isupper() for a in (writer.adjective(t, boost=0.0) for _ in range(1000)))
        assert (20 < shouted < 110) if abs(t) == 3 else shouted == 0, (t, shouted)
    for t in (-3, -2, -1, 1, 2, 3):
        firsts = Counter(next((k for k in ("up", "down") for b in boosters[k] if adj.startswith(b + " ")), None)
                         for adj in (writer.adjective(t, boost=1.0) for _ in range(300)))
        assert firsts["up"] > 30 and (firsts["down"] > 30 if abs(t) == 1 else firsts["down"] == 0), (t, firsts)
    for t, negated in writer.s["negated"].items():
        picks = [writer.adjp(int(t)) for _ in range(500)]
        assert 0.12 < sum(p in negated for p in picks) / len(picks) < 0.32, t


def review_sentences(path, world):
    """(review, entity, sentences) for each review, a trailing emoticon left off the sentences."""
    by_name = {e.name: e for e in world.entities}
    emoticons = {e for group in world.assets["sentiment"]["emoticons"].values() for e in group}
    for rec in read_jsonl(path):
        yield rec, by_name[rec["entity"]], [s for s in sentences(rec["response"]) if s not in emoticons]


def test_emoticons_and_sarcasm_match_the_reviewer(big, world3):
    """An emoticon ends only a clearly positive (':)') or negative (':(') review, by the sign of
    its latent; a sarcastic line ('Oh great, the battery dies by lunchtime. Just perfect.') is
    praise wrapped around one of the aspect's bad verb phrases, in negative reviews only."""
    emo = world3.assets["sentiment"]["emoticons"]
    sarcasm = [template_re(t) for t in world3.assets["sentiment"]["sarcasm"]]
    ends, sarcastic = Counter(), 0
    for rec, e, _ in review_sentences(big["reviews"], world3):
        s, text = rec["latent_sentiment"], rec["response"]
        for sign, group in (("positive", emo["positive"]), ("negative", emo["negative"])):
            if any(text.endswith(" " + x) for x in group):
                ends[sign] += 1
                assert (s > 0.4 if sign == "positive" else s < -0.4), rec
        bad = {f"the {a.name} {vp}" for a, _ in e.aspects for vp in a.bad}
        if any(m["clause"] in bad for pat in sarcasm for m in pat.finditer(text)):
            sarcastic += 1
            assert s < -0.3, rec
    assert ends["positive"] > 10 and ends["negative"] > 10 and sarcastic > 10


def test_review_facts_and_comparisons_are_true_and_judging(big, world3):
    """A film review's 'It was directed by X.', "X's direction is ...", "compared to X's earlier
    work" and 'It stars Y.' name its director and lead, and an actor is praised or panned in their
    own role; a comparison with another entity of the
    topic says 'better' only when the reviewer is not clearly negative and 'worse' only when not
    clearly positive; a review is never a lone fact or comparison, and holds at most one of each."""
    rv = world3.assets["reviews"]
    compare = {k: [template_re(t) for t in rv["compare"][k]] for k in ("better", "worse")}
    seen = Counter()
    for rec, e, said in review_sentences(big["reviews"], world3):
        f, s = e.facts, rec["latent_sentiment"]
        facts = {spec["fact"].format(v=v) for spec, v in e.specs}
        if e.kind == "film":
            facts |= {f"It was directed by {f['director']}.", f"It stars {f['actor']}."}
            for sentence in said:
                assert not re.fullmatch(r"It was directed by (.+)\.|It stars (.+)\.", sentence) or sentence in facts, rec
                for actor, role in ((f["actor"], f["role"]), (f["actor2"], f["role2"])):
                    if sentence.startswith(actor + " ") and " as the " in sentence:
                        assert sentence.rstrip(".!").endswith(f" as the {role}"), (sentence, f)
                        seen["role"] += 1
                if m := re.fullmatch(r"(.+)'s direction is .+|The direction by (.+?) is .+", sentence):
                    assert f["director"] in m.groups(), (sentence, f)
                    seen["direction"] += 1
                for earlier in re.findall(r"compared to (.+?)'s earlier work", sentence):
                    assert earlier == f["director"], (sentence, f)
                    seen["earlier work"] += 1
        else:
            facts.add(f"It costs ${f['price']}.")
        others = {o.ref for o in world3.by_topic[e.topic["name"]] if o is not e}
        kinds = Counter()
        for sentence in said:
            for k, pats in compare.items():
                m = next((m for pat in pats if (m := pat.fullmatch(sentence))), None)
                if m and ((m.groupdict().get("other") or "") in others or _cap_ref(m, others)):
                    kinds["compare"] += 1
                    seen[k] += 1
                    assert (s > -0.5 if k == "better" else s < 0.5), (rec, k)
            kinds["fact"] += sentence in facts
        assert kinds["fact"] <= 1 and kinds["compare"] <= 1, rec
        assert len(said) > 1 or not (kinds["fact"] or kinds["compare"]), rec
        seen["fact"] += kinds["fact"]
    assert min(seen.values()) > 20, seen


def _cap_ref(match, others) -> bool:
    other = match.groupdict().get("Other")
    return other is not None and any(other == o[:1].upper() + o[1:] for o in others)


def test_contrasts_join_opposite_judgements(big, world3):
    """'{a}, but {b}' joins two aspect judgements the reviewer feels differently about; where
    both clauses are verb phrases of known polarity ('the sound is crisp', 'the battery dies by
    lunchtime') they are nearly always one good and one bad."""
    contrast = [template_re(t[:1].lower() + t[1:]) for t in world3.assets["sentiment"]["contrast"]]
    polarity = Counter()
    for _, e, said in review_sentences(big["reviews"], world3):
        vp = {f"the {a.name} {x}": sign for a, _ in e.aspects for sign, xs in ((1, a.good), (-1, a.bad)) for x in xs}
        for sentence in said:
            sentence = re.sub(r"!+$", ".", sentence[:1].lower() + sentence[1:])
            for pat in contrast:
                m = pat.fullmatch(sentence)
                if m and m["a"] in vp and m["b"] in vp:
                    polarity["opposite" if vp[m["a"]] != vp[m["b"]] else "same"] += 1
    assert polarity["opposite"] > 20 and polarity["same"] <= 0.2 * polarity["opposite"], polarity


def exchanges(path):
    """(dialog, [(user text, assistant text, style), ...]) for each dialog."""
    for rec in read_jsonl(path):
        t = rec["turns"]
        yield rec, [(t[i]["content"], t[i + 1]["content"], rec["styles"][i // 2]) for i in range(0, len(t), 2)]


STYLE_BOUNDS = ((-0.5, "rude"), (-0.15, "curt"), (0.15, "neutral"), (0.5, "friendly"), (2.0, "warm"))
MOOD = {"rude": "negative", "curt": "neutral", "neutral": "neutral", "friendly": "positive", "warm": "positive"}


def test_dialog_styles_follow_helpfulness_and_users_react_to_the_last_one(big):
    """A turn's style is its latent helpfulness (in [-1, 1]) bucketed at -0.5, -0.15, 0.15, 0.5; a user who
    opens a follow-up with a reaction reacts to the previous answer's style: pleased after a
    friendly or warm one (or merely neutral), neutral after a curt or neutral one, hurt after a
    rude one."""
    d = toyworld.load_assets()["dialog"]
    reactions, closings = d["reactions"], set(d["followups"]["closing"])  # a closing line is no reaction
    reacted = Counter()
    helpfulness = [h for rec in read_jsonl(big["dialogs"]) for h in rec["latent_helpfulness"]]
    assert min(helpfulness) == -1.0 and max(helpfulness) == 1.0  # clipped to [-1, 1], both reached
    for rec, turns in exchanges(big["dialogs"]):
        assert rec["styles"] == [next(n for b, n in STYLE_BOUNDS if h < b) for h in rec["latent_helpfulness"]], rec
        for (_, _, before), (user, _, _) in zip(turns, turns[1:]):
            mood = next((m for m, rs in reactions.items() for r in rs if user.startswith(r + " ")), None)
            mood = None if user in closings else mood
            if mood:
                reacted[mood] += 1
                assert mood == MOOD[before] or (mood, MOOD[before]) == ("neutral", "positive"), (user, before)
    assert min(reacted[m] for m in reactions) > 10, reacted


def test_a_closing_line_ends_a_dialog_and_is_answered_with_a_goodbye_in_the_styles_mood(big):
    """'Thanks, I will order it.' comes only as the customer's last turn, never the first, and the
    assistant answers it with a goodbye of its own mood ('Glad I could help!', 'Whatever.')."""
    d = toyworld.load_assets()["dialog"]
    closings, goodbyes = set(d["followups"]["closing"]), d["answers"]["goodbye"]
    moods = Counter()
    for _, turns in exchanges(big["dialogs"]):
        for i, (user, answer, style) in enumerate(turns):
            if user in closings:
                assert 0 < i == len(turns) - 1 and answer in goodbyes[MOOD[style]], turns
                moods[MOOD[style]] += 1
    assert min(moods[m] for m in goodbyes) > 3, moods


def test_spec_questions_are_asked_once_and_answered_with_the_true_value(big, world3):
    """A dialog asks about each spec at most once, and the assistant's answer (unless a rude one
    dismisses the question) states the entity's own value."""
    by_name = {e.name: e for e in world3.entities}
    answered = 0
    for rec, turns in exchanges(big["dialogs"]):
        e = by_name[rec["entity"]]
        asked = Counter()
        for user, answer, style in turns:
            for spec, value in e.specs:
                question = spec["question"].format(ref=e.ref)
                if user.endswith(question[:1].upper() + question[1:]):
                    asked[spec["key"]] += 1
                    right = spec["answer"].format(v=value)
                    assert right in answer or style == "rude", (rec, right)
                    answered += right in answer
        assert max(asked.values(), default=0) <= 1, rec
    assert answered > 50


def test_dismissals_are_rude_apologies_kind_and_articles_right_in_answers(big):
    """A dismissal ('Read the manual.') comes only from a rude assistant and an apology only from a
    warm or friendly one; the answers say 'an' before a vowel sound like the rest of the world."""
    d = toyworld.load_assets()["dialog"]
    used = Counter()
    for _, turns in exchanges(big["dialogs"]):
        for _, answer, style in turns:
            if any(answer == x or answer.endswith(" " + x) or x + " " in answer for x in d["dismissals"]):
                used["dismissal"] += 1
                assert style == "rude", (answer, style)
            if any(x + " " in answer for x in d["answers"]["apology"]):
                used["apology"] += 1
                assert style in ("warm", "friendly"), (answer, style)
            assert not re.search(r"\b[Aa] (?!use|one\b|a\b)[AEIOUaeiou]|\b[Aa] (8|11\b|18\b)", answer), answer
    assert used["dismissal"] > 10 and used["apology"] >= 5, used


def test_answers_report_the_entitys_qualities(world3):
    """The assistant's answers are grounded in the world: it recommends a clearly good entity for
    the asked use (naming its best aspect where it names one) and advises against a clearly bad
    one (naming its worst); it calls the better of two entities better, by its best aspect, the
    worse one worse, by its worst, and two close ones close; an aspect of quality 0.95 gets a
    good verb phrase, one of -0.95 a bad one."""
    d = world3.assets["dialog"]
    answers = d["answers"]
    writer = toyworld._DialogWriter(world3, random.Random(0))
    writer.d, writer.use = d, "testing"

    def worst_best(e):
        ranked = sorted(e.aspects, key=lambda aq: aq[1])
        return ranked[0][0].name, ranked[-1][0].name

    def fits(text, family, **known):
        return any(template_re(t, **known).fullmatch(text) for t in answers[family])

    group = sorted(max(world3.by_topic.values(), key=lambda g: max(e.quality for e in g) - min(e.quality for e in g)),
                   key=lambda e: e.quality)
    low, high = group[0], group[-1]
    assert low.quality < -0.6 and high.quality > 0.6
    close = next((a, b) for a, b in zip(group, group[1:]) if b.quality - a.quality < 0.1)
    for _ in range(60):
        writer.e = high
        assert fits(writer._content("recommend", "neutral"), "recommend_yes", use="testing", aspect=worst_best(high)[1])
        writer.e = low
        assert fits(writer._content("recommend", "neutral"), "recommend_no", use="testing", aspect=worst_best(low)[0])
        for e, other, family, aspect in ((high, low, "better", worst_best(high)[1]), (low, high, "worse", worst_best(low)[0])):
            writer.e, writer.other_entity = e, other
            refs = {"ref": e.ref, "other": other.ref, "Other": other.ref[:1].upper() + other.ref[1:]}
            text = writer._content("compare", "neutral")
            assert fits(text[:1].lower() + text[1:], family, aspect=aspect, **refs) or fits(text, family, aspect=aspect, **refs), text
        writer.e, writer.other_entity = close
        assert writer._content("compare", "neutral") in answers["same"]
    graded = Counter()
    for aspect, _ in high.aspects:
        for q, phrases in ((0.95, aspect.good), (-0.95, aspect.bad)):
            writer.aspect = (aspect, q)
            for _ in range(10):
                text = writer._content("aspect", "neutral")
                m = next(m for t in answers["aspect"] if (m := template_re(t, aspect=aspect.name, be=aspect.be).fullmatch(text)))
                if "vp" in m.groupdict():
                    assert m["vp"] in phrases, (q, text)
                    graded[q] += 1
    assert min(graded.values()) > 10, graded


def test_text_documents_state_the_worlds_facts(big, world3):
    """A product's document states its price, every spec with the entity's own values and two
    different uses where it names two; a film's calls it 'a horror film' (its topic's label),
    names its director and lead and ends with its runtime; a buying guide names distinct aspects of its topic, three distinct entities of it,
    and for each a spec with its value ('an 8-hour battery')."""
    by_name = {e.name: e for e in world3.entities}
    t = world3.assets["text"]
    kinds = Counter()
    for doc in read_jsonl(big["text"]):
        e = by_name.get(doc["entity"])
        if e is not None:
            f = e.facts
            kinds[e.kind] += 1
            if e.kind == "product":
                assert f"${f['price']}" in doc["text"], doc
                assert all(spec["fact"].format(v=v) in doc["text"] for spec, v in e.specs), doc
                two = [m for tpl in t["product_uses"] if "{use2}" in tpl
                       for m in [template_re(tpl).fullmatch(sentences(doc["text"])[-1])] if m]
                kinds["two uses"] += len(two)
                assert all(m["use"] != m["use2"] and {m["use"], m["use2"]} <= set(e.topic["uses"]) for m in two), doc
            else:
                assert f["director"] in doc["text"] and f["actor"] in doc["text"], doc
                assert re.search(rf"\b{re.escape(e.topic['label'])}\b", sentences(doc["text"])[0]), doc
                assert doc["text"].endswith(f"It runs {f['runtime']} minutes."), doc
        elif doc["entity"] is None:
            kinds["guide"] += 1
            group = world3.by_topic[doc["topic"]]
            said = sentences(doc["text"])
            names = {a.name for a, _ in group[0].aspects}
            body = next(m for tpl in t["guide_body"] if (m := template_re(tpl).fullmatch(said[1])))
            assert len(set(body.groups())) == len(body.groups()) and set(body.groups()) <= names, said[1]
            listing = next(m for tpl in t["guide_examples"] if (m := template_re(tpl).fullmatch(said[2])))
            chosen = named_in_listing(listing["names"], {e.name for e in group})
            assert chosen is not None and len(set(chosen)) == 3, said[2]
            for e, sentence in zip((by_name[n] for n in chosen), said[3:], strict=True):
                ref = e.ref[:1].upper() + e.ref[1:]
                said_right = {toyworld._articles(f"{ref} has {spec['phrase'].format(v=v)}.") for spec, v in e.specs}
                assert sentence in said_right, sentence
    assert min(kinds.values()) > 20, kinds


def test_a_reward_on_a_histogram_edge_counts_in_the_bin_it_opens():
    """meta.json's histogram has the bins [-1.0, -0.8), [-0.8, -0.6), ..., [0.8, 1.0] of its
    histogram_edges: a reward exactly on an inner edge (VADER's compound has four decimals, so
    -0.8 can occur) counts in the bin that edge opens, 1.0 in the last bin. -0.8 used to fall
    into the first bin, (-0.8 + 1.0) * 5 being 0.9999999999999998 in floating point."""
    edges = [-1.0, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    stats = toyworld._stats(edges)
    assert stats["histogram_edges"] == edges
    assert stats["histogram"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    assert toyworld._stats([-0.8001, -0.7999, 0.9999])["histogram"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]


def stats_by_hand(values: list[float]) -> dict:
    """meta.json's reward statistics recomputed without rcond: bins by comparison with the edges."""
    n = len(values)
    mean = sum(values) / n
    edges = [-1.0, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    return {
        "count": n, "mean": round(mean, 4), "std": round(math.sqrt(sum((v - mean) ** 2 for v in values) / n), 4),
        "min": min(values), "max": max(values), "histogram_edges": edges,
        "histogram": [sum(lo <= v < hi or (i == 9 and v == hi) for v in values)
                      for i, (lo, hi) in enumerate(zip(edges, edges[1:]))],
        "fraction_zero": round(sum(v == 0.0 for v in values) / n, 4),
    }


def test_meta_statistics_match_the_files_they_describe(small):
    """Every number in meta.json, recomputed from the written files: counts of records, turns and
    entities (24 per topic), per-file records, bytes and words, the reward statistics (population
    std; deciles checked above), and the mean reward per latent label."""
    meta = json.loads(small["meta"].read_text())
    reviews, dialogs, docs = (read_jsonl(small[n]) for n in ("reviews", "dialogs", "text"))
    turns = [t for d in dialogs for t in d["turns"]]
    rewards = {"reviews": [r["reward"] for r in reviews],
               "assistant_turns": [t["reward"] for t in turns if t["role"] == "assistant"]}
    assert meta["counts"] == {"reviews": 300, "dialogs": 60, "text": 60, "assistant_turns": len(rewards["assistant_turns"]),
                              "entities": 24 * len(toyworld.load_assets()["topics"])}
    words = {"reviews": sum(len(r["response"].split()) for r in reviews),
             "dialogs": sum(len(t["content"].split()) for t in turns), "text": sum(len(d["text"].split()) for d in docs)}
    for name, recs in (("reviews", reviews), ("dialogs", dialogs), ("text", docs)):
        assert meta["files"][name] == {"records": len(recs), "bytes": small[name].stat().st_size, "words": words[name]}
    for name, values in rewards.items():
        got = dict(meta["reward"][name])
        assert len(got.pop("deciles")) == 9
        assert got == stats_by_hand(values), name
    assert (meta["generator"], meta["seed"], meta["reward"]["name"]) == ("rcond.toyworld", 0, "vader")
    assert meta["reward"]["vaderSentiment_version"] == metadata.version("vaderSentiment")
    labels = ("very negative", "negative", "neutral", "positive", "very positive")
    by_label = {label: [r["reward"] for r in reviews if r["latent_label"] == label] for label in labels}
    assert meta["reviews_by_latent_label"] == {
        label: {"count": len(v), "mean_reward": round(sum(v) / len(v), 4)} for label, v in by_label.items()}


def test_meta_of_a_single_review_and_no_dialogs(tmp_path):
    """One review: its reward is every decile, the std is 0; no dialogs: the turn statistics are a
    bare count of 0; a label no review has gets count 0 and mean_reward null. (Three different
    counts, so that no count can stand in for another.)"""
    paths = toyworld.generate(tmp_path / "one", seed=0, n_reviews=1, n_dialogs=0, n_text=2, progress=False)
    meta = json.loads(paths["meta"].read_text())
    (review,) = read_jsonl(paths["reviews"])
    reward = review["reward"]
    assert meta["reward"]["reviews"] == {**stats_by_hand([reward]), "deciles": [reward] * 9, "std": 0.0}
    assert meta["reward"]["assistant_turns"] == {"count": 0}
    assert meta["counts"] == {"reviews": 1, "dialogs": 0, "text": 2, "assistant_turns": 0,
                              "entities": 24 * len(toyworld.load_assets()["topics"])}
    assert meta["files"]["dialogs"] == {"records": 0, "bytes": 0, "words": 0}
    assert meta["files"]["text"]["records"] == len(read_jsonl(paths["text"])) == 2
    assert meta["reviews_by_latent_label"] == {
        label: ({"count": 1, "mean_reward": reward} if label == review["latent_label"] else
                {"count": 0, "mean_reward": None})
        for label in ("very negative", "negative", "neutral", "positive", "very positive")}


def test_bad_counts_are_named_with_the_value_given(tmp_path):
    """The message names the setting and shows the value as written (a string in quotes), so that
    'got 0' is never a '0' that was passed as text."""
    with pytest.raises(toyworld.ToyWorldError) as e:
        toyworld.generate(tmp_path / "out", seed="0", progress=False)
    assert str(e.value) == "seed must be a non-negative integer, got '0'"
    with pytest.raises(toyworld.ToyWorldError, match=r"^n_dialogs must be a non-negative integer, got -2$"):
        toyworld.generate(tmp_path / "out", n_dialogs=-2, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_passes_each_count_and_the_seed_to_its_file(tmp_path, capsys):
    """`rcond toyworld` with four different numbers writes exactly the world generate writes for
    them: --reviews, --dialogs and --texts each to its own file, --seed honoured; --no-progress
    leaves stderr empty, and without it the progress bar is shown there."""
    out = tmp_path / "cli"
    assert main(["toyworld", "--out", str(out), "--seed", "5", "--reviews", "4", "--dialogs", "3", "--texts", "2",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    direct = toyworld.generate(tmp_path / "direct", seed=5, n_reviews=4, n_dialogs=3, n_text=2, progress=False)
    assert file_bytes({n: out / p.name for n, p in direct.items()}) == file_bytes(direct)
    assert [len(read_jsonl(out / f)) for f in ("reviews.jsonl", "dialogs.jsonl", "text.jsonl")] == [4, 3, 2]
    assert main(["toyworld", "--out", str(tmp_path / "bar"), "--reviews", "1", "--dialogs", "0", "--texts", "0"]) == 0
    assert "toyworld" in capsys.readouterr().err


def test_cli_overwrite_replaces_an_earlier_toy_world_and_is_needed_for_it(tmp_path, capsys):
    """A second `rcond toyworld` into the same folder is exit 2 without --overwrite (the old world
    kept) and replaces it with one."""
    out = str(tmp_path / "w")
    assert main(["toyworld", "--out", out, "--reviews", "2", "--dialogs", "1", "--texts", "1", "--no-progress"]) == 0
    assert main(["toyworld", "--out", out, "--reviews", "5", "--dialogs", "1", "--texts", "1", "--no-progress"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "w" / "reviews.jsonl")) == 2
    assert main(["toyworld", "--out", out, "--reviews", "5", "--dialogs", "1", "--texts", "1", "--no-progress",
                 "--overwrite"]) == 0
    assert len(read_jsonl(tmp_path / "w" / "reviews.jsonl")) == 5


def test_cli_defaults_are_generates(tmp_path):
    """`rcond toyworld --out DIR` and `generate(DIR)` make the same world: the same seed and
    counts, progress shown, nothing overwritten."""
    a = build_parser().parse_args(["toyworld", "--out", str(tmp_path)])
    defaults = {n: p.default for n, p in inspect.signature(toyworld.generate).parameters.items() if n != "out_dir"}
    assert defaults == {"seed": a.seed, "n_reviews": a.reviews, "n_dialogs": a.dialogs, "n_text": a.texts,
                        "progress": not a.no_progress, "overwrite": a.overwrite}


def test_popular_entities_are_reviewed_more_often(big, world3):
    """Each record's entity is drawn by the world's popularity weights: across 3000 reviews the
    number of reviews of an entity follows its popularity."""
    counts = Counter(r["entity"] for r in read_jsonl(big["reviews"]))
    assert statistics.correlation(world3.popularity, [counts[e.name] for e in world3.entities]) > 0.6


def test_records_past_the_first_scoring_chunk_are_counted_and_scored(big, vader):
    """Rewards are scored a chunk of records at a time: a file of several chunks holds exactly the
    records asked for, and those on each side of every chunk boundary, and the last, carry VADER's
    score of their own text."""
    recs = read_jsonl(big["reviews"])
    assert len(recs) == 3000 and len(read_jsonl(big["dialogs"])) == 300 and len(read_jsonl(big["text"])) == 300
    chunk = toyworld._CHUNK
    assert 3000 > 2 * chunk
    for i in [*(j for k in range(chunk, 3000, chunk) for j in range(k - 2, k + 2)), 2999]:
        assert recs[i]["reward"] == vader.polarity_scores(recs[i]["response"])["compound"], i


def test_a_plural_product_is_these_and_takes_are(big, world3):
    """Headphones and running shoes are plural: a review says 'these headphones', 'this pair', never
    'this headphones' nor 'the shoes is'; a blender is 'this blender', never 'these blender'."""
    text = "\n".join(r["response"] for r in read_jsonl(big["reviews"])).lower()
    seen = Counter()
    for topic in world3.assets["topics"]:
        if "short" not in topic:
            continue
        short = re.escape(topic["short"].lower())
        wrong = rf"\bthis {short}\b|\bthe {short} is\b" if topic.get("short_plural") else rf"\bthese {short}\b"
        assert not re.findall(wrong, text), topic["name"]
        seen[bool(topic.get("short_plural"))] += len(re.findall(rf"\b(?:this|these) {short}\b", text))
    assert seen[True] > 5 and seen[False] > 20, seen


def test_a_review_names_only_its_own_entity_and_price_and_opens_and_closes_in_place(big, world3):
    """Another entity of the topic appears only in a comparison; every price a review quotes is its
    own entity's; an opening line ('I bought the X last week.') comes first and a verdict ('Highly
    recommended!') last; and a review is never one lone sentence that judges nothing by itself
    (a fact, a comparison, a feeling or a value for money)."""
    rv, s = world3.assets["reviews"], world3.assets["sentiment"]
    compare = [template_re(t) for k in ("better", "worse") for t in rv["compare"][k]]
    feels = {f for fs in s["feelings"].values() for f in fs}
    verdicts_of = {kind: {v for vs in s["verdicts"][kind].values() for v in vs} for kind in ("product", "film")}
    values_of = {kind: [template_re(t) for t in rv["value"][kind]] for kind in ("product", "film")}
    openers_of, feelings_of = {}, {}
    for e in world3.entities:
        openers_of[e.name] = [template_re(t, ref=e.ref) for t in rv["openers"][e.kind]]
        if e.topic["name"] not in feelings_of:
            this = ["it", "this film"] + [f"{w} {e.topic['short']}" for w in ("this", "these") if "short" in e.topic]
            feelings_of[e.topic["name"]] = {toyworld._articles(t.format(feel=f, this=x))
                                            for t in rv["feeling"] for f in feels for x in this}
    seen = Counter()
    for rec, e, said in review_sentences(big["reviews"], world3):
        others = [o.name for o in world3.by_topic[e.topic["name"]] if o is not e and o.name not in e.name]
        for sentence in said:
            if any(o in sentence for o in others):
                assert any(p.fullmatch(sentence) for p in compare), (sentence, rec)
                seen["other"] += 1
        prices = re.findall(r"\$(\d+)", rec["response"])
        assert set(prices) <= {e.facts.get("price")}, rec
        seen["price"] += bool(prices)
        feelings = feelings_of[e.topic["name"]]
        openers = [i for i, x in enumerate(said) if any(p.fullmatch(x) for p in openers_of[e.name])]
        verdicts = [i for i, x in enumerate(said)  # 'I regret buying it.' is a verdict and a feeling
                    if x in verdicts_of[e.kind] and x not in feelings]
        assert openers in ([], [0]) and verdicts in ([], [len(said) - 1]), rec
        seen["opener"] += bool(openers)
        seen["verdict"] += bool(verdicts)
        if len(said) == 1:
            assert said[0].rstrip("!") + "." not in feelings and not any(p.fullmatch(said[0]) for p in values_of[e.kind]), rec
    assert min(seen.values()) > 50, seen


def test_a_failure_while_writing_meta_leaves_nothing_behind(tmp_path, monkeypatch):
    """meta.json is written inside the temporary directory too: when writing it fails (here a
    statistic that is no JSON), no output directory is left, nor half a toy world without it."""
    real = toyworld._generate_into

    def unserialisable(*args):
        return {**real(*args), "bad": object()}

    monkeypatch.setattr(toyworld, "_generate_into", unserialisable)
    with pytest.raises(TypeError):
        toyworld.generate(tmp_path / "out", n_reviews=3, n_dialogs=1, n_text=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_recommendation_answers_the_use_the_customer_asked_about(world3):
    """'Would you recommend the X for hiking?' is answered about hiking ('Yes, it is great for
    hiking.'), never about another use of the topic."""
    d = world3.assets["dialog"]
    families = [t for k in ("recommend_yes", "recommend_no", "recommend_maybe") for t in d["answers"][k]]
    writer = toyworld._DialogWriter(world3, random.Random(0))
    writer.d = d
    named = 0
    for e in world3.entities[::4]:
        writer.e = e
        for _ in range(5):
            question = writer._question("recommend", first=True)
            (use,) = [u for u in e.topic["uses"]
                      if any(template_re(t, ref=e.ref, use=u).fullmatch(question) for t in d["questions"]["recommend"])]
            answer = writer._content("recommend", "neutral")
            assert any(template_re(t, use=use).fullmatch(answer) for t in families), (question, answer)
            named += "{use}" in next(t for t in families if template_re(t, use=use).fullmatch(answer))
    assert named > 30


def test_a_customer_asks_about_a_plural_aspect_with_are(big, world3):
    """'How are the zippers on the X?', 'Are the characters of Y any good?': a question about an
    aspect named in the plural takes 'are', one about a singular aspect 'is'."""
    by_name = {e.name: e for e in world3.entities}
    verbs = Counter()
    for rec, turns in exchanges(big["dialogs"]):
        aspects = {a.name: a.plural for a, _ in by_name[rec["entity"]].aspects}
        for user, _, _ in turns:
            for name, plural in aspects.items():
                for verb in re.findall(rf"\b(is|are) the {re.escape(name)}\b", user, flags=re.IGNORECASE):
                    verbs[plural, verb.lower()] += 1
    assert verbs[True, "is"] == verbs[False, "are"] == 0, verbs
    assert verbs[True, "are"] > 10 and verbs[False, "is"] > 10, verbs


def test_verdicts_and_overall_judgements_lean_the_reviewers_way(big, world3):
    """A closing verdict ('Highly recommended!') and an overall judgement ('Overall, it is a great
    buy.') come from a tier drawn around the reviewer's latent: a clearly positive reviewer
    (latent above 0.6) never gives one from a negative tier, a clearly negative one never from a
    positive tier; and a film is never 'a great buy', a product never 'a great watch'."""
    s, rv = world3.assets["sentiment"], world3.assets["reviews"]
    tiers = defaultdict(set)  # (kind, verdict) or (kind, 'pred', predicate) -> the tiers that hold it
    for kind in ("product", "film"):
        for t, verdicts in s["verdicts"][kind].items():
            for v in verdicts:
                tiers[kind, v].add(int(t))
        for t, preds in s["overall"][kind].items():
            for p in preds:
                tiers[kind, "pred", p].add(int(t))
    overall = [template_re(t) for t in rv["overall"]]
    checked = Counter()
    for rec, e, said in review_sentences(big["reviews"], world3):
        latent = rec["latent_sentiment"]
        if abs(latent) <= 0.6:
            continue
        sign = 1 if latent > 0 else -1
        held = [("verdict", tiers[e.kind, said[-1]])] if (e.kind, said[-1]) in tiers else []
        subjects = {x.format(short=e.topic.get("short", "")) for xs in rv["subjects"].values() for x in xs}
        for sentence in said:
            for m in (p.fullmatch(re.sub(r"!+$", ".", sentence)) for p in overall):
                g = m.groupdict() if m else {}
                m = m if (g.get("subject") or g.get("Subject") or "it").lower() in subjects else None  # not an aspect's
                other_kind = "film" if e.kind == "product" else "product"
                assert not m or (e.kind, "pred", m["pred"]) in tiers or (other_kind, "pred", m["pred"]) not in tiers, rec
                if m and (e.kind, "pred", m["pred"]) in tiers:
                    held.append(("overall", tiers[e.kind, "pred", m["pred"]]))
        for what, ts in held:
            assert max(t * sign for t in ts) >= 0, (what, ts, rec)
            checked[what, sign] += 1
    assert min(checked.values()) > 20 and len(checked) == 4, checked


def test_every_record_names_its_entitys_topic(big, world3):
    """A review's, a dialog's and an entity document's topic is its entity's topic name (the key
    the readers and analyses group by, not the prompt's label such as 'horror film'); a guide's is
    a topic name, a profile's 'brand' or 'person'."""
    topic_of = {e.name: e.topic["name"] for e in world3.entities}
    for name in ("reviews", "dialogs", "text"):
        for rec in read_jsonl(big[name]):
            if rec["entity"] in topic_of:
                assert rec["topic"] == topic_of[rec["entity"]], rec
            elif rec["entity"] is None:
                assert rec["topic"] in world3.by_topic, rec
            else:
                assert rec["topic"] == ("brand" if rec["entity"] in world3.brands else "person"), rec


def test_an_answers_opening_and_closing_lines_are_its_styles(big):
    """A warm answer opens with 'Great question!', a rude one with 'Ugh, again?': the frame
    around an answer is always the frame of the turn's own style."""
    styles = toyworld.load_assets()["dialog"]["styles"]
    owners = defaultdict(set)
    for style, frame in styles.items():
        for where in ("open", "close"):
            for line in frame[where]:
                if line:
                    owners[where, line].add(style)
    framed = Counter()
    for _, turns in exchanges(big["dialogs"]):
        for _, answer, style in turns:
            for (where, line), who in owners.items():
                if answer.startswith(line + " ") if where == "open" else answer.endswith(" " + line):
                    assert style in who, (answer, style)
                    framed[style] += 1
    assert min(framed[s] for s in styles) > 10, framed


def test_comparison_questions_and_problem_answers_name_the_right_things(big, world3):
    """'Is the X better than the Y?' names another entity of X's topic, never X itself; an answer
    to a problem suggests one of the fixes first and one of the fallbacks after it ('Try holding
    the power button ... If that does not work, return it to the shop ...')."""
    d = world3.assets["dialog"]
    by_name = {e.name: e for e in world3.entities}
    fixes, fallbacks = set(d["fixes"]), set(d["fallbacks"])
    fix_templates = [template_re(t) for t in d["answers"]["fix"]]
    seen = Counter()
    for rec, turns in exchanges(big["dialogs"]):
        e = by_name[rec["entity"]]
        others = {o.ref for o in world3.by_topic[e.topic["name"]] if o is not e}
        for user, answer, _ in turns:
            for t in d["questions"]["compare"]:
                if m := template_re(t[:1].lower() + t[1:], ref=e.ref).search(user[:1].lower() + user[1:]):
                    assert m["other"] in others, (user, e.name)
                    seen["compare"] += 1
            for m in (m for p in fix_templates for m in [p.search(answer)] if m):
                assert m["fix"] in fixes and m.groupdict().get("fallback") in fallbacks | {None}, answer
                seen["fix"] += 1
    assert seen["compare"] > 20 and seen["fix"] > 10, seen
