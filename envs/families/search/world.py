"""A generated world with consistent facts, rendered as a document corpus, and multi-hop questions.

Everything follows from `corpus_seed`: countries, cities (each in one country), companies (a
headquarters city, a founding year, a founder), and people (a birth city, an employer). Every
relation is a function, so each question has exactly one answer, and the chain of documents that
proves it (`hops`) is known. Names are built from syllables and deduplicated, so a name identifies
one entity and one document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_SYL = ["ka", "ro", "mi", "te", "lu", "sa", "vo", "ne", "di", "pa", "zu", "ri", "go", "be", "la", "to", "fe", "ni", "qu", "sho"]
_PROFESSIONS = ["painter", "engineer", "chemist", "teacher", "pilot", "architect", "economist", "surgeon", "novelist", "botanist"]
_INDUSTRIES = ["shipping", "software", "textile", "mining", "aerospace", "pharmaceutical", "publishing", "food"]


@dataclass(frozen=True)
class Doc:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    hops: list[str]  # doc ids, in the order a solver reads them
    queries: list[str]  # what a solver searches for before each hop


@dataclass
class World:
    docs: dict[str, Doc] = field(default_factory=dict)
    country: dict[str, str] = field(default_factory=dict)  # city -> country
    hq: dict[str, str] = field(default_factory=dict)  # company -> city
    founded: dict[str, int] = field(default_factory=dict)
    founder: dict[str, str] = field(default_factory=dict)  # company -> person
    born: dict[str, str] = field(default_factory=dict)  # person -> city
    employer: dict[str, str] = field(default_factory=dict)  # person -> company

    def doc_id(self, kind: str, name: str) -> str:
        return f"{kind}/{name.lower().replace(' ', '-')}"


def _names(rng: random.Random, count: int, parts: int, taken: set[str]) -> list[str]:
    """Names whose words are used by no other entity (`taken` holds the used words)."""
    out: list[str] = []
    while len(out) < count:
        words = ["".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(parts)]
        if len(set(words)) == parts and not any(word.lower() in taken for word in words):
            taken.update(word.lower() for word in words)
            out.append(" ".join(words))
    return out


def build_world(seed: int, people: int = 240, companies: int = 60, cities: int = 40, countries: int = 12) -> World:
    rng, taken, w = random.Random(f"search-world:{seed}"), set(), World()
    country_names = _names(rng, countries, 1, taken)
    city_names = _names(rng, cities, 1, taken)
    company_names = [n + " " + rng.choice(["Group", "Works", "Labs", "Holdings"]) for n in _names(rng, companies, 1, taken)]
    person_names = _names(rng, people, 2, taken)
    for city in city_names:
        w.country[city] = rng.choice(country_names)
        pop = rng.randint(20, 3000) * 1000
        w.docs[w.doc_id("city", city)] = Doc(w.doc_id("city", city), city, f"{city} is a city in {w.country[city]}. It has about {pop} inhabitants.")
    for person in person_names:
        w.born[person] = rng.choice(city_names)
    for company in company_names:
        w.hq[company], w.founded[company], w.founder[company] = rng.choice(city_names), rng.randint(1850, 2015), rng.choice(person_names)
    for person in person_names:
        w.employer[person] = rng.choice(company_names)
        job = rng.choice(_PROFESSIONS)
        text = f"{person} is a {job} who was born in {w.born[person]}. {person} works for {w.employer[person]}."
        w.docs[w.doc_id("person", person)] = Doc(w.doc_id("person", person), person, text)
    for company in company_names:
        text = (f"{company} is a {rng.choice(_INDUSTRIES)} company headquartered in {w.hq[company]}. "
                f"It was founded in {w.founded[company]} by {w.founder[company]}.")
        w.docs[w.doc_id("company", company)] = Doc(w.doc_id("company", company), company, text)
    for country in country_names:
        text = f"{country} is a country. Its cities include {', '.join(c for c in city_names if w.country[c] == country) or 'none on record'}."
        w.docs[w.doc_id("country", country)] = Doc(w.doc_id("country", country), country, text)
    return w


def _question_kinds(w: World, person: str) -> list[Question]:
    """Every question about `person` and their employer, in a fixed order (the draw picks one)."""
    company = w.employer[person]
    pid, cid = w.doc_id("person", person), w.doc_id("company", company)
    born, hq, founder = w.born[person], w.hq[company], w.founder[company]
    return [
        Question(f"In which city is the company that {person} works for headquartered?", hq, [pid, cid], [person, company]),
        Question(f"In which country was {person} born?", w.country[born], [pid, w.doc_id("city", born)], [person, born]),
        Question(f"In which city was the founder of {company} born?", w.born[founder], [cid, w.doc_id("person", founder)], [company, founder]),
        Question(f"In what year was the company that employs {person} founded?", str(w.founded[company]), [pid, cid], [person, company]),
        Question(f"In which country is the headquarters of the employer of {person}?", w.country[hq], [pid, cid, w.doc_id("city", hq)], [person, company, hq]),
        Question(f"In which city was {person} born?", born, [pid], [person]),
        Question(f"Which company does {person} work for?", company, [pid], [person]),
        Question(f"In which city is {company} headquartered?", hq, [cid], [company]),
        Question(f"In what year was {company} founded?", str(w.founded[company]), [cid], [company]),
    ]


def make_question(w: World, rng: random.Random, min_hops: int = 2, max_hops: int = 3) -> Question:
    """One question whose chain has `min_hops`..`max_hops` documents; `hops` prove the answer, in order.

    The person is drawn first and the kind second, from the kinds whose hop count is in range, so
    the default range (2-3: the five multi-hop kinds) draws exactly what it always drew."""
    person = rng.choice(sorted(w.born))
    kinds = [q for q in _question_kinds(w, person) if min_hops <= len(q.hops) <= max_hops]
    if not kinds:
        raise ValueError(f"no question kind has {min_hops}-{max_hops} hops")
    return kinds[rng.randrange(len(kinds))]
