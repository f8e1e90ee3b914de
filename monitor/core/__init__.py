"""The vocabulary every other package shares, and pure functions on it: the image and poll
records, errors, the diff of two polls, times and durations, text made safe to print or log,
and the log format.
"""
