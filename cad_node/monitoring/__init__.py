"""How each model does at this site (issue 22): its outputs, radiologists' feedback, local
performance, drift, and the reports a quality committee reads.

Framework-free figures (:mod:`performance`, :mod:`drift`) over records the journal
queries return; plots are drawn with matplotlib, imported only when a figure is drawn.
"""
