"""The jmappushd benchmark suite: ``python -m benchmarks [--smoke] [--only a,b]``.

Every benchmark starts the real daemon (``twistd -n jmappushd``) or a bare baseline
server as a subprocess and drives it from separate load-generator processes on
loopback only. Baselines run in the same invocation so that ratios, not absolute
times, carry the result on a shared and noisy machine. See docs/benchmarks.rst.
"""
