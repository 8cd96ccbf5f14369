"""The toy world: a seeded generator of a synthetic corpus, rcond's embedded default data.

The world is a set of made-up products (headphones, blenders, tents, ...) and films (horror,
comedy, documentary, ...). Each entity has a name, facts (price, specs, director, cast,
premise), an overall quality and a quality per aspect (the battery of a pair of headphones,
the pacing of a film). Vocabulary and templates live in ``data/toyworld.json``; this module
turns them into three kinds of record:

- **reviews** (``reviews.jsonl``, rcond's ``scored`` format): a reviewer with a latent
  sentiment (drawn around the entity's quality) writes 1-4 judging sentences, sometimes with
  an opening line and a closing verdict (median ~28 words), from templates: aspect
  judgements grounded in the entity's aspect qualities, contrasts ("X is great, but Y ..."),
  negations ("not bad", "hardly impressive"), intensifiers, verdicts, facts, comparisons with
  other entities, the odd sarcastic line or emoticon.
- **dialogs** (``dialogs.jsonl``, ``dialog`` format): a customer asks about an entity over 2-4
  exchanges; the assistant's helpfulness (warm ... rude) varies per turn, and its answers
  report the entity's true aspect qualities and specs.
- **text** (``text.jsonl``, ``text`` format): neutral descriptive documents about the same
  world (spec sheets, synopses, brand and person profiles, buying guides), the base
  distribution for the ``off`` mode.

The gold reward is VADER's compound score of the response text (of each assistant turn in
dialogs), computed here with :mod:`rcond.scorers`; it is a property of the words, so it
correlates with the latent sentiment but is not a function of it (VADER does not know
"dies by lunchtime", and reads "Oh great, ... Just perfect." as praise). The latent labels are
kept as extra fields for analysis.

Determinism: every random choice comes from ``random.Random`` streams seeded by strings
derived from ``seed`` (one stream each for the world, reviews, dialogs and text, so changing
one count leaves the other files unchanged); lists are walked in file order and records are
written with sorted keys, so the same seed gives byte-identical files. ``generate`` writes
into a temporary sibling directory and renames it into place (:func:`rcond.atomic.atomic_dir`),
so an interrupted run leaves no output directory behind, and a failed overwrite keeps the old.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import re
import statistics
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from rcond.atomic import OutputKind, atomic_dir
from rcond.scorers import get_scorer

GENERATOR_VERSION = 1
FILES = {"reviews": "reviews.jsonl", "dialogs": "dialogs.jsonl", "text": "text.jsonl", "meta": "meta.json"}
WORLD = OutputKind("a toy world", tuple(FILES.values()))  # what overwrite may replace
ENTITIES_PER_TOPIC = 24
LABELS = (
    (-0.6, "very negative"), (-0.2, "negative"), (0.2, "neutral"), (0.6, "positive"), (math.inf, "very positive"),
)
_CHUNK = 512


def load_assets() -> dict:
    """The vocabulary and templates of the world (``rcond.data/toyworld.json``)."""
    text = resources.files("rcond.data").joinpath("toyworld.json").read_text(encoding="utf-8")
    return json.loads(text)


def latent_label(s: float) -> str:
    """Bucket a latent sentiment in [-1, 1] into one of five labels."""
    return next(name for upper, name in LABELS if s < upper)


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_A_BEFORE_A_VOWEL_SOUND = re.compile(  # an apple, an 8-hour, an 11-inch; a useless, a one-off
    r"\b([Aa]) (?=(?![Uu]s[eiu]|[Oo]ne\b|[Aa]\b)[AEIOUaeiou]|8|1[18](?:\b|\d\d\b))")


def _articles(text: str) -> str:
    """``a`` made ``an`` before a word that starts with a vowel, or a number said with one (8..., 11,
    18, 11xx, 18xx): templates put ``a`` before a slot ("a {genre} film", "A {Noun} in {Adj}",
    "a {v}-hour battery") that the vocabulary fills with "animated", "Orchard" or 81. Of the
    vocabulary's words that start with a vowel letter, only "use..." and "one" start with a
    consonant sound, and keep ``a``."""
    return _A_BEFORE_A_VOWEL_SOUND.sub(r"\1n ", text)


def _with_article(adj: str) -> str:
    """``adj`` with ``a``/``an`` before it (:func:`_articles`), for a slot before a noun ("gives
    {a_adj} performance"). A hedge that is itself an article phrase ("a bit", "a little") becomes
    "a bit of a ...": "a bit of an awkward performance", not "an a bit awkward performance"."""
    for hedge, of in (("a bit ", "a bit of"), ("a little ", "a little bit of")):
        if adj.startswith(hedge):
            return f"{of} {_articles('a ' + adj[len(hedge):])}"
    return _articles(f"a {adj}")


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class Aspect:
    name: str
    plural: bool
    good: list[str]
    bad: list[str]

    @property
    def be(self) -> str:
        return "are" if self.plural else "is"


@dataclass
class Entity:
    """One product or film, with the facts and qualities that reviews and dialogs report."""

    name: str
    topic: dict
    quality: float
    aspects: list[tuple[Aspect, float]]
    specs: list[tuple[dict, str]]
    facts: dict[str, str]

    @property
    def kind(self) -> str:
        return self.topic["kind"]

    @property
    def ref(self) -> str:
        """How a sentence refers to it: "the Velix Aura" for products, the bare title for films."""
        return f"the {self.name}" if self.kind == "product" else self.name


@dataclass
class World:
    """Everything drawn once per seed: entities by topic, their popularity, brands and people."""

    assets: dict
    entities: list[Entity]
    by_topic: dict[str, list[Entity]]
    popularity: list[float]
    brands: dict[str, dict]
    people: dict[str, dict]


def _unique(make: Callable[[], str], taken: dict[str, object]) -> str:
    while True:
        name = make()
        if name not in taken:
            return name


def _spec_value(rng: random.Random, spec: dict) -> str:
    lo, hi, step = spec["min"], spec["max"], spec["step"]
    k = rng.randint(0, round((hi - lo) / step))
    if isinstance(step, int) and isinstance(lo, int):
        return str(lo + k * step)
    return f"{lo + k * step:.1f}"


def _price(rng: random.Random, lo: int, hi: int) -> str:
    x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return str(max(int(round(x / 10.0)) * 10 - 1, 9))


def build_world(seed: int, assets: dict | None = None) -> World:
    """Create the entities of the world for ``seed`` (independent of how many records follow)."""
    a = assets if assets is not None else load_assets()
    rng = random.Random(f"rcond.toyworld:{seed}:world")
    names = a["names"]
    taken: dict[str, object] = {}

    def person_name() -> str:
        first = rng.choice(names["first_names"])
        return f"{first} {rng.choice(names['surname_start'])}{rng.choice(names['surname_end'])}"

    def brand_name() -> str:
        return rng.choice(names["brand_start"]) + rng.choice(names["brand_end"])

    people: dict[str, dict] = {}
    for job, count in (("director", 40), ("actor", 80)):
        for _ in range(count):
            p = _unique(person_name, taken)
            taken[p] = people[p] = {"job": job, "city": rng.choice(names["cities"]), "titles": []}
    directors = [p for p, d in people.items() if d["job"] == "director"]
    actors = [p for p, d in people.items() if d["job"] == "actor"]

    brands: dict[str, dict] = {}
    for _ in range(30):
        b = _unique(brand_name, taken)
        city, year = rng.choice(names["cities"]), str(rng.randint(1950, 2018))
        taken[b] = brands[b] = {"city": city, "year": year, "products": []}
    brand_list = list(brands)

    def product_name(brand: str) -> str:
        word = rng.choice(names["model_words"])
        r = rng.random()
        if r < 0.4:
            return f"{brand} {word}"
        if r < 0.75:
            return f"{brand} {word} {rng.choice(names['model_suffixes'])}"
        return f"{brand} {rng.choice('ACKRSVXZ')}{rng.randint(1, 9)}{rng.choice(['', '0', '00'])}"

    def film_title() -> str:
        nouns = names["title_nouns"]
        noun = rng.choice(nouns)
        return _articles(rng.choice(names["title_patterns"]).format(
            Adj=rng.choice(names["title_adjectives"]), Noun=noun,
            Noun2=rng.choice([n for n in nouns if n != noun]),
        ))

    entities: list[Entity] = []
    by_topic: dict[str, list[Entity]] = {}
    for topic in a["topics"]:
        common = a["product_aspects"] if topic["kind"] == "product" else a["film_aspects"]
        aspect_defs = [Aspect(**d) for d in topic["aspects"] + common]
        group = by_topic[topic["name"]] = []
        for _ in range(ENTITIES_PER_TOPIC):
            quality = rng.uniform(-0.9, 0.9)
            aspects = [(asp, round(_clip(quality + rng.gauss(0.0, 0.5)), 3)) for asp in aspect_defs]
            if topic["kind"] == "product":
                brand = rng.choice(brand_list)
                name = _unique(lambda: product_name(brand), taken)
                specs = [(s, _spec_value(rng, s)) for s in topic["specs"]]
                facts = {"brand": brand, "price": _price(rng, *topic["price"])}
                brands[brand]["products"].append(name)
            else:
                name = _unique(film_title, taken)
                specs = [(s, _spec_value(rng, s)) for s in a["film_specs"]]
                director = rng.choice(directors)
                actor, actor2 = rng.sample(actors, 2)
                role = rng.choice(names["occupations"])
                facts = {
                    "director": director, "actor": actor, "actor2": actor2, "role": role,
                    "role2": rng.choice(names["supporting_roles"]),
                    "premise": _articles(rng.choice(topic["premises"]).format(occupation=role)),
                }
                for p in (director, actor, actor2):
                    people[p]["titles"].append(name)
            taken[name] = True
            facts.update({s["key"]: v for s, v in specs})
            entity = Entity(name=name, topic=topic, quality=round(quality, 3), aspects=aspects, specs=specs,
                            facts=facts)
            group.append(entity)
            entities.append(entity)
    popularity = [0.2 + rng.random() ** 2 for _ in entities]
    return World(assets=a, entities=entities, by_topic=by_topic, popularity=popularity, brands=brands,
                 people=people)


class _Writer:
    """Sentence-level vocabulary choices shared by reviews and dialogs."""

    def __init__(self, world: World, rng: random.Random):
        self.w = world
        self.rng = rng
        self.s = world.assets["sentiment"]
        self.cum_popularity = list(itertools.accumulate(world.popularity))

    def start(self) -> Entity:
        """Pick the entity of the next record (popular ones more often) and reset per-record state."""
        e = self.e = self.rng.choices(self.w.entities, cum_weights=self.cum_popularity)[0]
        self.unused = list(range(len(e.aspects)))
        self.rng.shuffle(self.unused)
        return e

    def next_aspect(self) -> tuple[Aspect, float]:
        """An aspect of the current entity not yet talked about (any aspect once all were)."""
        if not self.unused:
            return self.rng.choice(self.e.aspects)
        return self.e.aspects[self.unused.pop()]

    def other(self, e: Entity) -> Entity:
        return self.rng.choice([o for o in self.w.by_topic[e.topic["name"]] if o is not e])

    def tier(self, v: float) -> int:
        """Stochastically round a valence in [-1, 1] to a tier in -3..3."""
        x = _clip(v) * 3.0
        lo = math.floor(x)
        return int(max(-3, min(3, lo + (self.rng.random() < x - lo))))

    def adjective(self, t: int, boost: float = 0.3) -> str:
        r = self.rng
        adj = r.choice(self.s["adjectives"][str(t)])
        if abs(t) == 3 and r.random() < 0.06:
            return adj.upper()
        if t != 0 and r.random() < boost:
            kind = "down" if abs(t) == 1 and r.random() < 0.5 else "up"
            return r.choice(self.s["boosters"][kind]) + " " + adj
        return adj

    def adjp(self, t: int) -> str:
        negated = self.s["negated"].get(str(t))
        if negated and self.rng.random() < 0.22:
            return self.rng.choice(negated)
        return self.adjective(t)

    def pred(self, t: int, kind: str) -> str:
        if self.rng.random() < 0.55:
            return self.rng.choice(self.s["overall"][kind][str(t)])
        return self.adjp(t)

    def vp(self, aspect: Aspect, t: int) -> str:
        if t >= 1:
            return self.rng.choice(aspect.good)
        if t <= -1:
            return self.rng.choice(aspect.bad)
        return f"{aspect.be} {self.rng.choice(self.s['neutral_predicates'])}"

    def clause(self, aspect: Aspect, t: int) -> str:
        """A lower-case clause judging one aspect: "the sound is great" / "the battery dies by lunchtime"."""
        if self.rng.random() < 0.5:
            return f"the {aspect.name} {aspect.be} {self.adjp(t)}"
        return f"the {aspect.name} {self.vp(aspect, t)}"

    def end(self, sentence: str, t: int) -> str:
        """Turn the final full stop into "!" now and then for strong sentences."""
        if abs(t) >= 2 and sentence.endswith(".") and self.rng.random() < 0.25:
            return sentence[:-1] + ("!!" if self.rng.random() < 0.2 else "!")
        return sentence


class _ReviewWriter(_Writer):
    """One review per call: a latent sentiment, a plan of sentence kinds, then the sentences."""

    TYPES = {
        "product": (("aspect", 34), ("pair", 20), ("overall", 12), ("feeling", 7), ("value", 7), ("compare", 5),
                    ("fact", 6)),
        "film": (("aspect", 30), ("pair", 18), ("overall", 12), ("feeling", 7), ("value", 4), ("compare", 5),
                 ("person", 12), ("fact", 5)),
    }

    def review(self) -> dict:
        r = self.rng
        e = self.start()
        s = self.latent = round(_clip(0.6 * e.quality + r.gauss(0.0, 0.5)), 3)
        types, weights = zip(*self.TYPES[e.kind])
        plan: list[str] = []
        for _ in range(r.choices((1, 2, 3, 4), weights=(1, 3, 4, 2))[0]):
            kind = r.choices(types, weights=weights)[0]
            plan.append("aspect" if kind in plan and kind not in ("aspect", "pair") else kind)
        if len(plan) == 1 and plan[0] in ("fact", "feeling", "compare", "value"):
            plan[0] = "pair"
        if s < -0.3 and r.random() < 0.05:
            plan[r.randrange(len(plan))] = "sarcasm"
        if r.random() < 0.35:
            plan.insert(0, "opener")
        if r.random() < 0.45:
            plan.append("verdict")
        sentences = [getattr(self, "_" + kind)() for kind in plan]
        text = _articles(" ".join(sentences))
        if abs(s) > 0.4 and r.random() < 0.05:
            text += " " + r.choice(self.s["emoticons"]["positive" if s > 0 else "negative"])
        return {
            "prompt": f"Review of {e.name} ({e.topic['label']}):",
            "response": text,
            "topic": e.topic["name"],
            "entity": e.name,
            "latent_sentiment": s,
            "latent_label": latent_label(s),
        }

    def _overall_v(self) -> float:
        return _clip(self.latent + self.rng.gauss(0.0, 0.15))

    def _aspect_v(self, quality: float) -> float:
        return _clip(0.5 * self.latent + 0.5 * quality + self.rng.gauss(0.0, 0.2))

    def _aspect(self) -> str:
        aspect, q = self.next_aspect()
        t = self.tier(self._aspect_v(q))
        template = self.rng.choice(self.w.assets["reviews"]["aspect"])
        adjp = self.adjp(t)
        sentence = template.format(
            aspect=aspect.name, be=aspect.be, adjp=adjp, Adjp=_cap(adjp), vp=self.vp(aspect, t),
            it_be="they are" if aspect.plural else "it is", tail=self._tail(),
        )
        return self.end(_cap(sentence), t)

    def _tail(self) -> str:
        """An optional qualifier for an aspect judgement ("for the price", "for a horror film")."""
        if self.rng.random() >= 0.35:
            return ""
        e, rv = self.e, self.w.assets["reviews"]
        return self.rng.choice(rv["tails"][e.kind]).format(
            use=self.rng.choice(e.topic["uses"]), duration=self.rng.choice(rv["duration"]),
            short=e.topic.get("short", ""), genre=e.topic.get("genre", ""), director=e.facts.get("director", ""),
        )

    def _pair(self) -> str:
        (a1, q1), (a2, q2) = self.next_aspect(), self.next_aspect()
        v1, v2 = self._aspect_v(q1), self._aspect_v(q2)
        if v1 * v2 < 0 or abs(v1 - v2) > 0.8:
            template = self.rng.choice(self.s["contrast"])
        else:
            template = self.rng.choice(self.s["addition"])
        t1, t2 = self.tier(v1), self.tier(v2)
        return self.end(_cap(template.format(a=self.clause(a1, t1), b=self.clause(a2, t2))), t2)

    def _subject(self) -> str:
        key = "product_plural" if self.e.topic.get("short_plural") else self.e.kind
        subject = self.rng.choice(self.w.assets["reviews"]["subjects"][key])
        return subject.format(short=self.e.topic.get("short", ""))

    def _overall(self) -> str:
        t = self.tier(self._overall_v())
        subject = self._subject()
        template = self.rng.choice(self.w.assets["reviews"]["overall"])
        sentence = template.format(Subject=_cap(subject), subject=subject, pred=self.pred(t, self.e.kind))
        return self.end(_cap(sentence), t)

    def _feeling(self) -> str:
        t = self.tier(self._overall_v())
        topic = self.e.topic
        if self.e.kind == "film":
            this = "this film"
        else:
            this = f"{'these' if topic.get('short_plural') else 'this'} {topic['short']}"
        template = self.rng.choice(self.w.assets["reviews"]["feeling"])
        return self.end(template.format(feel=self.rng.choice(self.s["feelings"][str(t)]), this=this), t)

    def _value(self) -> str:
        t = self.tier(self._overall_v())
        template = self.rng.choice(self.w.assets["reviews"]["value"][self.e.kind])
        return self.end(template.format(
            price=self.e.facts.get("price"), runtime=self.e.facts.get("runtime"),
            adjp=self.adjp(t), pred=self.pred(t, self.e.kind), subject=self._subject(),
        ), t)

    def _compare(self) -> str:
        other = self.other(self.e)
        v = self._overall_v()
        templates = self.w.assets["reviews"]["compare"]["better" if v >= 0 else "worse"]
        return self.rng.choice(templates).format(other=other.ref, Other=_cap(other.ref))

    def _person(self) -> str:
        templates = self.w.assets["reviews"]["person"]
        f = self.e.facts
        if self.rng.random() < 0.65:
            quality = next(q for asp, q in self.e.aspects if asp.name == "acting")
            t = self.tier(self._aspect_v(quality))
            adj = self.adjective(t)
            template = self.rng.choice(templates["actor"])
            actor, role = (f["actor"], f["role"]) if self.rng.random() < 0.7 else (f["actor2"], f["role2"])
            sentence = template.format(actor=actor, role=role, adjp=adj, a_adj=_with_article(adj))
        else:
            t = self.tier(self._aspect_v(self.e.quality))
            sentence = self.rng.choice(templates["director"]).format(director=f["director"], adjp=self.adjp(t))
        return self.end(sentence, t)

    def _fact(self) -> str:
        e, r = self.e, self.rng
        if e.kind == "product" and r.random() < 0.3:
            return f"It costs ${e.facts['price']}."
        if e.kind == "film" and r.random() < 0.3:
            return r.choice((f"It was directed by {e.facts['director']}.", f"It stars {e.facts['actor']}."))
        spec, value = r.choice(e.specs)
        return spec["fact"].format(v=value)

    def _opener(self) -> str:
        rv = self.w.assets["reviews"]
        uses = self.e.topic["uses"]
        return self.rng.choice(rv["openers"][self.e.kind]).format(
            ref=self.e.ref, when=self.rng.choice(rv["when"]), relative=self.rng.choice(rv["relative"]),
            duration=self.rng.choice(rv["duration"]), use=self.rng.choice(uses),
        )

    def _verdict(self) -> str:
        t = self.tier(self._overall_v())
        return self.rng.choice(self.s["verdicts"][self.e.kind][str(t)])

    def _sarcasm(self) -> str:
        aspect, _ = self.next_aspect()
        clause = f"the {aspect.name} {self.rng.choice(aspect.bad)}"
        return self.rng.choice(self.s["sarcasm"]).format(clause=clause)


# Assistant styles by helpfulness h in [-1, 1]: the first whose bound exceeds h.
STYLES = ((-0.5, "rude"), (-0.15, "curt"), (0.15, "neutral"), (0.5, "friendly"), (math.inf, "warm"))
# How the user reacts to each assistant style, and the chances of a style's opening and closing lines.
_STYLE_MOOD = {
    "rude": "negative", "curt": "neutral", "neutral": "neutral", "friendly": "positive", "warm": "positive",
}
_STYLE_FRAME = {
    "warm": (0.85, 0.7), "friendly": (0.6, 0.4), "neutral": (0.5, 0.3), "curt": (0.3, 0.3), "rude": (0.75, 0.6),
}


class _DialogWriter(_Writer):
    """One customer dialog per call; the assistant's helpfulness drifts around a per-dialog disposition."""

    def dialog(self) -> dict:
        r = self.rng
        e = self.start()
        d = self.d = self.w.assets["dialog"]
        self.unasked_specs = list(e.specs)
        r.shuffle(self.unasked_specs)
        disposition = r.uniform(-1.0, 1.0)
        exchanges = r.choices((2, 3, 4), weights=(4, 3, 2))[0]
        kinds = ["aspect", "spec", "recommend", "compare"] + (["problem"] if e.kind == "product" else [])
        turns: list[dict] = []
        styles: list[str] = []
        helpfulness: list[float] = []
        for i in range(exchanges):
            if i == 0:
                kind = r.choice(kinds)
                user = self._question(kind, first=True)
            else:
                if i == exchanges - 1 and r.random() < 0.35:
                    kind, user = "closing", r.choice(d["followups"]["closing"])
                else:
                    kind = r.choice(["aspect", "aspect", "spec", "recommend", "compare"])
                    if kind == "spec" and not self.unasked_specs:
                        kind = "aspect"
                    mood = _STYLE_MOOD[styles[-1]]
                    if mood == "positive" and r.random() < 0.3:
                        mood = "neutral"
                    user = self._question(kind, first=False)
                    if r.random() < 0.6:
                        user = r.choice(d["reactions"][mood]) + " " + user
            h = round(_clip(disposition + r.gauss(0.0, 0.3)), 3)
            style = next(name for upper, name in STYLES if h < upper)
            turns.append({"role": "user", "content": _articles(user)})
            turns.append({"role": "assistant", "content": _articles(self._answer(kind, style))})
            styles.append(style)
            helpfulness.append(h)
        return {
            "turns": turns, "topic": e.topic["name"], "entity": e.name,
            "styles": styles, "latent_helpfulness": helpfulness,
        }

    def _question(self, kind: str, first: bool) -> str:
        r, e, d = self.rng, self.e, self.d
        self.other_entity = self.other(e)
        if kind == "aspect":
            self.aspect = self.next_aspect()
            pool = d["questions"]["aspect"] if first else d["followups"]["aspect"]
            aspect = self.aspect[0]
            return r.choice(pool).format(aspect=aspect.name, be=aspect.be, Be=_cap(aspect.be), ref=e.ref)
        if kind == "spec":
            self.spec = self.unasked_specs.pop()
            return _cap(self.spec[0]["question"].format(ref=e.ref))
        fields = {
            "ref": e.ref, "other": self.other_entity.ref, "use": r.choice(e.topic["uses"]),
            "short": e.topic.get("short", ""),
            "problem": r.choice(e.topic["problems"]) if kind == "problem" else "",
        }
        self.use = fields["use"]
        return _cap(r.choice(d["questions"][kind]).format(**fields))

    def _answer(self, kind: str, style: str) -> str:
        r, d = self.rng, self.d
        frame = d["styles"][style]
        p_open, p_close = _STYLE_FRAME[style]
        if kind == "closing":
            return r.choice(d["answers"]["goodbye"][_STYLE_MOOD[style]])
        if style == "rude" and r.random() < 0.5:
            content = r.choice(d["dismissals"])
        else:
            content = self._content(kind, style)
        parts = []
        if r.random() < p_open:
            parts.append(r.choice(frame["open"]))
        parts.append(content)
        if r.random() < p_close:
            parts.append(r.choice(frame["close"]))
        return " ".join(p for p in parts if p)

    def _content(self, kind: str, style: str) -> str:
        r, e, d = self.rng, self.e, self.d
        answers = d["answers"]
        if kind == "aspect":
            aspect, q = self.aspect
            t = self.tier(_clip(q + r.gauss(0.0, 0.15)))
            template = r.choice(answers["aspect"])
            adjp, vp = self.adjp(t), self.vp(aspect, t)
            return _cap(template.format(aspect=aspect.name, be=aspect.be, adjp=adjp, vp=vp))
        if kind == "spec":
            spec, value = self.spec
            return spec["answer"].format(v=value)
        ranked = sorted(e.aspects, key=lambda aq: aq[1])
        worst, best = ranked[0][0], ranked[-1][0]
        if kind == "recommend":
            v = _clip(e.quality + r.gauss(0.0, 0.15))
            if v > 0.25:
                t = self.tier(v)
                return r.choice(answers["recommend_yes"]).format(
                    use=self.use, adjp=self.adjective(t, boost=0.2), pred=self.pred(t, e.kind),
                    aspect=best.name, vp=self.vp(best, 1))
            if v < -0.25:
                return r.choice(answers["recommend_no"]).format(
                    use=self.use, aspect=worst.name, vp=self.vp(worst, -1))
            return r.choice(answers["recommend_maybe"]).format(
                use=self.use, best=best.name, best_vp=self.vp(best, 1),
                worst=worst.name, worst_vp=self.vp(worst, -1))
        if kind == "compare":
            other = self.other_entity
            diff = e.quality - other.quality
            fields = {"ref": e.ref, "other": other.ref, "Other": _cap(other.ref)}
            if diff > 0.2:
                return _cap(r.choice(answers["better"]).format(aspect=best.name, vp=self.vp(best, 1), **fields))
            if diff < -0.2:
                return _cap(r.choice(answers["worse"]).format(aspect=worst.name, vp=self.vp(worst, -1), **fields))
            return r.choice(answers["same"])
        fix = r.choice(answers["fix"]).format(fix=r.choice(d["fixes"]), fallback=r.choice(d["fallbacks"]))
        if style in ("warm", "friendly") and r.random() < 0.7:
            return r.choice(answers["apology"]) + " " + fix
        return fix


class _TextWriter:
    """Neutral descriptive documents about the entities, brands and people of the world."""

    def __init__(self, world: World, rng: random.Random):
        self.w, self.rng = world, rng
        self.t = world.assets["text"]
        self.brand_names = [b for b, info in world.brands.items() if info["products"]]
        self.people_names = [p for p, info in world.people.items() if info["titles"]]

    def doc(self) -> dict:
        kind = self.rng.choices(("entity", "brand", "person", "guide"), weights=(6, 1, 1, 2))[0]
        doc = getattr(self, "_" + kind)()
        doc["text"] = _articles(doc["text"])
        return doc

    def _pick(self, key: str, **fields) -> str:
        return _cap(self.rng.choice(self.t[key]).format(**fields))

    def _entity(self) -> dict:
        r = self.rng
        e = r.choice(self.w.entities)
        f = e.facts
        if e.kind == "product":
            use, use2 = r.sample(e.topic["uses"], 2)
            fields = {
                "ref": e.ref, "Ref": _cap(e.ref), "item": e.topic["item"], "brand": f["brand"],
                "price": f["price"], "use": use, "use2": use2,
            }
            body = [self._pick("product_price", **fields)] + [s["fact"].format(v=v) for s, v in e.specs]
            r.shuffle(body)
            sentences = [self._pick("product_intro", **fields)] + body + [self._pick("product_uses", **fields)]
        else:
            fields = dict(f, ref=e.ref, Ref=_cap(e.ref), label=e.topic["label"])
            sentences = [self._pick(k, **fields) for k in ("film_intro", "film_cast", "film_story")]
            sentences.append(f"It runs {f['runtime']} minutes.")
        return {"text": " ".join(sentences), "topic": e.topic["name"], "entity": e.name}

    def _brand(self) -> dict:
        b = self.rng.choice(self.brand_names)
        info = self.w.brands[b]
        intro = self._pick("brand_intro", brand=b, city=info["city"], year=info["year"])
        return self._profile("brand", b, intro, "brand_range", "names", info["products"], 5)

    def _person(self) -> dict:
        p = self.rng.choice(self.people_names)
        info = self.w.people[p]
        intro = self._pick("person_intro", person=p, job=info["job"], city=info["city"])
        return self._profile("person", p, intro, "person_works", "titles", info["titles"], 4, person=p)

    def _profile(self, topic: str, name: str, intro: str, list_key: str, list_field: str,
                 items: list[str], most: int, **fields) -> dict:
        """A two-sentence profile: the intro, then up to ``most`` of ``items`` in random order."""
        items = items[:]
        self.rng.shuffle(items)
        listing = self._pick(list_key, **{list_field: _join_and(items[:most])}, **fields)
        return {"text": intro + " " + listing, "topic": topic, "entity": name}

    def _guide(self) -> dict:
        r = self.rng
        topic = r.choice(self.w.assets["topics"])
        group = self.w.by_topic[topic["name"]]
        chosen = r.sample(group, 3)
        a1, a2, a3 = r.sample([asp.name for asp, _ in group[0].aspects], 3)
        sentences = [
            self._pick("guide_intro", plural=topic["plural"]),
            self._pick("guide_body", a1=a1, a2=a2, a3=a3),
            self._pick("guide_examples", names=_join_and([e.name for e in chosen])),
        ]
        for e in chosen:
            spec, value = r.choice(e.specs)
            sentences.append(f"{_cap(e.ref)} has {spec['phrase'].format(v=value)}.")
        return {"text": " ".join(sentences), "topic": topic["name"], "entity": None}


_HISTOGRAM_EDGES = [round(-1.0 + 0.2 * i, 1) for i in range(11)]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    hist = [0] * 10
    for v in values:  # bins [lo, hi), the last [0.8, 1.0]; by the edges, as (v + 1) * 5 puts -0.8 below 1
        hist[min(bisect.bisect_right(_HISTOGRAM_EDGES, v) - 1, 9)] += 1
    deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.pstdev(values), 4),
        "min": min(values),
        "max": max(values),
        "deciles": [round(x, 4) for x in deciles],
        "histogram_edges": list(_HISTOGRAM_EDGES),
        "histogram": hist,
        "fraction_zero": round(sum(v == 0.0 for v in values) / len(values), 4),
    }


def _write_jsonl(path: Path, records: Iterable[dict]) -> dict:
    """Write records as JSON lines; return the record count and file size."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return {"records": n, "bytes": path.stat().st_size}


def _scored(make: Callable[[], dict], n: int, texts_of: Callable[[dict], list[str]],
            assign: Callable[[dict, Iterator[float]], None], scorer, bar) -> Iterator[dict]:
    """Make ``n`` records, score their texts in chunks, attach the rewards, yield in order."""
    for start in range(0, n, _CHUNK):
        recs = [make() for _ in range(min(_CHUNK, n - start))]
        rewards = iter(scorer([t for rec in recs for t in texts_of(rec)]))
        for rec in recs:
            assign(rec, rewards)
        yield from recs
        bar.update(len(recs))


class ToyWorldError(ValueError):
    """Generator settings that cannot work (a negative count or seed)."""


def check_counts(counts: dict[str, int]) -> None:
    """Each count (and the seed) a non-negative integer; errors use the names given (the CLI's flags)."""
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ToyWorldError(f"{name} must be a non-negative integer, got {n!r}")


def generate(out_dir: str | Path, *, seed: int = 0, n_reviews: int = 20000, n_dialogs: int = 2000,
             n_text: int = 2000, progress: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Generate the toy-world corpus into ``out_dir``; return the file paths by name.

    Writes ``reviews.jsonl``, ``dialogs.jsonl``, ``text.jsonl`` and ``meta.json`` (seed,
    counts, generator version, reward statistics). The directory appears only when complete;
    an existing non-empty ``out_dir`` is refused unless it is an earlier toy world and
    ``overwrite=True``; a file there always.
    """
    check_counts({"seed": seed, "n_reviews": n_reviews, "n_dialogs": n_dialogs, "n_text": n_text})
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite, kind=WORLD) as tmp:
        meta = _generate_into(tmp, seed, n_reviews, n_dialogs, n_text, progress)
        with open(tmp / FILES["meta"], "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(meta, sort_keys=True, indent=2) + "\n")
    return {name: out / fname for name, fname in FILES.items()}


def _generate_into(tmp: Path, seed: int, n_reviews: int, n_dialogs: int, n_text: int, progress: bool) -> dict:
    world = build_world(seed)
    scorer = get_scorer("vader")
    review_rewards: list[float] = []
    by_label: dict[str, list[float]] = {name: [] for _, name in LABELS}
    turn_rewards: list[float] = []
    words = {"reviews": 0, "dialogs": 0, "text": 0}

    def track_review(rec: dict, rewards: Iterator[float]) -> None:
        rec["reward"] = next(rewards)
        review_rewards.append(rec["reward"])
        by_label[rec["latent_label"]].append(rec["reward"])
        words["reviews"] += len(rec["response"].split())

    def track_dialog(rec: dict, rewards: Iterator[float]) -> None:
        for turn in rec["turns"]:
            words["dialogs"] += len(turn["content"].split())
            if turn["role"] == "assistant":
                turn["reward"] = next(rewards)
                turn_rewards.append(turn["reward"])

    def text_docs() -> Iterator[dict]:
        writer = _TextWriter(world, random.Random(f"rcond.toyworld:{seed}:text"))
        for _ in range(n_text):
            doc = writer.doc()
            words["text"] += len(doc["text"].split())
            yield doc
            bar.update(1)

    reviews = _ReviewWriter(world, random.Random(f"rcond.toyworld:{seed}:reviews"))
    dialogs = _DialogWriter(world, random.Random(f"rcond.toyworld:{seed}:dialogs"))
    files = {}
    with tqdm(total=n_reviews + n_dialogs + n_text, desc="toyworld", unit="rec", disable=not progress) as bar:
        files["reviews"] = _write_jsonl(tmp / FILES["reviews"], _scored(
            reviews.review, n_reviews, lambda rec: [rec["response"]], track_review, scorer, bar))
        files["dialogs"] = _write_jsonl(tmp / FILES["dialogs"], _scored(
            dialogs.dialog, n_dialogs,
            lambda rec: [t["content"] for t in rec["turns"] if t["role"] == "assistant"],
            track_dialog, scorer, bar))
        files["text"] = _write_jsonl(tmp / FILES["text"], text_docs())
    for name, info in files.items():
        info["words"] = words[name]
    return {
        "generator": "rcond.toyworld",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {"reviews": n_reviews, "dialogs": n_dialogs, "text": n_text,
                   "assistant_turns": len(turn_rewards), "entities": len(world.entities)},
        "reward": {"name": scorer.name, "vaderSentiment_version": metadata.version("vaderSentiment"),
                   "reviews": _stats(review_rewards), "assistant_turns": _stats(turn_rewards)},
        "reviews_by_latent_label": {
            name: {"count": len(v), "mean_reward": round(statistics.fmean(v), 4) if v else None}
            for name, v in by_label.items()
        },
        "files": files,
    }
