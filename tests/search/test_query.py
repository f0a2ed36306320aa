"""The search language: what parses into what, and every syntax error named."""

from __future__ import annotations

import pytest

from mpi.search.query import MAX_TERMS, Options, QuerySyntaxError, Shortcuts, build, parse


@pytest.mark.parametrize("text, reason", [
    ("smith AND", "AND at position 7 needs a term after it"),
    ("AND smith", "AND at position 1 needs a term before it"),
    ("smith OR", "OR at position 7 needs a term after it"),
    ("NOT", "NOT at position 1 needs a term after it"),
    ("(smith", "the '(' at position 1 is never closed"),
    ("smith)", "unexpected ')' at position 6"),
    ("()", "the '(' at position 1 has nothing inside"),
    ('"john smith', 'the quote (") at position 1 is never closed'),
    ('""', "the phrase at position 1 is empty"),
    ("foo:bar", "unknown field 'foo' at position 1"),
    ("family:", "family: at position 1 has no value"),
    ("smith~3", "fuzzy distance 3 at position 1 is too large"),
    ("*ith", "only a trailing * is supported"),
    ("sm?th", "only a trailing * is supported"),
    ("birth_date:1980-13-01", "birth_date at position 12 must be a date as YYYY-MM-DD"),
    ("birth_year:80", "birth_year at position 12 must be a year"),
    ("gender:x", "gender at position 8 must be one of"),
    ("   ", "is empty"),
    ("x" * 501, "must be at most 500 characters"),
    (" ".join(["a"] * (MAX_TERMS + 1)), "too many terms"),
])
def test_syntax_errors_name_the_problem(text, reason):
    with pytest.raises(QuerySyntaxError) as caught:
        parse(text)
    assert reason in caught.value.reason
    assert caught.value.field == "q"


def test_operators_precedence_and_fields():
    from whoosh import query as wq

    q = parse("family:(smith OR jones) AND NOT given:john~0 1980")
    assert isinstance(q, wq.And) and len(q.subqueries) == 3
    assert isinstance(q.subqueries[0], wq.Or) and isinstance(q.subqueries[1], wq.Not)
    text = str(q)
    assert text.startswith("(((family:smith^3.0 OR family:smith~")
    assert "NOT given:john^3.0" in text
    assert "birth_year:1980" in text


def test_free_text_word_searches_every_field_kind():
    text = str(parse("smith"))
    for part in ("name:smith^3.0", "name:smith~", "name_phonetic:SM0", "name_ngram:smi",
                 "identifier:smith", "source_id:smith", "address:smith"):
        assert part in text
    assert "telecom" not in text  # not a phone number or e-mail address


def test_numbers_are_not_fuzzed_as_names():
    text = str(parse("123-45-6789"))
    assert "identifier:123456789^3.0" in text and "telecom:123456789" in text
    assert "name:" not in text


def test_fuzziness_follows_the_option_and_word_length():
    assert "~" not in str(parse("smith", Options(fuzzy=0)))
    assert "~" not in str(parse("lee", Options(fuzzy=2)))  # short words stay exact
    assert str(parse("family:smith~0")) == "family:smith^3.0"
    assert "maxdist=2" in repr(parse("family:schwarzenegger~2"))


def test_prefix_and_phrase():
    assert str(parse("family:smi*")) == "family_prefix:smi"  # one term: leading n-grams
    assert str(parse("given:smi*")) == "given:smi*"
    assert str(parse("family:schwarzen*")) == "family:schwarzen*"  # past 8 letters
    assert str(parse('given:"Anna Maria"')) == 'given:"anna maria"'
    assert repr(parse('"anna maria"~2')).count("slop=3") == 2  # names and addresses


def test_accents_apostrophes_and_case_fold():
    assert str(parse("family:O'Brien~0")) == "family:obrien^3.0"
    assert str(parse("family:HERNÁNDEZ~0")) == "family:hernandez^3.0"


def test_shortcuts_combine_with_q():
    q = build("smith", Shortcuts(name="john", birth_year=1980), Options())
    text = str(q)
    assert "birth_year:1980" in text and "name:smith^3.0" in text
    assert "name_year:1980|john^3.0" in text  # the name shortcut, among 1980's records


def test_nothing_to_search_for_is_an_error():
    with pytest.raises(QuerySyntaxError, match="give q or at least one of"):
        build(None, Shortcuts(), Options())
    with pytest.raises(QuerySyntaxError) as caught:
        build(None, Shortcuts(identifier="--"), Options())
    assert caught.value.field == "identifier"


def test_infix_trigrams_are_dropped_for_known_names():
    from whoosh import query as wq

    from mpi.search.query import Infix, prune_infixes

    q = parse("ernan smith")
    infixes = [n for n in _walk(q) if isinstance(n, Infix)]
    assert {i.token for i in infixes} == {"ernan", "smith"}
    pruned = prune_infixes(q, lambda word: word == "smith")
    assert {i.token for i in _walk(pruned) if isinstance(i, Infix)} == {"ernan"}
    assert isinstance(pruned, wq.And)


def _walk(q):
    yield q
    for child in q.children():
        yield from _walk(child)


FAMILY_NAMES = ["Smith", "Smyth", "Smithe", "Smit", "Schmidt", "Sith", "Smithson", "Jones",
                "Joness", "Jonas", "Müller", "Muller", "Mueller", "O'Brien", "OBrian", "Ng",
                "Nguyen", "Nguyễn", "Zhang", "Zheng", "Żak", "Ådahl", "Aadahl"]


@pytest.fixture(scope="module")
def two_segments(tmp_path_factory):
    """An index of FAMILY_NAMES in two segments (two commits)."""
    from mpi.search.schema import document
    from mpi.search.store import IndexDirectory

    directory = IndexDirectory(tmp_path_factory.mktemp("fuzzy"))
    built = directory.new_build()
    ix = directory.create_index(built)
    for part in (FAMILY_NAMES[::2], FAMILY_NAMES[1::2]):
        writer = ix.writer()
        for i, family in enumerate(part):
            writer.add_document(**document({"id": f"{family}-{i}", "names": [
                {"family": family, "given": [family[::-1]]}]}))
        writer.commit(merge=False)
    yield ix
    ix.close()


@pytest.mark.parametrize("word", ["smith", "smiht", "smth", "jonnes", "muller", "obrien",
                                  "nguyen", "zhang", "adahl", "aadahl", "zak", "x", "mith"])
@pytest.mark.parametrize(("maxdist", "prefixlength"), [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_fuzzy_words_are_the_words_whoosh_finds(two_segments, word, maxdist, prefixlength):
    from whoosh import query as wq

    from mpi.search.query import FuzzyWord

    if len(word) < prefixlength:  # whoosh's automaton fails (IndexError); ours finds none
        assert FuzzyWord("family", word, maxdist=maxdist, prefixlength=prefixlength)._btexts(
            two_segments.reader().leaf_readers()[0][0]) == []
        return
    with two_segments.searcher() as searcher:
        assert len(searcher.leaf_searchers()) == 2
        for field in ("family", "given", "name"):
            for leaf, _ in searcher.leaf_searchers():
                ours = FuzzyWord(field, word, maxdist=maxdist, prefixlength=prefixlength)
                whooshs = wq.FuzzyTerm(field, word, maxdist=maxdist, prefixlength=prefixlength)
                assert sorted(ours._btexts(leaf.reader())) == \
                    sorted(whooshs._btexts(leaf.reader())), (field, word)
            found = {hit["id"] for hit in searcher.search(
                FuzzyWord(field, word, maxdist=maxdist, prefixlength=prefixlength), limit=None)}
            assert found == {hit["id"] for hit in searcher.search(
                wq.FuzzyTerm(field, word, maxdist=maxdist, prefixlength=prefixlength),
                limit=None)}


def test_a_fuzzy_family_name_finds_its_neighbours(two_segments):
    from mpi.search.query import FuzzyWord

    with two_segments.searcher() as searcher:
        found = {hit["id"].split("-")[0] for hit in searcher.search(
            FuzzyWord("family", "smith", maxdist=1, prefixlength=1), limit=None)}
    assert found == {"Smith", "Smyth", "Smithe", "Smit", "Sith"}  # not Schmidt, Smithson


def test_all_of_finds_and_scores_as_whoosh_and_with_the_smallest_part_first(tmp_path):
    """``AllOf`` is whoosh's ``And`` intersected smallest part first (nested ones
    flattened): the same documents with the same scores, and the rarest part leads the
    intersection, whatever order the parts were written in."""
    from whoosh import fields, index
    from whoosh import query as wq

    from mpi.search.query import AllOf

    schema = fields.Schema(id=fields.ID(stored=True), word=fields.KEYWORD)
    ix = index.create_in(str(tmp_path), schema)
    with ix.writer() as w:
        for i in range(300):
            words = ["common"] + (["often"] if i % 3 else []) + (["rare"] if i % 50 == 7 else [])
            w.add_document(id=str(i), word=" ".join(words))
    parts = [wq.Or([wq.Term("word", "common"), wq.Term("word", "often", boost=2.0)]),
             wq.And([wq.Term("word", "often"), wq.Term("word", "rare")]),
             wq.Not(wq.Term("word", "missing"))]
    with ix.searcher() as s:
        ours = [(h["id"], round(h.score, 9)) for h in s.search(AllOf(parts), limit=None)]
        theirs = [(h["id"], round(h.score, 9)) for h in s.search(wq.And(parts), limit=None)]
        assert ours == theirs and len(ours) == 4  # 7, 107, 157, 257: "rare" and "often"
        matcher = AllOf(parts).matcher(s)
        while hasattr(matcher, "a"):  # the intersection's first, innermost part
            matcher = matcher.a
        leading = sorted(int(s.reader().stored_fields(d)["id"]) for d in matcher.all_ids())
        assert leading == [7, 57, 107, 157, 207, 257]  # "rare"


def _matchers(m):
    yield m
    for child in m.children():
        yield from _matchers(child)


def _postings(matcher):
    out = []
    while matcher.is_active():
        out.append((matcher.id(), round(matcher.score(), 9)))
        matcher.next()
    return out


def test_any_of_is_whoosh_union_tree_in_segments_of_every_size(two_segments):
    """Inside another query, whoosh's ``Or`` pre-loads its parts into an
    ``ArrayUnionMatcher`` in a segment of at most 5,000 documents (0.44 ms to set up,
    whatever the segment's size) and uses its tree of union matchers in larger ones.
    ``AnyOf``, and the words of a ``FuzzyWord``, always take the tree: the documents and
    scores of whoosh's tree, with no pre-loading, in small segments too."""
    from whoosh import matching
    from whoosh import query as wq

    from mpi.search.query import AllOf, AnyOf, FuzzyWord, Options, Shortcuts, build

    def union(cls):
        return AllOf([cls([wq.Term("family", "smith", boost=3.0),
                           wq.Term("family", "jones"), wq.Term("given", "htims")]),
                      wq.Not(wq.Term("family", "zhang"))])

    def preloads(q, leaf):
        return any(isinstance(m, matching.ArrayUnionMatcher)
                   for m in _matchers(q.matcher(leaf, leaf.context())))

    pairs = [(union(AnyOf), union(wq.Or), False),
             (AllOf([FuzzyWord("family", "smith", boost=1.5, maxdist=2), wq.Every()]),
              wq.And([wq.FuzzyTerm("family", "smith", boost=1.5, maxdist=2), wq.Every()]),
              True)]
    with two_segments.searcher() as searcher:
        for ours, theirs, fuzzy in pairs:
            assert searcher.search(ours, limit=None)
            for leaf, _ in searcher.leaf_searchers():
                tree = _postings(theirs.matcher(leaf, leaf.context(needs_current=True)))
                mine = _postings(ours.matcher(leaf, leaf.context()))
                if fuzzy:  # the same documents, each scoring the boost (and Every's 1)
                    assert [d for d, _ in mine] == [d for d, _ in tree]
                    assert {score for _, score in mine} == {2.5}
                else:
                    assert mine == tree
                assert not preloads(ours, leaf)
            assert any(preloads(theirs, leaf) for leaf, _ in searcher.leaf_searchers())
        name = build(None, Shortcuts(name="smith jonas", birth_year=1980), Options(fuzzy=1))
        assert not any(preloads(name, leaf) for leaf, _ in searcher.leaf_searchers())


GIVEN_NAMES = ["Kirra", "Kira", "Kyra", "Cara", "John", "Jon", "Johan", "Amelia", "Emilia",
               "Chloe", "Hernán", "Ernan", "Sean", "Shaun", "Ann", "Anne", "Jo"]


def test_name_and_birth_year_find_what_name_and_year_apart_find(tmp_path):
    """``name`` + ``birth_year`` reads the year's own terms (``name_year``,
    ``name_phonetic_year``, part of a name with the year): exactly the documents that the
    name's alternatives and the year find together (exact, fuzzy, phonetic, part of a
    name; a record born that year, or only its year known; none without a year)."""
    import random

    from whoosh import query as wq

    from mpi.search.query import AllOf, Options, Shortcuts, build, prune_infixes
    from mpi.search.schema import document
    from mpi.search.store import IndexDirectory

    rng = random.Random(5)
    directory = IndexDirectory(tmp_path)
    ix = directory.create_index(directory.new_build())
    for part in range(2):  # two segments
        writer = ix.writer()
        for i in range(150):
            record = {"id": f"{part}-{i}", "names": [
                {"family": rng.choice(FAMILY_NAMES), "given": [rng.choice(GIVEN_NAMES)]}]}
            kind = i % 5
            if kind < 3:
                record["birth_date"] = f"{rng.choice((1967, 1968, 1980))}-0{kind + 1}-1{kind}"
            elif kind == 3:
                record["birth_date_partial"] = str(rng.choice((1967, 1980)))
            writer.add_document(**document(record))
        writer.commit(merge=False)
    names = ["kirra smith", "kira smyth", "kyra", "jon jones", "johan joness", "amelia",
             "emilia mueller", "chlou", "ernan", "hernan ng", "shaun", "ann obrien", "jo",
             "smithx", "zzzz"]
    options = Options(fuzzy=1)
    found_any = 0
    with ix.searcher() as searcher:
        def known(word):
            return searcher.doc_frequency("name", word) > 0

        def ids(q):
            return {h["id"] for h in searcher.search(prune_infixes(q, known), limit=None)}

        for name in names:
            for year in (1967, 1968, 1980, 1999):
                dated = build(None, Shortcuts(name=name, birth_year=year), options)
                apart = AllOf([build(None, Shortcuts(name=name), options),
                               wq.Term("birth_year", str(year))])
                assert ids(dated) == ids(apart), (name, year)
                found_any += bool(ids(dated))
        assert "name_year" in str(build(None, Shortcuts(name="kirra", birth_year=1967),
                                        options))
    assert found_any >= 20


def test_skippable_queries_are_words_and_unions_of_words():
    from whoosh import query as wq

    from mpi.search.query import AllOf, AnyOf, FuzzyWord, Options, Shortcuts, build, skippable

    assert skippable(wq.Term("family", "smith"))
    assert skippable(AnyOf([wq.Term("family", "smith", boost=3.0),
                            FuzzyWord("family", "smith", maxdist=1), wq.Prefix("name", "sm")]))
    assert skippable(build("family:smi*", Shortcuts(), Options(fuzzy=1)))
    assert skippable(build("family:smiht", Shortcuts(), Options(fuzzy=1)))
    assert not skippable(AllOf([wq.Term("family", "smith"), wq.Term("birth_year", "1950")]))
    assert not skippable(AnyOf([wq.Term("family", "smith"),
                                wq.Phrase("address", ["high", "st"])]))
    assert not skippable(build("smith -given:ann", Shortcuts(), Options(fuzzy=1)))
    assert not skippable(build(None, Shortcuts(name="ann smith", birth_year=1950),
                               Options(fuzzy=1)))


def test_a_name_prefix_is_one_term_every_document_scoring_its_boost(two_segments):
    """"smi*" is the leading n-gram's term, unweighted: "Smith" and "Smithson" score
    alike (the field's weighting ranked the shorter name first), and the matcher tells
    skipping so."""
    from mpi.search.query import ConstantScore, Options, PrefixTerm, parse

    query = parse("family:smi*", Options(fuzzy=1))
    assert isinstance(query, PrefixTerm) and str(query) == "family_prefix:smi"
    scores = set()
    with two_segments.searcher() as searcher:
        for leaf, _ in searcher.leaf_searchers():
            matcher = query.matcher(leaf, leaf.context())
            assert isinstance(matcher, ConstantScore) and matcher.max_quality() == 1.0
            scores |= {score for _, score in _postings(matcher)}
        assert scores == {1.0}
        assert searcher.search(query, limit=None).scored_length() == len(
            [f for f in FAMILY_NAMES if f.lower().startswith("smi")])
        assert PrefixTerm("family_prefix", "qqq").matcher(searcher).is_active() is False


def test_a_fuzzy_word_scores_its_boost_and_says_so_to_skipping(two_segments):
    """Every document of a fuzzy word scores the boost, whichever of its words it holds
    (whoosh scored one word by its weighting and several by their frequencies); the
    matcher tells whoosh's skipping that nothing in it beats that."""
    from whoosh import matching

    from mpi.search.query import ConstantScore, FuzzyWord

    seen = set()
    with two_segments.searcher() as searcher:
        for leaf, _ in searcher.leaf_searchers():
            for word in ("smith", "smiht", "zhang", "zheng"):
                fuzzy = FuzzyWord("family", word, boost=1.5, maxdist=1)
                matcher = fuzzy.matcher(leaf, leaf.context())
                words = len(fuzzy._btexts(leaf.reader()))
                if not words:
                    assert matcher is matching.NullMatcher
                    continue
                seen.add(min(words, 2))
                assert isinstance(matcher, ConstantScore)
                assert matcher.supports_block_quality()
                assert matcher.max_quality() == matcher.block_quality() == 1.5
                assert matcher.replace(1.4) is matcher
                assert not matcher.replace(1.5).is_active()
                assert matcher.skip_to_quality(1.4) == 0 and matcher.is_active()
                postings = _postings(fuzzy.matcher(leaf, leaf.context()))
                assert postings and {score for _, score in postings} == {1.5}
                assert matcher.skip_to_quality(1.5) == 1 and not matcher.is_active()
    assert seen == {1, 2}  # one word and several
