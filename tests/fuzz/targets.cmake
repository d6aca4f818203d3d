# The libFuzzer targets: tests/fuzz/fuzz_<name>.cc, seeds in tests/fuzz/corpus/<name>/.
set(LMIG_FUZZ_TARGETS frames handshake state receiver)
