"""One poll cycle: every scope polled, its answer normalised, stored and exposed, with the
backoff and the deadlines that keep one scope from holding up the others.
"""
