"""The checkpoint tool: configs, reading and writing safetensors checkpoints, conversions and
their data-safety rules, verify, the ``incq`` command, benchmarks and the self-check."""
