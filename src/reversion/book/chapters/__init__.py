"""One module per book chapter: its parameter schema, the analysis of what the stages return
(:mod:`reversion.stages`), and the metrics it writes.

Each notebook declares plain parameter values, builds the chapter's ``Params`` with
:func:`reversion.book.nb.parameters`, calls the stages in a visible cell, and hands what they
return to its chapter module for tables, plots and ``metrics.json``.
"""
