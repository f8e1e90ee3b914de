"""Everything that talks to AWS: sessions and credentials per target, the token buckets, the
trimmed EC2 service model, paging `DescribeFastLaunchImages`, the normalising of its answer, and
the poll processes that make the requests away from the daemon's GIL.
"""
