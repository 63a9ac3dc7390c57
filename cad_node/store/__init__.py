"""The journal: SQLAlchemy 2 models and the functions that change them.

Each module holds the operations of one concern (instances, series, jobs,
deliveries) as small functions taking a ``Session``; the caller owns the
transaction, so each hop commits its outcome before the next hop starts.
"""
