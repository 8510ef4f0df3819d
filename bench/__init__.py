"""skiff data-plane benchmark (`make bench`); see bench/README.md."""
