"""What builds and tests the book, kept apart from what its notebooks use.

A reader of a chapter needs :mod:`helpers` only; this package is for the book's
maintainers and its CI.

* :mod:`booktools.run`: execute a notebook with parameters, unattended (the tests,
  the benchmarks and ``ray job submit`` use it).
* :mod:`booktools.extension`: the Sphinx hooks of the book's build.
* :mod:`booktools.ledger`: every chapter's records, read back from the build's cache
  for the results ledger page and the tests.
* :mod:`booktools.lines`: count the lines that connect a library to Ray; the level
  pages, 21, 40 and 60 show the counts.
"""
