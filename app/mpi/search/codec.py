"""Whoosh's segment format, with a term that one document holds kept in the term's entry.

Whoosh 3's codec writes each term's postings to the postings file as blocks: a pickled
tuple of arrays, zlib-compressed, after a header, and the term's entry in the terms file
points there. It was meant to keep a short posting list "inline", in the term's entry
instead (``W3Codec(inlinelimit=...)``, read back by ``W3Codec.postings_reader`` as a
``ListMatcher``), but its writer calls ``terminfo.set_inline``, a method that does not
exist (``W3TermInfo.set_inlined``): whoosh 2.7.4 ships with ``inlinelimit=1``, which
keeps nothing inline, so the bug never fires.

A rebuild makes about eleven new terms per record (identifiers, a record's name and
birth-year terms, rare names' n-grams), most of them held by that one record; each paid a
pickle, a zlib compression and two writes to the postings file. :class:`InliningCodec`
keeps a one-document term in its entry, as whoosh intended: measured on a one-process
build of 45,800 records, 772 -> 698 µs of CPU a record. Reading such a term is one
unpickling of the entry instead of a seek, a read, a decompression and an unpickling.

Reading goes through the same codec (each segment's table-of-contents entry names the
codec that wrote it), which gives an inlined term a matcher that keeps its term and entry
when copied (whoosh's ``ListMatcher.copy`` drops them, and scoring a block then fails).
Segments whoosh's own codec wrote read as before.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, groupby
from operator import itemgetter
from typing import Any

from whoosh.codec.base import OutOfOrderError
from whoosh.codec.whoosh3 import (
    WHOOSH3_HEADER_MAGIC,
    W3Codec,
    W3FieldWriter,
    W3PostingsWriter,
    W3TermInfo,
    W3TermsReader,
)
from whoosh.compat import dumps
from whoosh.filedb.filetables import OrderedHashWriter
from whoosh.filedb.filetables import _lengths as _ROW  # a row's key and value lengths
from whoosh.matching import ListMatcher
from whoosh.system import pack_ushort, unpack_ushort
from whoosh.util.numeric import byte_to_length, length_to_byte

#: Terms with fewer postings than this are kept in their entry (one document's).
INLINE_LIMIT = 2
_ENTRY = W3TermInfo._struct  # a term's entry: flags, statistics, first and last document
_FLOAT = struct.Struct("f")
_BLOCK_LENGTH = struct.Struct("!i")  # a postings block's length (whoosh's write_int)
# Where a term's postings are, after its entry's statistics: offset and length (whoosh's
# W3TermInfo.from_bytes reads the length as a 1-tuple; only its own matcher, which does
# not use it, ever read it).
_EXTENT = struct.Struct("!qi")
_by_field = itemgetter(0)


class InliningCodec(W3Codec):  # type: ignore[misc]
    """Whoosh 3's codec, writing a term one document holds into the term's entry."""

    def __init__(self) -> None:
        super().__init__(inlinelimit=INLINE_LIMIT)

    def field_writer(self, storage: Any, segment: Any) -> Any:
        return _TermAtATimeFieldWriter(self, storage, segment)

    def postings_writer(self, dbfile: Any, byteids: bool = False) -> Any:
        return _InliningPostingsWriter(dbfile, blocklimit=self._blocklimit, byteids=byteids,
                                       compression=self._compression,
                                       inlinelimit=self._inlinelimit)

    def postings_reader(self, dbfile: Any, terminfo: Any, format_: Any, term: Any = None,
                        scorer: Any = None) -> Any:
        if terminfo.is_inlined():
            ids, weights, values = terminfo.inlined_postings()
            return _InlinedMatcher(ids, weights, values, format_, scorer=scorer, term=term,
                                   terminfo=terminfo)
        return super().postings_reader(dbfile, terminfo, format_, term=term, scorer=scorer)


class _InlinedMatcher(ListMatcher):  # type: ignore[misc]
    """Whoosh's matcher over a term's inlined postings, its copies whole."""

    def copy(self) -> _InlinedMatcher:
        return _InlinedMatcher(self._ids, self._weights, self._values, self._format,
                               scorer=self._scorer, position=self._i,
                               all_weights=self._all_weights, term=self._term,
                               terminfo=self._terminfo)


class _InliningPostingsWriter(W3PostingsWriter):  # type: ignore[misc]
    _terminfo: Any  # the term being written (W3PostingsWriter's)

    def finish_postings(self) -> Any:
        # W3PostingsWriter.finish_postings, with the inlined postings given to the term
        # info's ``set_inlined`` (whoosh calls ``set_inline``, which W3TermInfo lacks).
        terminfo = self._terminfo
        if not self.written() and len(self) < self._inlinelimit:
            terminfo.add_block(self)
            # A format without values (an ID field's) has none in the block: read back
            # from a block they are None, and so from the entry.
            values = self._values or (None,) * len(self._ids)
            terminfo.set_inlined(self._ids, self._weights, values)
            self._terminfo = None
            return terminfo
        return super().finish_postings()

    def write_term(self, format_: Any, postings: list[tuple[Any, ...]],
                   lengths: Callable[[list[int]], list[int]]) -> Any:
        """A whole term's postings, ``(term, docnum, weight, value)`` in document order,
        written as ``start_postings``, ``add_posting`` for each and ``finish_postings``
        write them (the same blocks, statistics and entry), filling each block at once
        instead of a posting at a time; ``lengths(docnums)``: each document's field length
        as its length byte (0: none). Returns the term's entry."""
        self.start_postings(format_, W3TermInfo())
        limit = self._blocklimit
        for start in range(0, len(postings), limit):
            if start:  # a full block before this one (add_posting writes it so)
                self._write_block()
            _, ids, weights, values = zip(*postings[start:start + limit], strict=True)
            self._ids = list(ids) if self._byteids else array("I", ids)
            self._weights = array("f", weights)
            self._values = [v for v in values if v]
            top = max(weights)
            self._maxweight = top if top > 0 else 0
            # whoosh keeps the lengths and writes their bytes; the bytes rise with them
            known = [n for n in lengths(list(ids)) if n]
            self._minlength = byte_to_length(min(known)) if known else None
            self._maxlength = byte_to_length(max(known)) if known else 0
        return self.finish_postings()


def inlined_entry(docnum: int, weight: float, value: bytes | None, length: int) -> bytes:
    """The terms-table entry :class:`InliningCodec` writes for a term one document holds
    (``docnum``, with ``weight`` and ``value``, its field's length byte ``length``, 0 for
    none): ``W3TermInfo.to_bytes`` of what ``write_term`` gives it, without the objects."""
    stored = _FLOAT.unpack(_FLOAT.pack(weight))[0]  # as the block's array("f") holds it
    return _ENTRY.pack(True, stored, 1, length, length, weight if weight > 0 else 0,
                       docnum, docnum) + dumps(((docnum,), (stored,), (value or None,)), 2)


class _TermAtATimeFieldWriter(W3FieldWriter):  # type: ignore[misc]
    """Whoosh 3's field writer, taking the segment's sorted postings a term at a time.

    Whoosh's ``FieldWriter.add_postings`` makes three Python calls per posting (the
    document's field length, ``add``, ``add_posting`` with its type assertions), and a
    term costs a term info object, a postings block and their statistics; a rebuild
    writes ~58 postings and ~10 terms a record, 84 % of the terms held by one record.
    Here a term's postings are gathered (one append each) and written by
    :meth:`_InliningPostingsWriter.write_term`, and a term of one posting's entry is
    made at once (:func:`inlined_entry`); field lengths come from the segment's lengths
    column read whole when the caller's length reader offers it (``length_bytes``,
    :class:`mpi.search.store._WholeLengths`). The postings come as whoosh's stream
    (``add_postings``) or a field at a time (``add_field_postings``, from
    :class:`mpi.search.pool.FieldPostingPool`). The files are the same bytes whoosh's
    loop writes (tests/search/test_codec.py)."""

    _postwriter: Any
    _fieldobj: Any
    _tindex: Any
    _fieldid: int
    _codec: Any

    def __init__(self, codec: Any, storage: Any, segment: Any):
        super().__init__(codec, storage, segment)
        # (the terms table whoosh's writer just made, nothing in it yet)
        self._tindex.__class__ = _TermsTable

    def add_postings(self, schema: Any, lengths: Any, items: Iterable[tuple[Any, ...]]
                     ) -> None:
        """Whoosh's stream of postings, ``(field, term, docnum, weight, value)``, sorted."""
        self.add_field_postings(schema, lengths, (
            (fieldname, (posting[1:] for posting in postings))
            for fieldname, postings in groupby(items, key=_by_field)))

    def add_field_postings(self, schema: Any, lengths: Any,
                           fields: Iterable[tuple[str, Iterable[tuple[Any, ...]]]]) -> None:
        """Each field (in order) with its postings, ``(term, docnum, weight, value)``,
        sorted by term and docnum (:meth:`mpi.search.pool.FieldPostingPool.by_field`)."""
        for fieldname, postings, measure in self._each_field(schema, lengths, fields):
            lasttext: bytes | None = None
            term: list[tuple[Any, ...]] = []
            for posting in postings:
                btext = posting[0]
                if btext != lasttext:
                    if term:
                        self._write_term(term, measure)
                        term = []
                    if lasttext is not None and btext < lasttext:
                        raise OutOfOrderError(f"Term {fieldname}:{lasttext!r} .. {btext!r}")
                    lasttext = btext
                if posting[1] != -1:  # whoosh's spelling-word marker: not a posting
                    term.append(posting)
            if term:
                self._write_term(term, measure)

    def add_field_terms(self, schema: Any, lengths: Any,
                        fields: Iterable[tuple[str, Iterable[list[tuple[Any, ...]]]]]
                        ) -> None:
        """Each field (in order) with its terms in order, each term as the list of its
        postings, ``(term, docnum, weight, value)`` in document order (a merge's: the
        segments' terms read a term at a time)."""
        for fieldname, terms, measure in self._each_field(schema, lengths, fields):
            lasttext: bytes | None = None
            for term in terms:
                btext = term[0][0]
                if lasttext is not None and btext <= lasttext:
                    raise OutOfOrderError(f"Term {fieldname}:{lasttext!r} .. {btext!r}")
                lasttext = btext
                self._write_term(term, measure)

    def _each_field(self, schema: Any, lengths: Any, fields: Iterable[tuple[str, Any]]
                    ) -> Iterator[tuple[str, Any, Callable[[list[int]], list[int]]]]:
        """Start each field in turn (they must come in order) and finish it once the
        caller has written its terms: (field name, its items, its length bytes)."""
        lastfn: str | None = None
        for fieldname, items in fields:
            if lastfn is not None:
                if fieldname <= lastfn:
                    raise OutOfOrderError(f"Field {lastfn!r} .. {fieldname!r}")
                self.finish_field()
            self.start_field(fieldname, schema[fieldname])
            lastfn = fieldname
            yield fieldname, items, _measure(lengths, fieldname)
        if lastfn is not None:
            self.finish_field()

    def _write_term(self, term: list[tuple[Any, ...]],
                    lengths: Callable[[list[int]], list[int]]) -> None:
        btext = term[0][0]
        if len(term) == 1 and self._codec._inlinelimit > 1:
            _, docnum, weight, value = term[0]
            entry = inlined_entry(docnum, weight, value, lengths([docnum])[0])
        else:
            entry = self._postwriter.write_term(self._fieldobj.format, term,
                                                lengths).to_bytes()
        # as W3FieldWriter.finish_term adds the term's row to the terms table
        self._tindex.add(pack_ushort(self._fieldid) + btext, entry)


class _TermsTable(OrderedHashWriter):  # type: ignore[misc]
    """Whoosh's ordered terms table, a row written with one write (whoosh's ``add`` asks
    the file its position twice and writes three times per term). The same bytes."""

    lastkey: bytes
    dbfile: Any
    index: Any
    buckets: list[list[tuple[int, int]]]

    def add(self, key: bytes, value: bytes) -> None:
        if key <= self.lastkey:
            raise ValueError(f"Keys must increase: {self.lastkey!r}..{key!r}")
        dbfile = self.dbfile
        position = dbfile.tell()
        self.index.append(position)
        dbfile.write(_ROW.pack(len(key), len(value)) + key + value)
        hashed = self.hashfn(key)
        self.buckets[hashed & 255].append((hashed, position))
        self.lastkey = key


def _no_lengths(docnums: list[int]) -> list[int]:
    return [0] * len(docnums)


def _measure(lengths: Any, fieldname: str) -> Callable[[list[int]], list[int]]:
    """Each document's length byte for ``fieldname`` (0: none), as whoosh's writer asks a
    length reader (``doc_field_length``), from the whole column where the reader offers
    it."""
    if lengths is None:
        return _no_lengths
    whole = getattr(lengths, "length_bytes", None)
    if whole is None:
        def each(docnums: list[int]) -> list[int]:
            return [length_to_byte(lengths.doc_field_length(d, fieldname)) for d in docnums]

        return each
    column = whole(fieldname)
    if column is None:  # a field without lengths: the reader's default, 0
        return _no_lengths
    size = len(column)
    return lambda docnums: [column[d] if d < size else 0 for d in docnums]


def segment_terms(reader: Any) -> Iterator[tuple[str, bytes, Any, Any, Any]] | None:
    """Every term of a whoosh 3 segment (``reader``: a ``SegmentReader``) in its terms
    table's order, field by field, with all its postings, deleted documents' too:
    ``(field, term, docnums, weights, values)``. None for a segment of another codec.

    Whoosh's ``IndexReader.iter_postings`` (what its ``add_reader`` merges) looks every
    term up again in the table's hash, opens a matcher on it and reads its block with
    ~30 small reads, then yields a posting at a time: merging 20,000 documents cost
    ~720 µs of CPU a document, twice what indexing it did. Here the table is read in one
    piece and walked row by row, a term held by one document is taken from its entry, and
    a longer one's blocks are read in one piece and decoded as ``W3LeafMatcher`` does."""
    terms = getattr(reader, "_terms", None)
    if not isinstance(terms, W3TermsReader):
        return None
    return _segment_terms(terms, reader.schema)


def _segment_terms(terms: Any, schema: Any) -> Iterator[tuple[str, bytes, Any, Any, Any]]:
    table = terms._tindex
    data = bytes(table.dbfile.get(table.startofdata, table.endofdata - table.startofdata))
    postfile = terms._postfile
    names = terms._fieldunmap
    sizes: dict[str, int | None] = {}
    row, unpack = _ROW.size, _ROW.unpack_from
    position, end = 0, len(data)
    while position < end:
        keylength, valuelength = unpack(data, position)
        key_at = position + row
        value_at = key_at + keylength
        position = value_at + valuelength
        fieldname = names[unpack_ushort(data[key_at:key_at + 2])[0]]
        if data[value_at]:  # the entry's flags: the postings are in it
            # (the index's own files, which whoosh's reader unpickles alike)
            ids, weights, values = pickle.loads(  # noqa: S301
                data[value_at + _ENTRY.size:position])
        else:
            if fieldname not in sizes:
                sizes[fieldname] = schema[fieldname].format.fixed_value_size()
            offset, length = _EXTENT.unpack_from(data, value_at + _ENTRY.size)
            ids, weights, values = _read_blocks(postfile, offset, length, sizes[fieldname])
        yield fieldname, data[key_at + 2:value_at], ids, weights, values


def _read_blocks(postfile: Any, offset: int, length: int, fixedsize: int | None
                 ) -> tuple[list[int], list[float], list[Any]]:
    """A term's postings from its blocks (``extent()``: header and blocks), decoded as
    ``W3LeafMatcher`` reads them. The blocks are pickles in the index's own files, which
    whoosh's reader unpickles alike: the index directory is the service's alone."""
    chunk = bytes(postfile.get(offset, length))
    if chunk[:4] != WHOOSH3_HEADER_MAGIC:
        raise ValueError(f"no postings header at {offset}")
    stream = io.BytesIO(chunk)
    ids: list[int] = []
    weights: list[float] = []
    values: list[Any] = []
    position = 4
    while True:
        size = _BLOCK_LENGTH.unpack_from(chunk, position)[0]
        stream.seek(position + _BLOCK_LENGTH.size)
        count, _, _, compression, _, _ = pickle.load(stream)  # noqa: S301 (as above)
        data_at = stream.tell()
        position += _BLOCK_LENGTH.size + abs(size)
        raw = chunk[data_at:position]
        mini_ids, mini_weights, mini_values = pickle.loads(  # noqa: S301 (as above)
            zlib.decompress(raw) if compression else raw)
        ids.extend(accumulate(mini_ids))  # delta_decode
        if mini_weights is None:
            weights.extend([1.0] * count)
        elif isinstance(mini_weights, float):
            weights.extend([mini_weights] * count)
        else:
            weights.extend(mini_weights)
        if fixedsize is None or fixedsize < 0:
            values.extend(mini_values)
        elif fixedsize == 0:
            values.extend([None] * count)
        else:
            values.extend(mini_values[i:i + fixedsize]
                          for i in range(0, len(mini_values), fixedsize))
        if size < 0:  # the last block
            return ids, weights, values
