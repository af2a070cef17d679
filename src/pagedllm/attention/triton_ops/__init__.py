"""Triton kernels for the paged attention contract (GPU; on CPU under TRITON_INTERPRET=1).

Importing a kernel module decorates its kernels, and Triton decides there, from
TRITON_INTERPRET, whether they compile for a GPU or run in its interpreter: import these
modules only once the backend is chosen (attention/backends/triton_paged.py does).
"""
