"""The benchmark suite of enot-builder; see bench/README.md."""
