"""Prepared layouts for int4 kernels (``make_xpu_layout``, ``make_cpu_layout``) and the kernels
that run them (torch only, loaded when a layout is built or used)."""
