"""What tests share: data paths, the local HTTP server, subprocess runners,
photo-folder and image makers, MPI launchers, random nets and the helpers
that several test modules use.

Test modules import shared code from here (or take fixtures from
``tests/conftest.py``), never from one another; benchmarks and scripts do
not import from ``tests`` at all.
"""
