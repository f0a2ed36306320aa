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

from typing import Any

from whoosh.codec.whoosh3 import W3Codec, W3PostingsWriter
from whoosh.matching import ListMatcher

#: Terms with fewer postings than this are kept in their entry (one document's).
INLINE_LIMIT = 2


class InliningCodec(W3Codec):  # type: ignore[misc]
    """Whoosh 3's codec, writing a term one document holds into the term's entry."""

    def __init__(self) -> None:
        super().__init__(inlinelimit=INLINE_LIMIT)

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
