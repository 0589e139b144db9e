"""Benchmark adapters (native layouts), robust image decoding, the manifest schema and reader, curate and fetch."""
