"""The XenStore baseline: a real xenstored holding each VM's config, as Xen's toolstack does.

Only the benchmark suite uses it; see README.md beside this file.
"""
