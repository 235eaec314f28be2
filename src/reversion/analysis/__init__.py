"""The science: pure functions from what the stages return to typed results and verdicts.

One module per chapter (its experiment and its measurements), :mod:`~reversion.analysis.verdicts`
(the vocabulary: intervals, verdicts and the rules between them) and
:mod:`~reversion.analysis.claims` (one function per claim of the paper). The book's pages
present these results and never compute them.
"""
