"""One module per book chapter: its parameter schema and its named stages.

Each notebook declares plain parameter values, builds the chapter's ``Params`` with
:func:`reversion.book.nb.parameters`, then calls the stages here and plots.
"""
